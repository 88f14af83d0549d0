//! `lock-table` — seed 002's lock as written: a row in a lock table, with an expiry. Shown with
//! its flaw; `advisory` is the sound form of the same idea.
//!
//! Take the lock: `INSERT INTO item_locks (item_id, owner)`; the primary key refuses a second
//! row for the item — busy: wait a jittered, growing delay and try again, for at most `wait`
//! (then 503). A busy taker first looks at the row's age: older than `ttl`, it is taken for a
//! dead holder's lock, deleted and taken over. Under the lock, the same decision as the other
//! locking paths ([`decide_locked`]: read the stock and the user's holding, the sale's one
//! rule, then the order, a relative decrement and the outcome in one transaction). Release:
//! delete the row (only our own: a holder whose lock was taken over must not free its
//! successor's). Under contention every decision, sold out or not, takes its turn, each paying
//! the lock's insert and delete (two more commits) on top of its transaction, while the waiters
//! poll the table.
//!
//! THE FLAW: the expiry cannot tell a dead holder from a slow one. A holder that takes longer
//! than `ttl` (a pause, a slow disk, a GC) has its lock deleted under it, and a second holder
//! gets in while the first still works. Nothing in the lock stops the first from writing: only
//! the schema does — the stock's `CHECK (stock_remaining >= 0)` refuses the decrement that would
//! oversell, the unique (item, user) a second order. Those refusals roll the turn back and it is
//! taken again (counted in [`LockTable::refused_by_schema`]); requests overtaken again and again
//! run out of `wait` and answer 503. A write that breaks no constraint is not stopped at all:
//! it is only because every write here is relative (`stock_remaining − n`, never `read − n`)
//! that two holders cannot lose an update, as `naive` does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::{Acquire, PgConnection, PgPool};
use uuid::Uuid;

use super::{PathError, Pause, PurchasePath, decide_locked, read_locked};
use crate::backoff;
use crate::domain::{OrderRequest, Outcome};
use crate::sale::PathName;

/// First and largest delay before a busy taker tries the lock again.
const BUSY_DELAY_BASE: Duration = Duration::from_millis(1);
const BUSY_DELAY_CAP: Duration = Duration::from_millis(20);

pub struct LockTable {
    pool: PgPool,
    /// Age past which a lock row is deleted as a dead holder's.
    ttl: Duration,
    /// Longest a request waits for the lock (and retakes it) before answering 503.
    wait: Duration,
    /// Lock rows deleted as dead and taken over.
    taken_over: AtomicU64,
    /// Turns whose writes a constraint refused: another holder sold meanwhile.
    refused_by_schema: AtomicU64,
    /// Holders inside their turn right now, and the most there ever were at once.
    holders: AtomicU64,
    holders_max: AtomicU64,
    /// Awaited under the lock, between the read and the write (tests only).
    pause: Pause,
}

impl LockTable {
    pub fn new(pool: PgPool, ttl: Duration, wait: Duration) -> Self {
        Self {
            pool,
            ttl,
            wait,
            taken_over: AtomicU64::new(0),
            refused_by_schema: AtomicU64::new(0),
            holders: AtomicU64::new(0),
            holders_max: AtomicU64::new(0),
            pause: Pause::default(),
        }
    }

    /// Awaits `pause` under the lock, between the read and the write: a slow holder.
    pub fn with_pause(self, pause: Pause) -> Self {
        Self { pause, ..self }
    }

    /// Lock rows deleted as dead and taken over so far.
    pub fn taken_over(&self) -> u64 {
        self.taken_over.load(Ordering::Relaxed)
    }

    /// Turns a constraint refused so far (each retaken under a fresh lock).
    pub fn refused_by_schema(&self) -> u64 {
        self.refused_by_schema.load(Ordering::Relaxed)
    }

    /// The most holders that were inside their turn at once: 1 while the lock holds.
    pub fn holders_max(&self) -> u64 {
        self.holders_max.load(Ordering::Relaxed)
    }

    /// One try at the lock: true if this owner now holds it. A busy lock older than the expiry
    /// is deleted as dead, and the insert tried once more. One statement per try while the lock
    /// is alive: the insert, and (from the snapshot before it) whether the row in its way has
    /// expired.
    async fn try_lock(
        &self,
        con: &mut PgConnection,
        request: &OrderRequest,
        owner: Uuid,
    ) -> Result<bool, PathError> {
        let ttl_ms = self.ttl.as_secs_f64() * 1000.0;
        for _ in 0..2 {
            let (taken, expired): (bool, bool) = sqlx::query_as(
                "WITH taken AS (
                     INSERT INTO item_locks (item_id, owner) VALUES ($1, $2)
                     ON CONFLICT (item_id) DO NOTHING RETURNING true)
                 SELECT EXISTS (SELECT 1 FROM taken),
                        coalesce((SELECT taken_at < clock_timestamp() - interval '1 ms' * $3
                                  FROM item_locks WHERE item_id = $1), false)",
            )
            .bind(request.item_id)
            .bind(owner)
            .bind(ttl_ms)
            .fetch_one(&mut *con)
            .await?;
            if taken {
                return Ok(true);
            }
            if !expired {
                return Ok(false);
            }
            let dead = sqlx::query(
                "DELETE FROM item_locks
                 WHERE item_id = $1 AND taken_at < clock_timestamp() - interval '1 ms' * $2",
            )
            .bind(request.item_id)
            .bind(ttl_ms)
            .execute(&mut *con)
            .await?;
            if dead.rows_affected() == 0 {
                return Ok(false); // another taker deleted it first
            }
            self.taken_over.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                item_id = request.item_id,
                "lock-table: took over an expired lock"
            );
        }
        Ok(false)
    }

    /// Deletes our lock row; if it is gone, our lock was taken over while we worked.
    async fn unlock(&self, con: &mut PgConnection, request: &OrderRequest, owner: Uuid) {
        let released = sqlx::query("DELETE FROM item_locks WHERE item_id = $1 AND owner = $2")
            .bind(request.item_id)
            .bind(owner)
            .execute(con)
            .await;
        match released {
            Ok(done) if done.rows_affected() == 0 => {
                tracing::debug!(
                    item_id = request.item_id,
                    "lock-table: our lock was taken over"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "lock-table: release failed; the lock expires"),
        }
    }

    /// The work under the lock, counted as one holder while it runs.
    async fn turn(
        &self,
        con: &mut PgConnection,
        request: &OrderRequest,
    ) -> Result<Outcome, PathError> {
        let now = self.holders.fetch_add(1, Ordering::Relaxed) + 1;
        self.holders_max.fetch_max(now, Ordering::Relaxed);
        let decided = self.decide_holding_the_lock(con, request).await;
        self.holders.fetch_sub(1, Ordering::Relaxed);
        decided
    }

    async fn decide_holding_the_lock(
        &self,
        con: &mut PgConnection,
        request: &OrderRequest,
    ) -> Result<Outcome, PathError> {
        let mut tx = con.begin().await?;
        let item = read_locked(&mut tx, request).await?;
        // The race window: a holder slower than the expiry is overtaken right here.
        self.pause.wait().await;
        let outcome = decide_locked(&mut tx, self.name(), request, item).await?;
        tx.commit().await?;
        Ok(outcome)
    }
}

/// Whether a constraint refused a write: what stops a second holder when the lock did not.
fn refused_by_a_constraint(e: &PathError) -> bool {
    matches!(e, PathError::Database(sqlx::Error::Database(db)) if db.is_check_violation())
}

#[async_trait::async_trait]
impl PurchasePath for LockTable {
    fn name(&self) -> PathName {
        PathName::LockTable
    }

    fn sells_quantities(&self) -> bool {
        true
    }

    async fn purchase(&self, request: &OrderRequest) -> Result<Outcome, PathError> {
        let owner = Uuid::new_v4();
        let deadline = Instant::now() + self.wait;
        // One connection for the tries, the turn and the release: a holder never queues for
        // the pool behind the waiters polling the table, and the pool bounds the pollers.
        let mut con = self.pool.acquire().await?;
        let mut busy = 0;
        while Instant::now() < deadline {
            if !self.try_lock(&mut con, request, owner).await? {
                busy += 1;
                tokio::time::sleep(backoff::delay(busy, BUSY_DELAY_BASE, BUSY_DELAY_CAP)).await;
                continue;
            }
            let turn = self.turn(&mut con, request).await;
            self.unlock(&mut con, request, owner).await;
            match turn {
                Err(e) if refused_by_a_constraint(&e) => {
                    // Another holder (ours was taken over, or theirs) sold what we read.
                    self.refused_by_schema.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "lock-table: a constraint refused the turn");
                }
                decided => return decided,
            }
        }
        Err(PathError::Unavailable(format!(
            "the lock of item {} stayed busy",
            request.item_id
        )))
    }
}
