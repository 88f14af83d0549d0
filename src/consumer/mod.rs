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
mod batch;
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

use crate::broker::item_events::{self, Heard, ItemEvent};
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
    /// The AMQP user of the connection: the `user_id` of the consumer's `sold_out`
    /// announcements.
    pub amqp_user: String,
    /// Items announced restocked: each partition re-reads their rows before its next batch. A
    /// fast path only: a batch that would answer `sold_out` also checks the stored generation
    /// (`partition::forget_missed_restocks`), so a lost announcement costs no unit.
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
    let announcers = item_events::Announcers::from_args(&broker_args)?;
    let amqp_user = broker::amqp_user(&broker_args.amqp_url)?;
    let (restocked, _) = broadcast::channel(RESTOCKS_BUFFERED_MAX);
    // For the daemon's whole life, across its broker connections: `listen` reconnects on its
    // own, so the relay never ends while the daemon runs. Polled here rather than spawned, so
    // it goes with the daemon's task however that ends.
    let relay = relay_restocks(
        broker_args.amqp_url.clone(),
        topology.clone(),
        announcers,
        restocked.clone(),
        shutdown.clone(),
    );
    let daemon = Daemon {
        topology,
        member: lease::member_id(),
        pool,
        broker_args,
        args,
        restocked,
        amqp_user,
        shutdown,
    };
    tracing::info!(member = %daemon.member, "consumer lease id");
    let run = daemon.run();
    tokio::pin!(run);
    tokio::select! {
        result = &mut run => return result,
        // Ends only once shutdown is asked: the daemon still finishes its batches.
        () = relay => {}
    }
    run.await
}

/// What the daemon is, the same for every broker connection it makes.
struct Daemon {
    pool: PgPool,
    broker_args: BrokerArgs,
    topology: Topology,
    args: ConsumerArgs,
    /// This daemon's id in the lease table, kept across reconnections.
    member: String,
    /// Items announced restocked, relayed by [`relay_restocks`] to every partition.
    restocked: broadcast::Sender<ItemId>,
    /// The AMQP user of `broker_args`: the `user_id` of this daemon's announcements.
    amqp_user: String,
    shutdown: CancellationToken,
}

/// How far the daemon is in getting the broker back.
#[derive(Default)]
struct Reconnect {
    /// Connections that failed or ended since the last one came up: the next back-off.
    attempt: u32,
    /// Whether a connection came up before: the next one is a reconnection.
    connected_before: bool,
}

impl Reconnect {
    /// A connection came up, its partitions subscribed.
    fn connected(&mut self) {
        if self.connected_before {
            crate::metrics::get()
                .broker_reconnects
                .with_label_values(&["consumer"])
                .inc();
            tracing::info!(
                after_attempts = self.attempt,
                "consumer reconnected to the broker"
            );
        }
        self.connected_before = true;
        self.attempt = 0;
    }

    /// A connection failed or ended: how long to wait before the next one.
    fn pause(&mut self) -> Duration {
        let pause = crate::backoff::delay(
            self.attempt,
            Duration::from_millis(200),
            Duration::from_secs(10),
        );
        self.attempt += 1;
        pause
    }
}

impl Daemon {
    /// Connects, decides until the connection ends, and reconnects with back-off, until shutdown.
    async fn run(&self) -> anyhow::Result<()> {
        let mut reconnect = Reconnect::default();
        loop {
            let result = match self.connect().await {
                Ok(connected) => {
                    reconnect.connected();
                    tracing::info!(
                        partitions = self.topology.partitions(),
                        "consumer connected; waiting for deliveries"
                    );
                    connected.run(&self.shutdown).await
                }
                Err(e) => Err(e),
            };
            if self.shutdown.is_cancelled() {
                log_stopped(&result);
                return result;
            }
            let error = match result {
                Ok(()) => anyhow::anyhow!("the broker connection ended"),
                Err(e) => e,
            };
            let pause = reconnect.pause();
            tracing::warn!(error = %format!("{error:#}"), retry_in_ms = pause.as_millis() as u64, "consumer lost the broker; reconnecting");
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Opens a connection, starts its lease, and subscribes to every partition.
    async fn connect(&self) -> anyhow::Result<Connected> {
        let (connection, context) = self.open().await?;
        // The lease lives only while the daemon is connected: a daemon without the broker must
        // not be handed partitions.
        let stop = self.shutdown.child_token();
        let (views_sender, views) = watch::channel(None);
        let lease = tokio::spawn(lease::run(
            self.pool.clone(),
            self.member.clone(),
            self.broker_args.queue_prefix.clone(),
            self.args.clone(),
            views_sender,
            stop.clone(),
        ));
        let partitions = Partitions::new(context, Arc::clone(&connection), &stop, &self.member);
        let mut connected = Connected {
            connection,
            partitions,
            stop,
            lease,
            views,
        };
        // Standby everywhere: the broker makes this daemon active where it subscribed first (or
        // alone), and promotes it at once where the active daemon dies.
        for partition in 0..self.topology.partitions() {
            if let Err(e) = connected.partitions.subscribe(partition).await {
                // Not connected after all: the lease must not outlive the attempt.
                connected.tear_down().await;
                return Err(e);
            }
        }
        Ok(connected)
    }

    /// The connection, its topology declared, and what its partitions share.
    async fn open(&self) -> anyhow::Result<(Arc<lapin::Connection>, Arc<Context>)> {
        // Named after its exchange, so an operator (or a fault test) can tell deployments apart.
        let name = format!("seckill-consumer {}", self.topology.orders_exchange());
        let connection = Arc::new(broker::connect(&self.broker_args.amqp_url, &name).await?);
        let setup = connection.create_channel().await?;
        self.topology.declare(&setup).await?;
        let dead_letters = connection.create_channel().await?;
        dead_letters
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let context = Arc::new(Context {
            pool: self.pool.clone(),
            topology: self.topology.clone(),
            args: self.args.clone(),
            dead_letters,
            amqp_user: self.amqp_user.clone(),
            restocked: self.restocked.clone(),
        });
        Ok((connection, context))
    }
}

fn log_stopped(result: &anyhow::Result<()>) {
    match result {
        Ok(()) => tracing::info!("consumer stopped: every batch taken was committed and acked"),
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "consumer stopped with an error"),
    }
}

/// One broker connection's share of the daemon: its partitions and its lease, which end with it.
struct Connected {
    connection: Arc<lapin::Connection>,
    partitions: Partitions,
    /// Stops this connection's partitions and its lease: on shutdown, and when one of them or
    /// the connection fails (the others then finish the batch they are on, then stop).
    stop: CancellationToken,
    lease: tokio::task::JoinHandle<()>,
    /// The lease table, as the lease task last read it.
    views: watch::Receiver<Option<Arc<lease::View>>>,
}

impl Connected {
    /// Decides until shutdown or until the connection or a partition fails, then tears down.
    async fn run(mut self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let outcome = self.watch(shutdown).await;
        let partition_error = self.tear_down().await;
        match (outcome, partition_error) {
            (Ok(()), Some(error)) => Err(error),
            (outcome, _) => outcome,
        }
    }

    /// Follows the partitions, the lease table and the connection until one of them ends it.
    async fn watch(&mut self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        // lapin issue #389: a consumer stream may wait silently after the broker died, so the
        // connection's own events are watched too.
        let mut events = self.connection.events_listener();
        let partitions = &mut self.partitions;
        loop {
            let next_resubscribe = partitions
                .next_resubscribe()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                // Checked first: once shutdown is asked, partitions ending are expected.
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                Some(ended) = partitions.tasks.join_next() => {
                    let (partition, subscription, result) = ended?;
                    partitions.ended(partition, subscription, result).await?;
                }
                Some(activation) = partitions.activations.recv() => partitions.activated(activation),
                Ok(()) = self.views.changed() => {
                    let view = self.views.borrow_and_update().clone();
                    if let Some(view) = view {
                        partitions.rebalance(&view);
                    }
                }
                _ = tokio::time::sleep_until(next_resubscribe), if partitions.next_resubscribe().is_some() => {
                    partitions.resubscribe_due().await?;
                }
                Some(event) = events.next() => {
                    if let lapin::Event::Error(e) = event {
                        anyhow::bail!("broker connection error: {e}");
                    }
                }
            }
        }
    }

    /// Lets every partition finish the batch it is on (its commit may still land; its ack may
    /// not), within a bound; then closes the connection, which hands any prefetched, unacked
    /// deliveries back to the broker. Stopping also releases the lease, so the other daemons
    /// rebalance at their next heartbeat. Returns the first error a partition ended with.
    async fn tear_down(mut self) -> Option<anyhow::Error> {
        self.stop.cancel();
        let finished = self.finish_partitions().await;
        self.partitions.forget_all();
        let _ = self
            .connection
            .close(200, "seckill consumer stopping".into())
            .await;
        let _ = self.lease.await;
        finished
    }

    /// Awaits every partition task, within [`PARTITION_STOP_GRACE`] (then aborts them). Returns
    /// the first error among them.
    async fn finish_partitions(&mut self) -> Option<anyhow::Error> {
        let tasks = &mut self.partitions.tasks;
        let finishing = async {
            let mut first_error = None;
            while let Some(ended) = tasks.join_next().await {
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
            Ok(first_error) => first_error,
            Err(_) => {
                tracing::warn!("partitions did not finish their batch in time; aborting them");
                self.partitions.tasks.shutdown().await;
                None
            }
        }
    }
}

/// Hands each restock announcement to the partitions, until shutdown, on a connection of its own
/// that [`item_events::listen`] re-opens whenever it is lost. Announcements missed meanwhile need
/// no repair here: a partition about to answer `sold_out` for an item checks its stored
/// generation and re-reads its stock if a restock happened since
/// (`partition::forget_missed_restocks`).
async fn relay_restocks(
    amqp_url: String,
    topology: Topology,
    announcers: item_events::Announcers,
    restocked: broadcast::Sender<ItemId>,
    shutdown: CancellationToken,
) {
    let name = format!(
        "seckill-consumer-events {}",
        topology.item_events_exchange()
    );
    let relay = move |heard| {
        if let Heard::Event(ItemEvent::Restocked { item_id, .. }) = heard {
            tracing::info!(item_id, "item restocked; its stock will be re-read");
            let _ = restocked.send(item_id);
        }
    };
    item_events::listen(amqp_url, topology, name, announcers, relay, shutdown).await;
}
