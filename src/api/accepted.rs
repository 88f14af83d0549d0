//! The accepted-request log, written in batches. Every `POST /orders` on the queue path records
//! its request id so that `GET /orders/{id}` can say "pending" and the audit can find a request
//! that was accepted but never decided. Concurrent requests share one `UNNEST` insert
//! (see [`crate::batcher`]).

use sqlx::PgPool;

use crate::batcher::Batcher;
use crate::domain::OrderRequest;
use crate::store;

/// Most requests one insert carries.
const BATCH_SIZE_MAX: usize = 1000;
/// Most requests queued for the writer; past it callers wait (back-pressure, bounded memory).
const QUEUE_LEN_MAX: usize = 10_000;

#[derive(Clone)]
pub struct AcceptedLog {
    writer: Batcher<OrderRequest, ()>,
}

impl AcceptedLog {
    /// Starts the writer task; it stops when the last `AcceptedLog` clone is dropped.
    pub fn start(pool: PgPool) -> Self {
        let writer = Batcher::start(
            "request log",
            BATCH_SIZE_MAX,
            QUEUE_LEN_MAX,
            move |requests| {
                let pool = pool.clone();
                async move {
                    store::record_accepted(&pool, &requests)
                        .await
                        .map(|()| vec![(); requests.len()])
                        .map_err(|e| format!("cannot record the request: {e}"))
                }
            },
        );
        Self { writer }
    }

    /// Returns once the request is durably recorded.
    pub async fn record(&self, request: OrderRequest) -> Result<(), String> {
        self.writer.call(request).await
    }
}
