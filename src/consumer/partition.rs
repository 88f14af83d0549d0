//! One partition's loop: take a batch of deliveries, decide it in memory in delivery order,
//! commit every decision in one transaction, and only then ack and reply.
//!
//! ```text
//!   deliveries ─► decode ─► batch (≤ batch_size_max requests, ≤ linger) ─► stored outcomes? ─► Sequencer
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
//! `Subscription::process_batch` takes these steps in this order, one function each.

use std::collections::{HashMap, HashSet};
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
use super::batch::{Batch, Place};
use super::sequencer::Sequencer;
use crate::broker::item_events::{self, ItemEvent};
use crate::broker::message;
use crate::domain::{ItemId, ItemKind, OrderRequest, Outcome};
use crate::sale::PathName;
use crate::store::{self, CommitError, Fence};

/// Path name recorded with the outcomes this consumer decides.
pub const PATH: PathName = PathName::Queue;

/// Decides the partition's deliveries until `shutdown` (once the batch it is on is acked) or
/// an error.
pub(crate) async fn run(
    context: Arc<Context>,
    channel: Channel,
    partition: u16,
    shutdown: CancellationToken,
    on_active: Option<super::OnActive>,
) -> anyhow::Result<()> {
    let queue = context.topology.partition_queue(partition);
    let mut deliveries = consume(&context, &channel, &queue, partition).await?;
    let mut restocked = context.restocked.subscribe();
    let mut subscription = Subscription {
        context,
        channel,
        partition,
        queue,
        shutdown,
        decider: Decider {
            on_active,
            ..Decider::default()
        },
    };
    let result = subscription
        .decide_until_stopped(&mut deliveries, &mut restocked)
        .await;
    // This subscription's item states leave memory with it.
    subscription.decider.report_memory(0);
    result
}

/// Subscribes to the partition's queue.
async fn consume(
    context: &Context,
    channel: &Channel,
    queue: &str,
    partition: u16,
) -> lapin::Result<lapin::Consumer> {
    // Per-consumer prefetch: enough unacked deliveries in flight to fill the next batch while
    // this one commits.
    channel
        .basic_qos(context.args.prefetch, BasicQosOptions { global: false })
        .await?;
    channel
        .basic_consume(
            queue.into(),
            format!("seckill-{}-p{partition}", std::process::id()).into(),
            BasicConsumeOptions {
                no_ack: false,    // ack only after the decisions are committed
                exclusive: false, // single-active-consumer picks the active one, not exclusivity
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Most time between two looks for idle items (less when the idle time is short).
const EVICTION_SWEEP_EVERY: Duration = Duration::from_secs(10);

/// One subscription to a partition: where its batches come from and what they are decided,
/// committed and answered with.
struct Subscription {
    context: Arc<Context>,
    /// The subscription's own channel: its deliveries are acked and its replies sent on it.
    channel: Channel,
    partition: u16,
    queue: String,
    /// Stops the loop between two batches, and a batch waiting to redo its commit.
    shutdown: CancellationToken,
    decider: Decider,
}

/// What a committed batch decided.
struct Committed {
    /// One answer per decided request, in order.
    answers: Vec<Outcome>,
    /// Why some requests could not be decided, by where they came from.
    undecidable: HashMap<Place, String>,
    /// Commits that failed before this one succeeded.
    failed_attempts: u32,
}

impl Subscription {
    /// The partition's loop: batch after batch, and a look for idle items now and then (also
    /// while no request comes).
    async fn decide_until_stopped(
        &mut self,
        deliveries: &mut lapin::Consumer,
        restocked: &mut broadcast::Receiver<ItemId>,
    ) -> anyhow::Result<()> {
        let idle = self.context.args.item_idle();
        let mut sweeps = tokio::time::interval(EVICTION_SWEEP_EVERY.min(idle / 4));
        sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                // Checked first: once shutdown is asked, no new batch is started.
                biased;
                _ = self.shutdown.cancelled() => return Ok(()),
                _ = sweeps.tick() => {
                    self.decider.evict_idle(idle, &self.queue);
                    continue;
                }
                next = deliveries.next() => next,
            };
            let first = next_delivery(first, &self.queue)?;
            let batch = self.fill_batch(first, deliveries).await?;
            forget_restocked(restocked, &mut self.decider.sequencer);
            self.process_batch(batch).await?;
            self.decider.report_active();
        }
    }

    /// The batch that starts with `first`: what else arrives within the linger, until it holds
    /// `batch_size_max` requests (a batch message counts its elements; it is taken whole).
    async fn fill_batch(
        &self,
        first: Delivery,
        deliveries: &mut lapin::Consumer,
    ) -> anyhow::Result<Batch> {
        let topology = &self.context.topology;
        let mut batch = Batch::default();
        batch.take(first, topology, self.partition);
        let deadline = tokio::time::Instant::now() + self.context.args.batch_linger();
        while batch.elements() < usize::from(self.context.args.batch_size_max) {
            match tokio::time::timeout_at(deadline, deliveries.next()).await {
                Ok(next) => batch.take(next_delivery(next, &self.queue)?, topology, self.partition),
                Err(_linger_over) => break,
            }
        }
        Ok(batch)
    }

    /// One batch, in the order the crash-safety argument at the top of this file rests on:
    /// decide and commit (nothing is acked until the commit succeeds), then dead-letter what
    /// could not be decided and ack everything, then reply and announce.
    #[tracing::instrument(name = "batch", skip_all, fields(
        partition = self.partition,
        size = batch.elements(),
        deliveries = batch.deliveries.len(),
        epoch = self.decider.fence.as_ref().map(|f| f.epoch),
    ))]
    async fn process_batch(&mut self, mut batch: Batch) -> anyhow::Result<()> {
        let started = Instant::now();
        crate::failpoint::hit("before_decide");
        let committed = self.decide_and_commit(&batch).await?;
        let commit_time = started.elapsed();
        report_committed(&batch, &committed, commit_time);
        batch.set_aside(committed.undecidable);
        self.settle(&batch).await?;
        let replied = self.reply_and_announce(&batch, &committed.answers).await;
        tracing::debug!(
            size = batch.elements(),
            deliveries = batch.deliveries.len(),
            decided = committed.answers.len(),
            dead_lettered = batch.rejects.len(),
            redelivered = batch.redelivered(),
            replied,
            commit_ms = commit_time.as_millis() as u64,
            "batch committed"
        );
        Ok(())
    }

    /// Decides the batch and commits it. If the database fails, forgets what was decided in
    /// memory and redoes the whole batch from the database's state, until it commits or the
    /// subscription is stopped. Nothing is acked until this succeeds.
    async fn decide_and_commit(&mut self, batch: &Batch) -> anyhow::Result<Committed> {
        // Stored outcomes are looked up first for every request of a batch with redeliveries,
        // and for the ids this subscription found decided before (a client retrying). A fresh
        // batch skips that round trip: a request id decided before makes the commit hit the
        // unique key on `outcomes.request_id`; the batch is then taken back in memory (nothing
        // is reloaded) and decided again with the lookup, and the id is remembered.
        let every_id = || batch.requests.iter().map(|(_, r)| r.request_id).collect();
        let mut look_up: Vec<Uuid> = if batch.redelivered() > 0 {
            every_id()
        } else {
            self.decider.known_repeats(batch)
        };
        let mut failed_attempts = 0;
        loop {
            let pool = &self.context.pool;
            let attempt = self
                .decider
                .decide_and_commit_once(pool, &self.queue, &batch.requests, &look_up)
                .await;
            let error = match attempt {
                Ok((answers, undecidable)) => {
                    self.decider.touch(batch.item_ids());
                    return Ok(Committed {
                        answers,
                        undecidable,
                        failed_attempts,
                    });
                }
                Err(CommitError::Fenced { queue, epoch }) => {
                    // Another consumer became active on this partition while this one was
                    // paused or cut off: nothing of this batch was written. Step down; its
                    // deliveries go back to the broker, and to the active consumer.
                    crate::metrics::get().consumer.commit_failures.inc();
                    tracing::warn!(%queue, epoch, "fenced out by a newer consumer of the partition; stepping down");
                    anyhow::bail!("fenced out of {queue} (epoch {epoch} is no longer current)");
                }
                Err(CommitError::Database(e)) => e,
            };
            if is_repeat(&error) && look_up.len() < batch.requests.len() {
                self.decider.sequencer.undo_last_batch();
                look_up = every_id();
                tracing::debug!(
                    "a request of the batch was decided before; redoing it with a lookup"
                );
                continue;
            }
            self.decider.sequencer.forget(batch.item_ids());
            look_up = every_id();
            self.wait_before_redo(&error, failed_attempts).await?;
            failed_attempts += 1;
        }
    }

    /// Backs off after a failed commit; stopping meanwhile leaves the batch unacked.
    async fn wait_before_redo(&self, error: &sqlx::Error, attempt: u32) -> anyhow::Result<()> {
        crate::metrics::get().consumer.commit_failures.inc();
        let pause =
            crate::backoff::delay(attempt, Duration::from_millis(50), Duration::from_secs(5));
        tracing::warn!(error = %error, attempt = attempt + 1, retry_in_ms = pause.as_millis() as u64,
            "cannot commit a batch; it stays unacked and will be decided again");
        tokio::select! {
            _ = self.shutdown.cancelled() => anyhow::bail!(
                "stopped with an uncommitted batch (the broker will redeliver it)"),
            _ = tokio::time::sleep(pause) => Ok(()),
        }
    }

    /// Dead-letters what could not be decided, then acks every delivery up to the last one:
    /// each is now committed or safely copied to the dead letters.
    async fn settle(&self, batch: &Batch) -> anyhow::Result<()> {
        dead_letter(&self.context, batch).await?;
        self.channel
            .basic_ack(batch.last_tag(), BasicAckOptions { multiple: true })
            .await?;
        crate::failpoint::hit("after_ack");
        Ok(())
    }

    /// Sends the answers to their clients, and tells the API instances which items sold out.
    /// Returns how many answers went out.
    async fn reply_and_announce(&self, batch: &Batch, answers: &[Outcome]) -> usize {
        let replied = reply(&self.channel, batch, answers).await;
        announce_sold_out(&self.context, &self.channel, &self.decider, batch).await;
        replied
    }
}

/// Counts the committed batch, and logs each decided request at `debug` (the API logs the same
/// request id, so one grep follows a request through both).
fn report_committed(batch: &Batch, committed: &Committed, commit_time: Duration) {
    if committed.failed_attempts > 0 {
        tracing::info!(
            failed_attempts = committed.failed_attempts,
            commit_ms = commit_time.as_millis() as u64,
            "batch committed after the database came back"
        );
    }
    let metrics = crate::metrics::get();
    metrics.consumer.batch_size.observe(batch.elements() as f64);
    metrics
        .consumer
        .commit_latency
        .observe(commit_time.as_secs_f64());
    metrics
        .consumer
        .redeliveries
        .inc_by(batch.redelivered() as u64);
    if tracing::enabled!(tracing::Level::DEBUG) {
        let decided = batch
            .requests
            .iter()
            .filter(|(place, _)| !committed.undecidable.contains_key(place));
        for ((_, request), outcome) in decided.zip(&committed.answers) {
            tracing::debug!(request_id = %request.request_id, item_id = request.item_id,
                status = %outcome.status.as_str(), "request decided");
        }
    }
}

/// One reply per reply_to for the whole batch (each API instance has one reply_to).
/// At-most-once by design: a lost reply costs the client a GET, never a decision. Returns how
/// many answers were sent.
async fn reply(channel: &Channel, batch: &Batch, answers: &[Outcome]) -> usize {
    let mut replies: HashMap<&ShortString, Vec<Outcome>> = HashMap::new();
    for ((place, _), outcome) in batch.requests.iter().zip(answers) {
        if let Some(reply_to) = batch.deliveries[place.delivery].properties.reply_to() {
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
    replied
}

/// Marks the items restocked since the last batch: their next batch re-reads their stock from
/// the database, new units included (not their buyers: a restock writes no order).
fn forget_restocked(restocked: &mut broadcast::Receiver<ItemId>, sequencer: &mut Sequencer) {
    loop {
        match restocked.try_recv() {
            Ok(item_id) => sequencer.mark_restocked([item_id]),
            Err(broadcast::error::TryRecvError::Lagged(_)) => sequencer.mark_all_restocked(),
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
    /// Request ids found decided before when they came again: looked up before deciding.
    repeats: HashSet<Uuid>,
    /// When each short item's stored generation was last read (see [`forget_missed_restocks`]).
    restocks_checked: HashMap<ItemId, Instant>,
}

/// Most often a short item's stored generation is read: the longest a restock whose
/// announcement was lost waits to be sold, and what keeps a sold-out item's tail of requests
/// from paying one more read per batch.
const RESTOCK_CHECK_EVERY: Duration = Duration::from_millis(200);

/// Most repeated request ids a subscription remembers.
const REPEATS_REMEMBERED_MAX: usize = 10_000;

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
            crate::metrics::get()
                .consumer
                .items_evicted
                .inc_by(evicted as u64);
            tracing::debug!(%queue, evicted, kept = self.sequencer.len(), "dropped the state of idle items");
        }
        self.report_memory(self.sequencer.len());
    }

    /// Marks the items of a committed batch as used now (they are not idle).
    fn touch(&mut self, item_ids: impl IntoIterator<Item = ItemId>) {
        self.sequencer.touch(item_ids, Instant::now());
        self.report_memory(self.sequencer.len());
    }

    /// Moves the process-wide gauge of items in memory by this sequencer's change.
    fn report_memory(&mut self, items: usize) {
        let gauge = &crate::metrics::get().consumer.items_in_memory;
        gauge.add(items as i64 - self.reported_items as i64);
        self.reported_items = items;
    }

    /// Loads what the sequencer needs, decides, and commits. Returns one answer per request it
    /// decided (in order) and, by where they came from, why it could not decide the others: their item
    /// does not exist, or no request may ask their quantity of it. The outcomes stored for the
    /// ids of `look_up` are answered, not decided again.
    async fn decide_and_commit_once(
        &mut self,
        pool: &sqlx::PgPool,
        queue: &str,
        pending: &[(Place, OrderRequest)],
        look_up: &[Uuid],
    ) -> Result<(Vec<Outcome>, HashMap<Place, String>), CommitError> {
        self.take_epoch_once(pool, queue).await?;
        let fence = self.fence.as_ref().expect("taken above");
        let stored: HashMap<Uuid, Outcome> = if look_up.is_empty() {
            HashMap::new()
        } else {
            store::stored_outcomes(pool, look_up).await?
        };
        let checked = &mut self.restocks_checked;
        forget_missed_restocks(pool, &mut self.sequencer, checked, pending).await?;
        load_items(pool, &mut self.sequencer, pending).await?;
        let (requests, undecidable) = sort_out_undecidable(&self.sequencer, pending);
        // Time-ordered ids keep the orders primary-key index appending at its right edge.
        let decision = self
            .sequencer
            .decide_batch(&requests, &stored, Uuid::now_v7);
        crate::failpoint::hit("before_commit");
        store::commit_batch(pool, PATH, &decision, fence).await?;
        self.sequencer.keep_last_batch();
        crate::failpoint::hit("after_commit");
        self.remember_repeats(stored.into_keys());
        let decisions = &crate::metrics::get().consumer.decisions;
        for new in &decision.new_outcomes {
            decisions
                .with_label_values(&[new.outcome.status.as_str()])
                .inc();
        }
        Ok((decision.answers, undecidable))
    }

    /// The ids of the batch found decided before by an earlier batch: a client retrying them is
    /// likely to send them again.
    fn known_repeats(&self, batch: &Batch) -> Vec<Uuid> {
        if self.repeats.is_empty() {
            return Vec::new();
        }
        let ids = batch.requests.iter().map(|(_, r)| r.request_id);
        ids.filter(|id| self.repeats.contains(id)).collect()
    }

    fn remember_repeats(&mut self, ids: impl Iterator<Item = Uuid>) {
        for id in ids {
            if self.repeats.len() >= REPEATS_REMEMBERED_MAX {
                // Bounded memory; the next repeat of a forgotten id costs one redone batch.
                self.repeats.clear();
            }
            self.repeats.insert(id);
        }
    }

    /// The first call of a subscription takes the partition's epoch, before any item state is
    /// loaded, so that state includes every commit of the previous holder.
    async fn take_epoch_once(&mut self, pool: &sqlx::PgPool, queue: &str) -> sqlx::Result<()> {
        if self.fence.is_none() {
            self.sequencer.forget_all();
            let taken = store::take_epoch(pool, queue, &holder_name()).await?;
            tracing::Span::current().record("epoch", taken.epoch);
            tracing::info!(%queue, epoch = taken.epoch, "active on the partition; took a new epoch");
            self.fence = Some(taken);
        }
        Ok(())
    }
}

/// Loads the state of every item of `pending` the sequencer does not know yet (those that do
/// not exist stay unknown), after re-reading the rows of the items marked restocked.
async fn load_items(
    pool: &sqlx::PgPool,
    sequencer: &mut Sequencer,
    pending: &[(Place, OrderRequest)],
) -> sqlx::Result<()> {
    sequencer.refresh(store::load_item_stocks(pool, &sequencer.restocked()).await?);
    let mut unknown = Vec::new();
    for (_, request) in pending {
        let item_id = request.item_id;
        if sequencer.knows(item_id) || unknown.contains(&item_id) {
            continue;
        }
        match store::load_item_state(pool, item_id).await? {
            Some(state) => {
                crate::metrics::get().consumer.items_loaded.inc();
                sequencer.insert(item_id, state);
            }
            None => unknown.push(item_id),
        }
    }
    Ok(())
}

/// Marks restocked every item of `pending` that is short in memory — fewer units left than
/// the batch asks of it, so some of its requests would be answered `sold_out` — when a restock
/// has been committed since the state was loaded; [`load_items`] then re-reads its stock, new
/// units included. This is what makes a restock sell whatever happens to its announcement: a lost
/// `restocked` would otherwise leave the item sold out in memory for as long as demand keeps it
/// from going idle (its `sold_out` answers re-announce it, so the API instances keep shedding it
/// too). One indexed read for a batch's short items, at most every [`RESTOCK_CHECK_EVERY`] per
/// item, none for the others; an item with enough units left in memory needs no restock yet.
/// Red packets are never restocked.
async fn forget_missed_restocks(
    pool: &sqlx::PgPool,
    sequencer: &mut Sequencer,
    checked: &mut HashMap<ItemId, Instant>,
    pending: &[(Place, OrderRequest)],
) -> sqlx::Result<()> {
    let now = Instant::now();
    let mut asked: HashMap<ItemId, i64> = HashMap::new();
    for (_, request) in pending {
        let units = asked.entry(request.item_id).or_default();
        *units = units.saturating_add(request.quantity);
    }
    let short: Vec<ItemId> = asked
        .into_iter()
        .filter(|(item_id, units)| {
            sequencer.state(*item_id).is_some_and(|state| {
                state.rules.kind == ItemKind::Goods && state.stock_remaining < *units
            })
        })
        .map(|(item_id, _)| item_id)
        .filter(|item_id| {
            checked
                .get(item_id)
                .is_none_or(|at| now.saturating_duration_since(*at) >= RESTOCK_CHECK_EVERY)
        })
        .collect();
    if short.is_empty() {
        return Ok(());
    }
    if checked.len() > 4 * sequencer.len().max(256) {
        checked.retain(|item_id, _| sequencer.knows(*item_id));
    }
    for item_id in &short {
        checked.insert(*item_id, now);
    }
    let stored = store::item_generations(pool, &short).await?;
    let restocked: Vec<ItemId> = short
        .into_iter()
        .filter(|item_id| {
            let loaded_at = sequencer.state(*item_id).map(|state| state.generation);
            stored
                .get(item_id)
                .is_some_and(|generation| Some(*generation) != loaded_at)
        })
        .collect();
    for item_id in &restocked {
        tracing::info!(
            item_id,
            "item restocked since its state was loaded; re-reading its stock"
        );
    }
    sequencer.mark_restocked(restocked);
    Ok(())
}

/// The requests the sequencer may decide, and why it may not decide the others, by where they
/// came from.
fn sort_out_undecidable(
    sequencer: &Sequencer,
    pending: &[(Place, OrderRequest)],
) -> (Vec<OrderRequest>, HashMap<Place, String>) {
    let mut undecidable = HashMap::new();
    let mut requests: Vec<OrderRequest> = Vec::with_capacity(pending.len());
    for (place, request) in pending {
        let refusal = match sequencer.state(request.item_id) {
            None => Some(format!("unknown item {}", request.item_id)),
            Some(state) => state.refusal(request.quantity),
        };
        match refusal {
            Some(reason) => {
                undecidable.insert(*place, reason);
            }
            None => requests.push(request.clone()),
        }
    }
    (requests, undecidable)
}

/// Tells every API instance which items of the batch are sold out, so they answer `sold_out`
/// at the door (see [`crate::shedding`]). Sent after every batch that saw such an item, so an
/// API instance started later learns it too; a lost announcement only costs a shed request.
async fn announce_sold_out(context: &Context, channel: &Channel, decider: &Decider, batch: &Batch) {
    let mut items: Vec<(ItemId, i64)> = batch
        .item_ids()
        .filter_map(|id| {
            let state = decider.sequencer.state(id)?;
            state.is_sold_out().then_some((id, state.generation))
        })
        .collect();
    items.sort_unstable();
    items.dedup();
    for (item_id, generation) in items {
        // The generation the state was loaded at: an API instance that heard of a later
        // restock ignores this announcement.
        let event = ItemEvent::SoldOut {
            item_id,
            generation,
        };
        let published =
            item_events::publish(channel, &context.topology, &context.amqp_user, &event).await;
        if let Err(e) = published {
            tracing::debug!(item_id, error = %e, "could not announce an item sold out");
        }
    }
}

/// Copies undecidable messages to the dead-letter exchange with the reason, and waits for the
/// broker to confirm every copy (only then may the originals be acked).
async fn dead_letter(context: &Context, batch: &Batch) -> anyhow::Result<()> {
    let exchange = context.topology.dead_letter_exchange();
    let publishes = batch.rejects.iter().map(|reject| {
        let delivery = &batch.deliveries[reject.place.delivery];
        tracing::warn!(reason = %reject.reason, element = reject.place.element.map(|e| e.index),
            queue = %delivery.routing_key, "dead-lettering a message");
        let (body, props) = batch.dead_letter(reject);
        let exchange = exchange.clone();
        async move {
            let confirm = context
                .dead_letters
                .basic_publish(
                    exchange.into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    body,
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
        .consumer
        .dead_lettered
        .inc_by(batch.rejects.len() as u64);
    Ok(())
}

/// Who this consumer is, in `partition_epochs.holder`: host and process id.
pub(crate) fn holder_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    format!("{host}/{}", std::process::id())
}

/// True when a commit was refused because one of its requests was decided before (the key of
/// `outcomes`). Any other refusal means the state in memory may be wrong: it is reloaded.
fn is_repeat(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.is_unique_violation() && db.constraint() == Some("outcomes_pkey"))
}
