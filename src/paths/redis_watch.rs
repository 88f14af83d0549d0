//! `redis-watch` — optimistic concurrency in Redis: WATCH, read, MULTI … EXEC, retry on abort.
//!
//! On a connection of its own (a WATCH covers everything sent on its connection, so it cannot
//! share the multiplexed one), WATCH the item's stock and buyer set, read both, decide, and
//! `MULTI; DECR stock; SADD buyers user; EXEC`. Redis aborts the EXEC if either key changed since
//! the WATCH; the request then waits a jittered, growing delay and starts over, at most
//! `retries_max` times, then answers `failed_retry`. A granted purchase is written to PostgreSQL
//! ([`persist_or_undo`]: a failed write gives the unit back and removes the buyer). Under
//! contention every sale aborts the transactions of all requests that read before it, so, as
//! with `optimistic`, a hot item burns retries; reads and sold-out answers cost no retry.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use sqlx::PgPool;

use super::redis_store::{RedisStore, persist_or_undo};
use super::{PathError, PurchasePath, record_outcome, record_repeat_buyer};
use crate::backoff;
use crate::domain::{OrderRequest, Outcome, Status};
use crate::sale::PathName;

/// First and largest delay before a retry.
const RETRY_DELAY_BASE: Duration = Duration::from_millis(1);
const RETRY_DELAY_CAP: Duration = Duration::from_millis(50);

pub struct RedisWatch {
    pool: PgPool,
    redis: Arc<RedisStore>,
    retries_max: u32,
}

/// What the Redis transaction decided.
enum RedisDecision {
    Granted,
    Refused(Status),
    NotLoaded,
}

impl RedisWatch {
    pub fn new(pool: PgPool, redis: Arc<RedisStore>, retries_max: u32) -> Self {
        Self {
            pool,
            redis,
            retries_max,
        }
    }

    /// The WATCH/MULTI/EXEC loop, on a dedicated connection.
    async fn decide_in_redis(
        &self,
        con: &mut MultiplexedConnection,
        request: &OrderRequest,
    ) -> Result<RedisDecision, PathError> {
        let (keys, user) = (self.redis.keys(request.item_id), &request.user_id);
        for attempt in 0..=self.retries_max {
            if attempt > 0 {
                let delay = backoff::delay(attempt - 1, RETRY_DELAY_BASE, RETRY_DELAY_CAP);
                tokio::time::sleep(delay).await;
            }
            redis::cmd("WATCH")
                .arg(&keys.stock)
                .arg(&keys.buyers)
                .exec_async(con)
                .await?;
            let (stock, is_buyer): (Option<i64>, bool) = redis::pipe()
                .get(&keys.stock)
                .sismember(&keys.buyers, user)
                .query_async(con)
                .await?;
            let refused = match stock {
                None => Some(RedisDecision::NotLoaded),
                Some(_) if is_buyer => Some(RedisDecision::Refused(Status::AlreadyPurchased)),
                Some(stock) if stock <= 0 => Some(RedisDecision::Refused(Status::SoldOut)),
                Some(_) => None,
            };
            if let Some(decision) = refused {
                redis::cmd("UNWATCH").exec_async(con).await?;
                return Ok(decision);
            }
            // `None`: EXEC was aborted, a watched key changed since the WATCH.
            let executed: Option<(i64, i64)> = redis::pipe()
                .atomic()
                .decr(&keys.stock, 1)
                .sadd(&keys.buyers, user)
                .query_async(con)
                .await?;
            if executed.is_some() {
                return Ok(RedisDecision::Granted);
            }
        }
        Ok(RedisDecision::Refused(Status::FailedRetry))
    }
}

#[async_trait::async_trait]
impl PurchasePath for RedisWatch {
    fn name(&self) -> PathName {
        PathName::RedisWatch
    }

    async fn repair_buyer(&self, request: &OrderRequest) -> Result<bool, PathError> {
        self.redis
            .repair_buyer(&self.pool, request.item_id, &request.user_id)
            .await
    }

    async fn purchase(&self, request: &OrderRequest) -> Result<Outcome, PathError> {
        let mut lent = self.redis.dedicated().await?;
        let mut decision = self.decide_in_redis(lent.con(), request).await;
        if let Ok(RedisDecision::NotLoaded) = decision {
            self.redis
                .load_item(&self.pool, request.item_id, false)
                .await?;
            decision = self.decide_in_redis(lent.con(), request).await;
        }
        let decision = match decision {
            Ok(decision) => decision,
            Err(e) => {
                lent.discard(); // it may be broken, or still WATCHing
                return Err(e);
            }
        };
        drop(lent);
        match decision {
            RedisDecision::Granted => {
                let keys = self.redis.keys(request.item_id);
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
            RedisDecision::Refused(Status::AlreadyPurchased) => {
                record_repeat_buyer(&self.pool, self.name(), request).await
            }
            RedisDecision::Refused(status) => {
                record_outcome(&self.pool, self.name(), request, status, None).await
            }
            RedisDecision::NotLoaded => Err(PathError::Unavailable(format!(
                "item {} could not be loaded into Redis",
                request.item_id
            ))),
        }
    }
}
