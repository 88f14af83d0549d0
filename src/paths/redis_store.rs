//! The Redis side of the `redis-*` paths: a reconnecting multiplexed connection, a few dedicated
//! connections for WATCH, the per-item keys, loading an item from PostgreSQL, and writing a
//! purchase Redis granted to PostgreSQL with compensation.
//!
//! PostgreSQL stays the authority; Redis is a gate in front of it that turns most requests away
//! without touching the database. A purchase Redis granted is written with the conditional
//! path's transaction ([`persist_or_undo`]), so the database can still refuse it; if it does, or
//! the write fails, the Redis side is undone and the two agree again when the request ends.
//! While a grant is being written its unit is out of Redis: a request arriving then is told
//! `sold_out` even if that write is later undone (only when the database fails or disagrees).
//! If the undo fails too, the buyer stays in the set with no order: their next requests find
//! them "in flight", and after a few tries [`RedisStore::repair_buyer`] checks the database and
//! drops the entry, so they are decided rather than answered 503 forever.
//!
//! Keys of item N, under the configured prefix P: `P:item:N:stock` (units left, counted by
//! `redis-lua` and `redis-watch`; its presence marks the item as loaded), `P:item:N:buyers` (set
//! of user ids), `P:item:N:tokens` (one list entry per unit left, counted by `redis-list`, which
//! leaves the counter alone), `P:item:N:lock` and `P:item:N:fence` (for `redis-lock`),
//! `P:item:N:verdicts` (hash of request id → what `redis-stream` answered it), and one stream for
//! every item, `P:stream:orders` (the decisions `redis-stream`'s writer records in PostgreSQL).

use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Pipeline, Script};
use sqlx::PgPool;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::{PathError, conditional};
use crate::config::{RedisArgs, redact_url};
use crate::domain::{ItemId, OrderRequest, Outcome, Status};
use crate::sale::PathName;

/// Longest wait for a connection to Redis: a Redis that is down answers 503 this fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for one reply (a load of a large item included).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most dedicated connections open at once (one per `redis-watch` request in flight).
const DEDICATED_MAX: usize = 64;
/// Longest wait for a free dedicated connection before answering 503.
const DEDICATED_WAIT: Duration = Duration::from_secs(5);
/// Most units (stock and buyers) an item may have to be loaded into Redis: a load is one script
/// call, which blocks Redis while it runs.
pub const LOAD_UNITS_MAX: i64 = 1_000_000;

/// The keys of one item.
pub struct ItemKeys {
    pub stock: String,
    pub buyers: String,
    pub tokens: String,
    pub lock: String,
    pub fence: String,
    pub verdicts: String,
}

pub struct RedisStore {
    /// Shared by every request; reconnects in the background after a failure.
    manager: ConnectionManager,
    /// For WATCH, which belongs to a whole connection and so cannot share the multiplexed one.
    dedicated: Dedicated,
    /// Prefix of every key, so deployments and tests can share one Redis.
    prefix: String,
}

impl RedisStore {
    /// Does not connect: the first command does.
    pub fn new(args: &RedisArgs) -> anyhow::Result<Self> {
        let client = redis::Client::open(args.redis_url.as_str())
            .map_err(|e| anyhow::anyhow!("bad Redis URL {}: {e}", redact_url(&args.redis_url)))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1);
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        let dedicated = Dedicated {
            client,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT)),
            idle: Mutex::default(),
            permits: Semaphore::new(DEDICATED_MAX),
        };
        Ok(Self {
            manager,
            dedicated,
            prefix: args.redis_prefix.clone(),
        })
    }

    /// The shared connection (a cheap handle).
    pub fn connection(&self) -> ConnectionManager {
        self.manager.clone()
    }

    pub fn keys(&self, item_id: ItemId) -> ItemKeys {
        let key = |what: &str| format!("{}:item:{item_id}:{what}", self.prefix);
        ItemKeys {
            stock: key("stock"),
            buyers: key("buyers"),
            tokens: key("tokens"),
            lock: key("lock"),
            fence: key("fence"),
            verdicts: key("verdicts"),
        }
    }

    /// The stream of `redis-stream`'s decisions, one for every item (as in the original design).
    pub fn orders_stream(&self) -> String {
        format!("{}:stream:orders", self.prefix)
    }

    /// A connection no other request uses until it is dropped.
    pub async fn dedicated(&self) -> Result<DedicatedConnection<'_>, PathError> {
        let d = &self.dedicated;
        let permit = tokio::time::timeout(DEDICATED_WAIT, d.permits.acquire())
            .await
            .map_err(|_| PathError::Unavailable("no Redis connection free".into()))?
            .expect("the semaphore is never closed");
        let idle = d.idle.lock().expect("idle connections lock").pop();
        let con = match idle {
            Some(con) => con,
            None => {
                d.client
                    .get_multiplexed_async_connection_with_config(&d.config)
                    .await?
            }
        };
        Ok(DedicatedConnection {
            con: Some(con),
            idle: &d.idle,
            _permit: permit,
        })
    }

    /// Copies an item's stock, buyers and fencing counter from PostgreSQL into Redis. With
    /// `force` it overwrites what is there — only safe while no Redis path is selling the item;
    /// without it, it loads only an item Redis does not have (the paths call it when they find
    /// an item missing, e.g. after Redis restarted empty).
    pub async fn load_item(
        &self,
        pool: &PgPool,
        item_id: ItemId,
        force: bool,
    ) -> Result<(), PathError> {
        // One statement, one snapshot: the stock and the buyers agree.
        let (stock_initial, stock_remaining, fence, buyers): (i64, i64, i64, Vec<String>) =
            sqlx::query_as(
                "SELECT stock_initial, stock_remaining, fence,
                        ARRAY(SELECT user_id FROM orders WHERE item_id = items.id)
                 FROM items WHERE id = $1",
            )
            .bind(item_id)
            .fetch_optional(pool)
            .await?
            .ok_or(PathError::NoSuchItem)?;
        if stock_initial > LOAD_UNITS_MAX {
            return Err(PathError::Unsupported(format!(
                "item {item_id} has {stock_initial} units; the Redis paths hold at most {LOAD_UNITS_MAX}"
            )));
        }
        let keys = self.keys(item_id);
        LOAD.key(&keys.stock)
            .key(&keys.buyers)
            .key(&keys.tokens)
            .key(&keys.fence)
            .arg(i32::from(force))
            .arg(stock_remaining)
            .arg(fence)
            .arg(&buyers)
            .invoke_async::<i64>(&mut self.connection())
            .await?;
        Ok(())
    }

    /// Drops `user_id` from the item's buyer set if the database holds no order of theirs for
    /// it; returns true if it was dropped. A buyer is added to the set before its order is
    /// written, and taken out again if that write fails — unless that undo failed too, which
    /// leaves a buyer without an order: every later request of theirs would wait on it.
    /// Dropping an entry whose write is in fact still running (slower than the wait before a
    /// repair) costs nothing worse than a refused write: PostgreSQL keeps one order per user, and
    /// the refused grant gives its unit back and leaves the user listed ([`persist_or_undo`]).
    /// The unit the failed undo did not give back stays missing until `seckill redis-load`.
    pub async fn repair_buyer(
        &self,
        pool: &PgPool,
        item_id: ItemId,
        user_id: &str,
    ) -> Result<bool, PathError> {
        let ordered: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM orders WHERE item_id = $1 AND user_id = $2)",
        )
        .bind(item_id)
        .bind(user_id)
        .fetch_one(pool)
        .await?;
        if ordered {
            return Ok(false);
        }
        let keys = self.keys(item_id);
        let removed: i64 = redis::cmd("SREM")
            .arg(&keys.buyers)
            .arg(user_id)
            .query_async(&mut self.connection())
            .await?;
        if removed > 0 {
            tracing::warn!(
                item_id,
                user_id,
                "dropped a Redis buyer entry with no order behind it (an undo had failed)"
            );
        }
        Ok(removed > 0)
    }

    /// [`RedisStore::load_item`] with `force` for every item; returns how many were loaded.
    pub async fn load_all(&self, pool: &PgPool) -> Result<usize, PathError> {
        let ids: Vec<ItemId> = sqlx::query_scalar("SELECT id FROM items ORDER BY id")
            .fetch_all(pool)
            .await?;
        for &id in &ids {
            self.load_item(pool, id, true).await?;
        }
        Ok(ids.len())
    }

    /// Deletes every key under this store's prefix; returns how many. For tests and for
    /// operators retiring a prefix.
    pub async fn clear(&self) -> Result<u64, PathError> {
        let mut con = self.connection();
        let escaped: String = self
            .prefix
            .chars()
            .flat_map(|c| match c {
                '*' | '?' | '[' | ']' | '\\' => vec!['\\', c],
                _ => vec![c],
            })
            .collect();
        let pattern = format!("{escaped}:*");
        let (mut cursor, mut deleted) = (0u64, 0u64);
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut con)
                .await?;
            if !keys.is_empty() {
                deleted += redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async::<u64>(&mut con)
                    .await?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

/// Writes a purchase Redis granted to PostgreSQL; unless that write put this request's order in
/// the database, runs `give_back` (which must return exactly the unit the grant took) and drops
/// the user from the buyer set — but only if the database holds no order of theirs for the item:
/// a grant refused because the user bought before (a second click, or a retry of a request that
/// another grant committed) keeps them listed. The write is the conditional path's transaction,
/// so the database, not Redis, has the last word. If the undo itself fails (Redis down), Redis
/// keeps one unit too few until `seckill redis-load` (an undersell, never an oversell), and the
/// buyer entry is repaired later ([`RedisStore::repair_buyer`]).
pub async fn persist_or_undo(
    pool: &PgPool,
    path: PathName,
    request: &OrderRequest,
    con: &mut ConnectionManager,
    buyers_key: &str,
    give_back: &Pipeline,
) -> Result<Outcome, PathError> {
    let written = conditional::sell(pool, path, request).await;
    let ordered = match &written {
        Ok(outcome) => outcome.status == Status::Purchased,
        // A conflict on the request id rolled this write back: another attempt decided it.
        Err(PathError::AlreadyDecided) => false,
        // The commit may have landed with only its answer lost: look before undoing.
        Err(_) => sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM orders WHERE request_id = $1)")
            .bind(request.request_id)
            .fetch_one(pool)
            .await
            .unwrap_or(false),
    };
    if ordered {
        // On an error here the outcome is stored too: `decide` re-reads it.
        return written.or(Err(PathError::AlreadyDecided));
    }
    if let Err(e) = give_back.exec_async(con).await {
        tracing::error!(
            error = %e, item_id = request.item_id, %path,
            "could not give a unit back to Redis: Redis undersells this item until `seckill redis-load`"
        );
        return written;
    }
    let holds_order = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM orders WHERE item_id = $1 AND user_id = $2)",
    )
    .bind(request.item_id)
    .bind(&request.user_id)
    .fetch_one(pool)
    .await;
    if let Ok(false) = holds_order {
        let dropped: Result<i64, _> = redis::cmd("SREM")
            .arg(buyers_key)
            .arg(&request.user_id)
            .query_async(con)
            .await;
        if let Err(e) = dropped {
            tracing::warn!(error = %e, item_id = request.item_id, %path,
                "could not drop a buyer from Redis; it is repaired on their next request");
        }
    }
    written
}

/// Loads one item. KEYS: stock, buyers, tokens, fence. ARGV: force (0/1), stock, fence,
/// buyers... Returns 1 if loaded, 0 if the item was already there (and not forced).
static LOAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if ARGV[1] == '0' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
for i = 4, #ARGV, 1000 do
  redis.call('SADD', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
local stock = tonumber(ARGV[2])
for first = 1, stock, 1000 do
  local batch = {}
  for unit = first, math.min(first + 999, stock) do batch[#batch + 1] = unit end
  redis.call('RPUSH', KEYS[3], unpack(batch))
end
-- The fencing counter only moves forward: a token PostgreSQL has seen is never handed out again.
if tonumber(redis.call('GET', KEYS[4]) or '0') < tonumber(ARGV[3]) then
  redis.call('SET', KEYS[4], ARGV[3])
end
redis.call('SET', KEYS[1], stock)
return 1
",
    )
});

struct Dedicated {
    client: redis::Client,
    config: AsyncConnectionConfig,
    /// Returned connections, reused before opening new ones (at most `DEDICATED_MAX`).
    idle: Mutex<Vec<MultiplexedConnection>>,
    /// One per connection lent out.
    permits: Semaphore,
}

/// A connection lent to one request; back to the idle list on drop unless discarded.
pub struct DedicatedConnection<'a> {
    con: Option<MultiplexedConnection>,
    idle: &'a Mutex<Vec<MultiplexedConnection>>,
    _permit: SemaphorePermit<'a>,
}

impl DedicatedConnection<'_> {
    pub fn con(&mut self) -> &mut MultiplexedConnection {
        self.con.as_mut().expect("present until dropped")
    }

    /// Closes it instead of lending it again (after an error it may be broken or mid-WATCH).
    pub fn discard(mut self) {
        self.con = None;
    }
}

impl Drop for DedicatedConnection<'_> {
    fn drop(&mut self) {
        if let Some(con) = self.con.take() {
            self.idle.lock().expect("idle connections lock").push(con);
        }
    }
}
