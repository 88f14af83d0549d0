//! The HTTP-alone ceiling: the bench's own HTTP client, at the bench's concurrency, against an
//! endpoint in this process that does no work — it reads the request and answers a constant
//! `202 pending`, as `POST /orders` does on the queue path. What it measures is what HTTP alone
//! costs on this machine (client and server sharing its cores), so the report can say how close
//! each HTTP path comes to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::routing::post;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Requests the ceiling sends: enough for a few seconds at this machine's HTTP rate.
pub const REQUESTS: usize = 30_000;

/// The pending answer `POST /orders` gives on the queue path, byte for byte the same size.
const PENDING: &str = r#"{"request_id":"0192f6a8-6a54-7c4e-9d2e-3f1b2a4c5d6e","status":"pending"}"#;

/// Requests per second of `http` against the no-work endpoint, `concurrency` clients each
/// sending its next request once answered (as the comparison's clients do).
pub async fn measure(http: &reqwest::Client, concurrency: usize) -> anyhow::Result<f64> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let url = format!("http://{}/orders", listener.local_addr()?);
    let stop = CancellationToken::new();
    let router = Router::new().route("/orders", post(no_work));
    let stopped = stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { stopped.cancelled().await })
            .await
    });
    let sent = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let clients = (0..concurrency.max(1)).map(|_| {
        let (http, url, sent) = (http.clone(), url.clone(), Arc::clone(&sent));
        tokio::spawn(async move { send_until_done(&http, &url, &sent).await })
    });
    let answered: usize = futures::future::try_join_all(clients)
        .await?
        .into_iter()
        .sum::<anyhow::Result<usize>>()?;
    let rate = answered as f64 / started.elapsed().as_secs_f64().max(1e-9);
    stop.cancel();
    server.await??;
    Ok(rate)
}

async fn no_work(
    _body: Bytes,
) -> (
    StatusCode,
    [(header::HeaderName, &'static str); 1],
    &'static str,
) {
    (
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, "application/json")],
        PENDING,
    )
}

/// One client's loop: a request shaped like the comparison's, until [`REQUESTS`] are sent.
async fn send_until_done(
    http: &reqwest::Client,
    url: &str,
    sent: &AtomicUsize,
) -> anyhow::Result<usize> {
    let mut answered = 0;
    while sent.fetch_add(1, Ordering::Relaxed) < REQUESTS {
        let body = json!({"item_id": 1, "user_id": "user-123456", "request_id": Uuid::now_v7()});
        let response = http.post(url).json(&body).send().await?;
        anyhow::ensure!(
            response.status() == StatusCode::ACCEPTED,
            "the no-work endpoint answered {}",
            response.status()
        );
        response.bytes().await?;
        answered += 1;
    }
    Ok(answered)
}
