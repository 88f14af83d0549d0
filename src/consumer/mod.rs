//! `seckill consume`: the daemon that decides. It subscribes to every partition queue; thanks to
//! single-active-consumer the broker delivers each partition to one daemon at a time, and the
//! others wait as hot standbys. A broker outage ends the connection's partitions together; the
//! daemon reconnects with capped, jittered backoff, and rebuilds item state from the database.
//!
//! Several daemons balance the partitions among themselves ([`balance`], [`lease`]): each
//! heartbeats a lease and computes, from the live leases alone, which partitions each daemon
//! owns. A daemon that finds itself active on a partition whose owner is alive hands it over:
//! it finishes its batch (commit, then ack), closes the partition's channel — single-active-
//! consumer then promotes the next subscriber, and unacked deliveries go back to the queue — and
//! subscribes again a little later, at the back of the line, as a standby.

pub mod balance;
pub mod lease;
pub mod partition;
pub mod sequencer;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::options::ConfirmSelectOptions;
use sqlx::PgPool;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::item_events::{self, ItemEvent};
use crate::broker::{self, topology::Topology};
use crate::config::{BrokerArgs, ConsumerArgs};
use crate::domain::ItemId;
use crate::store::Fence;
use lease::{Member, View};

/// Restock announcements a partition may fall behind by before it drops all its item states.
const RESTOCKS_BUFFERED_MAX: usize = 1024;

/// Longest a partition may take to finish its current batch once told to stop.
const PARTITION_STOP_GRACE: Duration = Duration::from_secs(10);

/// Longest closing one partition's channel after a handover may take; past it the connection is
/// deemed broken.
const CHANNEL_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every partition task of one connection shares.
pub(crate) struct Context {
    pub pool: PgPool,
    pub topology: Topology,
    pub args: ConsumerArgs,
    /// Confirm-mode channel for dead letters: a bad message is acked only once its copy is safe.
    pub dead_letters: lapin::Channel,
    /// Items announced restocked: each partition drops their state before its next batch.
    pub restocked: broadcast::Sender<ItemId>,
}

/// Lets one subscription tell the daemon that it became the partition's active consumer (it
/// took the epoch): the broker says nothing when it promotes a standby, deliveries do.
pub(crate) struct OnActive {
    partition: u16,
    subscription: u64,
    activations: mpsc::UnboundedSender<Activation>,
}

impl OnActive {
    /// Reports once, consuming the hook. The channel is unbounded but holds at most one report
    /// per subscription, and the daemon drains it continuously.
    pub(crate) fn report(self, fence: &Fence) {
        let _ = self.activations.send(Activation {
            partition: self.partition,
            subscription: self.subscription,
            epoch: fence.epoch,
        });
    }
}

struct Activation {
    partition: u16,
    subscription: u64,
    epoch: i64,
}

/// Runs until `shutdown` is cancelled: then each partition finishes (commits and acks) the batch
/// it is on, and the function returns.
pub async fn run(
    pool: PgPool,
    broker_args: BrokerArgs,
    args: ConsumerArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.prefetch >= args.batch_size_max,
        "prefetch ({}) must be at least the batch size ({}), or batches can never fill",
        args.prefetch,
        args.batch_size_max
    );
    anyhow::ensure!(
        args.lease_ttl_ms >= 2 * args.lease_heartbeat_ms,
        "the lease TTL ({} ms) must be at least twice the heartbeat ({} ms), or one late \
         heartbeat makes a live daemon look gone",
        args.lease_ttl_ms,
        args.lease_heartbeat_ms
    );
    let topology = Topology::new(&broker_args);
    let member = lease::member_id();
    tracing::info!(%member, "consumer lease id");
    let mut attempt = 0;
    let mut connected_before = false;
    loop {
        let result = run_connected(
            &pool,
            &broker_args,
            &topology,
            &args,
            &member,
            &shutdown,
            &mut attempt,
            &mut connected_before,
        )
        .await;
        if shutdown.is_cancelled() {
            match &result {
                Ok(()) => {
                    tracing::info!("consumer stopped: every batch taken was committed and acked")
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "consumer stopped with an error")
                }
            }
            return result;
        }
        let error = match result {
            Ok(()) => anyhow::anyhow!("the broker connection ended"),
            Err(e) => e,
        };
        let pause =
            crate::backoff::delay(attempt, Duration::from_millis(200), Duration::from_secs(10));
        attempt += 1;
        tracing::warn!(error = %format!("{error:#}"), retry_in_ms = pause.as_millis() as u64, "consumer lost the broker; reconnecting");
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_connected(
    pool: &PgPool,
    broker_args: &BrokerArgs,
    topology: &Topology,
    args: &ConsumerArgs,
    member: &str,
    shutdown: &CancellationToken,
    attempt: &mut u32,
    connected_before: &mut bool,
) -> anyhow::Result<()> {
    // Named after its exchange, so an operator (or a fault test) can tell deployments apart.
    let name = format!("seckill-consumer {}", topology.orders_exchange());
    let connection = Arc::new(broker::connect(&broker_args.amqp_url, &name).await?);
    let setup = connection.create_channel().await?;
    topology.declare(&setup).await?;
    let dead_letters = connection.create_channel().await?;
    dead_letters
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let (restocked, _) = broadcast::channel(RESTOCKS_BUFFERED_MAX);
    let announcements =
        item_events::subscribe(&connection.create_channel().await?, topology).await?;
    tokio::spawn(relay_restocks(announcements, restocked.clone()));
    let context = Arc::new(Context {
        pool: pool.clone(),
        topology: topology.clone(),
        args: args.clone(),
        dead_letters,
        restocked,
    });

    // Stops this connection's partitions and its lease: on shutdown, and when one of them or the
    // connection fails (the others then finish the batch they are on, then stop). The lease
    // lives only while the daemon is connected: a daemon without the broker must not be handed
    // partitions.
    let stop = shutdown.child_token();
    let (views_sender, mut views) = watch::channel(None);
    let lease_task = tokio::spawn(lease::run(
        pool.clone(),
        member.to_owned(),
        broker_args.queue_prefix.clone(),
        args.clone(),
        views_sender,
        stop.clone(),
    ));
    let mut partitions =
        Partitions::new(Arc::clone(&context), Arc::clone(&connection), &stop, member);
    // Standby everywhere: the broker makes this daemon active where it subscribed first (or
    // alone), and promotes it at once where the active daemon dies.
    for partition in 0..topology.partitions() {
        partitions.subscribe(partition).await?;
    }
    if *connected_before {
        crate::metrics::get()
            .broker_reconnects
            .with_label_values(&["consumer"])
            .inc();
        tracing::info!(
            after_attempts = *attempt,
            "consumer reconnected to the broker"
        );
    }
    *connected_before = true;
    *attempt = 0;
    tracing::info!(
        partitions = topology.partitions(),
        "consumer connected; waiting for deliveries"
    );

    // lapin issue #389: a consumer stream may wait silently after the broker died, so the
    // connection's own events are watched too.
    let mut events = connection.events_listener();
    let mut outcome = loop {
        let next_resubscribe = partitions
            .next_resubscribe()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            // Checked first: once shutdown is asked, partitions ending are expected.
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            Some(ended) = partitions.tasks.join_next() => match ended {
                Ok((partition, subscription, result)) => {
                    if let Err(e) = partitions.ended(partition, subscription, result).await {
                        break Err(e);
                    }
                }
                Err(join_error) => break Err(join_error.into()),
            },
            Some(activation) = partitions.activations.recv() => partitions.activated(activation),
            Ok(()) = views.changed() => {
                let view = views.borrow_and_update().clone();
                if let Some(view) = view {
                    partitions.rebalance(&view);
                }
            }
            _ = tokio::time::sleep_until(next_resubscribe), if partitions.next_resubscribe().is_some() => {
                if let Err(e) = partitions.resubscribe_due().await {
                    break Err(e);
                }
            }
            Some(event) = events.next() => {
                if let lapin::Event::Error(e) = event {
                    break Err(anyhow::anyhow!("broker connection error: {e}"));
                }
            }
        }
    };
    // Let every partition finish the batch it is on (its commit may still land; its ack may
    // not), within a bound; then close the connection, which hands any prefetched, unacked
    // deliveries back to the broker. Stopping also releases the lease, so the other daemons
    // rebalance at their next heartbeat.
    stop.cancel();
    let finishing = async {
        let mut first_error = None;
        while let Some(ended) = partitions.tasks.join_next().await {
            let error = match ended {
                Ok((_, _, Ok(()))) => continue,
                Ok((_, _, Err(e))) => e,
                Err(join_error) => join_error.into(),
            };
            first_error.get_or_insert(error);
        }
        first_error
    };
    match tokio::time::timeout(PARTITION_STOP_GRACE, finishing).await {
        Ok(None) => {}
        Ok(Some(error)) => {
            if outcome.is_ok() {
                outcome = Err(error);
            }
        }
        Err(_) => {
            tracing::warn!("partitions did not finish their batch in time; aborting them");
            partitions.tasks.shutdown().await;
        }
    }
    partitions.forget_all();
    let _ = connection
        .close(200, "seckill consumer stopping".into())
        .await;
    let _ = lease_task.await;
    outcome
}

/// Hands each restock announcement to the partitions; ends with the connection (whose end also
/// ends the partitions, which then rebuild every item from the database).
async fn relay_restocks(mut announcements: lapin::Consumer, restocked: broadcast::Sender<ItemId>) {
    while let Some(Ok(delivery)) = announcements.next().await {
        if let Some(ItemEvent::Restocked { item_id }) = ItemEvent::decode(&delivery.data) {
            tracing::info!(item_id, "item restocked; its state will be reloaded");
            let _ = restocked.send(item_id);
        }
    }
}

/// One partition's subscription on this connection.
#[derive(Default)]
struct Slot {
    /// The subscription's channel, while there is one.
    channel: Option<lapin::Channel>,
    /// Tells apart this partition's successive subscriptions.
    subscription: u64,
    /// Stops this subscription only (after its current batch).
    stop: CancellationToken,
    /// Set once the subscription took the epoch: it is the partition's active consumer.
    active: Option<Active>,
    /// The owner it is being handed over to (the task is finishing its batch).
    handing_over_to: Option<String>,
    /// When to subscribe again, after a handover.
    resubscribe_at: Option<Instant>,
}

struct Active {
    epoch: i64,
    /// When this process learnt it, by its own monotonic clock.
    reported_at: Instant,
    /// A database time no earlier than the activation: `db_now` of the first lease read that
    /// started after the report. An owner whose lease was renewed after it was alive then.
    since_db: Option<DateTime<Utc>>,
}

/// The partition subscriptions of one connection, and the balance decisions over them.
struct Partitions {
    context: Arc<Context>,
    connection: Arc<lapin::Connection>,
    /// Parent of every subscription's stop token (the connection's stop).
    stop: CancellationToken,
    member: String,
    slots: Vec<Slot>,
    tasks: JoinSet<(u16, u64, anyhow::Result<()>)>,
    activations: mpsc::UnboundedReceiver<Activation>,
    report_activation: mpsc::UnboundedSender<Activation>,
    next_subscription: u64,
    /// This daemon's partitions by the last lease read, to log changes.
    owned: Option<Vec<u16>>,
    /// What this connection added to the process's gauges, taken back when it ends.
    active_counted: i64,
    owned_counted: i64,
}

impl Partitions {
    fn new(
        context: Arc<Context>,
        connection: Arc<lapin::Connection>,
        stop: &CancellationToken,
        member: &str,
    ) -> Self {
        let (report_activation, activations) = mpsc::unbounded_channel();
        let slots = (0..context.topology.partitions())
            .map(|_| Slot::default())
            .collect();
        Self {
            context,
            connection,
            stop: stop.clone(),
            member: member.to_owned(),
            slots,
            tasks: JoinSet::new(),
            activations,
            report_activation,
            next_subscription: 0,
            owned: None,
            active_counted: 0,
            owned_counted: 0,
        }
    }

    /// Subscribes to `partition` on a channel of its own.
    async fn subscribe(&mut self, partition: u16) -> anyhow::Result<()> {
        let channel = self.connection.create_channel().await?;
        self.next_subscription += 1;
        let subscription = self.next_subscription;
        let stop = self.stop.child_token();
        let on_active = OnActive {
            partition,
            subscription,
            activations: self.report_activation.clone(),
        };
        let running = partition::run(
            Arc::clone(&self.context),
            channel.clone(),
            partition,
            stop.clone(),
            Some(on_active),
        );
        self.tasks
            .spawn(async move { (partition, subscription, running.await) });
        self.slots[usize::from(partition)] = Slot {
            channel: Some(channel),
            subscription,
            stop,
            ..Slot::default()
        };
        Ok(())
    }

    fn activated(&mut self, activation: Activation) {
        let slot = &mut self.slots[usize::from(activation.partition)];
        if slot.subscription != activation.subscription || slot.channel.is_none() {
            return; // a subscription that has ended since
        }
        slot.active = Some(Active {
            epoch: activation.epoch,
            reported_at: Instant::now(),
            since_db: None,
        });
        self.update_gauges();
    }

    /// A fresh lease read: log ownership changes, and hand over each partition this daemon is
    /// active on whose owner is another live daemon.
    fn rebalance(&mut self, view: &View) {
        let partitions = self.context.topology.partitions();
        let settled = view.settled();
        let owners = balance::owners(&settled, partitions);
        let owned: Vec<u16> = (0..partitions)
            .filter(|p| owners[usize::from(*p)].map(|m| settled[m]) == Some(self.member.as_str()))
            .collect();
        if self.owned.as_ref() != Some(&owned) {
            let joining = view.member(&self.member).is_some_and(|m| !m.settled);
            tracing::info!(
                members = settled.len(),
                joining,
                "owning partitions {owned:?} of {partitions} ({} live daemons settled{})",
                settled.len(),
                if joining {
                    "; this one is still settling"
                } else {
                    ""
                }
            );
            self.owned = Some(owned);
        }
        for (partition, slot) in self.slots.iter_mut().enumerate() {
            let Some(active) = &mut slot.active else {
                continue;
            };
            if slot.handing_over_to.is_some() {
                continue;
            }
            if active.since_db.is_none() && view.read_started > active.reported_at {
                active.since_db = Some(view.db_now);
            }
            let owner = owners[partition].and_then(|m| view.member(settled[m]));
            if let Some(owner) = hand_over_to(owner, &self.member, active.since_db) {
                tracing::info!(
                    partition,
                    epoch = active.epoch,
                    to = %owner,
                    "handing over p{partition} to {owner}: finishing the batch, then closing the subscription"
                );
                slot.handing_over_to = Some(owner.to_owned());
                slot.stop.cancel();
            }
        }
        self.update_gauges();
    }

    /// A subscription's task ended. After a handover: close its channel (unacked deliveries go
    /// back to the queue, the broker promotes the next subscriber) and subscribe again later.
    /// Otherwise it is an error that ends the connection, as before balancing existed.
    async fn ended(
        &mut self,
        partition: u16,
        subscription: u64,
        result: anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let resubscribe_after = 2 * self.context.args.lease_heartbeat();
        let slot = &mut self.slots[usize::from(partition)];
        if slot.subscription != subscription {
            return result; // cannot happen: one task per subscription, replaced only after it ends
        }
        let Some(owner) = slot.handing_over_to.take() else {
            if self.stop.is_cancelled() {
                return result; // stopping: every partition ends, and that is no error
            }
            return Err(result
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("a partition consumer ended")));
        };
        slot.active = None;
        let channel = slot.channel.take();
        slot.resubscribe_at = Some(Instant::now() + resubscribe_after);
        self.update_gauges();
        match &result {
            Ok(()) => tracing::info!(
                partition,
                to = %owner,
                resubscribe_in_ms = resubscribe_after.as_millis() as u64,
                "handed over p{partition}: last batch committed and acked"
            ),
            Err(e) => tracing::warn!(
                partition,
                to = %owner,
                error = %format!("{e:#}"),
                "handed over p{partition} with its batch uncommitted (the broker redelivers it)"
            ),
        }
        crate::metrics::get().partition_handovers.inc();
        // Closing the channel cancels its consumer. A channel the broker already closed is
        // fine (that is the goal); a close that hangs means the connection is broken.
        if let Some(channel) = channel {
            let closing = channel.close(200, "seckill: partition handed over".into());
            match tokio::time::timeout(CHANNEL_CLOSE_TIMEOUT, closing).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(partition, error = %e, "closing a handed-over channel")
                }
                Err(_) => anyhow::bail!("closing the channel of p{partition} timed out"),
            }
        }
        Ok(())
    }

    fn next_resubscribe(&self) -> Option<Instant> {
        self.slots.iter().filter_map(|s| s.resubscribe_at).min()
    }

    async fn resubscribe_due(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        for partition in 0..self.context.topology.partitions() {
            let slot = &self.slots[usize::from(partition)];
            if slot.resubscribe_at.is_some_and(|at| at <= now) {
                tracing::debug!(partition, "subscribing again as a standby");
                self.subscribe(partition).await?;
            }
        }
        Ok(())
    }

    fn update_gauges(&mut self) {
        let active = self
            .slots
            .iter()
            .filter(|s| s.active.is_some() && s.handing_over_to.is_none())
            .count() as i64;
        let owned = self.owned.as_ref().map_or(0, |o| o.len() as i64);
        let metrics = crate::metrics::get();
        metrics.partitions_active.add(active - self.active_counted);
        metrics.partitions_owned.add(owned - self.owned_counted);
        self.active_counted = active;
        self.owned_counted = owned;
    }

    /// The connection is over: nothing is active or owned through it any more.
    fn forget_all(&mut self) {
        for slot in &mut self.slots {
            slot.active = None;
        }
        self.owned = None;
        self.update_gauges();
    }
}

/// Whether a daemon active on a partition (since `active_since_db`, by the database's clock)
/// should hand it over to `owner`, the partition's owner by the balance: only to another daemon,
/// and only one whose lease was renewed after this daemon became active. A daemon that was
/// killed or paused cannot have renewed since: the broker promoted a standby because it died,
/// and handing the partition back to it would only leave the queue without a consumer until its
/// lease expires and the balance no longer counts it.
fn hand_over_to<'a>(
    owner: Option<&'a Member>,
    me: &str,
    active_since_db: Option<DateTime<Utc>>,
) -> Option<&'a str> {
    let owner = owner?;
    let since = active_since_db?;
    (owner.id != me && owner.renewed_at > since).then_some(owner.id.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, renewed_at_s: i64) -> Member {
        Member {
            id: id.into(),
            renewed_at: DateTime::from_timestamp(renewed_at_s, 0).unwrap(),
            settled: true,
        }
    }

    fn at(s: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(s, 0)
    }

    #[test]
    fn hands_over_only_to_another_daemon_alive_since_it_became_active() {
        let alive = member("b", 100);
        assert_eq!(hand_over_to(Some(&alive), "a", at(99)), Some("b"));
        // Its last renewal is older than the activation: it may be the daemon that died.
        assert_eq!(hand_over_to(Some(&alive), "a", at(100)), None);
        assert_eq!(hand_over_to(Some(&alive), "a", at(150)), None);
        // The activation has no database time yet: wait for the next lease read.
        assert_eq!(hand_over_to(Some(&alive), "a", None), None);
        // Its own partition, or nobody's (no settled daemon yet).
        assert_eq!(hand_over_to(Some(&member("a", 200)), "a", at(99)), None);
        assert_eq!(hand_over_to(None, "a", at(99)), None);
    }
}
