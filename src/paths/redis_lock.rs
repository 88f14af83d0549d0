//! `redis-lock` — a Redis lock per item around a plain read-modify-write in PostgreSQL.
//!
//! Take the lock (`SET lock <owner> NX PX ttl`, and `INCR` the item's fencing counter in the same
//! script); claim the item in the database with that token (`SET fence = $token WHERE fence <
//! $token`, returning the stock and its version); read the user's orders; decide; write `stock =
//! read − 1` and the order only `WHERE fence = $token AND version = $read_version`; release the lock with a compare-and-delete script, so
//! a holder never frees a lock that has passed to another. Under contention waiters poll with
//! jittered backoff (for at most `wait`) and every decision, sold out or not, takes its turn:
//! the slowest path, each turn paying Redis round trips and two PostgreSQL commits.
//!
//! A TTL too short: the lock expires while its holder still works, and a second holder gets in.
//! Its claim moves the fence past the first holder's token, so the first holder's write matches
//! no row: it is refused, and retried under a fresh lock. No oversell, only wasted work — and,
//! with a TTL far below the work's duration, requests overtaken again and again until they
//! answer 503. Without the fence both holders would write `read − 1`: naive's lost update.
//!
//! A restock takes no lock: it adds units relative to what is stored and bumps `version`, so a
//! holder that read before it writes nothing and takes another turn, reading the restocked stock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use redis::Script;
use sqlx::PgPool;
use uuid::Uuid;

use super::redis_store::RedisStore;
use super::{PathError, Pause, PurchasePath, insert_order, record_outcome};
use crate::backoff;
use crate::domain::{OrderRequest, Outcome, Status};
use crate::sale::PathName;

/// KEYS: lock, fence, stock (present once the item is loaded). ARGV: owner, ttl in ms.
/// Returns the fencing token, 0 if the lock is taken, -1 if the item is not loaded.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
return redis.call('INCR', KEYS[2])
",
    )
});
/// KEYS: lock. ARGV: owner. Deletes the lock only if this owner still holds it.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

pub struct RedisLock {
    pool: PgPool,
    redis: Arc<RedisStore>,
    ttl: Duration,
    wait: Duration,
    /// Turns whose write the fence refused (the lock had expired and passed on).
    overtaken: AtomicU64,
    /// Awaited between the read and the write (tests only).
    pause: Pause,
}

impl RedisLock {
    pub fn new(pool: PgPool, redis: Arc<RedisStore>, ttl: Duration, wait: Duration) -> Self {
        let (overtaken, pause) = (AtomicU64::new(0), Pause::default());
        Self {
            pool,
            redis,
            ttl,
            wait,
            overtaken,
            pause,
        }
    }

    /// Awaits `pause` under the lock, between the read and the write.
    pub fn with_pause(self, pause: Pause) -> Self {
        Self { pause, ..self }
    }

    /// Turns refused by the fence so far.
    pub fn overtaken(&self) -> u64 {
        self.overtaken.load(Ordering::Relaxed)
    }

    /// The work under the lock. `Overtaken`: a newer holder has claimed the item — our lock
    /// expired — and nothing was written.
    async fn turn(&self, request: &OrderRequest, token: i64) -> Result<Turn, PathError> {
        let claimed: Option<(i64, i64)> = sqlx::query_as(
            "UPDATE items SET fence = $2 WHERE id = $1 AND fence < $2
             RETURNING stock_remaining, version",
        )
        .bind(request.item_id)
        .bind(token)
        .fetch_optional(&self.pool)
        .await?;
        let Some((stock, version)) = claimed else {
            return Ok(Turn::Overtaken);
        };
        let is_buyer: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM orders WHERE item_id = $1 AND user_id = $2)",
        )
        .bind(request.item_id)
        .bind(&request.user_id)
        .fetch_one(&self.pool)
        .await?;
        if is_buyer || stock == 0 {
            let status = if is_buyer {
                Status::AlreadyPurchased
            } else {
                Status::SoldOut
            };
            let outcome = record_outcome(&self.pool, self.name(), request, status, None).await?;
            return Ok(Turn::Decided(outcome));
        }

        self.pause.wait().await;
        let mut tx = self.pool.begin().await?;
        // The lock keeps other buyers out but not a restock, which takes no lock: the version
        // (bumped by every restock) tells that the stock read is still the stock stored.
        let written = sqlx::query(
            "UPDATE items SET stock_remaining = $4, version = version + 1, sold = sold + 1
             WHERE id = $1 AND fence = $2 AND version = $3
             RETURNING true",
        )
        .bind(request.item_id)
        .bind(token)
        .bind(version)
        .bind(stock - 1)
        .fetch_optional(&mut *tx)
        .await?;
        if written.is_none() {
            // Dropping `tx` rolls back; which guard refused tells whether our lock is gone.
            let still_ours: bool = sqlx::query_scalar("SELECT fence = $2 FROM items WHERE id = $1")
                .bind(request.item_id)
                .bind(token)
                .fetch_one(&self.pool)
                .await?;
            return Ok(if still_ours {
                Turn::Restocked
            } else {
                Turn::Overtaken
            });
        }
        let order_id = insert_order(&mut *tx, request)
            .await?
            .ok_or(PathError::AlreadyDecided)?;
        let purchased = Status::Purchased;
        let outcome =
            record_outcome(&mut *tx, self.name(), request, purchased, Some(order_id)).await?;
        tx.commit().await?;
        Ok(Turn::Decided(outcome))
    }
}

/// How one turn under the lock ended.
enum Turn {
    Decided(Outcome),
    /// A newer holder claimed the item (our lock expired): nothing written, try again.
    Overtaken,
    /// A restock changed the stock after our read: nothing written, try again.
    Restocked,
}

#[async_trait::async_trait]
impl PurchasePath for RedisLock {
    fn name(&self) -> PathName {
        PathName::RedisLock
    }

    async fn purchase(&self, request: &OrderRequest) -> Result<Outcome, PathError> {
        let keys = self.redis.keys(request.item_id);
        let mut con = self.redis.connection();
        let owner = Uuid::new_v4().to_string();
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let deadline = Instant::now() + self.wait;
        let mut attempt = 0;
        while Instant::now() < deadline {
            let mut acquire = ACQUIRE.prepare_invoke();
            acquire.key(&keys.lock).key(&keys.fence).key(&keys.stock);
            let token: i64 = acquire
                .arg(&owner)
                .arg(ttl_ms)
                .invoke_async(&mut con)
                .await?;
            if token == -1 {
                self.redis
                    .load_item(&self.pool, request.item_id, false)
                    .await?;
                continue;
            }
            if token == 0 {
                attempt += 1;
                let delay =
                    backoff::delay(attempt, Duration::from_millis(1), Duration::from_millis(20));
                tokio::time::sleep(delay).await;
                continue;
            }
            let turn = self.turn(request, token).await;
            let released = RELEASE
                .key(&keys.lock)
                .arg(&owner)
                .invoke_async::<i64>(&mut con)
                .await;
            if let Err(e) = released {
                tracing::warn!(error = %e, "redis-lock: release failed; the lock expires by its TTL");
            }
            match turn? {
                Turn::Decided(outcome) => return Ok(outcome),
                Turn::Overtaken => {
                    self.overtaken.fetch_add(1, Ordering::Relaxed);
                }
                Turn::Restocked => {}
            }
        }
        Err(PathError::Unavailable(format!(
            "the lock of item {} stayed busy",
            request.item_id
        )))
    }
}
