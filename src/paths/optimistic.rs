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
//!
//! A red packet is seed 000's experiment exactly: read the amount left and the shares left with
//! the version, draw a share by the sale's one rule ([`crate::sale::draw_share`], the queue
//! path's too), then insert the share and write `packet_remaining = $read_amount − share`
//! under the same compare-and-set. A lost race throws the drawn share away with the rest of the
//! transaction, and the retry draws afresh from what it reads: the shares still sum exactly to
//! the total. A grab that runs out of retries is `failed_retry` and takes no share.

use std::time::Duration;

use sqlx::PgPool;

use super::{PathError, PurchasePath, insert_holding, record_outcome};
use crate::backoff;
use crate::domain::{OrderRequest, Outcome, Status};
use crate::sale::{PathName, draw_share};

/// First and largest delay before a retry.
const RETRY_DELAY_BASE: Duration = Duration::from_millis(2);
const RETRY_DELAY_CAP: Duration = Duration::from_millis(100);

/// What one try reads: stock, version, whether the user bought, a red packet's amount left.
type Read = (i64, i64, bool, Option<i64>);

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

    fn sells_red_packets(&self) -> bool {
        true
    }

    async fn purchase(&self, request: &OrderRequest) -> Result<Outcome, PathError> {
        for attempt in 0..=self.retries_max {
            if attempt > 0 {
                let delay = backoff::delay(attempt - 1, RETRY_DELAY_BASE, RETRY_DELAY_CAP);
                tokio::time::sleep(delay).await;
            }
            let (stock, version, is_buyer, packet_remaining): Read = sqlx::query_as(
                "SELECT stock_remaining, version,
                        EXISTS (SELECT 1 FROM orders WHERE item_id = $1 AND user_id = $2),
                        packet_remaining
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

            // A red packet's share, drawn from what was read (one share per user: limit 1).
            let amount = packet_remaining.map(|rest| draw_share(rest, stock, &mut rand::rng()));
            let packet_left = packet_remaining
                .zip(amount)
                .map(|(rest, share)| rest - share);
            let mut tx = self.pool.begin().await?;
            let Some(order_id) = insert_holding(&mut *tx, request, 1, amount).await? else {
                // The same user bought since the read (the unique constraint waited for it).
                tx.rollback().await?;
                let status = Status::AlreadyPurchased;
                return record_outcome(&self.pool, self.name(), request, status, None).await;
            };
            let swapped = sqlx::query(
                "UPDATE items SET stock_remaining = $3, packet_remaining = $4,
                                  version = version + 1, sold = sold + 1
                 WHERE id = $1 AND version = $2 AND stock_remaining > 0",
            )
            .bind(request.item_id)
            .bind(version)
            .bind(stock - 1)
            .bind(packet_left)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if swapped == 0 {
                continue; // lost the race: dropping `tx` rolls the order back
            }
            let mut outcome = record_outcome(
                &mut *tx,
                self.name(),
                request,
                Status::Purchased,
                Some(order_id),
            )
            .await?;
            tx.commit().await?;
            outcome.amount = amount;
            return Ok(outcome);
        }
        record_outcome(&self.pool, self.name(), request, Status::FailedRetry, None).await
    }
}
