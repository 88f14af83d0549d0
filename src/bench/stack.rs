//! The system the bench measures, started in this process through the composition root
//! ([`crate::app`]): the consumer and three APIs (with shedding; without; without shedding and
//! with one request per broker message) on queues and Redis keys of the bench's own — or, with
//! `--url`, only the address of a running `seckill serve`.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::args::{BenchArgs, Via};
use super::row::BenchPath;
use crate::app::{App, Settings};
use crate::broker::{publisher::Publisher, topology::Topology};
use crate::config::{
    BrokerArgs, ConsumerArgs, DatabaseArgs, PathArgs, PublishArgs, RivalArgs, ServeArgs,
};
use crate::paths::Registry;
use crate::shedding::Shedder;

/// How long, in milliseconds, the bench's API keeps an item announced sold out (the `serve`
/// default).
const SOLD_OUT_TTL_MS: u64 = 5000;

/// `queue-unbatched`: one request per message, in its best form — up to 1,000 messages awaiting
/// their confirm at once (as the publisher did before it batched), not one behind another.
const UNBATCHED: PublishArgs = PublishArgs {
    publish_batch_max: 1,
    publish_batch_bytes_max: 65_536,
    publish_in_flight_max: 1000,
};

/// What the bench drives and reads.
pub(super) struct Stack {
    /// The database every path writes to, and the audit reads.
    pub pool: PgPool,
    /// The partition queues (removed at the end when the bench declared them).
    pub topology: Topology,
    /// The API requests go to over HTTP.
    pub base_url: String,
    /// The in-process APIs of the queue path's other rows (`None` with `--url`).
    own_apis: Option<OwnApis>,
    /// Sold-out shedding for `--via direct` (the HTTP API has its own).
    pub shedder: Option<Arc<Shedder>>,
    /// The lock-based paths, for `--via direct`.
    pub registry: Option<Arc<Registry>>,
    /// The in-process system (the API with shedding and the consumer, and the other APIs), held
    /// until [`Stack::stop`]; empty with `--url`.
    apps: Mutex<Vec<App>>,
}

/// Where the queue path's rows reach the in-process APIs: each API's URL and publisher.
struct OwnApis {
    queue: Arc<Publisher>,
    no_shed: (String, Arc<Publisher>),
    unbatched: (String, Arc<Publisher>),
}

impl Stack {
    /// The URL of the in-process API of a queue row that needs its own (`None` with `--url`,
    /// or for a row that uses the main API).
    pub fn own_api_url(&self, path: BenchPath) -> Option<&str> {
        let apis = self.own_apis.as_ref()?;
        match path {
            BenchPath::QueueNoShed => Some(&apis.no_shed.0),
            BenchPath::QueueUnbatched => Some(&apis.unbatched.0),
            BenchPath::Path(_) => None,
        }
    }

    /// The publisher of a queue row's API, for `--via direct` (`None` with `--url`).
    pub fn publisher(&self, path: BenchPath) -> Option<&Arc<Publisher>> {
        let apis = self.own_apis.as_ref()?;
        match path {
            BenchPath::QueueNoShed => Some(&apis.no_shed.1),
            BenchPath::QueueUnbatched => Some(&apis.unbatched.1),
            BenchPath::Path(_) => Some(&apis.queue),
        }
    }

    /// Stops the in-process system, surfacing an error any of its parts met while the bench ran.
    pub async fn stop(&self) -> anyhow::Result<()> {
        let apps = std::mem::take(&mut *self.apps.lock().await);
        let stopped = futures::future::join_all(apps.into_iter().map(App::stop)).await;
        stopped.into_iter().collect()
    }
}

/// Queues and Redis keys of the bench's own: nothing else consumes them, and they go at the end.
pub(super) fn own_names(broker: &mut BrokerArgs, path_args: &mut PathArgs) {
    let tag = Uuid::new_v4().simple().to_string()[..8].to_string();
    broker.queue_prefix = format!("{}-bench-{tag}", broker.queue_prefix);
    path_args.redis.redis_prefix = format!("{}-bench-{tag}", path_args.redis.redis_prefix);
}

/// Connects to the database and, unless `--url` names a running server, starts the system
/// through the composition root: an API with sold-out shedding and the consumer, a second API
/// without shedding, and a third without shedding that publishes one request per message (all
/// publish to the same partitions).
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
            own_apis: None,
            shedder: None,
            registry: None,
            apps: Mutex::new(Vec::new()),
        });
    }
    let shutdown = CancellationToken::new();
    let api = ServeArgs {
        sold_out_ttl_ms: SOLD_OUT_TTL_MS,
        publish: args.publish,
        ..ServeArgs::loopback()
    };
    let with_consumer = Settings {
        broker: broker.clone(),
        api: Some((api.clone(), path_args.clone())),
        consumer: Some(consumer_args.clone()),
        metrics_bind: None,
        rival_workers: Some((RivalArgs::default(), path_args.redis.clone())),
    };
    let app = App::start(pool.clone(), with_consumer, shutdown.clone()).await?;
    let only_api = |serve: ServeArgs| Settings {
        broker: broker.clone(),
        api: Some((serve, path_args.clone())),
        consumer: None,
        metrics_bind: None,
        rival_workers: None,
    };
    let no_shed = ServeArgs {
        sold_out_ttl_ms: 0,
        ..api.clone()
    };
    let unbatched = ServeArgs {
        publish: UNBATCHED,
        ..no_shed.clone()
    };
    let no_shed = App::start(pool.clone(), only_api(no_shed), shutdown.clone()).await?;
    let unbatched = App::start(pool.clone(), only_api(unbatched), shutdown).await?;
    let state = app.api_state().expect("the stack runs an API");
    let reach = |app: &App| {
        let url = app.api_url().expect("the stack runs an API");
        let publisher = &app.api_state().expect("the stack runs an API").publisher;
        (url, Arc::clone(publisher))
    };
    Ok(Stack {
        topology,
        base_url: app.api_url().expect("the stack runs an API"),
        own_apis: Some(OwnApis {
            queue: Arc::clone(&state.publisher),
            no_shed: reach(&no_shed),
            unbatched: reach(&unbatched),
        }),
        shedder: state.shedder.clone(),
        registry: (args.via == Via::Direct).then(|| Arc::clone(&state.paths)),
        pool,
        apps: Mutex::new(vec![app, no_shed, unbatched]),
    })
}
