//! Group commit for request handlers: many concurrent callers each hand over one item, one
//! writer task sends them to the database together, and each caller gets its own result back.
//! One statement per request would cap the API at the database's commit rate; a shared
//! statement costs one round trip and one fsync for up to `batch_size_max` requests.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

type Entry<T, R> = (T, oneshot::Sender<Result<R, String>>);

/// A handle to a running writer; clones share it. The writer stops when the last one is dropped.
pub struct Batcher<T, R> {
    tx: mpsc::Sender<Entry<T, R>>,
}

impl<T, R> Clone for Batcher<T, R> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Starts the writer (call inside the tokio runtime). `write` gets up to `batch_size_max`
    /// items and returns one result per item, in order, or one error for all of them. Past
    /// `queue_len_max` waiting items, callers wait (back-pressure, bounded memory).
    pub fn start<F, Fut>(
        name: &'static str,
        batch_size_max: usize,
        queue_len_max: usize,
        write: F,
    ) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<R>, String>> + Send,
    {
        let (tx, mut rx) = mpsc::channel::<Entry<T, R>>(queue_len_max);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(batch_size_max);
            while rx.recv_many(&mut batch, batch_size_max).await > 0 {
                let (items, senders): (Vec<T>, Vec<_>) = batch.drain(..).unzip();
                let size = items.len();
                match write(items).await {
                    Ok(results) if results.len() == size => {
                        for (done, result) in senders.into_iter().zip(results) {
                            let _ = done.send(Ok(result));
                        }
                    }
                    outcome => {
                        let error = match outcome {
                            Err(e) => e,
                            Ok(results) => {
                                format!("{name}: {} results for {size} items", results.len())
                            }
                        };
                        tracing::warn!(%error, size, "{name}: batch write failed");
                        for done in senders {
                            let _ = done.send(Err(error.clone()));
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    /// Hands `item` to the writer; returns its result once its batch is written.
    pub async fn call(&self, item: T) -> Result<R, String> {
        let (done_tx, done_rx) = oneshot::channel();
        let stopped = || "the batch writer has stopped".to_string();
        self.tx.send((item, done_tx)).await.map_err(|_| stopped())?;
        done_rx.await.map_err(|_| stopped())?
    }
}
