//! `advisory` — a PostgreSQL advisory lock per item around the decision.
//!
//! One transaction: `pg_advisory_xact_lock(item_id)` waits for the item's lock; then the stock
//! and the user's orders are read, the decision made, and the order, the decrement and the
//! outcome written; COMMIT (or the session dying) releases the lock. It is the sound form of the
//! "lock row in a lock table" pattern: nothing to clean up, no lock left behind by a crash.
//! Under contention it behaves like `pessimistic` — one decision at a time, each a whole
//! transaction — but the waiters queue in the lock manager, not on the item's row, which stays
//! free for everything else that touches it (even the foreign-key checks of inserts referencing
//! it, which a `FOR UPDATE` blocks). The lock key is the bare item id: this database must not use
//! advisory locks for anything else.

use sqlx::PgPool;

use super::{PathError, PurchasePath, decide_locked, read_locked};
use crate::domain::{OrderRequest, Outcome};
use crate::sale::PathName;

pub struct Advisory {
    pool: PgPool,
}

impl Advisory {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait::async_trait]
impl PurchasePath for Advisory {
    fn name(&self) -> PathName {
        PathName::Advisory
    }

    fn sells_quantities(&self) -> bool {
        true
    }

    async fn purchase(&self, request: &OrderRequest) -> Result<Outcome, PathError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(request.item_id)
            .execute(&mut *tx)
            .await?;
        // Read after the lock was granted: this snapshot includes every earlier holder's sale.
        let item = read_locked(&mut tx, request).await?;
        let outcome = decide_locked(&mut tx, self.name(), request, item).await?;
        tx.commit().await?;
        Ok(outcome)
    }
}
