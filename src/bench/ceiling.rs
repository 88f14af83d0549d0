//! The ceilings the queue path sits under, measured in the same run as the paths:
//! - broker alone: publish with confirms → consume → ack, same queue settings, no database, in
//!   both message shapes: one request per message, and the API's batches (the broker's cost is
//!   per message, so the two differ by far more than their request counts suggest);
//! - database alone: the consumer's decide + group commit of the same requests, no broker;
//! - HTTP alone (see [`super::http_alone`]): the bench's own client against an endpoint that
//!   does no work.
//!
//! And the consumer alone: a partition queue pre-filled with the requests, drained by the real
//! consumer (broker + decide + commit, no HTTP, no producer competing for the CPU).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::decided::{wait_decided, wait_requests_decided};
use super::scenario::{Attempt, ScenarioSpec};
use crate::app::{App, Settings};
use crate::broker::{self, message, publisher::Publisher, topology::Topology};
use crate::config::{BrokerArgs, ConsumerArgs, PublishArgs};
use crate::consumer::sequencer::Sequencer;
use crate::domain::OrderRequest;
use crate::store;

/// Most publishes awaiting their confirm at once.
const CONFIRMS_IN_FLIGHT_MAX: usize = 1000;

/// Fewest messages a broker ceiling is measured with: shorter runs are mostly ramp-up.
const CEILING_MESSAGES_MIN: usize = 30_000;
/// Fewest batch messages the batched broker ceiling is measured with.
const CEILING_BATCH_MESSAGES_MIN: usize = 5_000;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Ceilings {
    /// Broker alone: publish-confirm → consume → ack at once, one request per message, messages
    /// (= requests) per second.
    pub broker_msgs_per_s: Option<f64>,
    /// Broker alone, draining a pre-filled queue (consume + ack only), messages per second.
    pub broker_drain_msgs_per_s: Option<f64>,
    /// Requests per message of the batched broker ceiling: the API's `SECKILL_PUBLISH_BATCH_MAX`.
    pub broker_batch_size: Option<u16>,
    /// Broker alone as `broker_msgs_per_s`, with messages of `broker_batch_size` requests:
    /// requests per second.
    pub broker_batched_requests_per_s: Option<f64>,
    /// The same, messages per second.
    pub broker_batched_msgs_per_s: Option<f64>,
    /// HTTP alone: the bench's client, at its concurrency, against an endpoint that does no
    /// work, requests per second (only when the paths run over HTTP).
    pub http_requests_per_s: Option<f64>,
    /// Database alone: decide + group commit, decisions per second.
    pub database_decisions_per_s: Option<f64>,
    /// Consumer alone, draining a pre-filled queue: decisions per second.
    pub consumer_prefilled_per_s: Option<f64>,
}

/// Broker alone (both shapes), database alone, and the consumer draining a pre-filled queue,
/// on the scenario's requests (repeated up to [`CEILING_MESSAGES_MIN`]); the items it creates
/// are added to `all_items`. HTTP alone is measured apart ([`super::http_alone`]).
pub(super) async fn measure(
    pool: &PgPool,
    broker: &BrokerArgs,
    consumer_args: &ConsumerArgs,
    publish: PublishArgs,
    spec: &ScenarioSpec,
    attempts: &[Attempt],
    all_items: &mut Vec<i64>,
) -> anyhow::Result<Ceilings> {
    let attempts: Vec<&Attempt> = attempts
        .iter()
        .cycle()
        .take(attempts.len().max(CEILING_MESSAGES_MIN))
        .collect();
    let count = attempts.len();
    eprintln!("measuring the ceilings with {count} messages…");
    let shape = |requests_per_message: u16, messages: usize| BrokerShape {
        queue: format!("{}.ceiling", broker.queue_prefix),
        messages,
        requests_per_message,
        prefetch: consumer_args.prefetch,
        ack_every: usize::from(consumer_args.batch_size_max),
    };
    let topology = Topology::new(broker);
    let broker_rate = broker_alone(&broker.amqp_url, &topology, &shape(1, count)).await?;
    let batch_size = publish.publish_batch_max;
    let batch_messages = (count / usize::from(batch_size)).max(CEILING_BATCH_MESSAGES_MIN);
    let batched = shape(batch_size, batch_messages);
    let batched_rate = broker_alone(&broker.amqp_url, &topology, &batched).await?;

    let db_items = create_items_in_db(pool, spec).await?;
    all_items.extend(&db_items);
    let db_rate = database_alone(
        pool,
        &requests_for(&attempts, &db_items),
        usize::from(consumer_args.batch_size_max),
    )
    .await?;

    let prefill_items = create_items_in_db(pool, spec).await?;
    all_items.extend(&prefill_items);
    let requests = requests_for(&attempts, &prefill_items);
    let consumer_rate = consumer_prefilled(
        pool,
        broker,
        consumer_args,
        publish,
        &requests,
        &prefill_items,
    )
    .await?;
    Ok(Ceilings {
        broker_msgs_per_s: Some(broker_rate.flowing_per_s),
        broker_drain_msgs_per_s: Some(broker_rate.draining_per_s),
        broker_batch_size: Some(batch_size),
        broker_batched_requests_per_s: Some(batched_rate.flowing_per_s * f64::from(batch_size)),
        broker_batched_msgs_per_s: Some(batched_rate.flowing_per_s),
        http_requests_per_s: None,
        database_decisions_per_s: Some(db_rate),
        consumer_prefilled_per_s: Some(consumer_rate),
    })
}

/// The attempts as fresh requests for `items`.
fn requests_for(attempts: &[&Attempt], items: &[i64]) -> Vec<OrderRequest> {
    attempts
        .iter()
        .map(|a| OrderRequest {
            request_id: Uuid::now_v7(),
            item_id: items[a.item],
            user_id: a.user.clone(),
            quantity: 1,
        })
        .collect()
}

/// The real consumer on a topology of its own, pre-filled with `requests` while nothing
/// consumes it, then drained: decisions per second.
async fn consumer_prefilled(
    pool: &PgPool,
    broker: &BrokerArgs,
    consumer_args: &ConsumerArgs,
    batching: PublishArgs,
    requests: &[OrderRequest],
    items: &[i64],
) -> anyhow::Result<f64> {
    let mut prefill = broker.clone();
    prefill.queue_prefix = format!("{}-prefill", broker.queue_prefix);
    let topology = Topology::new(&prefill);
    let publisher = Publisher::connect(&prefill.amqp_url, topology.clone(), batching).await?;
    let publishes = requests.iter().map(|r| publisher.publish(r, false));
    for result in futures::stream::iter(publishes)
        .buffer_unordered(1000)
        .collect::<Vec<_>>()
        .await
    {
        result?;
    }
    let started = Instant::now();
    let consumer = App::start(
        pool.clone(),
        Settings {
            broker: prefill.clone(),
            api: None,
            consumer: Some(consumer_args.clone()),
            metrics_bind: None,
            rival_workers: None,
        },
        CancellationToken::new(),
    )
    .await?;
    // Each partition is decided in queue order, so its last request decided means all of it
    // is: watching those few ids by primary key keeps the probe from loading the database.
    let mut last_of_partition = HashMap::new();
    for r in requests {
        last_of_partition.insert(topology.partition_of(r.item_id), r.request_id);
    }
    let last: Vec<Uuid> = last_of_partition.into_values().collect();
    wait_requests_decided(pool, &last, Duration::from_secs(300)).await?;
    wait_decided(pool, items, requests.len() as i64, Duration::from_secs(10)).await?;
    let consumer_rate = requests.len() as f64 / started.elapsed().as_secs_f64();
    consumer.stop().await?;
    let connection = broker::connect(&prefill.amqp_url, "seckill-bench-cleanup").await?;
    topology.delete(&connection.create_channel().await?).await?;
    Ok(consumer_rate)
}

/// The scenario's items, created straight in the database (the ceilings need no API).
async fn create_items_in_db(pool: &PgPool, spec: &ScenarioSpec) -> anyhow::Result<Vec<i64>> {
    let mut ids = Vec::with_capacity(spec.items);
    for i in 0..spec.items.max(1) {
        ids.push(
            store::create_item(pool, &format!("bench ceiling #{i}"), spec.stock_per_item)
                .await?
                .id,
        );
    }
    Ok(ids)
}

/// The broker alone, in two modes, on a durable queue with the partition queues' arguments,
/// persistent messages of ~100 bytes per request, confirms (up to 1,000 in flight) and batched
/// acks; messages per second:
/// - `flowing_per_s`: publish and consume at once, end to end (what the queue path does);
/// - `draining_per_s`: consume only, from a queue pre-filled with the messages (what the
///   consumer does when it drains a backlog) — the most one partition's consumer can receive.
pub struct BrokerCeiling {
    pub flowing_per_s: f64,
    pub draining_per_s: f64,
}

/// What the broker ceiling sends, and how it consumes.
pub struct BrokerShape {
    /// A queue of the ceiling's own (declared, then deleted).
    pub queue: String,
    pub messages: usize,
    /// 1: single-request bodies; more: batch bodies of that many requests.
    pub requests_per_message: u16,
    pub prefetch: u16,
    /// Acks `multiple` every so many messages.
    pub ack_every: usize,
}

pub async fn broker_alone(
    amqp_url: &str,
    topology: &Topology,
    shape: &BrokerShape,
) -> anyhow::Result<BrokerCeiling> {
    let BrokerShape {
        queue,
        messages: count,
        prefetch,
        ack_every,
        ..
    } = shape;
    let (queue, count, prefetch, ack_every) = (queue.as_str(), *count, *prefetch, *ack_every);
    let body = sample_body(shape.requests_per_message);
    let connection = broker::connect(amqp_url, "seckill-bench-ceiling").await?;
    let publish = connection.create_channel().await?;
    publish
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            // Same arguments as the partition queues: single-active-consumer, bound, overflow.
            topology.partition_queue_arguments(),
        )
        .await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    let started = Instant::now();
    let consumer = tokio::spawn(consume(
        connection.create_channel().await?,
        queue.to_string(),
        count,
        prefetch,
        ack_every,
    ));
    publish_confirmed(&publish, queue, count, &body).await?;
    consumer.await??;
    let flowing_per_s = count as f64 / started.elapsed().as_secs_f64();

    publish_confirmed(&publish, queue, count, &body).await?;
    let started = Instant::now();
    consume(
        connection.create_channel().await?,
        queue.to_string(),
        count,
        prefetch,
        ack_every,
    )
    .await?;
    let draining_per_s = count as f64 / started.elapsed().as_secs_f64();

    publish
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(BrokerCeiling {
        flowing_per_s,
        draining_per_s,
    })
}

/// A message body of `requests` requests (a single-request body for 1).
fn sample_body(requests: u16) -> Vec<u8> {
    let encoded: Vec<Vec<u8>> = (0..requests.max(1))
        .map(|i| {
            message::encode(&OrderRequest {
                request_id: Uuid::now_v7(),
                item_id: 1,
                user_id: format!("user-{:06}", 123_456 + u32::from(i)),
                quantity: 1,
            })
        })
        .collect();
    match encoded.as_slice() {
        [one] => one.clone(),
        many => message::encode_batch(many.iter().map(Vec::as_slice)),
    }
}

/// Publishes `count` persistent messages of `body`, keeping up to 1,000 confirms in flight.
async fn publish_confirmed(
    channel: &lapin::Channel,
    queue: &str,
    count: usize,
    body: &[u8],
) -> anyhow::Result<()> {
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..count {
        if in_flight.len() >= CONFIRMS_IN_FLIGHT_MAX {
            in_flight.next().await.transpose()?;
        }
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                message::batch_properties(None),
            )
            .await?;
        in_flight.push(confirm);
    }
    while in_flight.next().await.transpose()?.is_some() {}
    Ok(())
}

/// Consumes and acks (every `ack_every`, multiple) `count` messages, then cancels.
async fn consume(
    channel: lapin::Channel,
    queue: String,
    count: usize,
    prefetch: u16,
    ack_every: usize,
) -> anyhow::Result<()> {
    channel
        .basic_qos(prefetch, BasicQosOptions { global: false })
        .await?;
    let mut deliveries = channel
        .basic_consume(
            queue.into(),
            "ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut received = 0;
    while received < count {
        let Some(Ok(delivery)) = deliveries.next().await else {
            anyhow::bail!("ceiling consumer ended early");
        };
        received += 1;
        if received % ack_every == 0 || received == count {
            delivery
                .acker
                .ack(BasicAckOptions { multiple: true })
                .await?;
        }
    }
    channel.close(200, "done".into()).await?;
    Ok(())
}

/// Decisions per second of the consumer's database work alone: `requests` decided by the
/// sequencer and group-committed in batches of `batch_size`, exactly as the consumer does.
pub async fn database_alone(
    pool: &PgPool,
    requests: &[OrderRequest],
    batch_size: usize,
) -> anyhow::Result<f64> {
    let mut sequencer = Sequencer::new();
    // The consumer's fence, on a key of the ceiling's own.
    let fence = store::take_epoch(pool, &format!("ceiling-{}", Uuid::new_v4()), "bench").await?;
    let started = Instant::now();
    for batch in requests.chunks(batch_size.max(1)) {
        // Fresh requests: like the consumer, no lookup of stored outcomes (see partition.rs).
        let stored = HashMap::new();
        for r in batch {
            if !sequencer.knows(r.item_id) {
                let state = store::load_item_state(pool, r.item_id)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("item {} vanished", r.item_id))?;
                sequencer.insert(r.item_id, state);
            }
        }
        let decision = sequencer.decide_batch(batch, &stored, Uuid::now_v7);
        store::commit_batch(pool, crate::sale::PathName::Queue, &decision, &fence).await?;
    }
    Ok(requests.len() as f64 / started.elapsed().as_secs_f64().max(1e-9))
}
