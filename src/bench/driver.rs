//! The load driver: sends a path's attempts over HTTP or in-process — here the closed loop,
//! `concurrency` at a time ([`super::open_model`] sends on a schedule) — and records what each
//! client was told and how long it waited.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;

use super::answer::Answer;
use super::args::{BenchArgs, Load, Via};
use super::report;
use super::row::BenchPath;
use super::scenario::Attempt;
use super::stack::Stack;
use super::stats::Recorder;
use crate::domain::OrderRequest;
use crate::paths::Answer as PathAnswer;

/// How long a queue-path client waits for its decision before it counts as `pending`.
const DECISION_WAIT: Duration = Duration::from_secs(30);

/// What the drivers share during a run.
pub(super) struct Bench {
    /// What requests go to, and the database they end up in.
    pub stack: Stack,
    pub http: reqwest::Client,
    pub via: Via,
    /// Closed loop: simulated clients, each with one request in flight.
    pub concurrency: usize,
    /// How the comparison's clients send (`--rate`: the open model).
    pub load: Load,
    /// Clients re-sending one decided request id while the run lasts (`--resend-decided`).
    pub resend_decided: usize,
}

impl Bench {
    pub fn new(stack: Stack, args: &BenchArgs) -> anyhow::Result<Bench> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &args.producer_token {
            let mut bearer = reqwest::header::HeaderValue::try_from(format!("Bearer {token}"))?;
            bearer.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, bearer);
        }
        Ok(Bench {
            stack,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(args.concurrency.max(args.in_flight_max as usize))
                .default_headers(headers)
                .build()?,
            via: args.via,
            concurrency: args.concurrency.max(1),
            load: args.load(),
            resend_decided: args.resend_decided,
        })
    }
}

/// Sends every attempt once, `bench.concurrency` at a time (a closed loop), or until `deadline`
/// if one is given; returns what the clients saw.
pub(super) async fn drive(
    bench: &Arc<Bench>,
    path: BenchPath,
    items: &Arc<Vec<i64>>,
    attempts: &Arc<Vec<Attempt>>,
    deadline: Option<Instant>,
) -> anyhow::Result<Recorder> {
    let progress = report::progress_bar(path, attempts.len() as u64);
    let next = Arc::new(AtomicUsize::new(0));
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    let started = Instant::now();
    // One task per simulated client, so the load spreads over the runtime's worker threads.
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..bench.concurrency {
        let (bench, attempts, items) = (Arc::clone(bench), Arc::clone(attempts), Arc::clone(items));
        let (next, progress, recorder) = (Arc::clone(&next), progress.clone(), recorder.clone());
        workers.spawn(async move {
            while let Some(attempt) = attempts.get(next.fetch_add(1, Ordering::Relaxed)) {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    // Every attempt counts as taken, so the re-senders stop too.
                    next.store(attempts.len(), Ordering::Relaxed);
                    break;
                }
                let sent = Instant::now();
                let answer = send(&bench, path, items[attempt.item], &attempt.user).await;
                recorder.lock().expect("recorder").record_at(
                    answer,
                    sent.elapsed(),
                    started.elapsed(),
                );
                progress.inc(1);
            }
        });
    }
    let resender = resend_decided(bench, path, items, attempts, &next);
    while let Some(worker) = workers.join_next().await {
        worker?;
    }
    let resent = resender.await?;
    if resent > 0 {
        progress.println(format!(
            "{path}: one decided request id sent {resent} times again"
        ));
    }
    progress.finish_and_clear();
    let recorder = std::mem::take(&mut *recorder.lock().expect("recorder"));
    Ok(recorder)
}

/// `bench.resend_decided` clients sending the first attempt's user's request, always with the same
/// id, until every attempt is taken: after the first, each is a retry of a decided request.
/// Returns how many retries were sent.
fn resend_decided(
    bench: &Arc<Bench>,
    path: BenchPath,
    items: &Arc<Vec<i64>>,
    attempts: &Arc<Vec<Attempt>>,
    next: &Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<u64> {
    let (bench, items, attempts, next) = (
        Arc::clone(bench),
        Arc::clone(items),
        Arc::clone(attempts),
        Arc::clone(next),
    );
    tokio::spawn(async move {
        let Some(first) = attempts.first() else {
            return 0;
        };
        let request_id = Uuid::now_v7();
        let item_id = items[first.item];
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..bench.resend_decided {
            let (bench, attempts, next) = (bench.clone(), attempts.clone(), next.clone());
            let user = first.user.clone();
            clients.spawn(async move {
                let mut resent = 0;
                while next.load(Ordering::Relaxed) < attempts.len() {
                    send_as(&bench, path, request_id, item_id, &user).await;
                    resent += 1;
                }
                resent
            });
        }
        clients
            .join_all()
            .await
            .into_iter()
            .sum::<u64>()
            .saturating_sub(1)
    })
}

/// Sends one attempt through `path`; returns what its client was told.
pub(super) async fn send(bench: &Bench, path: BenchPath, item_id: i64, user: &str) -> Answer {
    send_as(bench, path, Uuid::now_v7(), item_id, user).await
}

/// Sends one attempt with this request id.
async fn send_as(
    bench: &Bench,
    path: BenchPath,
    request_id: Uuid,
    item_id: i64,
    user: &str,
) -> Answer {
    let request = OrderRequest {
        request_id,
        item_id,
        user_id: user.to_string(),
        quantity: 1,
    };
    match bench.via {
        Via::Http => send_http(bench, path, &request).await,
        Via::Direct => send_direct(bench, path, request).await,
    }
}

async fn send_http(bench: &Bench, path: BenchPath, request: &OrderRequest) -> Answer {
    let stack = &bench.stack;
    let wait_ms = DECISION_WAIT.as_millis();
    let url = match path {
        BenchPath::QUEUE => format!("{}/orders?wait={wait_ms}", stack.base_url),
        BenchPath::QueueNoShed | BenchPath::QueueUnbatched => {
            let base = stack.own_api_url(path).expect("checked at start");
            format!("{base}/orders?wait={wait_ms}")
        }
        BenchPath::Path(name) => format!("{}/orders?path={name}", stack.base_url),
    };
    let body = json!({
        "item_id": request.item_id,
        "user_id": request.user_id,
        "request_id": request.request_id,
    });
    let Ok(response) = bench.http.post(url).json(&body).send().await else {
        return Answer::Error;
    };
    if !response.status().is_success() {
        return Answer::Error;
    }
    match response.json::<serde_json::Value>().await {
        Ok(v) => v["status"]
            .as_str()
            .map_or(Answer::Error, Answer::from_status),
        Err(_) => Answer::Error,
    }
}

async fn send_direct(bench: &Bench, path: BenchPath, request: OrderRequest) -> Answer {
    let stack = &bench.stack;
    if path == BenchPath::QUEUE
        && let Some(shedder) = &stack.shedder
    {
        match shedder.try_answer(&request).await {
            Ok(Some(outcome)) => return Answer::Decided(outcome.status),
            Ok(None) => {}
            Err(_) => return Answer::Error,
        }
    }
    if path.is_queue() {
        let publisher = stack.publisher(path).expect("direct mode has a publisher");
        let waiter = publisher.wait_for(request.request_id);
        if publisher.publish(&request, true).await.is_err() {
            return Answer::Error;
        }
        return match waiter.recv(DECISION_WAIT).await {
            Some(outcome) => Answer::Decided(outcome.status),
            None => Answer::Pending,
        };
    }
    let registry = stack.registry.as_ref().expect("direct mode has the paths");
    let lock_path = match path {
        BenchPath::Path(name) => registry.get(name),
        BenchPath::QueueNoShed | BenchPath::QueueUnbatched => None,
    };
    let Some(lock_path) = lock_path else {
        return Answer::Error;
    };
    // `redis-mq` answers `pending`: the run's end waits for its decisions in the store.
    match registry.answer(lock_path, &request).await {
        Ok(PathAnswer::Decided(outcome)) => Answer::Decided(outcome.status),
        Ok(PathAnswer::Pending) => Answer::Pending,
        Err(_) => Answer::Error,
    }
}
