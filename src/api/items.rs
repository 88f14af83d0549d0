//! `POST /items` (admin) and `GET /items/{id}`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use super::extract::{Json, Path};
use crate::domain::{ItemId, validate_item};
use crate::store::{self, Item};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    pub name: String,
    pub stock: i64,
}

/// `POST /items {"name", "stock"}` → `201` with the item.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(new): Json<NewItem>,
) -> Result<(StatusCode, axum::Json<Item>), ApiError> {
    authorize(&state, &headers)?;
    validate_item(&new.name, new.stock)?;
    let item = store::create_item(&state.pool, new.name.trim(), new.stock).await?;
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
