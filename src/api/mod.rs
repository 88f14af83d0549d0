//! `seckill serve`: the producer API (axum). It never decides: it validates, records the
//! request as accepted, hands it to the broker with a publisher confirm, and (with `?wait=`)
//! relays the consumer's decision. Routes:
//!
//! | route | what |
//! |---|---|
//! | `POST /items` | create an item (admin token when configured) |
//! | `GET /items/{id}` | stock initial / remaining / sold |
//! | `POST /items/{id}/restock` | add units (admin token when configured); clears `sold_out` |
//! | `POST /orders[?wait=ms]` | accept a purchase request (202), or its decision (200) (producer token when configured) |
//! | `POST /orders?path=NAME` | decide it synchronously through a lock-based path (200), or accept it on `redis-mq` (202): see [`crate::paths`] |
//! | `GET /orders/{request_id}` | `pending` or the decision; 404 if never accepted (producer token when configured) |
//! | `GET /healthz` | 200 when database and broker are reachable, else 503 |
//! | `GET /metrics` | the process's metrics, Prometheus text format (see [`crate::metrics`]) |
//!
//! Once the consumer announces an item sold out, `POST /orders` answers `sold_out` for it at
//! once without publishing ([`crate::shedding`], when the API has a shedder).
//!
//! Bounds ([`ApiLimits`]): past `http_in_flight_max` requests in flight the API sheds load (503
//! at once); past `reply_waiters_max` waiting clients, `?wait=` answers 202 without waiting.

pub mod accepted;
pub mod auth;
pub mod error;
pub mod extract;
pub mod items;
pub mod orders;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::broker::publisher::Publisher;
use crate::config::ApiLimits;
use crate::domain::ItemId;
use crate::paths::Registry;
use crate::sale::ItemRules;
use crate::shedding::Shedder;
use accepted::AcceptedLog;

/// Largest request body accepted (a real one is under 200 bytes).
pub const BODY_LEN_MAX: usize = 16 * 1024;
/// Most items whose rules are remembered; the cache is cleared when full (items are never
/// deleted and their rules never change, so a remembered one never goes stale).
const KNOWN_ITEMS_MAX: usize = 100_000;

/// What every handler shares. Cloned for each extractor of each request, so it is one `Arc`:
/// a clone is one atomic increment (cloning the fields would allocate the token string and lock
/// the cancellation token's mutex, several times per request).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub pool: PgPool,
    pub publisher: Arc<Publisher>,
    /// Batched writer of the accepted-request log.
    pub accepted: AcceptedLog,
    /// Constant-time-compared bearer token of admin endpoints, if any.
    pub admin_token: Option<String>,
    /// Bearer token of the order routes, if any (see [`auth`]).
    pub producer_token: Option<String>,
    /// The synchronous purchase paths (`POST /orders?path=NAME`).
    pub paths: Arc<Registry>,
    /// Answers `sold_out` at the door for items announced sold out; `None`: every request of
    /// the queue path goes to the decider.
    pub shedder: Option<Arc<Shedder>>,
    /// Items known to exist, with their rules, so `POST /orders` costs no database read on the
    /// hot path.
    known_items: Arc<RwLock<HashMap<ItemId, ItemRules>>>,
    /// One permit per request being handled: when none is left, requests are shed (503) instead
    /// of queueing without bound.
    in_flight: Arc<Semaphore>,
    /// The bound of `in_flight`, named in the 503 that says it is reached.
    in_flight_max: u32,
    /// One permit per client waiting for its decision (`?wait=`): past the bound a request is
    /// answered 202 at once, so waiting clients cannot pile up memory.
    reply_waiters: Arc<Semaphore>,
    /// Cancelled when the server starts shutting down: waiting clients are answered at once.
    shutdown: CancellationToken,
}

/// What an API is made of: built once, by the composition root ([`crate::app`]).
pub struct Parts {
    pub pool: PgPool,
    pub publisher: Arc<Publisher>,
    pub paths: Registry,
    pub admin_token: Option<String>,
    pub producer_token: Option<String>,
    pub limits: ApiLimits,
    /// `None`: every request of the queue path goes to the decider.
    pub shedder: Option<Arc<Shedder>>,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
}

impl AppState {
    /// An API over these parts. Building it cannot fail: everything that can (connecting,
    /// parsing settings) happened before, in the caller. Call it inside the tokio runtime (it
    /// starts the request-log writer).
    pub fn new(parts: Parts) -> Self {
        let Parts {
            pool,
            publisher,
            paths,
            admin_token,
            producer_token,
            limits,
            shedder,
            shutdown,
        } = parts;
        Self(Arc::new(Shared {
            accepted: AcceptedLog::start(pool.clone()),
            paths: Arc::new(paths),
            pool,
            publisher,
            admin_token,
            producer_token,
            shedder,
            known_items: Arc::default(),
            in_flight: Arc::new(Semaphore::new(limits.http_in_flight_max as usize)),
            in_flight_max: limits.http_in_flight_max,
            reply_waiters: Arc::new(Semaphore::new(limits.reply_waiters_max as usize)),
            shutdown,
        }))
    }

    /// A waiting slot for a `?wait=` client, if one is free.
    fn reply_waiter_permit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = Arc::clone(&self.reply_waiters).try_acquire_owned().ok();
        if permit.is_none() {
            crate::metrics::get().reply_waiters_refused.inc();
        }
        permit
    }

    /// The item's rules (kind, per-user limit), `None` when it does not exist. Cached: an item's
    /// rules never change once it is created.
    async fn item_rules(&self, id: ItemId) -> sqlx::Result<Option<ItemRules>> {
        if let Some(rules) = self.known_items.read().expect("known_items lock").get(&id) {
            return Ok(Some(*rules));
        }
        let rules = crate::store::item_rules(&self.pool, id).await?;
        if let Some(rules) = rules {
            let mut known = self.known_items.write().expect("known_items lock");
            if known.len() >= KNOWN_ITEMS_MAX {
                known.clear();
            }
            known.insert(id, rules);
        }
        Ok(rules)
    }
}

pub fn router(state: AppState) -> Router {
    // The business routes are bounded by the in-flight limit; health and metrics stay outside
    // it, so an operator can still look at a server that is shedding load.
    let bounded = Router::new()
        .route("/items", post(items::create))
        .route("/items/{id}", get(items::get))
        .route("/items/{id}/restock", post(items::restock))
        .route("/orders", post(orders::create))
        .route("/orders/{request_id}", get(orders::get))
        .route_layer(middleware::from_fn_with_state(state.clone(), shed_load));
    Router::new()
        .merge(bounded)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(|| async { error::ApiError::NotFound("route") })
        .layer(middleware::from_fn(count_requests))
        .layer(DefaultBodyLimit::max(BODY_LEN_MAX))
        .with_state(state)
}

/// Load shedding: a request that finds every in-flight permit taken is answered 503 at once.
/// (tower's `ConcurrencyLimitLayer` would make it wait instead: latency and memory would grow
/// with the flood.) Nothing has been read or written for it, so retrying is safe.
async fn shed_load(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Ok(_permit) = Arc::clone(&state.in_flight).try_acquire_owned() else {
        crate::metrics::get().http_shed.inc();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            axum::Json(json!({
                "error": format!(
                    "overloaded: more than {} requests in flight; retry later (with the same request_id)",
                    state.in_flight_max
                )
            })),
        )
            .into_response();
    };
    next.run(request).await
}

/// Counts every answer by method, route template (never the raw path: a client must not be
/// able to grow the metrics) and status, and times it.
async fn count_requests(request: Request, next: Next) -> Response {
    let metrics = crate::metrics::get();
    // `MatchedPath` is a shared string: cloning it allocates nothing.
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = request.method().clone();
    let started = Instant::now();
    metrics.http_in_flight.inc();
    let response = next.run(request).await;
    metrics.http_in_flight.dec();
    metrics
        .http_requests
        .with_label_values(&[method.as_str(), route, response.status().as_str()])
        .inc();
    metrics
        .http_latency
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`: the process's metrics in the Prometheus text format.
async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::get().render(),
    )
}

/// A router serving `GET /metrics` alone, for `seckill consume --metrics-bind`.
pub fn metrics_router() -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(|| async { error::ApiError::NotFound("route") })
}

/// `GET /healthz`: 200 only when both the database and the broker answer.
async fn healthz(State(state): State<AppState>) -> (StatusCode, axum::Json<serde_json::Value>) {
    let database = sqlx::query("SELECT 1").execute(&state.pool).await.is_ok();
    let broker = state.publisher.is_connected().await;
    let status = if database && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({ "database": database, "broker": broker })),
    )
}

/// Serves the API on `listener` until the state's shutdown token is cancelled: then it stops
/// accepting connections, clients waiting for a decision are answered at once (`202 pending`),
/// and every request in flight finishes before this returns.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            shutdown.cancelled().await;
            tracing::info!("API stopping: no new connections; finishing requests in flight");
        })
        .await
}
