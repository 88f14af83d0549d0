//! The system the bench measures, started in this process through the composition root
//! ([`crate::app`]): the consumer and two APIs (with and without shedding) on queues and Redis
//! keys of the bench's own — or, with `--url`, only the address of a running `seckill serve`.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::args::{BenchArgs, Via};
use crate::app::{App, Settings};
use crate::broker::{publisher::Publisher, topology::Topology};
use crate::config::{BrokerArgs, ConsumerArgs, DatabaseArgs, PathArgs, ServeArgs};
use crate::paths::Registry;
use crate::shedding::Shedder;

/// How long, in milliseconds, the bench's API keeps an item announced sold out (the `serve`
/// default).
const SOLD_OUT_TTL_MS: u64 = 5000;

/// What the bench drives and reads.
pub(super) struct Stack {
    /// The database every path writes to, and the audit reads.
    pub pool: PgPool,
    /// The partition queues (removed at the end when the bench declared them).
    pub topology: Topology,
    /// The API requests go to over HTTP.
    pub base_url: String,
    /// An in-process API without sold-out shedding, for `queue-no-shed` over HTTP.
    pub no_shed_url: Option<String>,
    /// The queue path's publisher, for `--via direct` (`None` with `--url`).
    pub publisher: Option<Arc<Publisher>>,
    /// Sold-out shedding for `--via direct` (the HTTP API has its own).
    pub shedder: Option<Arc<Shedder>>,
    /// The lock-based paths, for `--via direct`.
    pub registry: Option<Arc<Registry>>,
    /// The in-process system (API with shedding and the consumer; API without shedding), held
    /// until [`Stack::stop`]; `None` with `--url`.
    apps: Mutex<Option<(App, App)>>,
}

impl Stack {
    /// Stops the in-process system, surfacing an error any of its parts met while the bench ran.
    pub async fn stop(&self) -> anyhow::Result<()> {
        let Some((app, no_shed)) = self.apps.lock().await.take() else {
            return Ok(());
        };
        let (app, no_shed) = tokio::join!(app.stop(), no_shed.stop());
        app.and(no_shed)
    }
}

/// Queues and Redis keys of the bench's own: nothing else consumes them, and they go at the end.
pub(super) fn own_names(broker: &mut BrokerArgs, path_args: &mut PathArgs) {
    let tag = Uuid::new_v4().simple().to_string()[..8].to_string();
    broker.queue_prefix = format!("{}-bench-{tag}", broker.queue_prefix);
    path_args.redis.redis_prefix = format!("{}-bench-{tag}", path_args.redis.redis_prefix);
}

/// Connects to the database and, unless `--url` names a running server, starts the system
/// through the composition root: an API with sold-out shedding and the consumer, and a second
/// API without shedding (both publish to the same partitions).
pub(super) async fn start(
    database: &DatabaseArgs,
    broker: &BrokerArgs,
    consumer_args: &ConsumerArgs,
    path_args: &PathArgs,
    args: &BenchArgs,
) -> anyhow::Result<Stack> {
    let pool = crate::store::connect(database).await?;
    let topology = Topology::new(broker);
    if let Some(url) = &args.url {
        return Ok(Stack {
            pool,
            topology,
            base_url: url.trim_end_matches('/').to_string(),
            no_shed_url: None,
            publisher: None,
            shedder: None,
            registry: None,
            apps: Mutex::new(None),
        });
    }
    let shutdown = CancellationToken::new();
    let api = ServeArgs {
        sold_out_ttl_ms: SOLD_OUT_TTL_MS,
        ..ServeArgs::loopback()
    };
    let with_consumer = Settings {
        broker: broker.clone(),
        api: Some((api.clone(), path_args.clone())),
        consumer: Some(consumer_args.clone()),
        metrics_bind: None,
    };
    let app = App::start(pool.clone(), with_consumer, shutdown.clone()).await?;
    let no_shed = Settings {
        broker: broker.clone(),
        api: Some((
            ServeArgs {
                sold_out_ttl_ms: 0,
                ..api
            },
            path_args.clone(),
        )),
        consumer: None,
        metrics_bind: None,
    };
    let no_shed = App::start(pool.clone(), no_shed, shutdown).await?;
    let state = app.api_state().expect("the stack runs an API");
    Ok(Stack {
        topology,
        base_url: app.api_url().expect("the stack runs an API"),
        no_shed_url: no_shed.api_url(),
        publisher: Some(Arc::clone(&state.publisher)),
        shedder: state.shedder.clone(),
        registry: (args.via == Via::Direct).then(|| Arc::clone(&state.paths)),
        pool,
        apps: Mutex::new(Some((app, no_shed))),
    })
}
