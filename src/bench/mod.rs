//! `seckill bench`: runs the same scenario through every purchase path and compares them —
//! throughput, latency, and above all correctness, judged by the audit from the database after
//! each run, never by the load generator's own counts. In the same run it measures the ceilings
//! the queue path sits under (see [`ceiling`]), so the report can say how close it gets.
//!
//! It starts whatever it needs in-process (API and consumer, on a queue prefix of its own) unless
//! `--url` points it at a running `seckill serve`; it creates fresh items per path, and removes
//! its queues and rows at the end (unless `--keep`).

pub mod ceiling;
pub mod report;
pub mod scenario;
pub mod soak;
pub mod stats;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::api::{self, AppState};
use crate::audit;
use crate::broker::{publisher::Publisher, topology::Topology};
use crate::config::{BrokerArgs, ConsumerArgs, DatabaseArgs, PathArgs};
use crate::consumer;
use crate::domain::OrderRequest;
use crate::paths::{self, Registry};
use crate::shedding::Shedder;
use scenario::{Attempt, ScenarioKind, ScenarioSpec};
use stats::{Latency, Recorder};

/// The queue path with sold-out shedding turned off: every request goes through the broker to
/// the decider. Beside `queue`, it shows what answering `sold_out` at the door saves.
pub const QUEUE_NO_SHED: &str = "queue-no-shed";

/// How long the bench's API keeps an item announced sold out (the `serve` default).
const SOLD_OUT_TTL: Duration = Duration::from_secs(5);

/// Every path, in report order: `queue` (seckill's own) first, then the same without sold-out
/// shedding, the unsafe `naive` last.
pub fn all_paths() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = paths::NAMES
        .iter()
        .copied()
        .filter(|n| *n != "naive")
        .collect();
    names.insert(1, QUEUE_NO_SHED);
    names.push("naive");
    names
}

/// How requests reach the paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// Over real HTTP to the API, as a browser or `ab` would.
    Http,
    /// In-process calls, to show each approach's own cost without HTTP.
    Direct,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Paths to compare, comma-separated, or `all`.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub paths: Vec<String>,
    /// Demand shape: `hot` (one item, stock far below demand, each user 1–3 tries), `spread`
    /// (1,000 items, modest demand each), `retry-storm` (few users hammering one item).
    #[arg(long, value_enum, default_value_t = ScenarioKind::Hot)]
    pub scenario: ScenarioKind,
    /// Units per item (default: hot 500, spread 3, retry-storm 10).
    #[arg(long)]
    pub stock: Option<i64>,
    /// Distinct buyers (default: hot 2,500, spread 2,500, retry-storm 20).
    #[arg(long)]
    pub users: Option<usize>,
    /// Requests per path (default: hot 5,000, spread 5,000, retry-storm 3,000).
    #[arg(long)]
    pub requests: Option<usize>,
    /// Items on sale for `spread` (default 1,000).
    #[arg(long)]
    pub items: Option<usize>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// `http` drives the API over real HTTP; `direct` calls the paths in-process.
    #[arg(long, value_enum, default_value_t = Via::Http)]
    pub via: Via,
    /// Seed of the scenario: the same seed replays the same requests in the same order.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Folder for results.json and report.html.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// Base URL of a running `seckill serve` to drive instead of an in-process one.
    #[arg(long)]
    pub url: Option<String>,
    /// Skip the broker-alone, database-alone and pre-filled-consumer ceilings.
    #[arg(long)]
    pub no_ceilings: bool,
    /// Keep the bench's items, orders and outcomes in the database afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Soak mode: run each path for this many seconds at a steady --rate instead of sending
    /// --requests (with `--paths all`, only the queue path), sampling memory and latency.
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<u64>,
    /// Requests per second in soak mode.
    #[arg(long, default_value_t = 1000, requires = "duration")]
    pub rate: u32,
    /// Seconds between two soak samples.
    #[arg(long, default_value_t = 10, requires = "duration")]
    pub sample_every: u64,
}

impl BenchArgs {
    pub fn spec(&self) -> ScenarioSpec {
        let (requests, users, stock, items) = match self.scenario {
            ScenarioKind::Hot => (5_000, 2_500, 500, 1),
            ScenarioKind::Spread => (5_000, 2_500, 3, 1_000),
            ScenarioKind::RetryStorm => (3_000, 20, 10, 1),
        };
        ScenarioSpec {
            kind: self.scenario,
            requests: self.requests.unwrap_or(requests),
            users: self.users.unwrap_or(users),
            stock_per_item: self.stock.unwrap_or(stock),
            items: if self.scenario == ScenarioKind::Spread {
                self.items.unwrap_or(items)
            } else {
                1
            },
            seed: self.seed,
        }
    }

    fn selected_paths(&self) -> anyhow::Result<Vec<String>> {
        let known = all_paths();
        if self.duration.is_some() && self.paths.iter().any(|p| p == "all") {
            return Ok(vec!["queue".to_string()]);
        }
        if self.paths.iter().any(|p| p == "all") {
            return Ok(known.iter().map(|p| p.to_string()).collect());
        }
        for p in &self.paths {
            anyhow::ensure!(
                known.contains(&p.as_str()),
                "unknown path {p:?}; known: {}",
                known.join(", ")
            );
        }
        Ok(self.paths.clone())
    }
}

/// The audit's verdict over every item a path sold.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub clean: bool,
    pub oversold: bool,
    pub violations: Vec<String>,
}

/// What one path did.
#[derive(Debug, Clone, Serialize)]
pub struct PathResult {
    pub path: String,
    pub requests: u64,
    pub elapsed_s: f64,
    /// Decisions stored per second, from the first request sent to the last decision stored.
    pub decided_per_s: f64,
    pub orders_per_s: f64,
    /// Latency as the client saw it (to the decision; with `?wait` for the queue path).
    pub latency: Latency,
    /// Outcomes by status as stored in the database, plus `error` for failed requests.
    pub outcomes: std::collections::BTreeMap<String, u64>,
    pub orders: i64,
    pub stock_total: i64,
    /// Requests answered `sold_out` at the door, without reaching the broker (queue path).
    pub answered_at_door: u64,
    pub audit: Verdict,
    /// (ms, fraction) points of the latency CDF.
    pub cdf: Vec<(f64, f64)>,
    /// Soak mode only: one sample per window.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub soak: Vec<soak::SoakSample>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Ceilings {
    /// Broker alone: publish-confirm → consume → ack at once, messages per second.
    pub broker_msgs_per_s: Option<f64>,
    /// Broker alone, draining a pre-filled queue (consume + ack only), messages per second.
    pub broker_drain_msgs_per_s: Option<f64>,
    /// Database alone: decide + group commit, decisions per second.
    pub database_decisions_per_s: Option<f64>,
    /// Consumer alone, draining a pre-filled queue: decisions per second.
    pub consumer_prefilled_per_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    pub cores: usize,
    pub os: String,
    pub seckill_version: &'static str,
    pub git_revision: &'static str,
    pub postgres_version: String,
    pub rabbitmq_version: String,
    pub redis_version: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchResults {
    pub started_at: String,
    pub scenario: ScenarioSpec,
    pub via: Via,
    pub concurrency: usize,
    pub environment: Environment,
    pub ceilings: Ceilings,
    pub paths: Vec<PathResult>,
}

/// What the drivers share during a run.
struct Bench {
    pool: PgPool,
    http: reqwest::Client,
    base_url: String,
    /// An in-process API without sold-out shedding, for `queue-no-shed` over HTTP.
    no_shed_url: Option<String>,
    publisher: Option<Arc<Publisher>>,
    /// Sold-out shedding for `--via direct` (the HTTP API has its own).
    shedder: Option<Arc<Shedder>>,
    /// The lock-based paths, for `--via direct`.
    registry: Option<Registry>,
    via: Via,
    concurrency: usize,
}

/// Runs the benchmark; returns the results (also written to `--out`).
pub async fn run(
    database: DatabaseArgs,
    broker: BrokerArgs,
    consumer_args: ConsumerArgs,
    path_args: PathArgs,
    args: BenchArgs,
) -> anyhow::Result<BenchResults> {
    let paths = args.selected_paths()?;
    let spec = args.spec();
    let pool = crate::store::connect(&database).await?;
    let started_at = chrono::Utc::now().to_rfc3339();

    // A queue prefix of our own: nothing else consumes it, and it is removed at the end.
    // Queues and Redis keys of our own: nothing else consumes them, and they go at the end.
    let mut broker = broker;
    let mut path_args = path_args;
    if args.url.is_none() {
        let tag = Uuid::new_v4().simple().to_string()[..8].to_string();
        broker.queue_prefix = format!("{}-bench-{tag}", broker.queue_prefix);
        path_args.redis.redis_prefix = format!("{}-bench-{tag}", path_args.redis.redis_prefix);
    }
    let topology = Topology::new(&broker);
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
                Registry::new(pool.clone(), &path_args)?,
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
    anyhow::ensure!(
        no_shed_url.is_some() || !paths.iter().any(|p| p == QUEUE_NO_SHED),
        "{QUEUE_NO_SHED} needs the bench's own API; it cannot be combined with --url"
    );
    anyhow::ensure!(
        args.via == Via::Http || publisher.is_some(),
        "--via direct runs the paths in this process; it cannot be combined with --url"
    );
    let bench = Bench {
        pool: pool.clone(),
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(args.concurrency)
            .build()?,
        base_url,
        no_shed_url,
        shedder,
        registry: (args.via == Via::Direct)
            .then(|| Registry::new(pool.clone(), &path_args))
            .transpose()?,
        publisher,
        via: args.via,
        concurrency: args.concurrency.max(1),
    };

    eprintln!(
        "seckill bench: {:?} scenario, {} requests per path from {} users, stock {} × {} item(s), \
         concurrency {}, via {:?}, seed {}",
        spec.kind,
        spec.requests,
        spec.users,
        spec.stock_per_item,
        spec.items,
        bench.concurrency,
        args.via,
        spec.seed
    );
    let attempts = Arc::new(spec.attempts());
    let bench = Arc::new(bench);
    let mut results = Vec::new();
    let mut all_items = Vec::new();
    let soak = args.duration.map(|s| SoakArgs {
        duration: Duration::from_secs(s),
        rate_per_s: args.rate,
        sample_every: Duration::from_secs(args.sample_every.max(1)),
    });
    for path in &paths {
        let (result, items) = run_path(&bench, path, &spec, &attempts, soak.as_ref()).await?;
        eprintln!("{}", report::one_line(&result));
        all_items.extend(items);
        results.push(result);
    }

    let ceilings = if args.no_ceilings || args.url.is_some() {
        Ceilings::default()
    } else {
        measure_ceilings(
            &pool,
            &broker,
            &consumer_args,
            &spec,
            &attempts,
            &mut all_items,
        )
        .await?
    };

    shutdown.cancel();
    let results = BenchResults {
        started_at,
        environment: environment(&pool).await,
        scenario: spec,
        via: args.via,
        concurrency: bench.concurrency,
        ceilings,
        paths: results,
    };
    if !args.keep {
        cleanup(&pool, &all_items).await?;
    }
    if args.url.is_none() {
        let connection = crate::broker::connect(&broker.amqp_url, "seckill-bench-cleanup").await?;
        topology.delete(&connection.create_channel().await?).await?;
        if let Err(e) = paths::redis_store::RedisStore::new(&path_args.redis)?
            .clear()
            .await
        {
            tracing::warn!(error = %e, "could not remove the bench's Redis keys");
        }
    }
    report::write_all(&results, &args.out)?;
    println!("{}", report::table(&results));
    println!(
        "wrote {} and {}",
        args.out.join("results.json").display(),
        args.out.join("report.html").display()
    );
    Ok(results)
}

/// Runs the scenario through one path: fresh items, the load, then the audit.
/// Most requests of a path's warm-up (a tenth of the run, up to this).
const WARM_UP_REQUESTS_MAX: usize = 1000;

/// Soak-mode settings.
struct SoakArgs {
    duration: Duration,
    rate_per_s: u32,
    sample_every: Duration,
}

/// Runs the scenario through one path: fresh items, the load, then the audit.
async fn run_path(
    bench: &Arc<Bench>,
    path: &str,
    spec: &ScenarioSpec,
    attempts: &Arc<Vec<Attempt>>,
    soak: Option<&SoakArgs>,
) -> anyhow::Result<(PathResult, Vec<i64>)> {
    // Warm-up on an item of its own (not reported): opens the HTTP and database connections
    // and lets the path reach its steady state, so the measured run is not mostly ramp-up.
    let warm_up_spec = ScenarioSpec {
        items: 1,
        ..spec.clone()
    };
    let mut warm_up_items = create_items(bench, path, &warm_up_spec).await?;
    let warm_up: Vec<Attempt> = attempts
        .iter()
        .take((attempts.len() / 10).clamp(1, WARM_UP_REQUESTS_MAX))
        .map(|a| Attempt {
            item: 0,
            user: a.user.clone(),
        })
        .collect();
    let recorder = drive(
        bench,
        path,
        &Arc::new(warm_up_items.clone()),
        &Arc::new(warm_up),
    )
    .await?;
    let expected = recorder.total() as i64 - recorder.count("error") as i64;
    ceiling::wait_decided(
        &bench.pool,
        &warm_up_items,
        expected,
        Duration::from_secs(300),
    )
    .await?;

    let items = Arc::new(create_items(bench, path, spec).await?);
    let door_before = crate::metrics::get().orders_shed_sold_out.get();
    let started = Instant::now();
    let (recorder, samples) = match soak {
        Some(s) => {
            soak::run(
                bench,
                path,
                &items,
                attempts,
                s.duration,
                s.rate_per_s,
                s.sample_every,
            )
            .await?
        }
        None => (drive(bench, path, &items, attempts).await?, Vec::new()),
    };
    // The queue path may have answered `pending` to some; the run ends at the last decision.
    let errors = recorder.count("error");
    let expected = recorder.total() as i64 - errors as i64;
    ceiling::wait_decided(&bench.pool, &items, expected, Duration::from_secs(300)).await?;
    let elapsed = started.elapsed();
    let mut result = summarize(bench, path, spec, &items, &recorder, elapsed).await?;
    result.soak = samples;
    result.answered_at_door = crate::metrics::get().orders_shed_sold_out.get() - door_before;
    warm_up_items.extend(items.iter());
    Ok((result, warm_up_items))
}

/// Sends every attempt once, `bench.concurrency` at a time; returns what the clients saw.
async fn drive(
    bench: &Arc<Bench>,
    path: &str,
    items: &Arc<Vec<i64>>,
    attempts: &Arc<Vec<Attempt>>,
) -> anyhow::Result<Recorder> {
    let progress = report::progress_bar(path, attempts.len() as u64);
    let next = Arc::new(AtomicUsize::new(0));
    // One task per simulated client, so the load spreads over the runtime's worker threads.
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..bench.concurrency {
        let (bench, attempts, items) = (Arc::clone(bench), Arc::clone(attempts), Arc::clone(items));
        let (next, progress, path) = (Arc::clone(&next), progress.clone(), path.to_string());
        workers.spawn(async move {
            let mut recorder = Recorder::default();
            while let Some(attempt) = attempts.get(next.fetch_add(1, Ordering::Relaxed)) {
                let sent = Instant::now();
                let outcome = send(&bench, &path, items[attempt.item], &attempt.user).await;
                recorder.record(&outcome, sent.elapsed());
                progress.inc(1);
            }
            recorder
        });
    }
    let mut recorder = Recorder::default();
    while let Some(worker) = workers.join_next().await {
        recorder.merge(&worker?);
    }
    progress.finish_and_clear();
    Ok(recorder)
}

/// What the database says a path did with `items`, plus what its clients saw.
async fn summarize(
    bench: &Bench,
    path: &str,
    spec: &ScenarioSpec,
    items: &[i64],
    recorder: &Recorder,
    elapsed: Duration,
) -> anyhow::Result<PathResult> {
    let errors = recorder.count("error");
    let mut outcomes: std::collections::BTreeMap<String, u64> =
        ceiling::outcome_counts(&bench.pool, items)
            .await?
            .into_iter()
            .collect();
    if errors > 0 {
        outcomes.insert("error".into(), errors);
    }
    let decided: u64 = outcomes
        .iter()
        .filter(|(k, _)| *k != "error")
        .map(|(_, v)| v)
        .sum();
    let audits = audit::audit_items(&bench.pool, items, true).await?;
    if let Some(item) = items
        .iter()
        .find(|i| !audits.iter().any(|a| a.item_id == **i))
    {
        anyhow::bail!("item {item} vanished");
    }
    let orders = audits.iter().map(|a| a.orders).sum();
    let oversold = audits.iter().any(audit::ItemAudit::is_oversold);
    let violations = audits
        .iter()
        .flat_map(|a| {
            a.violations
                .iter()
                .map(|v| format!("item {}: {v}", a.item_id))
        })
        .collect::<Vec<_>>();
    Ok(PathResult {
        path: path.to_string(),
        requests: recorder.total(),
        elapsed_s: elapsed.as_secs_f64(),
        decided_per_s: stats::rate(decided, elapsed),
        orders_per_s: stats::rate(orders as u64, elapsed),
        latency: recorder.latency(),
        outcomes,
        orders,
        stock_total: spec.stock_total(),
        answered_at_door: 0,
        audit: Verdict {
            clean: violations.is_empty(),
            oversold,
            violations,
        },
        cdf: recorder.cdf(100),
        soak: Vec::new(),
    })
}

/// Creates the scenario's items through the API (which also loads them into Redis).
async fn create_items(bench: &Bench, path: &str, spec: &ScenarioSpec) -> anyhow::Result<Vec<i64>> {
    let creations = (0..spec.items.max(1)).map(|i| async move {
        let body = json!({ "name": format!("bench {path} #{i}"), "stock": spec.stock_per_item });
        let item: serde_json::Value = bench
            .http
            .post(format!("{}/items", bench.base_url))
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        item["id"]
            .as_i64()
            .ok_or_else(|| anyhow::anyhow!("POST /items returned no id: {item}"))
    });
    futures::stream::iter(creations)
        .buffered(50)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

use futures::StreamExt;

/// Sends one attempt through `path`; returns its status (`purchased`, ..., `pending`, `error`).
async fn send(bench: &Bench, path: &str, item_id: i64, user: &str) -> String {
    match bench.via {
        Via::Http => send_http(bench, path, item_id, user).await,
        Via::Direct => send_direct(bench, path, item_id, user).await,
    }
}

async fn send_http(bench: &Bench, path: &str, item_id: i64, user: &str) -> String {
    let url = if path == "queue" {
        format!("{}/orders?wait=30000", bench.base_url)
    } else if path == QUEUE_NO_SHED {
        let base = bench.no_shed_url.as_ref().expect("checked at start");
        format!("{base}/orders?wait=30000")
    } else {
        format!("{}/orders?path={path}", bench.base_url)
    };
    let body = json!({ "item_id": item_id, "user_id": user });
    let Ok(response) = bench.http.post(url).json(&body).send().await else {
        return "error".into();
    };
    if !response.status().is_success() {
        return "error".into();
    }
    match response.json::<serde_json::Value>().await {
        Ok(v) => v["status"].as_str().unwrap_or("error").to_string(),
        Err(_) => "error".into(),
    }
}

async fn send_direct(bench: &Bench, path: &str, item_id: i64, user: &str) -> String {
    let request = OrderRequest {
        request_id: Uuid::now_v7(),
        item_id,
        user_id: user.to_string(),
        quantity: 1,
    };
    if path == "queue"
        && let Some(shedder) = &bench.shedder
    {
        match shedder.try_answer(&request).await {
            Ok(Some(outcome)) => return outcome.status.as_str().to_string(),
            Ok(None) => {}
            Err(_) => return "error".into(),
        }
    }
    if path == "queue" || path == QUEUE_NO_SHED {
        let publisher = bench
            .publisher
            .as_ref()
            .expect("direct mode has a publisher");
        let waiter = publisher.wait_for(request.request_id);
        if publisher.publish(&request, true).await.is_err() {
            return "error".into();
        }
        return match waiter.recv(Duration::from_secs(30)).await {
            Some(outcome) => outcome.status.as_str().to_string(),
            None => "pending".into(),
        };
    }
    let registry = bench.registry.as_ref().expect("direct mode has the paths");
    let Some(lock_path) = registry.get(path) else {
        return "error".into();
    };
    match registry.purchase(lock_path, &request).await {
        Ok(outcome) => outcome.status.as_str().to_string(),
        Err(_) => "error".into(),
    }
}

/// Fewest messages a broker ceiling is measured with: shorter runs are mostly ramp-up.
const CEILING_MESSAGES_MIN: usize = 30_000;

/// Broker alone, database alone, and the consumer draining a pre-filled queue.
async fn measure_ceilings(
    pool: &PgPool,
    broker: &BrokerArgs,
    consumer_args: &ConsumerArgs,
    spec: &ScenarioSpec,
    attempts: &[Attempt],
    all_items: &mut Vec<i64>,
) -> anyhow::Result<Ceilings> {
    // Ceilings run on at least CEILING_MESSAGES_MIN requests: the scenario's, repeated.
    let attempts: Vec<&Attempt> = attempts
        .iter()
        .cycle()
        .take(attempts.len().max(CEILING_MESSAGES_MIN))
        .collect();
    let count = attempts.len();
    eprintln!("measuring the ceilings with {count} messages…");
    let broker_rate = ceiling::broker_alone(
        &broker.amqp_url,
        &Topology::new(broker),
        &format!("{}.ceiling", broker.queue_prefix),
        count,
        consumer_args.prefetch,
        usize::from(consumer_args.batch_size_max),
    )
    .await?;

    let requests_for = |items: &[i64]| -> Vec<OrderRequest> {
        attempts
            .iter()
            .map(|a| OrderRequest {
                request_id: Uuid::now_v7(),
                item_id: items[a.item],
                user_id: a.user.clone(),
                quantity: 1,
            })
            .collect()
    };
    let db_items = create_items_in_db(pool, spec).await?;
    all_items.extend(&db_items);
    let db_rate = ceiling::database_alone(
        pool,
        &requests_for(&db_items),
        usize::from(consumer_args.batch_size_max),
    )
    .await?;

    // The real consumer on its own topology, pre-filled while nothing consumes it.
    let mut prefill = broker.clone();
    prefill.queue_prefix = format!("{}-prefill", broker.queue_prefix);
    let topology = Topology::new(&prefill);
    let prefill_items = create_items_in_db(pool, spec).await?;
    all_items.extend(&prefill_items);
    let requests = requests_for(&prefill_items);
    let publisher = Publisher::connect(&prefill.amqp_url, topology.clone()).await?;
    let publishes = requests.iter().map(|r| publisher.publish(r, false));
    for result in futures::stream::iter(publishes)
        .buffer_unordered(1000)
        .collect::<Vec<_>>()
        .await
    {
        result?;
    }
    let stop = CancellationToken::new();
    let started = Instant::now();
    let consumer_task = tokio::spawn(consumer::run(
        pool.clone(),
        prefill.clone(),
        consumer_args.clone(),
        stop.clone(),
    ));
    // Each partition is decided in queue order, so its last request decided means all of it
    // is: watching those few ids by primary key keeps the probe from loading the database.
    let mut last_of_partition = std::collections::HashMap::new();
    for r in &requests {
        last_of_partition.insert(topology.partition_of(r.item_id), r.request_id);
    }
    let last: Vec<Uuid> = last_of_partition.into_values().collect();
    ceiling::wait_requests_decided(pool, &last, Duration::from_secs(300)).await?;
    ceiling::wait_decided(
        pool,
        &prefill_items,
        requests.len() as i64,
        Duration::from_secs(10),
    )
    .await?;
    let consumer_rate = requests.len() as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    consumer_task.await??;
    let connection = crate::broker::connect(&prefill.amqp_url, "seckill-bench-cleanup").await?;
    topology.delete(&connection.create_channel().await?).await?;

    Ok(Ceilings {
        broker_msgs_per_s: Some(broker_rate.flowing_per_s),
        broker_drain_msgs_per_s: Some(broker_rate.draining_per_s),
        database_decisions_per_s: Some(db_rate),
        consumer_prefilled_per_s: Some(consumer_rate),
    })
}

async fn create_items_in_db(pool: &PgPool, spec: &ScenarioSpec) -> anyhow::Result<Vec<i64>> {
    let mut ids = Vec::with_capacity(spec.items);
    for i in 0..spec.items.max(1) {
        ids.push(
            crate::store::create_item(pool, &format!("bench ceiling #{i}"), spec.stock_per_item)
                .await?
                .id,
        );
    }
    Ok(ids)
}

/// Removes the bench's rows (its results are in results.json).
async fn cleanup(pool: &PgPool, items: &[i64]) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for statement in [
        "DELETE FROM outcomes WHERE item_id = ANY($1::bigint[])",
        "DELETE FROM requests WHERE item_id = ANY($1::bigint[])",
        "DELETE FROM orders WHERE item_id = ANY($1::bigint[])",
        "DELETE FROM items WHERE id = ANY($1::bigint[])",
    ] {
        sqlx::query(statement).bind(items).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn environment(pool: &PgPool) -> Environment {
    let postgres_version = sqlx::query_scalar::<_, String>("SHOW server_version")
        .fetch_one(pool)
        .await
        .unwrap_or_else(|_| "unknown".into());
    let rabbitmq_version = std::process::Command::new("rabbitmqctl")
        .args(["-q", "version"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let redis_version = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    Environment {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        os: std::env::consts::OS.to_string(),
        seckill_version: env!("CARGO_PKG_VERSION"),
        git_revision: option_env!("SECKILL_GIT_REVISION").unwrap_or("unknown"),
        postgres_version,
        rabbitmq_version,
        redis_version,
    }
}
