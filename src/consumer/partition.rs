//! One partition's loop: take a batch of deliveries, decide it in memory in delivery order,
//! commit every decision in one transaction, and only then ack and reply.
//!
//! ```text
//!   deliveries ─► batch (≤ batch_size_max, ≤ linger) ─► decode ─► stored outcomes? ─► Sequencer
//!        ▲                                                                              │
//!        └─ ack(multiple, last tag) ◄─ dead letters confirmed ◄─ COMMIT (one fsync) ◄───┘
//!                      └─► replies (direct reply-to)
//! ```
//!
//! Why this order is crash-safe: a kill before the commit leaves nothing written and the
//! deliveries unacked, so the broker redelivers them and they are decided afresh. A kill after
//! the commit but before the ack redelivers requests whose outcomes are stored: the batch lookup
//! finds them and answers them from the store instead of deciding again. The group commit is
//! what makes it fast: one fsync for hundreds of decisions instead of one per request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::try_join_all;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Context;
use super::sequencer::Sequencer;
use crate::broker::item_events::{self, ItemEvent};
use crate::broker::message;
use crate::domain::{ItemId, OrderRequest, Outcome};
use crate::sale::{ItemState, PathName};
use crate::store::{self, CommitError, Fence};

/// Path name recorded with the outcomes this consumer decides.
pub const PATH: PathName = PathName::Queue;

pub(crate) async fn run(
    context: Arc<Context>,
    channel: Channel,
    partition: u16,
    shutdown: CancellationToken,
    on_active: Option<super::OnActive>,
) -> anyhow::Result<()> {
    let queue = context.topology.partition_queue(partition);
    // Per-consumer prefetch: enough unacked deliveries in flight to fill the next batch while
    // this one commits.
    channel
        .basic_qos(context.args.prefetch, BasicQosOptions { global: false })
        .await?;
    let mut deliveries = channel
        .basic_consume(
            queue.clone().into(),
            format!("seckill-{}-p{partition}", std::process::id()).into(),
            BasicConsumeOptions {
                no_ack: false,    // ack only after the decisions are committed
                exclusive: false, // single-active-consumer picks the active one, not exclusivity
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut decider = Decider {
        on_active,
        ..Decider::default()
    };
    let mut restocked = context.restocked.subscribe();
    let result = decide_until_stopped(
        &context,
        &channel,
        &queue,
        &mut decider,
        &mut deliveries,
        &mut restocked,
        &shutdown,
    )
    .await;
    // This subscription's item states leave memory with it.
    decider.report_memory(0);
    result
}

/// The partition's loop: batch after batch, and a look for idle items now and then (also while
/// no request comes).
async fn decide_until_stopped(
    context: &Context,
    channel: &Channel,
    queue: &str,
    decider: &mut Decider,
    deliveries: &mut lapin::Consumer,
    restocked: &mut broadcast::Receiver<ItemId>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let idle = context.args.item_idle();
    let mut sweeps = tokio::time::interval(EVICTION_SWEEP_EVERY.min(idle / 4));
    sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            // Checked first: once shutdown is asked, no new batch is started.
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            _ = sweeps.tick() => {
                decider.evict_idle(idle, queue);
                continue;
            }
            next = deliveries.next() => next,
        };
        let mut batch = vec![next_delivery(first, queue)?];
        let deadline = tokio::time::Instant::now() + context.args.batch_linger();
        while batch.len() < usize::from(context.args.batch_size_max) {
            match tokio::time::timeout_at(deadline, deliveries.next()).await {
                Ok(next) => batch.push(next_delivery(next, queue)?),
                Err(_linger_over) => break,
            }
        }
        forget_restocked(restocked, &mut decider.sequencer);
        process_batch(context, channel, queue, decider, batch, shutdown).await?;
        decider.report_active();
    }
}

/// Drops the state of items restocked since the last batch: their next request reloads them
/// from the database, new units included.
fn forget_restocked(restocked: &mut broadcast::Receiver<ItemId>, sequencer: &mut Sequencer) {
    loop {
        match restocked.try_recv() {
            Ok(item_id) => sequencer.forget([item_id]),
            Err(broadcast::error::TryRecvError::Lagged(_)) => sequencer.forget_all(),
            Err(_empty_or_closed) => return,
        }
    }
}

fn next_delivery(next: Option<lapin::Result<Delivery>>, queue: &str) -> anyhow::Result<Delivery> {
    match next {
        Some(Ok(delivery)) => Ok(delivery),
        Some(Err(e)) => Err(anyhow::anyhow!("consuming {queue}: {e}")),
        None => Err(anyhow::anyhow!(
            "the broker cancelled the consumer of {queue}"
        )),
    }
}

/// Most time between two looks for idle items (less when the idle time is short).
const EVICTION_SWEEP_EVERY: Duration = Duration::from_secs(10);

/// What one subscription to a partition decides with.
#[derive(Default)]
struct Decider {
    sequencer: Sequencer,
    /// Taken before the first batch this consumer decides (it is then the active one), and kept
    /// while the subscription lasts.
    fence: Option<Fence>,
    /// Items of this sequencer counted in the `items_in_memory` gauge.
    reported_items: usize,
    /// Tells the daemon, once, that this subscription became the partition's active one.
    on_active: Option<super::OnActive>,
}

impl Decider {
    /// After a batch: the first one took the epoch, so this subscription is the active one.
    fn report_active(&mut self) {
        if let Some(fence) = &self.fence
            && let Some(hook) = self.on_active.take()
        {
            hook.report(fence);
        }
    }

    fn evict_idle(&mut self, idle: Duration, queue: &str) {
        let evicted = self.sequencer.evict_idle(Instant::now(), idle);
        if evicted > 0 {
            crate::metrics::get().items_evicted.inc_by(evicted as u64);
            tracing::debug!(%queue, evicted, kept = self.sequencer.len(), "dropped the state of idle items");
        }
        self.report_memory(self.sequencer.len());
    }

    /// Moves the process-wide gauge of items in memory by this sequencer's change.
    fn report_memory(&mut self, items: usize) {
        let gauge = &crate::metrics::get().items_in_memory;
        gauge.add(items as i64 - self.reported_items as i64);
        self.reported_items = items;
    }
}

async fn process_batch(
    context: &Context,
    channel: &Channel,
    queue: &str,
    decider: &mut Decider,
    batch: Vec<Delivery>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let last_tag = batch.last().expect("a batch is never empty").delivery_tag;
    let redelivered = batch.iter().filter(|d| d.redelivered).count();
    // Decodable requests, each with the index of its delivery; the rest are dead-lettered.
    let mut pending: Vec<(usize, OrderRequest)> = Vec::with_capacity(batch.len());
    let mut rejects: Vec<(usize, String)> = Vec::new();
    for (index, delivery) in batch.iter().enumerate() {
        match message::decode(&delivery.properties, &delivery.data) {
            Ok(request) => pending.push((index, request)),
            Err(reason) => rejects.push((index, reason.0)),
        }
    }

    // Decide and commit; if the database fails, forget what was decided in memory and redo
    // the whole batch from the database's state. Nothing is acked until this succeeds.
    //
    // Stored outcomes are looked up first only for a batch with redeliveries. A fresh batch
    // skips that round trip: a request id decided before (a client retry) makes the commit hit
    // the unique key on `outcomes.request_id`, and the batch is redone with the lookup.
    crate::failpoint::hit("before_decide");
    let mut look_up_stored = redelivered > 0;
    let mut attempt = 0;
    let (answers, undecidable) = loop {
        match decide_and_commit(&context.pool, queue, decider, &pending, look_up_stored).await {
            Ok(done) => break done,
            Err(CommitError::Fenced { queue, epoch }) => {
                // Another consumer became active on this partition while this one was paused
                // or cut off: nothing of this batch was written. Step down; its deliveries go
                // back to the broker, and to the active consumer.
                crate::metrics::get().commit_failures.inc();
                tracing::warn!(%queue, epoch, "fenced out by a newer consumer of the partition; stepping down");
                anyhow::bail!("fenced out of {queue} (epoch {epoch} is no longer current)");
            }
            Err(CommitError::Database(e)) if !look_up_stored && is_unique_violation(&e) => {
                decider
                    .sequencer
                    .forget(pending.iter().map(|(_, r)| r.item_id));
                look_up_stored = true;
                tracing::debug!(
                    "a request of the batch was decided before; redoing it with a lookup"
                );
            }
            Err(e) => {
                decider
                    .sequencer
                    .forget(pending.iter().map(|(_, r)| r.item_id));
                look_up_stored = true;
                crate::metrics::get().commit_failures.inc();
                let pause = crate::backoff::delay(
                    attempt,
                    Duration::from_millis(50),
                    Duration::from_secs(5),
                );
                attempt += 1;
                tracing::warn!(error = %e, attempt, retry_in_ms = pause.as_millis() as u64,
                    "cannot commit a batch; it stays unacked and will be decided again");
                tokio::select! {
                    _ = shutdown.cancelled() => anyhow::bail!(
                        "stopped with an uncommitted batch (the broker will redeliver it)"),
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    };
    decider
        .sequencer
        .touch(pending.iter().map(|(_, r)| r.item_id), Instant::now());
    let items_known = decider.sequencer.len();
    decider.report_memory(items_known);
    let commit_time = started.elapsed();
    let commit_ms = commit_time.as_millis() as u64;
    if attempt > 0 {
        tracing::info!(
            failed_attempts = attempt,
            commit_ms,
            "batch committed after the database came back"
        );
    }
    let metrics = crate::metrics::get();
    metrics.batch_size.observe(batch.len() as f64);
    metrics.commit_latency.observe(commit_time.as_secs_f64());
    metrics.redeliveries.inc_by(redelivered as u64);

    let (refused, decided): (Vec<_>, Vec<_>) = pending
        .iter()
        .partition(|(index, _)| undecidable.contains_key(index));
    for (index, _) in refused {
        rejects.push((*index, undecidable[index].clone()));
    }
    dead_letter(context, &batch, &rejects).await?;

    // Acks every delivery up to the last one: all are committed or safely dead-lettered.
    channel
        .basic_ack(last_tag, BasicAckOptions { multiple: true })
        .await?;
    crate::failpoint::hit("after_ack");

    // One reply per reply_to for the whole batch (each API instance has one reply_to).
    // At-most-once by design: a lost reply costs the client a GET, never a decision.
    let mut replies: HashMap<&ShortString, Vec<Outcome>> = HashMap::new();
    for ((index, _), outcome) in decided.iter().zip(&answers) {
        if let Some(reply_to) = batch[*index].properties.reply_to() {
            replies.entry(reply_to).or_default().push(*outcome);
        }
    }
    let mut replied = 0;
    for (reply_to, outcomes) in &replies {
        let props = BasicProperties::default().with_content_type(message::CONTENT_TYPE_JSON.into());
        let sent = channel
            .basic_publish(
                "".into(),
                (*reply_to).clone(),
                BasicPublishOptions::default(),
                &message::encode_replies(outcomes),
                props,
            )
            .await;
        if sent.is_ok() {
            replied += outcomes.len();
        }
    }
    announce_sold_out(context, channel, decider, &decided).await;
    tracing::debug!(
        size = batch.len(),
        decided = answers.len(),
        dead_lettered = rejects.len(),
        redelivered,
        replied,
        commit_ms,
        "batch committed"
    );
    Ok(())
}

/// Tells every API instance which items of the batch are sold out, so they answer `sold_out`
/// at the door (see [`crate::shedding`]). Sent after every batch that saw such an item, so an
/// API instance started later learns it too; a lost announcement only costs a shed request.
async fn announce_sold_out(
    context: &Context,
    channel: &Channel,
    decider: &Decider,
    decided: &[&(usize, OrderRequest)],
) {
    let mut items: Vec<ItemId> = decided
        .iter()
        .map(|(_, r)| r.item_id)
        .filter(|id| {
            decider
                .sequencer
                .state(*id)
                .is_some_and(ItemState::is_sold_out)
        })
        .collect();
    items.sort_unstable();
    items.dedup();
    for item_id in items {
        let event = ItemEvent::SoldOut { item_id };
        if let Err(e) = item_events::publish(channel, &context.topology, &event).await {
            tracing::debug!(item_id, error = %e, "could not announce an item sold out");
        }
    }
}

/// Copies undecidable messages to the dead-letter exchange with the reason, and waits for the
/// broker to confirm every copy (only then may the originals be acked).
async fn dead_letter(
    context: &Context,
    batch: &[Delivery],
    rejects: &[(usize, String)],
) -> anyhow::Result<()> {
    let exchange = context.topology.dead_letter_exchange();
    let publishes = rejects.iter().map(|(index, reason)| {
        let delivery = &batch[*index];
        tracing::warn!(%reason, queue = %delivery.routing_key, "dead-lettering a message");
        let props = message::dead_letter_properties(&delivery.properties, reason);
        let exchange = exchange.clone();
        async move {
            let confirm = context
                .dead_letters
                .basic_publish(
                    exchange.into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    &delivery.data,
                    props,
                )
                .await?
                .await?;
            match confirm {
                Confirmation::Ack(_) => Ok(()),
                _ => Err(anyhow::anyhow!("the broker refused a dead letter")),
            }
        }
    });
    try_join_all(publishes).await?;
    crate::metrics::get()
        .dead_lettered
        .inc_by(rejects.len() as u64);
    Ok(())
}

/// Who this consumer is, in `partition_epochs.holder`: host and process id.
pub(crate) fn holder_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    format!("{host}/{}", std::process::id())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Loads what the sequencer needs, decides, and commits. Returns one answer per request it
/// decided (in order) and, by delivery index, why it could not decide the others: their item does
/// not exist, or no request may ask their quantity of it. The first call of a subscription
/// takes the partition's epoch, before any item state is loaded, so that state includes every
/// commit of the previous holder.
async fn decide_and_commit(
    pool: &sqlx::PgPool,
    queue: &str,
    Decider {
        sequencer, fence, ..
    }: &mut Decider,
    pending: &[(usize, OrderRequest)],
    look_up_stored: bool,
) -> Result<(Vec<Outcome>, HashMap<usize, String>), CommitError> {
    if fence.is_none() {
        sequencer.forget_all();
        let taken = store::take_epoch(pool, queue, &holder_name()).await?;
        tracing::info!(%queue, epoch = taken.epoch, "active on the partition; took a new epoch");
        *fence = Some(taken);
    }
    let fence = fence.as_ref().expect("taken above");
    let stored: HashMap<Uuid, Outcome> = if look_up_stored {
        let ids: Vec<Uuid> = pending.iter().map(|(_, r)| r.request_id).collect();
        store::stored_outcomes(pool, &ids).await?
    } else {
        HashMap::new()
    };
    let mut unknown = Vec::new();
    for (_, request) in pending {
        let item_id = request.item_id;
        if sequencer.knows(item_id) || unknown.contains(&item_id) {
            continue;
        }
        match store::load_item_state(pool, item_id).await? {
            Some(state) => sequencer.insert(item_id, state),
            None => unknown.push(item_id),
        }
    }
    let mut undecidable = HashMap::new();
    let mut requests: Vec<OrderRequest> = Vec::with_capacity(pending.len());
    for (index, request) in pending {
        let refusal = match sequencer.state(request.item_id) {
            None => Some(format!("unknown item {}", request.item_id)),
            Some(state) => state.refusal(request.quantity),
        };
        match refusal {
            Some(reason) => {
                undecidable.insert(*index, reason);
            }
            None => requests.push(request.clone()),
        }
    }
    // Time-ordered ids keep the orders primary-key index appending at its right edge.
    let decision = sequencer.decide_batch(&requests, &stored, Uuid::now_v7);
    crate::failpoint::hit("before_commit");
    store::commit_batch(pool, PATH, &decision, fence).await?;
    crate::failpoint::hit("after_commit");
    let decisions = &crate::metrics::get().decisions;
    for new in &decision.new_outcomes {
        decisions
            .with_label_values(&[new.outcome.status.as_str()])
            .inc();
    }
    Ok((decision.answers, undecidable))
}
