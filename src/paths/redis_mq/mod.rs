//! `redis-mq` — qiurunze123/miaosha's design (and its many copies): Redis pre-deducts, a
//! RabbitMQ queue carries the purchase to competing consumers, the buyer polls for the result.
//!
//! At the API, for each request: record it in the accepted-request log (so `GET /orders/{id}`
//! says `pending`, and a retry of the id is answered from the store, never decremented again);
//! the item's in-process sold-out flag, if set, answers `sold_out` at once; `SADD` of the user
//! to the item's buyer set, which checks that the user has not bought and claims the purchase
//! in one command; `DECR` of the item's stock in Redis — below zero, the unit is put back
//! (`INCR`) in the same script, the claim given back, the flag set and `sold_out` answered; then
//! a persistent message, confirmed by the broker, on `{prefix}.redis-mq`, and `202 pending`. A
//! publish the broker refused gives the unit and the claim back and withdraws the accepted
//! record (503). The [`consumers`] decide it later, in PostgreSQL, which has the last word.
//!
//! Why it is fast: a sold-out item costs one in-memory look-up and a write of its outcome; a
//! sale costs two Redis round trips and a publish, and the API never waits on the item's row.
//! Under contention nothing waits on a lock at the door; the queue absorbs the burst, and the
//! consumers' conditional updates queue on the item's row one message at a time.
//!
//! Where it is fragile (see `docs/ARCHITECTURE.md`): the flag is per process and never expires
//! (a unit given back after another process set its flag is not sold there); a process that
//! dies between `DECR` and the publish leaves the request on no queue, `pending` with its unit
//! taken until the buyer retries the id (a retry publishes an undecided request again), and
//! for good if the buyer never does (the audit reports it); a grant the database refuses
//! leaves Redis one unit short; Redis without persistence restarts empty, and the per-process "loaded" mark does not
//! notice — `seckill redis-load` puts the stock back.
//!
//! Deviations from miaosha, each to keep a unit from going unsold:
//! - Miaosha decrements, then reads "has this user an order?", and a repeat request keeps the
//!   unit it took (zaiyunduan123/springboot-seckill #35). Here the check comes first and is
//!   `SADD`, a check and a claim in one command: a repeat request takes no unit. It is answered
//!   `already_purchased` if the user's order is committed, and is otherwise queued holding no
//!   unit: the consumers' unique (item, user) key decides it. Checking after the `DECR` and
//!   giving the unit back is not enough: while a repeat request holds a unit it will give back,
//!   the requests that miss it set the flag, and every later one is told `sold_out` with the
//!   unit in Redis (`tests/redis_mq.rs` found items of 2 units left one short in every run).
//! - The `DECR` and the `INCR` that undoes it below zero run as one script ([`TAKE_UNIT`]), so
//!   no request ever sees a count that another's miss pushed below zero: a miss means no unit.

pub mod consumers;
mod queue;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use redis::Script;
use redis::aio::ConnectionManager;
use sqlx::PgPool;

use super::redis_store::{ItemKeys, RedisStore};
use super::{Answer, PathError, PurchasePath, record_outcome, record_repeat_buyer};
use crate::api::accepted::{AcceptedLog, Recorded};
use crate::config::BrokerArgs;
use crate::domain::{ItemId, OrderRequest, Outcome, Status};
use crate::sale::PathName;
use crate::store;
use queue::{QueueLink, Unpublished};

/// Most items whose flags one process keeps; past it they are all forgotten (a flag is only a
/// shortcut: a forgotten one costs a `DECR`, a forgotten "loaded" mark a load that finds the
/// item there).
const GATES_MAX: usize = 100_000;

/// `DECR` of the stock, undone (`INCR`) at once if it went below zero; returns what the `DECR`
/// returned. One script, so that a miss is never seen by another request: every `DECR` below
/// zero means no unit was in Redis at that moment.
static TAKE_UNIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local left = redis.call('DECR', KEYS[1])
        if left < 0 then
            redis.call('INCR', KEYS[1])
        end
        return left
        ",
    )
});

/// What this process knows of one item.
#[derive(Debug, Default, Clone, Copy)]
struct Gate {
    /// Redis holds the item (this process loaded it, or found it there).
    loaded: bool,
    /// A `DECR` went below zero: answer `sold_out` without asking Redis.
    sold_out: bool,
    /// Units this process gave back to Redis (a publish the broker refused). A request whose
    /// `DECR` went below zero sets the flag only if none was given back since it read this: the
    /// unit it missed may have been held by a request whose publish then failed, and is for
    /// sale again.
    given_back: u64,
}

impl Gate {
    /// A request that read `given_back_seen` before its `DECR` went below zero: the item is
    /// sold out, unless a unit was given back since (it may be for sale again).
    fn missed_unit(&mut self, given_back_seen: u64) {
        if self.given_back == given_back_seen {
            self.sold_out = true;
        }
    }

    /// A unit went back to Redis: it is for sale again.
    fn gave_back(&mut self) {
        self.given_back += 1;
        self.sold_out = false;
    }
}

pub struct RedisMq {
    pool: PgPool,
    redis: Arc<RedisStore>,
    /// The confirming channel to the path's queue, opened on first use.
    queue: QueueLink,
    /// The accepted-request log, started on first use (it needs the runtime).
    accepted: OnceLock<AcceptedLog>,
    gates: Mutex<HashMap<ItemId, Gate>>,
}

/// What a request took from Redis: what must be undone if its publish fails.
enum Took {
    /// Nothing: a repeat buyer's request, queued for the consumers' unique key to decide.
    Nothing,
    /// The user's place in the buyer set, no unit yet.
    Claim,
    /// The claim and a unit of the stock.
    UnitAndClaim,
}

impl RedisMq {
    /// Connects nothing: Redis and the broker are reached by the first request.
    pub fn new(pool: PgPool, redis: Arc<RedisStore>, broker: &BrokerArgs) -> Self {
        Self {
            pool,
            redis,
            queue: QueueLink::new(broker),
            accepted: OnceLock::new(),
            gates: Mutex::default(),
        }
    }

    fn gate(&self, item_id: ItemId) -> Gate {
        let gates = self.gates.lock().expect("gates lock");
        gates.get(&item_id).copied().unwrap_or_default()
    }

    fn update_gate(&self, item_id: ItemId, change: impl FnOnce(&mut Gate)) {
        let mut gates = self.gates.lock().expect("gates lock");
        if gates.len() >= GATES_MAX && !gates.contains_key(&item_id) {
            gates.clear();
        }
        change(gates.entry(item_id).or_default());
    }

    /// After the request was recorded as new: the flag, the claim, the `DECR`, the publish.
    /// On an error, whatever it took from Redis has been given back, or (`Err(.., true)`) the
    /// broker may hold the request, and it stays recorded.
    async fn sell(&self, request: &OrderRequest) -> Result<Answer, (PathError, bool)> {
        let item_id = request.item_id;
        let gate = self.gate(item_id);
        if gate.sold_out {
            return self.sold_out(request).await.map_err(|e| (e, false));
        }
        if !gate.loaded {
            self.redis
                .load_item(&self.pool, item_id, false)
                .await
                .map_err(|e| (e, false))?;
            self.update_gate(item_id, |g| g.loaded = true);
        }
        let keys = self.redis.keys(item_id);
        let mut con = self.redis.connection();
        let claimed: i64 = redis::cmd("SADD")
            .arg(&keys.buyers)
            .arg(&request.user_id)
            .query_async(&mut con)
            .await
            .map_err(|e| (e.into(), false))?;
        let took = if claimed == 1 {
            let took_unit = self
                .take_unit(&mut con, &keys, request, gate.given_back)
                .await
                .map_err(|e| (e, false))?;
            if !took_unit {
                return self.sold_out(request).await.map_err(|e| (e, false));
            }
            Took::UnitAndClaim
        } else {
            // Bought before, or buying now: answered from PostgreSQL if the order is
            // committed, else queued holding no unit (the consumers' unique key decides it).
            match record_repeat_buyer(&self.pool, self.name(), request).await {
                Ok(outcome) => return Ok(Answer::Decided(outcome)),
                Err(PathError::BuyerInFlight) => Took::Nothing,
                Err(e) => return Err((e, false)),
            }
        };
        match self.queue.publish(request).await {
            Ok(()) => Ok(Answer::Pending),
            Err(Unpublished::MaybeHeld(detail)) => Err((PathError::Unavailable(detail), true)),
            Err(Unpublished::NotHeld(detail)) => {
                self.give_back(request, took).await;
                Err((PathError::Unavailable(detail), false))
            }
        }
    }

    /// For a request holding the user's claim, a unit of the stock ([`TAKE_UNIT`]): true if it
    /// got one. If none was left, the claim is given back and the flag set, unless a unit was
    /// given back since `given_back_seen` was read (it is for sale again). On an error, the
    /// claim is given back.
    async fn take_unit(
        &self,
        con: &mut ConnectionManager,
        keys: &ItemKeys,
        request: &OrderRequest,
        given_back_seen: u64,
    ) -> Result<bool, PathError> {
        let left: Result<i64, _> = TAKE_UNIT.key(&keys.stock).invoke_async(con).await;
        match left {
            Ok(left) if left >= 0 => Ok(true),
            Ok(_) => {
                self.give_back(request, Took::Claim).await;
                self.update_gate(request.item_id, |g| g.missed_unit(given_back_seen));
                Ok(false)
            }
            Err(e) => {
                self.give_back(request, Took::Claim).await;
                Err(e.into())
            }
        }
    }

    /// Gives back what a request took from Redis; a unit given back clears this process's
    /// flag, so it is sold again. If Redis cannot be reached, a unit stays missing until
    /// `seckill redis-load` (an undersell, never an oversell), and a claim stays: the user's
    /// later requests are queued holding no unit, and the consumers' unique key decides them.
    async fn give_back(&self, request: &OrderRequest, took: Took) {
        let keys = self.redis.keys(request.item_id);
        let mut undo = redis::pipe();
        let unit = match took {
            Took::Nothing => return,
            Took::Claim => {
                undo.srem(&keys.buyers, &request.user_id).ignore();
                false
            }
            Took::UnitAndClaim => {
                undo.incr(&keys.stock, 1)
                    .ignore()
                    .srem(&keys.buyers, &request.user_id)
                    .ignore();
                true
            }
        };
        let mut con = self.redis.connection();
        if let Err(e) = undo.exec_async(&mut con).await {
            tracing::error!(error = %e, item_id = request.item_id, unit,
                "redis-mq: could not give back to Redis what a request took: a unit undersells this item until `seckill redis-load`");
            return;
        }
        if unit {
            self.update_gate(request.item_id, Gate::gave_back);
        }
    }

    async fn sold_out(&self, request: &OrderRequest) -> Result<Answer, PathError> {
        let outcome =
            record_outcome(&self.pool, self.name(), request, Status::SoldOut, None).await?;
        Ok(Answer::Decided(outcome))
    }

    /// A request recorded before (a retry): its stored decision, or, still undecided, published
    /// again and `pending`. Its first message may be in the queue, but it may also be gone: with
    /// a broker that went down before confirming it (the `503` that says it may still be
    /// decided), or with an API process that died between recording it and publishing. The
    /// consumers decide a request id once, so a second copy costs a read and an ack; a lost one
    /// would leave the buyer polling `pending` for good. The queue path's API does the same.
    async fn answer_retry(&self, request: &OrderRequest) -> Result<Answer, PathError> {
        let id = request.request_id;
        if let Some(outcome) = store::stored_outcomes(&self.pool, &[id]).await?.remove(&id) {
            return Ok(Answer::Decided(outcome));
        }
        match self.queue.publish(request).await {
            Ok(()) => Ok(Answer::Pending),
            // Recorded either way: the first message may be queued, and the next retry
            // publishes again.
            Err(Unpublished::MaybeHeld(detail) | Unpublished::NotHeld(detail)) => {
                Err(PathError::Unavailable(detail))
            }
        }
    }
}

#[async_trait::async_trait]
impl PurchasePath for RedisMq {
    fn name(&self) -> PathName {
        PathName::RedisMq
    }

    /// The decision itself, for callers that need one (`paths::decide`): the request is
    /// answered as the API answers it, then its decision awaited in the store, within
    /// [`consumers::DECISION_WAIT`] (else 503: it stays `pending`, and may still be decided).
    async fn purchase(&self, request: &OrderRequest) -> Result<Outcome, PathError> {
        match self.answer(request).await? {
            Answer::Decided(outcome) => Ok(outcome),
            Answer::Pending => consumers::await_decision(&self.pool, request.request_id).await,
        }
    }

    async fn answer(&self, request: &OrderRequest) -> Result<Answer, PathError> {
        let log = self
            .accepted
            .get_or_init(|| AcceptedLog::start(self.pool.clone()));
        let recorded = log
            .record(request.clone())
            .await
            .map_err(PathError::Unavailable)?;
        if recorded == Recorded::Before {
            return self.answer_retry(request).await;
        }
        match self.sell(request).await {
            Ok(answer) => Ok(answer),
            Err((error, maybe_held)) => {
                if !maybe_held
                    && let Err(e) = store::withdraw_accepted(&self.pool, request.request_id).await
                {
                    // Left pending: a retry with the same id is answered `pending`, and the
                    // audit reports the request as undecided.
                    tracing::warn!(error = %e, "redis-mq: cannot withdraw a request that was not queued");
                }
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Gate;

    #[test]
    fn a_unit_given_back_while_a_request_missed_it_leaves_the_item_for_sale() {
        // Missed with nothing given back: sold out.
        let mut gate = Gate::default();
        gate.missed_unit(gate.given_back);
        assert!(gate.sold_out);

        // A give-back after the request looked, before it set the flag: no flag.
        let mut gate = Gate::default();
        let seen = gate.given_back;
        gate.gave_back();
        gate.missed_unit(seen);
        assert!(!gate.sold_out);

        // A give-back after the flag was set: it clears it.
        let mut gate = Gate::default();
        gate.missed_unit(gate.given_back);
        gate.gave_back();
        assert!(!gate.sold_out);
    }
}
