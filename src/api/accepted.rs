//! The accepted-request log, written in batches. Every `POST /orders` on the queue path records
//! its request id before publishing it, so that `GET /orders/{id}` can say "pending" for any
//! request the broker may hold, even one whose confirm was lost, and the audit can find a
//! request that was accepted but never decided. A request the broker certainly refused is taken
//! back out. Concurrent requests share one `UNNEST` insert (see [`crate::batcher`]).

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
    writer: Batcher<OrderRequest, Recorded>,
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
                        .map(|new| {
                            new.into_iter()
                                .map(|new| if new { Recorded::New } else { Recorded::Before })
                                .collect()
                        })
                        .map_err(|e| format!("cannot record the request: {e}"))
                }
            },
        );
        Self { writer }
    }

    /// Returns once the request is durably recorded.
    pub async fn record(&self, request: OrderRequest) -> Result<Recorded, String> {
        self.writer.call(request).await
    }
}

/// Whether a request id entered the log with this call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    New,
    /// Recorded by an earlier call: a client's retry.
    Before,
}
