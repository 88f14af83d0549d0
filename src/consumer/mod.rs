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
mod subscriptions;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::ConfirmSelectOptions;
use sqlx::PgPool;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::item_events::{self, ItemEvent};
use crate::broker::{self, topology::Topology};
use crate::config::{BrokerArgs, ConsumerArgs};
use crate::domain::ItemId;
use crate::store::Fence;
use subscriptions::Partitions;

/// Restock announcements a partition may fall behind by before it drops all its item states.
const RESTOCKS_BUFFERED_MAX: usize = 1024;

/// Longest a partition may take to finish its current batch once told to stop.
const PARTITION_STOP_GRACE: Duration = Duration::from_secs(10);

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
    args.check()?;
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
