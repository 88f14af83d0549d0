//! One buyer of a fault run, behaving as the README tells a client to: a `503`, a reset
//! connection or a timeout is retried with the same `request_id` (bounded by a deadline), a
//! `202 pending` is followed up with `GET /orders/{request_id}` until it is decided. What the
//! buyer was told, and every refusal on the way, is kept for the verdict.

use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

/// One HTTP attempt's longest wait.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before retrying a refusal (the API's `Retry-After: 1`) or a failed connection.
const RETRY_PAUSE: Duration = Duration::from_millis(1000);
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(300);
/// Pause between two polls of a pending request.
const POLL_PAUSE: Duration = Duration::from_millis(250);

/// What one buyer saw, from first send to the end of its follow-up.
#[derive(Debug, Clone, Default)]
pub struct BuyerLog {
    pub request_id: Uuid,
    pub user_id: String,
    /// The decision the buyer was told last (`purchased`, `sold_out`, ...), if any.
    pub told: Option<String>,
    /// A decision told earlier that differs from a later one (the same id answered two ways).
    pub told_otherwise: Option<String>,
    /// The API accepted it (`202`, or `200` with a decision).
    pub accepted: bool,
    /// `503` answers.
    pub unavailable: u32,
    /// `5xx` answers other than `503`: a server error, never a client's way to retry.
    pub server_errors: u32,
    /// Failed connections, resets and timeouts.
    pub transport_errors: u32,
    /// When each refusal (503, 5xx, transport error) came, since the run's start.
    pub refused_at: Vec<Duration>,
    /// An answer no README line allows (a 4xx, a body that is not an order status).
    pub unexpected: Option<String>,
}

impl BuyerLog {
    fn told(&mut self, status: &str) {
        if let Some(earlier) = &self.told
            && earlier != status
        {
            self.told_otherwise = Some(earlier.clone());
        }
        self.told = Some(status.to_owned());
    }

    fn refused(&mut self, run_start: Instant) {
        self.refused_at.push(run_start.elapsed());
    }
}

/// Buys once through `path` (`queue`: no `?path=`), retrying until `send_by`, then follows a
/// pending answer up until `settle_by`.
#[allow(clippy::too_many_arguments)]
pub async fn buy(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    item_id: i64,
    user_id: String,
    run_start: Instant,
    send_by: Instant,
    settle_by: Instant,
) -> BuyerLog {
    let request_id = Uuid::new_v4();
    let mut log = BuyerLog {
        request_id,
        user_id: user_id.clone(),
        ..BuyerLog::default()
    };
    let url = if path == "queue" {
        format!("{base}/orders")
    } else {
        format!("{base}/orders?path={path}")
    };
    let body =
        serde_json::json!({"item_id": item_id, "user_id": user_id, "request_id": request_id});
    let mut pending = loop {
        match attempt(http.post(&url).json(&body)).await {
            Attempt::Status(status) if status == "pending" => {
                log.accepted = true;
                break true;
            }
            Attempt::Status(status) => {
                log.accepted = true;
                log.told(&status);
                break false;
            }
            Attempt::Refused { code } => {
                note_refusal(&mut log, code, run_start);
            }
            Attempt::Unexpected(what) => {
                log.unexpected = Some(what);
                return log;
            }
        }
        if Instant::now() >= send_by {
            return log;
        }
    };
    let poll_url = format!("{base}/orders/{request_id}");
    while pending && Instant::now() < settle_by {
        tokio::time::sleep(POLL_PAUSE).await;
        match attempt(http.get(&poll_url)).await {
            Attempt::Status(status) if status == "pending" => {}
            Attempt::Status(status) => {
                log.told(&status);
                pending = false;
            }
            // A 404 after a 202: the accepted log lost it; keep asking until the deadline.
            Attempt::Unexpected(what) if what.starts_with("404") => {}
            Attempt::Refused { code } => note_refusal(&mut log, code, run_start),
            Attempt::Unexpected(what) => {
                log.unexpected = Some(what);
                return log;
            }
        }
    }
    log
}

fn note_refusal(log: &mut BuyerLog, code: Option<u16>, run_start: Instant) {
    match code {
        Some(503) => log.unavailable += 1,
        Some(_) => log.server_errors += 1,
        None => log.transport_errors += 1,
    }
    log.refused(run_start);
}

enum Attempt {
    /// An order status: `pending` or a decision.
    Status(String),
    /// A 5xx (`Some(code)`) or no answer at all (`None`): retried after a pause.
    Refused { code: Option<u16> },
    /// Anything else, as "code: body".
    Unexpected(String),
}

/// One HTTP attempt; a refusal has already waited its pause when this returns.
async fn attempt(request: reqwest::RequestBuilder) -> Attempt {
    let answer = match request.timeout(ATTEMPT_TIMEOUT).send().await {
        Ok(answer) => answer,
        Err(_) => {
            tokio::time::sleep(CONNECT_RETRY_PAUSE).await;
            return Attempt::Refused { code: None };
        }
    };
    let code = answer.status().as_u16();
    let Ok(text) = answer.text().await else {
        tokio::time::sleep(CONNECT_RETRY_PAUSE).await;
        return Attempt::Refused { code: None };
    };
    if code >= 500 {
        tokio::time::sleep(RETRY_PAUSE).await;
        return Attempt::Refused { code: Some(code) };
    }
    if code == 200 || code == 202 {
        let status = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["status"].as_str().map(str::to_owned));
        if let Some(status) = status {
            return Attempt::Status(status);
        }
    }
    Attempt::Unexpected(format!(
        "{code}: {}",
        text.chars().take(200).collect::<String>()
    ))
}
