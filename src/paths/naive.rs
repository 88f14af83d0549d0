//! `naive` — UNSAFE, on purpose: the textbook race, kept to show what every other path prevents.
//! Never use it for a real sale.
//!
//! Read the stock and whether the user has an order; if the user may buy, insert the order and
//! write back `stock = read − 1` — with no lock, so nothing stops two requests from reading the
//! same stock. Under contention they do: both read 5, both sell, both write 4. One update is
//! lost, and once enough are lost more units are sold than exist. The database still holds it to
//! one order per user (a unique constraint) and keeps the stock from going negative, nothing
//! more; `seckill audit` reports the damage ("stock does not add up", "oversold").

use sqlx::PgPool;

use super::{PathError, Pause, PurchasePath, insert_order, record_outcome};
use crate::domain::{OrderRequest, Outcome, Status};
use crate::sale::PathName;

pub struct Naive {
    pool: PgPool,
    /// Awaited between the read and the write (tests only).
    pause: Pause,
}

impl Naive {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            pause: Pause::default(),
        }
    }

    /// Awaits `pause` in the race window, between the read and the write.
    pub fn with_pause(self, pause: Pause) -> Self {
        Self { pause, ..self }
    }
}

#[async_trait::async_trait]
impl PurchasePath for Naive {
    fn name(&self) -> PathName {
        PathName::Naive
    }

    async fn purchase(&self, request: &OrderRequest) -> Result<Outcome, PathError> {
        let (stock, is_buyer): (i64, bool) = sqlx::query_as(
            "SELECT stock_remaining,
                    EXISTS (SELECT 1 FROM orders WHERE item_id = $1 AND user_id = $2)
             FROM items WHERE id = $1",
        )
        .bind(request.item_id)
        .bind(&request.user_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(PathError::NoSuchItem)?;
        if is_buyer {
            return record_outcome(
                &self.pool,
                self.name(),
                request,
                Status::AlreadyPurchased,
                None,
            )
            .await;
        }
        if stock == 0 {
            return record_outcome(&self.pool, self.name(), request, Status::SoldOut, None).await;
        }

        // THE BUG: another request may read the same `stock` right here.
        self.pause.wait().await;

        let mut tx = self.pool.begin().await?;
        let Some(order_id) = insert_order(&mut *tx, request).await? else {
            // The same user bought in the window: the unique constraint caught it.
            tx.rollback().await?;
            return record_outcome(
                &self.pool,
                self.name(),
                request,
                Status::AlreadyPurchased,
                None,
            )
            .await;
        };
        // `read − 1`, not `stock_remaining − 1`: a sale made since the read is overwritten.
        // `sold` is added to, not written: it counts the real orders, the oversold ones too.
        sqlx::query("UPDATE items SET stock_remaining = $2, sold = sold + 1 WHERE id = $1")
            .bind(request.item_id)
            .bind(stock - 1)
            .execute(&mut *tx)
            .await?;
        let outcome = record_outcome(
            &mut *tx,
            self.name(),
            request,
            Status::Purchased,
            Some(order_id),
        )
        .await?;
        tx.commit().await?;
        Ok(outcome)
    }
}
