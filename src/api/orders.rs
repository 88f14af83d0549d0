//! `POST /orders` and `GET /orders/{request_id}`: the producer side of the queue path, and the
//! door to the synchronous lock-based paths (`?path=NAME`, see [`crate::paths`]).

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use uuid::Uuid;

use super::AppState;
use super::accepted::Recorded;
use super::auth::{Role, authorize};
use super::error::ApiError;
use super::extract::{Json, Path, Query};
use crate::broker::publisher::{PublishError, Waiter};
use crate::domain::{ItemId, ItemKind, OrderRequest, Outcome, validate_user_id};
use crate::paths::{Answer, PurchasePath};
use crate::sale::{ItemRules, PathName, UnknownPath};
use crate::store::{self, RequestState};

/// Longest `?wait=` honoured, in milliseconds.
pub const WAIT_MS_MAX: u64 = 30_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderBody {
    pub item_id: ItemId,
    pub user_id: String,
    /// Idempotency key; generated when absent.
    pub request_id: Option<Uuid>,
    /// Units to buy: 1 when absent; at most the item's `per_user_limit`; 1 for a red packet.
    pub quantity: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct OrderParams {
    /// Milliseconds to wait for the decision before answering `202`.
    pub wait: Option<u64>,
    /// Purchase path: `queue` (the default) or one of the synchronous [`paths::NAMES`].
    pub path: Option<String>,
}

/// The body of every order answer: `{"request_id", "status", "order_id"?, "amount"?}`.
#[derive(Debug, Serialize)]
pub struct OrderStatus {
    pub request_id: Uuid,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<Uuid>,
    /// A red packet grab's share, in minor units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
}

impl OrderStatus {
    fn pending(request_id: Uuid) -> Self {
        Self {
            request_id,
            status: "pending",
            order_id: None,
            amount: None,
        }
    }
}

impl From<Outcome> for OrderStatus {
    fn from(o: Outcome) -> Self {
        Self {
            request_id: o.request_id,
            status: o.status.as_str(),
            order_id: o.order_id,
            amount: o.amount,
        }
    }
}

/// `POST /orders[?wait=ms]`: checks the item, records and publishes the request (202 only once
/// the broker confirmed it; a retry of a decided request id gets its stored answer), and with `wait` answers 200 with the decision if it comes in time.
/// An item announced sold out is answered 200 `sold_out` at once, without publishing.
/// With `?path=NAME` (not `queue`) the named path decides it now and it answers 200 — but
/// `redis-mq`, which accepts it and answers 202 `pending`, like the queue path.
///
/// Its span carries the request id, which the consumer's log of the decision carries too.
#[tracing::instrument(name = "order", skip_all, fields(item_id = new.item_id, request_id, path))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<OrderParams>,
    Json(new): Json<OrderBody>,
) -> Result<Response, ApiError> {
    authorize(state.producer_token.as_deref(), Role::Producer, &headers)?;
    let lock_path = chosen_path(&state, params.path.as_deref())?;
    let request = checked_request(&state, new, lock_path).await?;
    tracing::Span::current().record("request_id", tracing::field::display(request.request_id));
    if let Some(path) = lock_path {
        let request_id = request.request_id;
        return match answer_to_the_end(&state, path.name(), request).await? {
            Answer::Decided(outcome) => {
                tracing::debug!(status = %outcome.status.as_str(), "decided by a rival path");
                Ok(decided(outcome))
            }
            Answer::Pending => {
                tracing::debug!("accepted by a rival path, to be decided later");
                Ok(pending(request_id))
            }
        };
    }
    if let Some(outcome) = shed_at_the_door(&state, &request).await? {
        return Ok(decided(outcome));
    }
    let wait = params
        .wait
        .filter(|ms| *ms > 0)
        .map(|ms| Duration::from_millis(ms.min(WAIT_MS_MAX)));
    publish_and_wait(&state, request, wait).await
}

/// A rival path's answer, worked out in a task of its own: a client that hangs up (or times
/// out) drops the handler, and with it a path cut off between two of its steps — `redis-mq`
/// between taking a unit in Redis and queueing the request, with the unit taken and the
/// request pending. In a task the steps run to their end, and a retry of the request id finds
/// their result.
async fn answer_to_the_end(
    state: &AppState,
    name: PathName,
    request: OrderRequest,
) -> Result<Answer, ApiError> {
    let paths = std::sync::Arc::clone(&state.paths);
    let answering = async move {
        let path = paths
            .get(name)
            .expect("the path was chosen from this registry");
        paths.answer(path, &request).await
    };
    // In the request's span, so that what the path logs still carries its request id.
    let answered = tokio::spawn(answering.instrument(tracing::Span::current()))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("a {name} request's task failed: {e}")))?;
    Ok(answered?)
}

/// The lock path `?path=` names, or `None` for the queue path (the default); recorded in the
/// request's span. Every name a client may send is resolved here.
fn chosen_path<'s>(
    state: &'s AppState,
    name: Option<&str>,
) -> Result<Option<&'s dyn PurchasePath>, ApiError> {
    let name = match name {
        None => PathName::Queue,
        Some(name) => name
            .parse()
            .map_err(|e: UnknownPath| ApiError::client(StatusCode::BAD_REQUEST, e.to_string()))?,
    };
    tracing::Span::current().record("path", tracing::field::display(name));
    // `None`: the queue path.
    let path = state.paths.get(name);
    Ok(path)
}

/// The request, once its user id, item and quantity are valid, and the lock path (if any)
/// can sell it.
async fn checked_request(
    state: &AppState,
    new: OrderBody,
    lock_path: Option<&dyn PurchasePath>,
) -> Result<OrderRequest, ApiError> {
    validate_user_id(&new.user_id)?;
    let Some(rules) = state.item_rules(new.item_id).await? else {
        return Err(ApiError::NotFound("item"));
    };
    let quantity = new.quantity.unwrap_or(1);
    rules.check_quantity(quantity)?;
    if let Some(path) = lock_path {
        check_path_sells(path, rules, quantity)?;
    }
    Ok(OrderRequest {
        request_id: new.request_id.unwrap_or_else(Uuid::new_v4),
        item_id: new.item_id,
        user_id: new.user_id,
        quantity,
    })
}

/// Rather than a wrong result, a clear no: most lock paths sell one unit of ordinary goods only,
/// and only some sell red packets (each path says what it sells).
fn check_path_sells(
    path: &dyn PurchasePath,
    rules: ItemRules,
    quantity: i64,
) -> Result<(), ApiError> {
    let supported = match rules.kind {
        ItemKind::RedPacket => path.sells_red_packets(),
        ItemKind::Goods if path.sells_quantities() => true,
        ItemKind::Goods => rules == ItemRules::ONE_PER_USER && quantity == 1,
    };
    if supported {
        return Ok(());
    }
    let goods = if path.sells_quantities() {
        "ordinary goods"
    } else {
        "ordinary goods with a per_user_limit of 1 and quantity 1"
    };
    let packets = if path.sells_red_packets() {
        " and red packets"
    } else {
        ""
    };
    Err(ApiError::client(
        StatusCode::BAD_REQUEST,
        format!(
            "path {} supports only {goods}{packets}; quantities, limits and red packets are sold \
             by the queue path (the default)",
            path.name()
        ),
    ))
}

/// The `sold_out` answer for an item announced sold out, when shedding is on.
async fn shed_at_the_door(
    state: &AppState,
    request: &OrderRequest,
) -> Result<Option<Outcome>, ApiError> {
    let Some(shedder) = &state.shedder else {
        return Ok(None);
    };
    let outcome = shedder
        .try_answer(request)
        .await
        .map_err(ApiError::Unavailable)?;
    if outcome.is_some() {
        tracing::debug!("answered sold_out at the door");
    }
    Ok(outcome)
}

/// Records the request as accepted, then publishes it, then, for up to `wait`, waits for its
/// decision: 200 with it if it comes in time, else 202 `pending`. A retry of a request already
/// decided is answered from the store, without publishing.
async fn publish_and_wait(
    state: &AppState,
    request: OrderRequest,
    wait: Option<Duration>,
) -> Result<Response, ApiError> {
    let request_id = request.request_id;
    // Bounded: past `reply_waiters_max` waiting clients this one is answered 202 without waiting.
    // Registered before publishing, so even an instant reply finds its waiter.
    let waiter = wait
        .and_then(|_| state.reply_waiter_permit())
        .map(|permit| (permit, state.publisher.wait_for(request_id)));
    // Its own task: a client that hangs up mid-way cancels this handler, but never leaves a
    // request recorded and not published (it would stay `pending` for good).
    let handed_over = tokio::spawn(record_and_publish(state.clone(), request, waiter.is_some()))
        .await
        .map_err(|e| ApiError::Internal(e.into()))??;
    if let HandedOver::Answered(outcome) = handed_over {
        tracing::debug!(status = %outcome.status.as_str(), "a retry, answered from the store");
        return Ok(decided(outcome));
    }
    tracing::debug!("request published");

    if let (Some((_permit, waiter)), Some(wait)) = (waiter, wait)
        && let Some(outcome) = wait_for_decision(state, waiter, wait).await
    {
        tracing::debug!(status = %outcome.status.as_str(), "decision relayed");
        return Ok(decided(outcome));
    }
    Ok(pending(request_id))
}

/// What became of a request handed to the broker.
enum HandedOver {
    /// Published, and confirmed by the broker.
    Published,
    /// A retry of a request decided before: its stored answer, nothing published.
    Answered(Outcome),
}

/// Records the request as accepted, then publishes it. Recorded first, so any request the
/// broker may hold is findable (`pending`), even when the broker's confirm is lost on the way
/// back.
async fn record_and_publish(
    state: AppState,
    request: OrderRequest,
    reply: bool,
) -> Result<HandedOver, ApiError> {
    let request_id = request.request_id;
    let recorded = state
        .accepted
        .record(request.clone())
        .await
        .map_err(ApiError::Unavailable)?;
    if recorded == Recorded::Before
        && let Some(outcome) = store::stored_outcomes(&state.pool, &[request_id])
            .await?
            .remove(&request_id)
    {
        return Ok(HandedOver::Answered(outcome));
    }
    match state.publisher.publish(&request, reply).await {
        Ok(()) => Ok(HandedOver::Published),
        Err(e) => Err(not_published(&state, request_id, recorded, e).await),
    }
}

/// The 503 for a request the broker did not confirm. One it certainly does not hold is taken back
/// out of the log (unless an earlier try of the same id put it there): it writes nothing and will
/// not be decided. One whose confirm was lost, or whose id an earlier try recorded (that try may
/// be in the broker), stays `pending`: it may still be decided, and the client is told so (a
/// retry with the same request_id is answered once, whatever happened).
async fn not_published(
    state: &AppState,
    request_id: Uuid,
    recorded: Recorded,
    error: PublishError,
) -> ApiError {
    if let PublishError::Unconfirmed(detail) = error {
        tracing::warn!(%detail, "the broker did not confirm a request; it stays pending");
        return ApiError::MaybeDecided(detail);
    }
    if recorded == Recorded::Before {
        return ApiError::MaybeDecided(error.to_string());
    }
    if let Err(e) = store::withdraw_accepted(&state.pool, request_id).await {
        // Left pending: a retry with the same id publishes it again and it is decided once.
        tracing::warn!(error = %e, "cannot take back a request the broker refused; it stays pending");
        return ApiError::MaybeDecided(error.to_string());
    }
    error.into()
}

/// The consumer's reply, if it comes within `wait` and before the server starts shutting down.
async fn wait_for_decision(state: &AppState, waiter: Waiter, wait: Duration) -> Option<Outcome> {
    let metrics = crate::metrics::get();
    metrics.reply_waiters.inc();
    let outcome = tokio::select! {
        outcome = waiter.recv(wait) => outcome,
        // Shutting down: answer now rather than hold the server open for the wait.
        _ = state.shutdown.cancelled() => None,
    };
    metrics.reply_waiters.dec();
    outcome
}

/// 202: accepted, to be decided later; the client asks `GET /orders/{request_id}`.
fn pending(request_id: Uuid) -> Response {
    (
        StatusCode::ACCEPTED,
        axum::Json(OrderStatus::pending(request_id)),
    )
        .into_response()
}

/// 200 with the decision.
fn decided(outcome: Outcome) -> Response {
    (StatusCode::OK, axum::Json(OrderStatus::from(outcome))).into_response()
}

/// `GET /orders/{request_id}`: the decision, `pending`, or 404 for an id never accepted.
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(request_id): Path<Uuid>,
) -> Result<axum::Json<OrderStatus>, ApiError> {
    authorize(state.producer_token.as_deref(), Role::Producer, &headers)?;
    match store::request_state(&state.pool, request_id).await? {
        RequestState::Decided(outcome) => Ok(axum::Json(outcome.into())),
        RequestState::Pending => Ok(axum::Json(OrderStatus::pending(request_id))),
        RequestState::Unknown => Err(ApiError::NotFound("request")),
    }
}
