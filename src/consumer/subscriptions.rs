//! The partition subscriptions of one broker connection, and the balance decisions over them:
//! which partitions this daemon is active on (it learns it from the epoch it takes), which it
//! should own by the lease table ([`super::balance`]), and the handover of a partition to its
//! owner — finish the batch, close the channel (the broker promotes the next subscriber), and
//! subscribe again later at the back of the line.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::lease::{Member, View};
use super::{Activation, Context, OnActive, balance, partition};

/// Longest closing one partition's channel after a handover may take; past it the connection is
/// deemed broken.
const CHANNEL_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

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
pub(super) struct Partitions {
    context: Arc<Context>,
    connection: Arc<lapin::Connection>,
    /// Parent of every subscription's stop token (the connection's stop).
    stop: CancellationToken,
    member: String,
    slots: Vec<Slot>,
    pub(super) tasks: JoinSet<(u16, u64, anyhow::Result<()>)>,
    pub(super) activations: mpsc::UnboundedReceiver<Activation>,
    report_activation: mpsc::UnboundedSender<Activation>,
    next_subscription: u64,
    /// This daemon's partitions by the last lease read, to log changes.
    owned: Option<Vec<u16>>,
    /// What this connection added to the process's gauges, taken back when it ends.
    active_counted: i64,
    owned_counted: i64,
}

impl Partitions {
    pub(super) fn new(
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
    pub(super) async fn subscribe(&mut self, partition: u16) -> anyhow::Result<()> {
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

    pub(super) fn activated(&mut self, activation: Activation) {
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
    pub(super) fn rebalance(&mut self, view: &View) {
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
    pub(super) async fn ended(
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
        crate::metrics::get().consumer.partition_handovers.inc();
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

    pub(super) fn next_resubscribe(&self) -> Option<Instant> {
        self.slots.iter().filter_map(|s| s.resubscribe_at).min()
    }

    pub(super) async fn resubscribe_due(&mut self) -> anyhow::Result<()> {
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
        metrics
            .consumer
            .partitions_active
            .add(active - self.active_counted);
        metrics
            .consumer
            .partitions_owned
            .add(owned - self.owned_counted);
        self.active_counted = active;
        self.owned_counted = owned;
    }

    /// The connection is over: nothing is active or owned through it any more.
    pub(super) fn forget_all(&mut self) {
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
