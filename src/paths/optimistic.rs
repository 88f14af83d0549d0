//! `optimistic` — read without a lock, write only if nothing changed since (compare-and-set).
//!
//! Read the stock, its version and whether the user has an order; decide; then, in one
//! transaction, insert the order and `UPDATE items SET stock_remaining = $read − 1, version =
//! version + 1 WHERE id = $1 AND version = $read_version AND stock_remaining > 0`. No row matched:
//! another sale, or a restock (which bumps `version` too), landed since the read — roll back,
//! wait a jittered, growing delay and start over, at most `retries_max` times; then the request
//! is answered `failed_retry` (nothing sold).
//! Sold-out and repeat-buyer answers need no write and never retry. Under contention there is
//! one winner per version and every other writer's work is wasted, so a hot item burns retries;
//! with too few, buyers are turned away while stock remains (the complaint "only 147 of 1000
//! succeeded"), and fewer units than the stock may be sold.

use std::time::Duration;

use sqlx::PgPool;

use super::{PathError, PurchasePath, insert_order, record_outcome};
use crate::backoff;
use crate::domain::{OrderRequest, Outcome, Status};
use crate::sale::PathName;

/// First and largest delay before a retry.
const RETRY_DELAY_BASE: Duration = Duration::from_millis(2);
const RETRY_DELAY_CAP: Duration = Duration::from_millis(100);

pub struct Optimistic {
    pool: PgPool,
    retries_max: u32,
}

impl Optimistic {
    pub fn new(pool: PgPool, retries_max: u32) -> Self {
        Self { pool, retries_max }
    }
}

#[async_trait::async_trait]
impl PurchasePath for Optimistic {
    fn name(&self) -> PathName {
        PathName::Optimistic
    }

    async fn purchase(&self, request: &OrderRequest) -> Result<Outcome, PathError> {
        for attempt in 0..=self.retries_max {
            if attempt > 0 {
                let delay = backoff::delay(attempt - 1, RETRY_DELAY_BASE, RETRY_DELAY_CAP);
                tokio::time::sleep(delay).await;
            }
            let (stock, version, is_buyer): (i64, i64, bool) = sqlx::query_as(
                "SELECT stock_remaining, version,
                        EXISTS (SELECT 1 FROM orders WHERE item_id = $1 AND user_id = $2)
                 FROM items WHERE id = $1",
            )
            .bind(request.item_id)
            .bind(&request.user_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(PathError::NoSuchItem)?;
            if is_buyer {
                let status = Status::AlreadyPurchased;
                return record_outcome(&self.pool, self.name(), request, status, None).await;
            }
            if stock == 0 {
                return record_outcome(&self.pool, self.name(), request, Status::SoldOut, None)
                    .await;
            }

            let mut tx = self.pool.begin().await?;
            let Some(order_id) = insert_order(&mut *tx, request).await? else {
                // The same user bought since the read (the unique constraint waited for it).
                tx.rollback().await?;
                let status = Status::AlreadyPurchased;
                return record_outcome(&self.pool, self.name(), request, status, None).await;
            };
            let swapped = sqlx::query(
                "UPDATE items SET stock_remaining = $3, version = version + 1, sold = sold + 1
                 WHERE id = $1 AND version = $2 AND stock_remaining > 0",
            )
            .bind(request.item_id)
            .bind(version)
            .bind(stock - 1)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if swapped == 0 {
                continue; // lost the race: dropping `tx` rolls the order back
            }
            let outcome = record_outcome(
                &mut *tx,
                self.name(),
                request,
                Status::Purchased,
                Some(order_id),
            )
            .await?;
            tx.commit().await?;
            return Ok(outcome);
        }
        record_outcome(&self.pool, self.name(), request, Status::FailedRetry, None).await
    }
}
