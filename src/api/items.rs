//! `POST /items` (admin), `GET /items/{id}` and `POST /items/{id}/restock` (admin).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::AppState;
use super::auth::{Role, authorize};
use super::error::ApiError;
use super::extract::{Json, Path};
use crate::broker::item_events::ItemEvent;
use crate::domain::{ItemId, ItemKind, ItemSpec, STOCK_MAX, validate_item};
use crate::store::{self, Item, RestockError};

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
    authorize(state.admin_token.as_deref(), Role::Admin, &headers)?;
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restock {
    /// Units to add.
    pub units: i64,
}

/// `POST /items/{id}/restock {"units"}` → `200` with the item. Adds to the stock in the
/// database, bumping the item's generation (the UPDATE returns it), then announces it with that
/// generation: API instances stop answering `sold_out` at the door (and ignore any `sold_out`
/// decided before it), and the consumer re-reads the item's row (not its buyers: a restock
/// writes no order), so its next request sees the new stock. The
/// lock-based paths read stock from the database and see it at once; the Redis paths keep
/// their own copy (reload it with `seckill redis-load` once their sale is quiet).
pub async fn restock(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<ItemId>,
    Json(restock): Json<Restock>,
) -> Result<axum::Json<Item>, ApiError> {
    authorize(state.admin_token.as_deref(), Role::Admin, &headers)?;
    if !(1..=STOCK_MAX).contains(&restock.units) {
        return Err(ApiError::client(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("units must be between 1 and {STOCK_MAX}"),
        ));
    }
    let (item, generation) = match store::restock(&state.pool, id, restock.units).await {
        Ok(Some(restocked)) => (restocked.item, restocked.generation),
        Ok(None) => return Err(ApiError::NotFound("item")),
        Err(e @ (RestockError::TooMuch | RestockError::RedPacket)) => {
            return Err(ApiError::client(
                StatusCode::UNPROCESSABLE_ENTITY,
                e.to_string(),
            ));
        }
        Err(RestockError::Database(e)) => return Err(e.into()),
    };
    if let Some(shedder) = &state.shedder {
        shedder.restocked(id, generation);
    }
    // Stored: the restock has happened whatever follows. An announcement that cannot be sent
    // costs time, not units: `sold_out` marks age out, and a consumer about to answer
    // `sold_out` sees the generation moved and re-reads the item's stock.
    match state
        .publisher
        .announce(&ItemEvent::Restocked {
            item_id: id,
            generation,
        })
        .await
    {
        Ok(()) => tracing::info!(
            item_id = id,
            generation,
            units = restock.units,
            stock_remaining = item.stock_remaining,
            "item restocked"
        ),
        Err(e) => tracing::warn!(item_id = id, units = restock.units, error = %e,
            "item restocked, but the announcement failed: other API instances shed the item until their mark ages out; consumers re-read it at their next sold_out"),
    }
    Ok(axum::Json(item))
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
