//! `conditional` — let one atomic UPDATE be the stock check.
//!
//! One transaction: insert the order (`ON CONFLICT … DO NOTHING` on the unique (item, user)
//! constraint, which is the one-per-user check), then `UPDATE items SET stock_remaining =
//! stock_remaining − 1 WHERE id = $1 AND stock_remaining > 0`, then the outcome. No order
//! inserted: already purchased. No row updated: sold out (and the order is rolled back). Both
//! checks are made by the database on the current row, so there is no read-then-write window and
//! nothing to retry. Under contention the UPDATEs still queue on the item's row lock, but each
//! holds it only from the update to the commit — pessimistic holds it for the whole decision.
//!
//! The Redis paths write the purchases Redis granted with [`sell`] too: the database keeps the
//! last word.

use sqlx::PgPool;

use super::{PathError, PurchasePath, insert_order, record_outcome};
use crate::domain::{OrderRequest, Outcome, Status};
use crate::sale::PathName;

pub struct Conditional {
    pool: PgPool,
}

impl Conditional {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait::async_trait]
impl PurchasePath for Conditional {
    fn name(&self) -> PathName {
        PathName::Conditional
    }

    async fn purchase(&self, request: &OrderRequest) -> Result<Outcome, PathError> {
        sell(&self.pool, self.name(), request).await
    }
}

/// The conditional transaction, recording the decision under `path`.
pub async fn sell(
    pool: &PgPool,
    path: PathName,
    request: &OrderRequest,
) -> Result<Outcome, PathError> {
    let mut tx = pool.begin().await?;
    let Some(order_id) = insert_order(&mut *tx, request).await? else {
        let outcome =
            record_outcome(&mut *tx, path, request, Status::AlreadyPurchased, None).await?;
        tx.commit().await?;
        return Ok(outcome);
    };
    let sold = sqlx::query(
        "UPDATE items SET stock_remaining = stock_remaining - 1, sold = sold + 1
         WHERE id = $1 AND stock_remaining > 0",
    )
    .bind(request.item_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if sold == 0 {
        tx.rollback().await?;
        return record_outcome(pool, path, request, Status::SoldOut, None).await;
    }
    let outcome =
        record_outcome(&mut *tx, path, request, Status::Purchased, Some(order_id)).await?;
    tx.commit().await?;
    Ok(outcome)
}
