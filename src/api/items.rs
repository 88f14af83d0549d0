//! `POST /items` (admin) and `GET /items/{id}`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use super::extract::{Json, Path};
use crate::domain::{ItemId, ItemKind, ItemSpec, validate_item};
use crate::store::{self, Item};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    pub name: String,
    /// `goods` (the default) or `red_packet`.
    pub kind: Option<ItemKind>,
    /// Goods: units on sale (required).
    pub stock: Option<i64>,
    /// Goods: units one user may hold in total; 1 when absent.
    pub per_user_limit: Option<i64>,
    /// Red packet: the amount to split, in integer minor units (e.g. cents).
    pub total_amount: Option<i64>,
    /// Red packet: how many users get a share (at most `total_amount`: no share is zero).
    pub shares: Option<i64>,
}

/// `POST /items {"name", "stock", "per_user_limit"?}` or
/// `{"name", "kind": "red_packet", "total_amount", "shares"}` → `201` with the item.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(new): Json<NewItem>,
) -> Result<(StatusCode, axum::Json<Item>), ApiError> {
    authorize(&state, &headers)?;
    let spec = ItemSpec::new(
        new.kind.unwrap_or(ItemKind::Goods),
        new.stock,
        new.per_user_limit,
        new.total_amount,
        new.shares,
    )?;
    validate_item(&new.name, spec.stock())?;
    let item = store::create_item_spec(&state.pool, new.name.trim(), &spec).await?;
    // The Redis paths decide from Redis: hand them the item now. They also load an item they
    // find missing, so a Redis that is down only costs a warning here.
    if let Err(e) = state
        .paths
        .redis
        .load_item(&state.pool, item.id, true)
        .await
    {
        tracing::warn!(item_id = item.id, error = %e, "item not loaded into Redis");
    }
    tracing::info!(
        item_id = item.id,
        stock = item.stock_initial,
        kind = ?item.kind,
        per_user_limit = item.per_user_limit,
        "item created"
    );
    Ok((StatusCode::CREATED, axum::Json(item)))
}

/// `GET /items/{id}` → the item with its remaining stock and units sold.
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<ItemId>,
) -> Result<axum::Json<Item>, ApiError> {
    store::get_item(&state.pool, id)
        .await?
        .map(axum::Json)
        .ok_or(ApiError::NotFound("item"))
}

/// Checks `Authorization: Bearer <token>` in constant time, when a token is configured.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.admin_token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}
