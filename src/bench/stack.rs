//! The system the bench measures, wired in this process: the consumer, the publisher, the
//! sold-out shedder and two APIs (with and without shedding) on queues and Redis keys of the
//! bench's own — or, with `--url`, only the address of a running `seckill serve`.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::args::{BenchArgs, Via};
use crate::api::{self, AppState};
use crate::broker::{publisher::Publisher, topology::Topology};
use crate::config::{BrokerArgs, ConsumerArgs, DatabaseArgs, PathArgs};
use crate::consumer;
use crate::paths::Registry;
use crate::shedding::Shedder;

/// How long the bench's API keeps an item announced sold out (the `serve` default).
const SOLD_OUT_TTL: Duration = Duration::from_secs(5);

/// What the bench drives and reads.
pub(super) struct Stack {
    /// The database every path writes to, and the audit reads.
    pub pool: PgPool,
    /// The partition queues (removed at the end when the bench declared them).
    pub topology: Topology,
    /// Stops the in-process consumer, shedder and APIs.
    pub shutdown: CancellationToken,
    /// The API requests go to over HTTP.
    pub base_url: String,
    /// An in-process API without sold-out shedding, for `queue-no-shed` over HTTP.
    pub no_shed_url: Option<String>,
    /// The queue path's publisher, for `--via direct` (`None` with `--url`).
    pub publisher: Option<Arc<Publisher>>,
    /// Sold-out shedding for `--via direct` (the HTTP API has its own).
    pub shedder: Option<Arc<Shedder>>,
    /// The lock-based paths, for `--via direct`.
    pub registry: Option<Registry>,
}

/// Queues and Redis keys of the bench's own: nothing else consumes them, and they go at the end.
pub(super) fn own_names(broker: &mut BrokerArgs, path_args: &mut PathArgs) {
    let tag = Uuid::new_v4().simple().to_string()[..8].to_string();
    broker.queue_prefix = format!("{}-bench-{tag}", broker.queue_prefix);
    path_args.redis.redis_prefix = format!("{}-bench-{tag}", path_args.redis.redis_prefix);
}

/// Connects to the database and, unless `--url` names a running server, starts the consumer,
/// the publisher, the shedder and the two APIs.
pub(super) async fn start(
    database: &DatabaseArgs,
    broker: &BrokerArgs,
    consumer_args: &ConsumerArgs,
    path_args: &PathArgs,
    args: &BenchArgs,
) -> anyhow::Result<Stack> {
    let pool = crate::store::connect(database).await?;
    let topology = Topology::new(broker);
    let shutdown = CancellationToken::new();
    let mut publisher = None;
    let mut shedder = None;
    let mut no_shed_url = None;
    let base_url = match &args.url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            tokio::spawn(consumer::run(
                pool.clone(),
                broker.clone(),
                consumer_args.clone(),
                shutdown.clone(),
            ));
            let p = Arc::new(Publisher::connect(&broker.amqp_url, topology.clone()).await?);
            publisher = Some(Arc::clone(&p));
            let shedding = Shedder::start(
                pool.clone(),
                broker.amqp_url.clone(),
                topology.clone(),
                SOLD_OUT_TTL,
                shutdown.clone(),
            );
            shedder = Some(Arc::clone(&shedding));
            let state = AppState::new(
                pool.clone(),
                p,
                Registry::new(pool.clone(), path_args)?,
                None,
            );
            let no_shed = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            no_shed_url = Some(format!("http://{}", no_shed.local_addr()?));
            tokio::spawn(api::serve(no_shed, state.clone(), shutdown.clone()));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("http://{}", listener.local_addr()?);
            tokio::spawn(api::serve(
                listener,
                state.with_shedding(shedding),
                shutdown.clone(),
            ));
            url
        }
    };
    let registry = (args.via == Via::Direct)
        .then(|| Registry::new(pool.clone(), path_args))
        .transpose()?;
    Ok(Stack {
        pool,
        topology,
        shutdown,
        base_url,
        no_shed_url,
        publisher,
        shedder,
        registry,
    })
}
