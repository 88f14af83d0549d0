//! `seckill serve`: the producer API (axum). It never decides: it validates, records the
//! request as accepted, hands it to the broker with a publisher confirm, and (with `?wait=`)
//! relays the consumer's decision. Routes:
//!
//! | route | what |
//! |---|---|
//! | `POST /items` | create an item (admin token when configured) |
//! | `GET /items/{id}` | stock initial / remaining / sold |
//! | `POST /orders[?wait=ms]` | accept a purchase request (202), or its decision (200) |
//! | `POST /orders?path=NAME` | decide it synchronously through a lock-based path (200): see [`crate::paths`] |
//! | `GET /orders/{request_id}` | `pending` or the decision; 404 if never accepted |
//! | `GET /healthz` | 200 when database and broker are reachable, else 503 |

pub mod accepted;
pub mod error;
pub mod extract;
pub mod items;
pub mod orders;

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::json;
use sqlx::PgPool;

use crate::broker::publisher::Publisher;
use crate::config::PathArgs;
use crate::domain::ItemId;
use crate::paths::Registry;
use accepted::AcceptedLog;

/// Largest request body accepted (a real one is under 200 bytes).
pub const BODY_LEN_MAX: usize = 16 * 1024;
/// Most item ids remembered as existing; the cache is cleared when full (items are never
/// deleted, so a remembered id never goes stale).
const KNOWN_ITEMS_MAX: usize = 100_000;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub publisher: Arc<Publisher>,
    /// Batched writer of the accepted-request log.
    pub accepted: AcceptedLog,
    /// Constant-time-compared bearer token of admin endpoints, if any.
    pub admin_token: Option<String>,
    /// The synchronous purchase paths (`POST /orders?path=NAME`).
    pub paths: Arc<Registry>,
    /// Items known to exist, so `POST /orders` costs no database read on the hot path.
    known_items: Arc<RwLock<HashSet<ItemId>>>,
}

impl AppState {
    /// With the purchase paths configured from the environment (`SECKILL_REDIS_PREFIX`, ...);
    /// see [`AppState::with_paths`] to configure them explicitly.
    pub fn new(pool: PgPool, publisher: Arc<Publisher>, admin_token: Option<String>) -> Self {
        let paths = PathArgs::from_env()
            .and_then(|args| Registry::new(pool.clone(), &args))
            .unwrap_or_else(|e| panic!("purchase paths from the environment: {e:#}"));
        Self {
            accepted: AcceptedLog::start(pool.clone()),
            paths: Arc::new(paths),
            pool,
            publisher,
            admin_token,
            known_items: Arc::default(),
        }
    }

    /// Replaces the purchase paths (e.g. built from the command line's [`PathArgs`]).
    pub fn with_paths(self, paths: Registry) -> Self {
        Self {
            paths: Arc::new(paths),
            ..self
        }
    }

    async fn item_exists(&self, id: ItemId) -> sqlx::Result<bool> {
        if self
            .known_items
            .read()
            .expect("known_items lock")
            .contains(&id)
        {
            return Ok(true);
        }
        let exists =
            sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM items WHERE id = $1)")
                .bind(id)
                .fetch_one(&self.pool)
                .await?;
        if exists {
            let mut known = self.known_items.write().expect("known_items lock");
            if known.len() >= KNOWN_ITEMS_MAX {
                known.clear();
            }
            known.insert(id);
        }
        Ok(exists)
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/items", post(items::create))
        .route("/items/{id}", get(items::get))
        .route("/orders", post(orders::create))
        .route("/orders/{request_id}", get(orders::get))
        .route("/healthz", get(healthz))
        .fallback(|| async { error::ApiError::NotFound("route") })
        .layer(DefaultBodyLimit::max(BODY_LEN_MAX))
        .with_state(state)
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

/// Serves the API on `listener` until `shutdown` is cancelled; in-flight requests finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
