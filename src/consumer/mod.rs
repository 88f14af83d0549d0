//! `seckill consume`: the daemon that decides. It consumes every partition queue; thanks to
//! single-active-consumer the broker delivers each partition to one daemon at a time, and the
//! others wait as hot standbys. A broker outage ends the connection's partitions together; the
//! daemon reconnects with capped, jittered backoff, and rebuilds item state from the database.

pub mod balance;
pub mod partition;
pub mod sequencer;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::ConfirmSelectOptions;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::broker::{self, topology::Topology};
use crate::config::{BrokerArgs, ConsumerArgs};

/// Longest a partition may take to finish its current batch once told to stop.
const PARTITION_STOP_GRACE: Duration = Duration::from_secs(10);

/// What every partition task of one connection shares.
pub(crate) struct Context {
    pub pool: PgPool,
    pub topology: Topology,
    pub args: ConsumerArgs,
    /// Confirm-mode channel for dead letters: a bad message is acked only once its copy is safe.
    pub dead_letters: lapin::Channel,
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
    let topology = Topology::new(&broker_args);
    let mut attempt = 0;
    let mut connected_before = false;
    loop {
        let result = run_connected(
            &pool,
            &broker_args,
            &topology,
            &args,
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

async fn run_connected(
    pool: &PgPool,
    broker_args: &BrokerArgs,
    topology: &Topology,
    args: &ConsumerArgs,
    shutdown: &CancellationToken,
    attempt: &mut u32,
    connected_before: &mut bool,
) -> anyhow::Result<()> {
    // Named after its exchange, so an operator (or a fault test) can tell deployments apart.
    let name = format!("seckill-consumer {}", topology.orders_exchange());
    let connection = broker::connect(&broker_args.amqp_url, &name).await?;
    let setup = connection.create_channel().await?;
    topology.declare(&setup).await?;
    let dead_letters = connection.create_channel().await?;
    dead_letters
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let context = Arc::new(Context {
        pool: pool.clone(),
        topology: topology.clone(),
        args: args.clone(),
        dead_letters,
    });

    // Stops this connection's partitions: on shutdown, and when one of them or the connection
    // fails (the others then finish the batch they are on, then stop).
    let stop = shutdown.child_token();
    let mut partitions = JoinSet::new();
    for partition in 0..topology.partitions() {
        let channel = connection.create_channel().await?;
        partitions.spawn(partition::run(
            Arc::clone(&context),
            channel,
            partition,
            stop.clone(),
        ));
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
    let outcome = loop {
        tokio::select! {
            ended = partitions.join_next() => match ended {
                None => break Ok(()),
                Some(Ok(Ok(()))) if shutdown.is_cancelled() => continue,
                Some(Ok(Ok(()))) => break Err(anyhow::anyhow!("a partition consumer ended")),
                Some(Ok(Err(e))) => break Err(e),
                Some(Err(join_error)) => break Err(join_error.into()),
            },
            Some(event) = events.next() => {
                if let lapin::Event::Error(e) = event {
                    break Err(anyhow::anyhow!("broker connection error: {e}"));
                }
            }
        }
    };
    // Let every partition finish the batch it is on (its commit may still land; its ack may
    // not), within a bound; then close the connection, which hands any prefetched, unacked
    // deliveries back to the broker.
    stop.cancel();
    let finishing = async { while partitions.join_next().await.is_some() {} };
    if tokio::time::timeout(PARTITION_STOP_GRACE, finishing)
        .await
        .is_err()
    {
        tracing::warn!("partitions did not finish their batch in time; aborting them");
        partitions.shutdown().await;
    }
    let _ = connection
        .close(200, "seckill consumer stopping".into())
        .await;
    outcome
}
