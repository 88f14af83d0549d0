//! `redis-lua` — one Lua script decides in Redis, atomically; PostgreSQL records it after.
//!
//! The script checks the buyer set, then the stock, then decrements the stock and adds the buyer.
//! Redis runs a script alone, so no request sees a half-made decision and the stock cannot race
//! past zero (the `DECR`-then-check bug). Only granted purchases reach PostgreSQL, through the
//! conditional path's transaction; if that write fails or is refused, the unit is given back and
//! the buyer removed ([`persist_or_undo`]), so Redis and the database agree when the request
//! ends. Under contention requests queue in Redis's single thread for microseconds each, and
//! sold-out and repeat-buyer answers never touch the item's row: the fastest lock-based path.

use std::sync::{Arc, LazyLock};

use redis::Script;
use sqlx::PgPool;

use super::redis_store::{ItemKeys, RedisStore, persist_or_undo};
use super::{PathError, PurchasePath, record_outcome, record_repeat_buyer};
use crate::domain::{OrderRequest, Outcome, Status};
use crate::sale::PathName;

/// KEYS: stock, buyers. ARGV: user. 1 granted, 0 sold out, -1 already a buyer, -2 not loaded.
static DECIDE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local stock = redis.call('GET', KEYS[1])
if not stock then return -2 end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return -1 end
if tonumber(stock) <= 0 then return 0 end
redis.call('DECR', KEYS[1])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
",
    )
});
const NOT_LOADED: i64 = -2;

pub struct RedisLua {
    pool: PgPool,
    redis: Arc<RedisStore>,
}

impl RedisLua {
    pub fn new(pool: PgPool, redis: Arc<RedisStore>) -> Self {
        Self { pool, redis }
    }

    async fn decide_in_redis(&self, keys: &ItemKeys, user_id: &str) -> Result<i64, PathError> {
        let mut con = self.redis.connection();
        let mut invocation = DECIDE.prepare_invoke();
        invocation.key(&keys.stock).key(&keys.buyers).arg(user_id);
        Ok(invocation.invoke_async(&mut con).await?)
    }
}

#[async_trait::async_trait]
impl PurchasePath for RedisLua {
    fn name(&self) -> PathName {
        PathName::RedisLua
    }

    async fn repair_buyer(&self, request: &OrderRequest) -> Result<bool, PathError> {
        self.redis
            .repair_buyer(&self.pool, request.item_id, &request.user_id)
            .await
    }

    async fn purchase(&self, request: &OrderRequest) -> Result<Outcome, PathError> {
        let keys = self.redis.keys(request.item_id);
        let mut verdict = self.decide_in_redis(&keys, &request.user_id).await?;
        if verdict == NOT_LOADED {
            self.redis
                .load_item(&self.pool, request.item_id, false)
                .await?;
            verdict = self.decide_in_redis(&keys, &request.user_id).await?;
        }
        match verdict {
            1 => {
                let mut give_back = redis::pipe();
                give_back.incr(&keys.stock, 1);
                let mut con = self.redis.connection();
                persist_or_undo(
                    &self.pool,
                    self.name(),
                    request,
                    &mut con,
                    &keys.buyers,
                    &give_back,
                )
                .await
            }
            0 => record_outcome(&self.pool, self.name(), request, Status::SoldOut, None).await,
            -1 => record_repeat_buyer(&self.pool, self.name(), request).await,
            _ => Err(PathError::Unavailable(format!(
                "item {} could not be loaded into Redis",
                request.item_id
            ))),
        }
    }
}
