//! The lock-based purchase paths: the ways the flash-sale literature decides a purchase
//! synchronously, on the same schema as the queue path and behind one trait, so that they can be
//! compared with it (`POST /orders?path=NAME`, the audit, the benchmark). The queue path needs no
//! lock because one consumer owns each item; every path here is another answer to the question
//! it avoids — how do concurrent requests for one item not sell a unit twice? — and each file
//! opens with its algorithm and how it behaves under contention.
//!
//! What they share lives here, so that a path's file holds only its algorithm:
//! - [`decide`]: idempotency. A request id that already has an outcome gets it back and never a
//!   second order; a concurrent duplicate that loses a unique constraint re-reads the winner's.
//! - [`decide_locked`]: the decision of a path that holds the item's lock (pessimistic, advisory,
//!   lock-table), any quantity up to the item's per-user limit, by the sale's one rule
//!   ([`crate::sale::ItemRules::judge`]), the rule the queue path's sequencer applies too, and
//!   a red packet's share by its one share rule ([`crate::sale::draw_share`]).
//! - [`insert_order`], [`record_outcome`], [`record_repeat_buyer`]: the writes every path makes,
//!   so that every decision lands in `outcomes` with `path` = its name, as the audit expects.
//! - [`redis_store`]: the Redis connection, keys and loader of the `redis-*` paths.
//! - [`answer`]: the same idempotency for what the API answers, which for [`redis_mq`] — the
//!   one rival that decides later, in consumers of a RabbitMQ queue — is [`Answer::Pending`].
//!
//! Two paths here are not lock-based, the asynchronous Redis-first rivals: [`redis_stream`]
//! answers from Redis alone and has its decisions written to PostgreSQL afterwards by a
//! background writer (hmdp's design), so it keeps its own idempotency
//! ([`PurchasePath::keeps_own_idempotency`]); [`redis_mq`] answers `pending` and its consumers
//! decide (miaosha's design).
//!
//! An item is sold through one path at a time: the Redis paths keep their own copy of its stock,
//! and a lock only excludes those who take it. Whatever a path gets wrong, the database
//! constraints (one order per user, stock never negative) remain the backstop — which is why
//! `naive` can lose updates but never sell a user two units.

pub mod advisory;
pub mod conditional;
pub mod lock_table;
pub mod naive;
pub mod optimistic;
pub mod pessimistic;
pub mod redis_list;
pub mod redis_lock;
pub mod redis_lua;
pub mod redis_mq;
pub mod redis_store;
pub mod redis_stream;
pub mod redis_watch;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::backoff;
use crate::config::{BrokerArgs, PathArgs};
use crate::domain::{ItemKind, OrderRequest, Outcome, Status};
use crate::sale::{Holding, ItemRules, PathName, Seen, draw_share};
use crate::store;
use redis_store::RedisStore;

/// The paths, for `seckill serve --help`.
pub const HELP: &str = "\
Purchase paths (POST /orders?path=NAME):
  queue        default: RabbitMQ, one decider per item, batched commits (202, or 200 with ?wait=)
  naive        UNSAFE, for demonstration only: read, check, write back read-1 without a lock;
               loses updates and oversells under concurrency
  pessimistic  SELECT ... FOR UPDATE on the item row for the whole decision
  optimistic   version column compare-and-set, bounded jittered retries, then failed_retry
  conditional  one UPDATE ... WHERE stock_remaining > 0 plus the order, in one transaction
  advisory     pg_advisory_xact_lock per item around the decision
  lock-table   FLAWED, seed 002's pattern: a row in a lock table is the lock, one older than
               SECKILL_LOCK_TABLE_TTL_MS is deleted as dead and taken over; a holder slower
               than that is overtaken while it works, and only the schema stops an oversell
  redis-lock   Redis lock per item (SET NX PX), fencing token checked by the database write
  redis-watch  WATCH/MULTI/EXEC on the Redis stock and buyer set, retried on abort
  redis-lua    one Lua script decides in Redis; compensated if the database write fails
  redis-list   stock as a Redis list of tokens, LPOP claims one
  redis-stream FRAGILE, hmdp's design: one Lua script decides in Redis and XADDs the decision to
               a stream; answered at once, written to PostgreSQL later by the stream writer
               (SECKILL_STREAM_*); what Redis loses before the writer commits is lost
  redis-mq     FRAGILE, qiurunze123/miaosha's design: in-process sold-out flag, buyer set,
               Redis DECR, then a RabbitMQ queue read by competing consumers (202 pending);
               Redis and PostgreSQL can disagree after a crash or a refused write
Every path but queue and redis-mq answers 200 with the decision. Redis keys:
{prefix}:item:{id}:*.";

/// One way of deciding a purchase, synchronously.
#[async_trait::async_trait]
pub trait PurchasePath: Send + Sync {
    /// The `path=` name, also stored in `outcomes.path`.
    fn name(&self) -> PathName;

    /// Decides a request that had no stored outcome when [`decide`] looked, records the decision
    /// in `outcomes` (and the order, for a purchase) and returns it. Call it through [`decide`],
    /// which handles repeats of a request id.
    async fn purchase(&self, request: &OrderRequest) -> Result<Outcome, PathError>;

    /// What the API answers the request with. Every path but `redis-mq` decides at once: the
    /// decision of [`PurchasePath::purchase`] (the default). A path that decides later accepts
    /// the request and answers [`Answer::Pending`]; the buyer asks `GET /orders/{request_id}`.
    /// Call it through [`answer`], which handles repeats of a request id.
    async fn answer(&self, request: &OrderRequest) -> Result<Answer, PathError> {
        Ok(Answer::Decided(self.purchase(request).await?))
    }

    /// Whether it sells any quantity of goods up to the item's `per_user_limit`. A path that
    /// does not is given only quantity 1 of items with a limit of 1 (the API refuses the rest):
    /// its algorithm counts one order row as one unit.
    fn sells_quantities(&self) -> bool {
        false
    }

    /// Whether it sells red packets: draws each grab's share by the sale's one rule
    /// ([`crate::sale::draw_share`], the queue path's too) from the amount and the shares left
    /// it read, and pays it out in the same write as the share. The API refuses red packets to
    /// a path that does not.
    fn sells_red_packets(&self) -> bool {
        false
    }

    /// Whether the path answers a repeated request id itself, from a memory of its own, so that
    /// [`decide`] must not read PostgreSQL for a stored outcome first (`redis-stream`, whose
    /// request path never touches the database). Such a path is called once per request and
    /// never returns [`PathError::AlreadyDecided`] or [`PathError::BuyerInFlight`].
    fn keeps_own_idempotency(&self) -> bool {
        false
    }

    /// Called when the request's user has been [`PathError::BuyerInFlight`] for a while: a path
    /// whose gate lists buyers ahead of the database (the `redis-*` paths) drops the user from
    /// it if the database holds no order of theirs, and returns true. Such an entry is what a
    /// failed undo leaves behind; without the repair the user would wait on it forever.
    async fn repair_buyer(&self, _request: &OrderRequest) -> Result<bool, PathError> {
        Ok(false)
    }
}

/// What a path answers a purchase request with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Decided now (`200`).
    Decided(Outcome),
    /// Accepted, to be decided later (`202 pending`): the request is in the accepted-request
    /// log, so `GET /orders/{request_id}` says `pending` until the decision is stored.
    Pending,
}

impl From<Outcome> for Answer {
    fn from(outcome: Outcome) -> Self {
        Answer::Decided(outcome)
    }
}

/// Why a path did not decide.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// 404: the item does not exist.
    #[error("item not found")]
    NoSuchItem,
    /// 400: this path cannot sell this item (too many units to hold in Redis).
    #[error("{0}")]
    Unsupported(String),
    /// 503: PostgreSQL or Redis is down or overloaded, or the item stayed busy past the path's
    /// bound. Nothing was decided: retrying with the same request id is safe.
    #[error("{0}")]
    Unavailable(String),
    /// Another attempt stored an outcome for this request id first; [`decide`] re-reads it.
    #[error("the request was decided concurrently")]
    AlreadyDecided,
    /// Redis says this user bought, but the order is not committed yet (a concurrent request of
    /// the same user, or a duplicate of this one); [`decide`] waits and asks again.
    #[error("the buyer's order is not committed yet")]
    BuyerInFlight,
    /// 500, detail logged only.
    #[error(transparent)]
    Database(sqlx::Error),
    /// 500, detail logged only.
    #[error(transparent)]
    Redis(redis::RedisError),
}

impl From<sqlx::Error> for PathError {
    fn from(e: sqlx::Error) -> Self {
        if store::is_transient(&e) {
            tracing::warn!(error = %e, "database unavailable or busy");
            return PathError::Unavailable("the database is unavailable or busy".into());
        }
        match &e {
            // Paths handle one-per-user conflicts themselves; what is left is a request id
            // (orders.request_id, outcomes' key) another attempt committed first.
            sqlx::Error::Database(db) if db.is_unique_violation() => PathError::AlreadyDecided,
            sqlx::Error::Database(db)
                if db.is_foreign_key_violation()
                    && db.constraint().is_some_and(|c| c.ends_with("item_id_fkey")) =>
            {
                PathError::NoSuchItem
            }
            _ => PathError::Database(e),
        }
    }
}

/// What Redis answers when it is up but cannot serve now: loading its data after a restart, a
/// script running past its time limit, a cluster or its master down, a key being moved.
const REDIS_NOT_NOW: [&str; 5] = ["LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN"];

impl From<redis::RedisError> for PathError {
    fn from(e: redis::RedisError) -> Self {
        let not_now = e.code().is_some_and(|code| REDIS_NOT_NOW.contains(&code));
        if not_now || e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
            tracing::warn!(error = %e, "redis unavailable");
            PathError::Unavailable("redis is unavailable".into())
        } else {
            PathError::Redis(e)
        }
    }
}

/// Most tries [`decide`] makes: each is cut short only by a concurrent duplicate or a buyer whose
/// order is in flight, and both settle within milliseconds.
const DECIDE_TRIES_MAX: u32 = 8;
/// After this many tries finding the buyer in flight (a few tens of milliseconds of waiting), [`decide`] asks
/// the path to check its buyer list against the database ([`PurchasePath::repair_buyer`]).
const BUYER_IN_FLIGHT_BEFORE_REPAIR: u32 = 4;

/// Decides `request` through `path`, idempotently: a request id with a stored outcome gets that
/// outcome, whichever path stored it, and never creates a second order. A path that
/// [keeps its own idempotency](PurchasePath::keeps_own_idempotency) is asked directly.
pub async fn decide(
    pool: &PgPool,
    path: &dyn PurchasePath,
    request: &OrderRequest,
) -> Result<Outcome, PathError> {
    settle_repeats(pool, path, request, || path.purchase(request)).await
}

/// What the API answers `request` through `path`, with [`decide`]'s idempotency: a request id
/// with a stored outcome gets that outcome; otherwise the path's [`PurchasePath::answer`].
pub async fn answer(
    pool: &PgPool,
    path: &dyn PurchasePath,
    request: &OrderRequest,
) -> Result<Answer, PathError> {
    settle_repeats(pool, path, request, || path.answer(request)).await
}

/// Runs `attempt` until it is not cut short by a concurrent duplicate or a buyer in flight,
/// answering a request id that has a stored outcome with it instead.
async fn settle_repeats<'a, T: From<Outcome>>(
    pool: &PgPool,
    path: &'a dyn PurchasePath,
    request: &'a OrderRequest,
    attempt: impl Fn() -> BoxFuture<'a, Result<T, PathError>>,
) -> Result<T, PathError> {
    if path.keeps_own_idempotency() {
        return attempt().await;
    }
    let mut in_flight = 0;
    for tried in 0..DECIDE_TRIES_MAX {
        let mut stored = store::stored_outcomes(pool, &[request.request_id]).await?;
        if let Some(outcome) = stored.remove(&request.request_id) {
            return Ok(outcome.into());
        }
        match attempt().await {
            Err(PathError::AlreadyDecided) => continue,
            Err(PathError::BuyerInFlight) => {
                in_flight += 1;
                if in_flight == BUYER_IN_FLIGHT_BEFORE_REPAIR && path.repair_buyer(request).await? {
                    continue;
                }
                let base = Duration::from_millis(5);
                tokio::time::sleep(backoff::delay(tried, base, Duration::from_millis(200))).await;
            }
            result => return result,
        }
    }
    Err(PathError::Unavailable(
        "the request could not be decided in time".into(),
    ))
}

/// What a locking path reads under the item's lock before deciding.
#[derive(Debug, Clone, Copy)]
pub struct LockedItem {
    pub stock: i64,
    pub rules: ItemRules,
    /// The user's order and the units it holds, if the user bought before.
    pub holding: Option<Holding>,
    /// A red packet's amount not paid out yet, to split among the `stock` shares left; `None`
    /// for goods.
    pub packet_remaining: Option<i64>,
}

/// The columns of an item a locking path reads: stock, kind, limit, red packet amount left.
pub type ItemColumns = (i64, ItemKind, i64, Option<i64>);

impl LockedItem {
    /// From the columns a locking path reads: the item's stock, kind, limit and red packet
    /// amount left, and the user's order id and units (both `None` when the user holds none).
    pub fn from_row(
        (stock, kind, per_user_limit, packet_remaining): ItemColumns,
        holding: Option<(Uuid, i64)>,
    ) -> Self {
        Self {
            stock,
            rules: ItemRules {
                kind,
                per_user_limit,
            },
            holding: holding.map(|(order_id, units)| Holding { order_id, units }),
            packet_remaining,
        }
    }
}

/// What a locking path whose lock is not the item's row (advisory, lock-table) reads once it
/// holds the lock: the item and the user's holding, in one statement of the caller's
/// transaction, so its snapshot is taken after the lock was granted and includes every earlier
/// holder's sale.
pub async fn read_locked(
    tx: &mut sqlx::PgConnection,
    request: &OrderRequest,
) -> Result<LockedItem, PathError> {
    type Row = (i64, ItemKind, i64, Option<i64>, Option<Uuid>, Option<i64>);
    let (stock, kind, per_user_limit, packet_remaining, order_id, units): Row = sqlx::query_as(
        "SELECT i.stock_remaining, i.kind, i.per_user_limit, i.packet_remaining,
                o.id, o.quantity
         FROM items i LEFT JOIN orders o ON o.item_id = i.id AND o.user_id = $2
         WHERE i.id = $1",
    )
    .bind(request.item_id)
    .bind(&request.user_id)
    .fetch_optional(tx)
    .await?
    .ok_or(PathError::NoSuchItem)?;
    Ok(LockedItem::from_row(
        (stock, kind, per_user_limit, packet_remaining),
        order_id.zip(units),
    ))
}

/// The decision a locking path makes once it holds the item's lock and has read, under it, the
/// stock, the rules and what the user holds: the sale's rule ([`ItemRules::judge`]: limit first,
/// then stock); the order (new, or the user's grown), the decrement and the outcome are written
/// in the caller's transaction, which keeps the lock until it commits. A red packet grab's share
/// is drawn here by the sale's one share rule ([`draw_share`], the queue path's decider's too)
/// from the amount left it read, and paid out in the same stock update.
pub async fn decide_locked(
    tx: &mut sqlx::PgConnection,
    path: PathName,
    request: &OrderRequest,
    item: LockedItem,
) -> Result<Outcome, PathError> {
    let judged = item
        .rules
        .judge(item.holding.as_ref(), request.quantity, item.stock);
    // Read under the lock: exactly what this decision was made from.
    let seen = Some(Seen {
        stock: item.stock,
        held: item.holding.map_or(0, |h| h.units),
    });
    if let Err(refusal) = judged {
        return record_outcome_seen(&mut *tx, path, request, refusal.status(), None, seen).await;
    }
    // A red packet: one share of one per user, so this is the user's first order.
    let amount = item
        .packet_remaining
        .map(|rest| draw_share(rest, item.stock, &mut rand::rng()));
    let order_id = match item.holding {
        Some(holding) => {
            sqlx::query("UPDATE orders SET quantity = quantity + $2 WHERE id = $1")
                .bind(holding.order_id)
                .bind(request.quantity)
                .execute(&mut *tx)
                .await?;
            holding.order_id
        }
        // A conflict is impossible under the lock unless another path sold meanwhile.
        None => insert_holding(&mut *tx, request, item.rules.per_user_limit, amount)
            .await?
            .ok_or(PathError::AlreadyDecided)?,
    };
    // Relative writes: what another writer sold meanwhile is kept, and the constraints
    // (stock never negative, a packet never overspent) refuse what would pass zero.
    sqlx::query(
        "UPDATE items SET stock_remaining = stock_remaining - $2, sold = sold + $2,
                          packet_remaining = packet_remaining - $3
         WHERE id = $1",
    )
    .bind(request.item_id)
    .bind(request.quantity)
    .bind(amount)
    .execute(&mut *tx)
    .await?;
    let mut outcome = record_outcome_seen(
        &mut *tx,
        path,
        request,
        Status::Purchased,
        Some(order_id),
        seen,
    )
    .await?;
    outcome.amount = amount;
    Ok(outcome)
}

/// Inserts the order of a purchase in the caller's transaction. `None` when the user already
/// holds an order for the item: the unique (item, user) constraint is the one-per-user check.
pub async fn insert_order<'e>(
    executor: impl PgExecutor<'e>,
    request: &OrderRequest,
) -> Result<Option<Uuid>, PathError> {
    insert_holding(executor, request, 1, None).await
}

/// [`insert_order`] of the request's quantity, for an item whose limit is `per_user_limit`, with
/// a red packet share's `amount` (`None` for goods); the database checks all three.
pub async fn insert_holding<'e>(
    executor: impl PgExecutor<'e>,
    request: &OrderRequest,
    per_user_limit: i64,
    amount: Option<i64>,
) -> Result<Option<Uuid>, PathError> {
    let order_id = Uuid::new_v4();
    let inserted = sqlx::query(
        "INSERT INTO orders (id, item_id, user_id, request_id, quantity, per_user_limit, amount)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT ON CONSTRAINT orders_one_per_user DO NOTHING",
    )
    .bind(order_id)
    .bind(request.item_id)
    .bind(&request.user_id)
    .bind(request.request_id)
    .bind(request.quantity)
    .bind(per_user_limit)
    .bind(amount)
    .execute(executor)
    .await?;
    Ok((inserted.rows_affected() == 1).then_some(order_id))
}

/// Stores a path's decision (`order_id` set exactly for a purchase). [`PathError::AlreadyDecided`]
/// when the request id already has an outcome: the caller's transaction must then not commit.
pub async fn record_outcome<'e>(
    executor: impl PgExecutor<'e>,
    path: PathName,
    request: &OrderRequest,
    status: Status,
    order_id: Option<Uuid>,
) -> Result<Outcome, PathError> {
    record_outcome_seen(executor, path, request, status, order_id, None).await
}

/// [`record_outcome`] with what the decider saw when it decided (`None`: it cannot know, e.g.
/// it decided elsewhere), for the audit.
pub async fn record_outcome_seen<'e>(
    executor: impl PgExecutor<'e>,
    path: PathName,
    request: &OrderRequest,
    status: Status,
    order_id: Option<Uuid>,
    seen: Option<Seen>,
) -> Result<Outcome, PathError> {
    debug_assert_eq!(status == Status::Purchased, order_id.is_some());
    let inserted = sqlx::query(
        "INSERT INTO outcomes
             (request_id, item_id, user_id, status, order_id, path, quantity, stock_seen, held_seen)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(request.request_id)
    .bind(request.item_id)
    .bind(&request.user_id)
    .bind(status.as_str())
    .bind(order_id)
    .bind(path.as_str())
    .bind(request.quantity)
    .bind(seen.map(|s| s.stock))
    .bind(seen.map(|s| s.held))
    .execute(executor)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(PathError::AlreadyDecided);
    }
    Ok(Outcome {
        request_id: request.request_id,
        status,
        order_id,
        amount: None,
    })
}

/// Records `already_purchased` for a user Redis lists as a buyer — but only once the user's order
/// is committed: Redis learns of a purchase before PostgreSQL does, and that write may still fail
/// and be undone. Until then [`PathError::BuyerInFlight`] (and [`decide`] asks again), so nobody
/// is told `already_purchased` for an order that never lands.
pub async fn record_repeat_buyer(
    pool: &PgPool,
    path: PathName,
    request: &OrderRequest,
) -> Result<Outcome, PathError> {
    let inserted = sqlx::query(
        "INSERT INTO outcomes (request_id, item_id, user_id, status, order_id, path)
         SELECT $1, $2, $3, 'already_purchased', NULL, $4
         WHERE EXISTS (SELECT 1 FROM orders WHERE item_id = $2 AND user_id = $3)
         ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(request.request_id)
    .bind(request.item_id)
    .bind(&request.user_id)
    .bind(path.as_str())
    .execute(pool)
    .await?;
    if inserted.rows_affected() == 0 {
        // No committed order yet, or this request id was decided meanwhile: `decide` re-reads.
        return Err(PathError::BuyerInFlight);
    }
    Ok(Outcome {
        request_id: request.request_id,
        status: Status::AlreadyPurchased,
        order_id: None,
        amount: None,
    })
}

/// A test's hook into the middle of a path, awaited at the path's race window (between its read
/// and its write), so that a test can force requests to interleave there or a lock to expire.
/// Empty — a no-op — everywhere but in tests.
#[derive(Clone, Default)]
pub struct Pause(Option<Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>>);

impl Pause {
    pub fn new(hook: impl Fn() -> BoxFuture<'static, ()> + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(hook)))
    }

    pub async fn wait(&self) {
        if let Some(hook) = &self.0 {
            hook().await;
        }
    }
}

/// Every synchronous path by name, built once per process.
pub struct Registry {
    pool: PgPool,
    paths: Vec<Box<dyn PurchasePath>>,
    /// The Redis side of the `redis-*` paths; items are loaded into it when created.
    pub redis: Arc<RedisStore>,
}

impl Registry {
    /// Builds every path. Redis and the broker (of `redis-mq`, whose queue is named after the
    /// broker's prefix) are connected lazily, so this needs neither of them up; a malformed
    /// Redis URL is the only error.
    pub fn new(pool: PgPool, args: &PathArgs, broker: &BrokerArgs) -> anyhow::Result<Self> {
        let redis = Arc::new(RedisStore::new(&args.redis)?);
        let p = || pool.clone();
        let paths: Vec<Box<dyn PurchasePath>> = vec![
            Box::new(naive::Naive::new(p())),
            Box::new(pessimistic::Pessimistic::new(p())),
            Box::new(optimistic::Optimistic::new(
                p(),
                args.optimistic_retries_max,
            )),
            Box::new(conditional::Conditional::new(p())),
            Box::new(advisory::Advisory::new(p())),
            Box::new(lock_table::LockTable::new(
                p(),
                args.lock_table_ttl(),
                args.lock_table_wait(),
            )),
            Box::new(redis_lock::RedisLock::new(
                p(),
                redis.clone(),
                args.redis_lock_ttl(),
                args.redis_lock_wait(),
            )),
            Box::new(redis_watch::RedisWatch::new(
                p(),
                redis.clone(),
                args.optimistic_retries_max,
            )),
            Box::new(redis_lua::RedisLua::new(p(), redis.clone())),
            Box::new(redis_list::RedisList::new(p(), redis.clone())),
            Box::new(redis_stream::RedisStream::new(p(), redis.clone())),
            Box::new(redis_mq::RedisMq::new(p(), redis.clone(), broker)),
        ];
        Ok(Self { pool, paths, redis })
    }

    /// The path called `name`; `None` for `queue`, which is not here: it decides asynchronously
    /// (see `api::orders`).
    pub fn get(&self, name: PathName) -> Option<&dyn PurchasePath> {
        self.paths
            .iter()
            .find(|p| p.name() == name)
            .map(|p| p.as_ref())
    }

    /// [`decide`] through this registry's pool.
    pub async fn purchase(
        &self,
        path: &dyn PurchasePath,
        request: &OrderRequest,
    ) -> Result<Outcome, PathError> {
        decide(&self.pool, path, request).await
    }

    /// [`answer`] through this registry's pool: what the API tells the client.
    pub async fn answer(
        &self,
        path: &dyn PurchasePath,
        request: &OrderRequest,
    ) -> Result<Answer, PathError> {
        answer(&self.pool, path, request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_up_but_not_serving_now_is_unavailable_and_a_refusal_is_not() {
        for code in ["LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN"] {
            let e = redis::make_extension_error(code.into(), Some("not now".into()));
            assert!(
                matches!(PathError::from(e), PathError::Unavailable(_)),
                "{code} is a 503"
            );
        }
        let refused = redis::make_extension_error("WRONGTYPE".into(), None);
        assert!(matches!(PathError::from(refused), PathError::Redis(_)));
    }

    #[tokio::test]
    async fn every_name_but_queue_is_a_registered_path() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let args = PathArgs {
            optimistic_retries_max: 1,
            redis_lock_ttl_ms: 100,
            redis_lock_wait_ms: 100,
            lock_table_ttl_ms: 100,
            lock_table_wait_ms: 100,
            redis: crate::config::RedisArgs {
                redis_url: "redis://127.0.0.1:1".into(),
                redis_prefix: "unit".into(),
            },
        };
        let broker = BrokerArgs {
            amqp_url: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
            queue_prefix: "unit".into(),
            partitions: 1,
            queue_length_max: 10,
            queue_type: crate::config::QueueType::Classic,
            announcer_users: None,
        };
        let registry = Registry::new(pool, &args, &broker).unwrap();
        let registered: Vec<PathName> = registry.paths.iter().map(|p| p.name()).collect();
        assert_eq!(registered, PathName::ALL[1..]);
        assert!(registry.get(PathName::Queue).is_none());
        assert!(HELP.contains("naive        UNSAFE"));
        assert!(HELP.contains("lock-table   FLAWED"));
        for name in PathName::ALL {
            assert!(
                HELP.contains(&format!("  {name} ")),
                "{name} is in the help"
            );
        }
    }
}
