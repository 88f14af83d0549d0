//! The two ceilings the queue path sits under, measured in the same run as the paths:
//! - broker alone: publish with confirms → consume → ack, same queue settings, no database;
//! - database alone: the consumer's decide + group commit of the same requests, no broker.
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
use sqlx::PgPool;
use uuid::Uuid;

use crate::broker::{self, message};
use crate::consumer::sequencer::Sequencer;
use crate::domain::OrderRequest;
use crate::store;

/// Most publishes awaiting their confirm at once.
const CONFIRMS_IN_FLIGHT_MAX: usize = 1000;

/// The broker alone, in two shapes, on a durable queue with the partition queues' arguments,
/// ~100-byte persistent messages, confirms (up to 1,000 in flight) and batched acks:
/// - `flowing_per_s`: publish and consume at once, end to end (what the queue path does);
/// - `draining_per_s`: consume only, from a queue pre-filled with the messages (what the
///   consumer does when it drains a backlog) — the most one partition's consumer can receive.
pub struct BrokerCeiling {
    pub flowing_per_s: f64,
    pub draining_per_s: f64,
}

pub async fn broker_alone(
    amqp_url: &str,
    topology: &crate::broker::topology::Topology,
    queue: &str,
    count: usize,
    prefetch: u16,
    ack_every: usize,
) -> anyhow::Result<BrokerCeiling> {
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
    publish_confirmed(&publish, queue, count).await?;
    consumer.await??;
    let flowing_per_s = count as f64 / started.elapsed().as_secs_f64();

    publish_confirmed(&publish, queue, count).await?;
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

/// Publishes `count` request-sized persistent messages, keeping up to 1,000 confirms in flight.
async fn publish_confirmed(
    channel: &lapin::Channel,
    queue: &str,
    count: usize,
) -> anyhow::Result<()> {
    let sample = OrderRequest {
        request_id: Uuid::now_v7(),
        item_id: 1,
        user_id: "user-123456".into(),
        quantity: 1,
    };
    let body = message::encode(&sample);
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
                &body,
                message::request_properties(&sample, None),
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

/// Waits until `expected` outcomes exist for `items`, polling; returns when the last arrived.
pub async fn wait_decided(
    pool: &PgPool,
    items: &[i64],
    expected: i64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let decided: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outcomes WHERE item_id = ANY($1::bigint[])")
                .bind(items)
                .fetch_one(pool)
                .await?;
        if decided >= expected {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {decided} of {expected} requests were decided within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every one of `request_ids` has an outcome (primary-key lookups only).
pub async fn wait_requests_decided(
    pool: &PgPool,
    request_ids: &[Uuid],
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let decided: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outcomes WHERE request_id = ANY($1::uuid[])")
                .bind(request_ids)
                .fetch_one(pool)
                .await?;
        if decided >= request_ids.len() as i64 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "requests not decided within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Counts outcomes by status for a set of items (what the database says was decided).
pub async fn outcome_counts(pool: &PgPool, items: &[i64]) -> anyhow::Result<HashMap<String, u64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM outcomes WHERE item_id = ANY($1::bigint[]) GROUP BY status",
    )
    .bind(items)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(s, n)| (s, n as u64)).collect())
}
