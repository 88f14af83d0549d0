//! `POST /orders` and `GET /orders/{request_id}`: the producer side of the queue path, and the
//! door to the synchronous lock-based paths (`?path=NAME`, see [`crate::paths`]).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::extract::{Json, Path, Query};
use crate::domain::{ItemId, ItemKind, OrderRequest, Outcome, validate_user_id};
use crate::sale::{ItemRules, PathName, UnknownPath};
use crate::store::{self, RequestState};

/// Longest `?wait=` honoured, in milliseconds.
pub const WAIT_MS_MAX: u64 = 30_000;

/// The body of `POST /orders`.
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
    /// Purchase path: `queue` (the default) or one of the synchronous paths ([`PathName`]).
    /// Parsed by the handler, so an unknown name gets the API's own 400 naming the valid ones.
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
/// the broker confirmed it), and with `wait` answers 200 with the decision if it comes in time.
/// An item announced sold out is answered 200 `sold_out` at once, without publishing.
/// With `?path=NAME` (not `queue`) the named path decides it now and it answers 200.
pub async fn create(
    State(state): State<AppState>,
    Query(params): Query<OrderParams>,
    Json(new): Json<OrderBody>,
) -> Result<Response, ApiError> {
    let path = match params.path.as_deref() {
        None => PathName::Queue,
        Some(name) => name
            .parse()
            .map_err(|e: UnknownPath| ApiError::client(StatusCode::BAD_REQUEST, e.to_string()))?,
    };
    // `None`: the queue path.
    let sync_path = state.paths.get(path);
    validate_user_id(&new.user_id)?;
    let Some(rules) = state.item_rules(new.item_id).await? else {
        return Err(ApiError::NotFound("item"));
    };
    let quantity = new.quantity.unwrap_or(1);
    rules.check_quantity(quantity)?;
    if let Some(path) = sync_path {
        // Rather than a wrong result, a clear no.
        let supported = if path.sells_quantities() {
            rules.kind == ItemKind::Goods
        } else {
            rules == ItemRules::ONE_PER_USER && quantity == 1
        };
        if !supported {
            let what = if path.sells_quantities() {
                "ordinary goods"
            } else {
                "ordinary goods with a per_user_limit of 1 and quantity 1"
            };
            return Err(ApiError::client(
                StatusCode::BAD_REQUEST,
                format!(
                    "path {} supports only {what}; quantities, limits and red packets are sold \
                     by the queue path (the default)",
                    path.name()
                ),
            ));
        }
    }
    let request = OrderRequest {
        request_id: new.request_id.unwrap_or_else(Uuid::new_v4),
        item_id: new.item_id,
        user_id: new.user_id,
        quantity,
    };
    if let Some(path) = sync_path {
        let outcome = state.paths.purchase(path, &request).await?;
        return Ok((StatusCode::OK, axum::Json(OrderStatus::from(outcome))).into_response());
    }
    if let Some(shedder) = &state.shedder
        && let Some(outcome) = shedder
            .try_answer(&request)
            .await
            .map_err(ApiError::Unavailable)?
    {
        return Ok((StatusCode::OK, axum::Json(OrderStatus::from(outcome))).into_response());
    }
    let wait = params
        .wait
        .filter(|ms| *ms > 0)
        .map(|ms| Duration::from_millis(ms.min(WAIT_MS_MAX)));
    // Bounded: past `reply_waiters_max` waiting clients this one is answered 202 without waiting.
    // Registered before publishing, so even an instant reply finds its waiter.
    let waiter = wait
        .and_then(|_| state.reply_waiter_permit())
        .map(|permit| (permit, state.publisher.wait_for(request.request_id)));

    state.publisher.publish(&request, waiter.is_some()).await?;
    // Recorded only once the broker confirmed it: a request answered 503 (not published) must
    // not sit in the log as accepted-but-never-decided. If recording fails after the publish,
    // the client gets 503 and the request may still be decided: retrying it with the same
    // request_id is safe (the consumer answers a repeat from the store).
    state
        .accepted
        .record(request.clone())
        .await
        .map_err(ApiError::Unavailable)?;

    if let (Some((_permit, waiter)), Some(wait)) = (waiter, wait) {
        let metrics = crate::metrics::get();
        metrics.reply_waiters.inc();
        let outcome = tokio::select! {
            outcome = waiter.recv(wait) => outcome,
            // Shutting down: answer now rather than hold the server open for the wait.
            _ = state.shutdown.cancelled() => None,
        };
        metrics.reply_waiters.dec();
        if let Some(outcome) = outcome {
            return Ok((StatusCode::OK, axum::Json(OrderStatus::from(outcome))).into_response());
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(OrderStatus::pending(request.request_id)),
    )
        .into_response())
}

/// `GET /orders/{request_id}`: the decision, `pending`, or 404 for an id never accepted.
pub async fn get(
    State(state): State<AppState>,
    Path(request_id): Path<Uuid>,
) -> Result<axum::Json<OrderStatus>, ApiError> {
    match store::request_state(&state.pool, request_id).await? {
        RequestState::Decided(outcome) => Ok(axum::Json(outcome.into())),
        RequestState::Pending => Ok(axum::Json(OrderStatus::pending(request_id))),
        RequestState::Unknown => Err(ApiError::NotFound("request")),
    }
}
