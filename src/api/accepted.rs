//! The accepted-request log, written in batches. Every `POST /orders` on the queue path records
//! its request id so that `GET /orders/{id}` can say "pending" and the audit can find a request
//! that was accepted but never decided. One insert per request would cap the API at the
//! database's commit rate; instead concurrent requests share one `UNNEST` insert (group commit).

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use crate::domain::OrderRequest;
use crate::store;

/// Most requests one insert carries.
const BATCH_SIZE_MAX: usize = 1000;
/// Most requests queued for the writer; past it callers wait (back-pressure, bounded memory).
const QUEUE_LEN_MAX: usize = 10_000;

type Entry = (OrderRequest, oneshot::Sender<Result<(), String>>);

#[derive(Clone)]
pub struct AcceptedLog {
    tx: mpsc::Sender<Entry>,
}

impl AcceptedLog {
    /// Starts the writer task; it stops when the last `AcceptedLog` clone is dropped.
    pub fn start(pool: PgPool) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_LEN_MAX);
        tokio::spawn(write_batches(pool, rx));
        Self { tx }
    }

    /// Returns once the request is durably recorded.
    pub async fn record(&self, request: OrderRequest) -> Result<(), String> {
        let (done_tx, done_rx) = oneshot::channel();
        self.tx
            .send((request, done_tx))
            .await
            .map_err(|_| "the request log has stopped".to_string())?;
        done_rx
            .await
            .map_err(|_| "the request log has stopped".to_string())?
    }
}

async fn write_batches(pool: PgPool, mut rx: mpsc::Receiver<Entry>) {
    let mut batch: Vec<Entry> = Vec::with_capacity(BATCH_SIZE_MAX);
    while rx.recv_many(&mut batch, BATCH_SIZE_MAX).await > 0 {
        let requests: Vec<OrderRequest> = batch.iter().map(|(r, _)| r.clone()).collect();
        let result = store::record_accepted(&pool, &requests)
            .await
            .map_err(|e| format!("cannot record the request: {e}"));
        if let Err(e) = &result {
            tracing::warn!(error = %e, size = requests.len(), "request log write failed");
        }
        for (_, done) in batch.drain(..) {
            let _ = done.send(result.clone());
        }
    }
}
