//! `redis-list` — the stock is a Redis list of unit tokens; `LPOP` claims one.
//!
//! The item's units are pre-loaded as a list. A request is turned away if the buyer set has the
//! user; otherwise it pops a token — `LPOP` is atomic, so two requests never get the same unit
//! and an empty list is simply sold out, with no counter to race past zero. Then it adds the user
//! to the buyer set; if the user was already added (a second request of the same user popped a
//! token in the same instant) the token goes back. The purchase is written to PostgreSQL
//! ([`persist_or_undo`]: a failed write pushes the token back and removes the buyer). Under
//! contention every step is one Redis command, with no retries and no script; the price is that
//! the steps are separate, so a token pushed back is briefly out of the list, and a request
//! arriving in that instant is told sold out.

use std::sync::Arc;

use redis::AsyncCommands;
use sqlx::PgPool;

use super::redis_store::{RedisStore, persist_or_undo};
use super::{PathError, PurchasePath, record_outcome, record_repeat_buyer};
use crate::domain::{OrderRequest, Outcome, Status};
use crate::sale::PathName;

pub struct RedisList {
    pool: PgPool,
    redis: Arc<RedisStore>,
}

impl RedisList {
    pub fn new(pool: PgPool, redis: Arc<RedisStore>) -> Self {
        Self { pool, redis }
    }
}

#[async_trait::async_trait]
impl PurchasePath for RedisList {
    fn name(&self) -> PathName {
        PathName::RedisList
    }

    async fn repair_buyer(&self, request: &OrderRequest) -> Result<bool, PathError> {
        self.redis
            .repair_buyer(&self.pool, request.item_id, &request.user_id)
            .await
    }

    async fn purchase(&self, request: &OrderRequest) -> Result<Outcome, PathError> {
        let (keys, user) = (self.redis.keys(request.item_id), &request.user_id);
        let mut con = self.redis.connection();
        let check = || {
            redis::pipe()
                .sismember(&keys.buyers, user)
                .exists(&keys.stock)
                .clone()
        };
        let (mut is_buyer, mut loaded): (bool, bool) = check().query_async(&mut con).await?;
        if !loaded {
            self.redis
                .load_item(&self.pool, request.item_id, false)
                .await?;
            (is_buyer, loaded) = check().query_async(&mut con).await?;
        }
        if !loaded {
            let message = format!("item {} could not be loaded into Redis", request.item_id);
            return Err(PathError::Unavailable(message));
        }
        if is_buyer {
            return record_repeat_buyer(&self.pool, self.name(), request).await;
        }

        let Some(token): Option<String> = con.lpop(&keys.tokens, None).await? else {
            return record_outcome(&self.pool, self.name(), request, Status::SoldOut, None).await;
        };
        let added: bool = con.sadd(&keys.buyers, user).await?;
        if !added {
            let _: i64 = con.lpush(&keys.tokens, &token).await?;
            return record_repeat_buyer(&self.pool, self.name(), request).await;
        }
        let mut give_back = redis::pipe();
        give_back.lpush(&keys.tokens, &token);
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
}
