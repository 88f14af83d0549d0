//! The `redis-mq` path's consumers: several compete for the messages of its one queue (no
//! single active consumer, no order), and each decides one message at a time in PostgreSQL, as
//! miaosha's listener does — the database, not Redis, has the last word.
//!
//! One message, one transaction: the conditional stock update (`... WHERE stock_remaining >=
//! 1`: none left is `sold_out`), then the order insert, whose unique (item, user) key refuses a
//! second order (`already_purchased`, and the update is rolled back), then the outcome. Only
//! after the commit is the buyer added to the Redis set and the message acked, so a consumer
//! killed at any point leaves its unacked messages to the others: one already decided (its
//! request id has an outcome) is acked without a second write. A message that cannot be decoded
//! is rejected without requeue — dead-lettered, never redelivered forever. The consumers watch
//! their connection (lapin issue #389) and reconnect with capped, jittered back-off.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff;
use crate::broker::message::{self, Decoded};
use crate::broker::{self, topology::Topology};
use crate::config::{BrokerArgs, RivalArgs};
use crate::domain::{OrderRequest, Outcome, Status};
use crate::paths::redis_store::RedisStore;
use crate::paths::{PathError, insert_order, record_outcome};
use crate::sale::PathName;
use crate::store;

/// Longest [`await_decision`] waits for the consumers.
pub const DECISION_WAIT: Duration = Duration::from_secs(30);

/// The path's decision of `request_id`, once a consumer stored it; 503 past [`DECISION_WAIT`]
/// (the request stays `pending` and may still be decided).
pub async fn await_decision(pool: &PgPool, request_id: uuid::Uuid) -> Result<Outcome, PathError> {
    let deadline = Instant::now() + DECISION_WAIT;
    for attempt in 0.. {
        if let Some(outcome) = store::stored_outcomes(pool, &[request_id])
            .await?
            .remove(&request_id)
        {
            return Ok(outcome);
        }
        if Instant::now() >= deadline {
            break;
        }
        let pause = backoff::delay(
            attempt,
            Duration::from_millis(5),
            Duration::from_millis(200),
        );
        tokio::time::sleep(pause).await;
    }
    Err(PathError::Unavailable(
        "the request is queued but was not decided in time; it stays pending".into(),
    ))
}

/// The consumers of one process.
pub struct Consumers {
    pool: PgPool,
    amqp_url: String,
    topology: Topology,
    /// Where the buyer is added after a purchase commits.
    redis: Arc<RedisStore>,
    count: u16,
    prefetch: u16,
}

impl Consumers {
    pub fn new(
        pool: PgPool,
        broker: &BrokerArgs,
        rivals: &RivalArgs,
        redis: Arc<RedisStore>,
    ) -> Self {
        Self {
            pool,
            amqp_url: broker.amqp_url.clone(),
            topology: Topology::new(broker),
            redis,
            count: rivals.redis_mq_consumers,
            prefetch: rivals.redis_mq_prefetch,
        }
    }

    /// Consumes until `shutdown`: then each consumer finishes (commits and acks) the message it
    /// is on. A lost broker connection is opened again, with back-off.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let this = Arc::new(self);
        let mut failures = 0;
        loop {
            let ended = Arc::clone(&this).run_connected(&shutdown).await;
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let pause = backoff::delay(
                failures,
                Duration::from_millis(200),
                Duration::from_secs(10),
            );
            failures = if ended.connected { 1 } else { failures + 1 };
            tracing::warn!(error = %format!("{:#}", ended.error), retry_in_ms = pause.as_millis() as u64,
                "redis-mq consumers lost the broker; reconnecting");
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One connection's life: its consumers, until shutdown or until it or one of them fails.
    async fn run_connected(self: Arc<Self>, shutdown: &CancellationToken) -> Ended {
        let name = format!(
            "seckill-redis-mq-consumers {}",
            self.topology.redis_mq_queue()
        );
        let connection = match broker::connect(&self.amqp_url, &name).await {
            Ok(connection) => connection,
            Err(error) => {
                return Ended {
                    connected: false,
                    error,
                };
            }
        };
        let stop = shutdown.child_token();
        let mut consumers = JoinSet::new();
        for index in 0..self.count {
            let subscribed = match self.subscribe(&connection, index).await {
                Ok(subscribed) => subscribed,
                Err(error) => {
                    stop.cancel();
                    consumers.join_all().await;
                    let _ = connection
                        .close(200, "seckill redis-mq consumers".into())
                        .await;
                    return Ended {
                        connected: false,
                        error,
                    };
                }
            };
            consumers.spawn(Arc::clone(&self).consume(subscribed, stop.clone()));
        }
        tracing::info!(consumers = self.count, queue = %self.topology.redis_mq_queue(), "redis-mq consumers connected");
        let mut events = connection.events_listener();
        let error = loop {
            tokio::select! {
                _ = stop.cancelled() => break anyhow::anyhow!("stopped"),
                Some(ended) = consumers.join_next() => match ended {
                    Ok(Err(e)) => break e,
                    Ok(Ok(())) => break anyhow::anyhow!("a consumer ended"),
                    Err(e) => break e.into(),
                },
                Some(event) = events.next() => {
                    if let lapin::Event::Error(e) = event {
                        break anyhow::anyhow!("broker connection error: {e}");
                    }
                }
            }
        };
        // The others finish the message they are on; unacked ones go back to the queue.
        stop.cancel();
        while consumers.join_next().await.is_some() {}
        let _ = connection
            .close(200, "seckill redis-mq consumers stopping".into())
            .await;
        Ended {
            connected: true,
            error,
        }
    }

    /// A channel of its own for consumer `index`, its prefetch set, subscribed.
    async fn subscribe(
        &self,
        connection: &lapin::Connection,
        index: u16,
    ) -> anyhow::Result<(lapin::Channel, lapin::Consumer)> {
        let channel = connection.create_channel().await?;
        self.topology.declare_redis_mq(&channel).await?;
        // Per consumer (global: false), before consuming.
        channel
            .basic_qos(self.prefetch, BasicQosOptions { global: false })
            .await?;
        let consumer = channel
            .basic_consume(
                self.topology.redis_mq_queue().into(),
                format!("seckill-redis-mq-{index}").as_str().into(),
                // Acked by hand, after the commit; shared with the other consumers.
                BasicConsumeOptions {
                    no_ack: false,
                    exclusive: false,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok((channel, consumer))
    }

    /// Decides message after message until `stop`, or until the channel fails.
    async fn consume(
        self: Arc<Self>,
        (_channel, mut consumer): (lapin::Channel, lapin::Consumer),
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                next = consumer.next() => next,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => anyhow::bail!("consuming the redis-mq queue: {e}"),
                None => anyhow::bail!("the broker cancelled a redis-mq consumer"),
            };
            self.settle(delivery, &stop).await?;
        }
    }

    /// Decides one delivery and acks it, or rejects it (no requeue) if it is no request.
    /// Returns without either only when stopping: the message is then redelivered.
    async fn settle(&self, delivery: Delivery, stop: &CancellationToken) -> anyhow::Result<()> {
        let request = match message::decode(&delivery.properties, &delivery.data) {
            Ok(Decoded::One(request)) if request.quantity == 1 => request,
            decoded => {
                let reason = match decoded {
                    Err(e) => e.to_string(),
                    Ok(_) => "a redis-mq message is one request for one unit".into(),
                };
                tracing::warn!(%reason, "redis-mq: rejecting a message that is no request (dead-lettered)");
                delivery
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
                return Ok(());
            }
        };
        let Some(decided) = self.decide_retrying(&request, stop).await else {
            return Ok(());
        };
        match decided {
            Ok(outcome) => {
                self.after_commit(&request, outcome).await;
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Err(e) => {
                tracing::error!(error = %e, request_id = %request.request_id,
                    "redis-mq: a request that cannot be decided is rejected (dead-lettered); it stays pending");
                delivery
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
            }
        }
        Ok(())
    }

    /// [`decide`], tried again while the database is unavailable; `None` if asked to stop
    /// meanwhile. An error is one that no retry can mend.
    async fn decide_retrying(
        &self,
        request: &OrderRequest,
        stop: &CancellationToken,
    ) -> Option<Result<Outcome, PathError>> {
        for attempt in 0.. {
            match decide(&self.pool, request).await {
                Err(PathError::Unavailable(detail)) => {
                    let pause =
                        backoff::delay(attempt, Duration::from_millis(50), Duration::from_secs(5));
                    tracing::warn!(%detail, retry_in_ms = pause.as_millis() as u64, "redis-mq: database unavailable; deciding again");
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
                other => return Some(other),
            }
        }
        None
    }

    /// The buyer joins the Redis set (for a purchase, or an `already_purchased`: the user holds
    /// an order either way) or leaves it (a grant the database refused as sold out, when the
    /// user holds no order): best effort, as the database already decided. Redelivered, a
    /// purchase is added again, so a consumer killed between its commit and this step loses
    /// nothing. Adding the holder of an order again also mends a set that lost them (a
    /// request of theirs that missed the stock gave its claim back while another of theirs was
    /// bought): without it each later request of theirs would take a unit and be refused.
    async fn after_commit(&self, request: &OrderRequest, outcome: Outcome) {
        let buyers = self.redis.keys(request.item_id).buyers;
        let mut con = self.redis.connection();
        let written: Result<(), redis::RedisError> = match outcome.status {
            Status::Purchased | Status::AlreadyPurchased => {
                redis::cmd("SADD")
                    .arg(&buyers)
                    .arg(&request.user_id)
                    .query_async(&mut con)
                    .await
            }
            Status::SoldOut => match holds_order(&self.pool, request).await {
                Ok(false) => {
                    redis::cmd("SREM")
                        .arg(&buyers)
                        .arg(&request.user_id)
                        .query_async(&mut con)
                        .await
                }
                _ => Ok(()),
            },
            _ => Ok(()),
        };
        if let Err(e) = written {
            tracing::warn!(error = %e, item_id = request.item_id,
                "redis-mq: could not update the Redis buyer set after a decision");
        }
    }
}

/// How one connection's life ended.
struct Ended {
    /// Whether its consumers were subscribed (the back-off starts over).
    connected: bool,
    error: anyhow::Error,
}

/// Decides one request in one transaction, idempotently: a request id with a stored outcome
/// gets it back and writes nothing.
pub async fn decide(pool: &PgPool, request: &OrderRequest) -> Result<Outcome, PathError> {
    let id = request.request_id;
    if let Some(outcome) = store::stored_outcomes(pool, &[id]).await?.remove(&id) {
        return Ok(outcome);
    }
    settled(pool, id, decide_once(pool, request).await).await
}

/// The transaction; dropped (rolled back) on any error.
async fn decide_once(pool: &PgPool, request: &OrderRequest) -> Result<Outcome, PathError> {
    let path = PathName::RedisMq;
    let mut tx = pool.begin().await?;
    let sold = sqlx::query(
        "UPDATE items SET stock_remaining = stock_remaining - 1, sold = sold + 1
         WHERE id = $1 AND stock_remaining >= 1",
    )
    .bind(request.item_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if sold == 0 {
        let outcome = record_outcome(&mut *tx, path, request, Status::SoldOut, None).await?;
        tx.commit().await?;
        return Ok(outcome);
    }
    let Some(order_id) = insert_order(&mut *tx, request).await? else {
        // The unique key's word: the user holds a committed order. The unit goes back.
        tx.rollback().await?;
        return record_outcome(pool, path, request, Status::AlreadyPurchased, None).await;
    };
    let outcome =
        record_outcome(&mut *tx, path, request, Status::Purchased, Some(order_id)).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// A decision, or for one that lost to a concurrent decision of the same id, the winner's.
async fn settled(
    pool: &PgPool,
    id: uuid::Uuid,
    decided: Result<Outcome, PathError>,
) -> Result<Outcome, PathError> {
    match decided {
        Err(PathError::AlreadyDecided) => store::stored_outcomes(pool, &[id])
            .await?
            .remove(&id)
            .ok_or_else(|| {
                PathError::Unavailable("a concurrent decision is not visible yet".into())
            }),
        other => other,
    }
}

async fn holds_order(pool: &PgPool, request: &OrderRequest) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM orders WHERE item_id = $1 AND user_id = $2)")
        .bind(request.item_id)
        .bind(&request.user_id)
        .fetch_one(pool)
        .await
}
