//! `seckill bench --faults`: correctness under faults, path by path. For every path × fault it
//! starts `seckill serve` and `seckill consume` as child processes (so it can kill them), runs
//! a sale at a steady rate, injects the fault once in the middle of it, puts it right, lets
//! every buyer settle (retrying and polling as the README says), and holds what each buyer was
//! told against what the database holds ([`verdict`]).
//!
//! It disturbs the services it runs on — it restarts Redis, RabbitMQ and PostgreSQL — so it
//! refuses services it cannot restart ([`fault::check_restartable`]) and puts every service
//! back, even when a cell fails ([`fault::Outage`]).
//!
//! Rooms: [`fault`] (what is broken and how it is mended), [`children`] (the processes under
//! test), [`buyer`] (one client), [`verdict`] (one cell's judgement), [`matrix`] (the output).

pub mod buyer;
pub mod children;
pub mod fault;
pub mod matrix;
pub mod verdict;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

use super::args::BenchArgs;
use crate::broker::topology::Topology;
use crate::config::{BrokerArgs, DatabaseArgs, PathArgs};
use crate::paths::redis_store::RedisStore;
use crate::sale::PathName;
use buyer::BuyerLog;
use children::{Children, Launch, Role};
use fault::{FaultKind, Outage, Services};
use matrix::{Cell, FaultResults};
use verdict::{CellVerdict, Held, RedisView};

/// The steady rate when `--rate` does not say, requests per second.
const DEFAULT_RATE: u32 = 200;
/// How long after the load a buyer may still retry, and poll a pending request.
const RETRY_BOUND: Duration = Duration::from_secs(30);
const SETTLE_BOUND: Duration = Duration::from_secs(60);
/// How long after the buyers are done the database may take to hold every decision they were
/// told (the stream writer claims a dead writer's entries after 10 s idle).
const WRITE_BEHIND_BOUND: Duration = Duration::from_secs(30);

/// The settings of one fault run.
struct Plan {
    paths: Vec<PathName>,
    faults: Vec<FaultKind>,
    rate: u32,
    load: Duration,
    fault_at: Duration,
    downtime: Duration,
    requests: usize,
    users: usize,
    stock: i64,
}

/// Runs the fault matrix; returns it (also written to `--out`).
pub async fn run(
    database: DatabaseArgs,
    broker: BrokerArgs,
    path_args: PathArgs,
    args: BenchArgs,
) -> anyhow::Result<FaultResults> {
    let plan = plan(&args)?;
    let services = fault::check_restartable(&plan.faults, &database, &broker, &path_args.redis)?;
    let rig = Rig {
        pool: crate::store::connect(&database).await?,
        database,
        broker,
        path_args,
        services,
        exe: std::env::current_exe()?,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?,
        out: args.out.clone(),
        keep: args.keep,
        plan,
    };
    let plan = &rig.plan;
    eprintln!(
        "bench --faults: {} path(s) × {} fault(s); this RESTARTS Redis, RabbitMQ and PostgreSQL \
         on this machine. Each cell: {} requests at {}/s, the fault at {:.1} s for {} s.",
        plan.paths.len(),
        plan.faults.len(),
        plan.requests,
        plan.rate,
        plan.fault_at.as_secs_f64(),
        plan.downtime.as_secs()
    );
    let started_at = chrono::Utc::now().to_rfc3339();
    let mut cells = Vec::new();
    for path in &plan.paths {
        for fault in &plan.faults {
            let cell = rig.run_cell(*path, *fault).await;
            eprintln!(
                "  {:14} {:20} {}",
                path.as_str(),
                fault.as_str(),
                cell.error.as_deref().unwrap_or(&cell.text)
            );
            cells.push(cell);
        }
    }
    let results = FaultResults {
        format_version: matrix::FORMAT_VERSION,
        mode: "faults",
        started_at,
        command_line: super::environment::command_line(),
        rate_per_s: plan.rate,
        load_secs: plan.load.as_secs(),
        fault_at_secs: plan.fault_at.as_secs_f64(),
        downtime_secs: plan.downtime.as_secs(),
        stock: plan.stock,
        users: plan.users,
        paths: plan.paths.iter().map(|p| p.as_str()).collect(),
        faults: plan.faults.clone(),
        cells,
    };
    matrix::write_all(&results, &rig.out)?;
    println!("{}", matrix::terminal(&results));
    println!(
        "wrote {} and {}",
        rig.out.join("results.json").display(),
        rig.out.join("report.html").display()
    );
    Ok(results)
}

fn plan(args: &BenchArgs) -> anyhow::Result<Plan> {
    let paths = if args.paths.iter().any(|p| p == "all") {
        PathName::ALL.to_vec()
    } else {
        args.paths
            .iter()
            .map(|p| p.parse::<PathName>().map_err(|e| anyhow::anyhow!("{e}")))
            .collect::<anyhow::Result<_>>()?
    };
    let faults = if args.fault.is_empty() {
        FaultKind::ALL.to_vec()
    } else {
        args.fault.clone()
    };
    let rate = args.rate.unwrap_or(DEFAULT_RATE);
    let load = Duration::from_secs(args.measure_secs);
    let downtime = Duration::from_secs(args.fault_downtime_secs);
    let fault_at = load.mul_f64(0.2);
    anyhow::ensure!(
        fault_at + downtime < load,
        "--fault-downtime-secs {} does not fit in a load of --measure-secs {} (the fault starts \
         at a fifth of it and must end before the load does)",
        args.fault_downtime_secs,
        args.measure_secs
    );
    let requests = ((f64::from(rate) * load.as_secs_f64()) as usize).max(10);
    // Nine in ten requests from a new buyer, the rest a buyer's second try; the stock sells out
    // at three quarters of the load, so the fault (at a fifth) strikes while units are left,
    // even when stopping its service takes seconds, and the sale still ends sold out.
    let users = (requests * 9 / 10).max(1);
    let stock = (requests * 3 / 4).max(1) as i64;
    Ok(Plan {
        paths,
        faults,
        rate,
        load,
        fault_at,
        downtime,
        requests,
        users,
        stock,
    })
}

/// Which process decides for `path`: the consumer for the queue path and the asynchronous
/// rivals, the API for the paths that decide in the request.
fn decider(path: PathName) -> Role {
    match path {
        PathName::Queue | PathName::RedisStream | PathName::RedisMq => Role::Consume,
        _ => Role::Serve,
    }
}

/// Whether the path keeps the item's stock and buyers in Redis (so Redis and the database
/// can disagree).
fn keeps_sale_in_redis(path: PathName) -> bool {
    matches!(
        path,
        PathName::RedisWatch
            | PathName::RedisLua
            | PathName::RedisList
            | PathName::RedisStream
            | PathName::RedisMq
    )
}

/// What every cell shares: where the services are, the plan, the binary the children run, and
/// the bench's own pool and HTTP client.
struct Rig {
    pool: PgPool,
    database: DatabaseArgs,
    broker: BrokerArgs,
    path_args: PathArgs,
    services: Services,
    plan: Plan,
    exe: PathBuf,
    http: reqwest::Client,
    out: PathBuf,
    keep: bool,
}

/// One cell's own names, so no cell sees another's queues, keys, rows or connections.
struct Sale {
    path: PathName,
    fault: FaultKind,
    item: i64,
    /// Names the cell's buyers and log files.
    tag: String,
    broker: BrokerArgs,
    path_args: PathArgs,
    /// The `application_name` of the children's PostgreSQL connections.
    app_name: String,
}

impl Rig {
    /// One cell: its item and names, the sale, then its rows, queues and keys removed.
    async fn run_cell(&self, path: PathName, fault: FaultKind) -> Cell {
        let tag = Uuid::new_v4().simple().to_string()[..8].to_string();
        let mut broker = self.broker.clone();
        broker.queue_prefix = format!("{}-faults-{tag}", broker.queue_prefix);
        let mut path_args = self.path_args.clone();
        path_args.redis.redis_prefix = format!("{}-faults-{tag}", path_args.redis.redis_prefix);
        let name = format!("faults {path} {fault:?}");
        let item = match crate::store::create_item(&self.pool, &name, self.plan.stock).await {
            Ok(item) => item.id,
            Err(e) => return failed(path, fault, format!("cannot create the item: {e}")),
        };
        let sale = Sale {
            path,
            fault,
            item,
            app_name: format!("seckill-faults-{tag}"),
            tag,
            broker,
            path_args,
        };
        let outcome = self.sell(&sale).await;
        if !self.keep
            && let Err(e) = super::cleanup::remove_rows(&self.pool, &[item]).await
        {
            tracing::warn!(error = %format!("{e:#}"), "could not remove a fault cell's rows");
        }
        let topology = Topology::new(&sale.broker);
        if let Err(e) =
            super::cleanup::remove_queues_and_keys(&sale.broker, &topology, &sale.path_args).await
        {
            tracing::warn!(error = %format!("{e:#}"), "could not remove a fault cell's queues");
        }
        match outcome {
            Ok(verdict) => Cell {
                path: path.as_str(),
                fault,
                clean: verdict.is_clean(),
                text: verdict.cell_text(),
                error: None,
                verdict,
            },
            Err(e) => failed(path, fault, format!("{e:#}")),
        }
    }

    /// How the cell's two processes are started.
    fn launch(&self, sale: &Sale) -> anyhow::Result<Launch> {
        let url = &self.database.database_url;
        let separator = if url.contains('?') { '&' } else { '?' };
        let redis = &sale.path_args.redis;
        Ok(Launch {
            exe: self.exe.clone(),
            env: vec![
                (
                    "DATABASE_URL".into(),
                    format!("{url}{separator}application_name={}", sale.app_name),
                ),
                ("AMQP_URL".into(), sale.broker.amqp_url.clone()),
                (
                    "SECKILL_QUEUE_PREFIX".into(),
                    sale.broker.queue_prefix.clone(),
                ),
                ("REDIS_URL".into(), redis.redis_url.clone()),
                ("SECKILL_REDIS_PREFIX".into(), redis.redis_prefix.clone()),
            ],
            bind: children::free_bind()?,
            logs: self.out.join("fault-logs"),
            tag: format!(
                "{}-{}-{}",
                sale.path.as_str(),
                sale.fault.as_str(),
                sale.tag
            ),
        })
    }

    /// One sale under one fault, settled and judged.
    async fn sell(&self, sale: &Sale) -> anyhow::Result<CellVerdict> {
        let (plan, pool, item) = (&self.plan, &self.pool, sale.item);
        let mut children = Children::start(self.launch(sale)?, &self.http).await?;
        let base = children.base_url();
        let run_start = Instant::now();
        let load_end = run_start + plan.load;

        // The load goes on until the fault is mended, however long stopping and starting its
        // service took (a loaded machine's `rabbitmqctl stop_app` can outlast the planned load):
        // a fault that strikes after the last request would test nothing.
        let mended = std::sync::atomic::AtomicBool::new(false);
        let load = async {
            let mut buyers = Vec::with_capacity(plan.requests);
            for i in 0.. {
                if i >= plan.requests && mended.load(std::sync::atomic::Ordering::Acquire) {
                    break;
                }
                let due = run_start + Duration::from_secs_f64(i as f64 / f64::from(plan.rate));
                tokio::time::sleep_until(due.into()).await;
                // Bounded from the end of the load, or from its own send if it is later.
                let (send_by, settle_by) = (
                    due.max(load_end) + RETRY_BOUND,
                    due.max(load_end) + SETTLE_BOUND,
                );
                let (http, base) = (self.http.clone(), base.clone());
                let user = format!("f{}-{}", sale.tag, i % plan.users);
                let path = sale.path.as_str();
                buyers.push(tokio::spawn(async move {
                    buyer::buy(
                        &http, &base, path, item, user, run_start, send_by, settle_by,
                    )
                    .await
                }));
            }
            let mut logs = Vec::with_capacity(buyers.len());
            for b in buyers {
                logs.push(b.await.expect("a buyer task never panics"));
            }
            logs
        };
        let inject = async {
            tokio::time::sleep_until((run_start + plan.fault_at).into()).await;
            let injected = self.inject(sale, &mut children).await;
            mended.store(true, std::sync::atomic::Ordering::Release);
            injected
        };
        let (logs, injected) = tokio::join!(load, inject);
        injected?;
        let held = wait_written(pool, item, &logs).await?;
        children.check_alive()?;
        children.stop().await;
        let audit = crate::audit::audit_item(pool, item, true)
            .await?
            .ok_or_else(|| anyhow::anyhow!("item {item} is gone"))?;
        let redis = if keeps_sale_in_redis(sale.path) {
            Some(redis_view(sale.path, &sale.path_args, item).await?)
        } else {
            None
        };
        let buyers: HashSet<String> =
            sqlx::query_scalar::<_, String>("SELECT user_id FROM orders WHERE item_id = $1")
                .bind(item)
                .fetch_all(pool)
                .await?
                .into_iter()
                .collect();
        let verdict = verdict::judge(
            &logs,
            &held,
            &audit,
            redis.as_ref().map(|r| (r, audit.stock_remaining, &buyers)),
        );
        for example in &verdict.examples {
            tracing::warn!(
                path = sale.path.as_str(),
                fault = sale.fault.as_str(),
                "{example}"
            );
        }
        Ok(verdict)
    }

    /// Breaks what the cell's fault breaks, keeps it broken for the plan's downtime, and mends
    /// it.
    async fn inject(&self, sale: &Sale, children: &mut Children) -> anyhow::Result<()> {
        let downtime = self.plan.downtime;
        // Counted from when the service is down (stopping one takes a while): see `down`.
        let mut mended_by = Instant::now() + downtime;
        let mut down = || mended_by = Instant::now() + downtime;
        match sale.fault {
            FaultKind::KillDecider => {
                let role = decider(sale.path);
                children.kill(role).await?;
                down();
                tokio::time::sleep_until(mended_by.into()).await;
                children.restart(role, &self.http).await?;
            }
            FaultKind::RedisRestart => {
                let target = self.services.redis.clone();
                let outage =
                    tokio::task::spawn_blocking(move || Outage::stop_redis(&target)).await??;
                down();
                tokio::time::sleep_until(mended_by.into()).await;
                let url = sale.path_args.redis.redis_url.clone();
                outage.restore(|| redis_answers(url.clone())).await?;
            }
            FaultKind::RabbitmqRestart => {
                let outage = tokio::task::spawn_blocking(Outage::stop_rabbitmq).await??;
                down();
                tokio::time::sleep_until(mended_by.into()).await;
                let url = sale.broker.amqp_url.clone();
                outage
                    .restore(|| {
                        let url = url.clone();
                        async move {
                            crate::broker::connect(&url, "seckill-bench-faults-probe")
                                .await
                                .is_ok()
                        }
                    })
                    .await?;
            }
            FaultKind::PgKillConnections => {
                let mut killed = 0i64;
                while Instant::now() < mended_by {
                    killed += sqlx::query_scalar::<_, i64>(
                        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid)
                           FROM pg_stat_activity WHERE application_name = $1) AS t",
                    )
                    .bind(&sale.app_name)
                    .fetch_one(&self.pool)
                    .await?;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                tracing::info!(killed, "terminated the sale's PostgreSQL connections");
            }
            FaultKind::PgRestart => {
                let version = self
                    .services
                    .postgres_version
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("no PostgreSQL cluster to restart"))?;
                let outage =
                    tokio::task::spawn_blocking(move || Outage::stop_postgres(&version)).await??;
                down();
                tokio::time::sleep_until(mended_by.into()).await;
                let pool = &self.pool;
                outage
                    .restore(|| async { sqlx::query("SELECT 1").execute(pool).await.is_ok() })
                    .await?;
            }
        }
        Ok(())
    }
}

fn failed(path: PathName, fault: FaultKind, error: String) -> Cell {
    Cell {
        path: path.as_str(),
        fault,
        clean: false,
        text: "error".into(),
        error: Some(error),
        verdict: CellVerdict::default(),
    }
}

async fn redis_answers(url: String) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(mut con) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    redis::cmd("PING")
        .query_async::<String>(&mut con)
        .await
        .is_ok()
}

/// Waits until the database holds a decision for every request a buyer was told about or had
/// accepted (the write-behind paths write after answering), or the bound passes; returns what
/// it holds.
async fn wait_written(pool: &PgPool, item: i64, logs: &[BuyerLog]) -> anyhow::Result<Held> {
    let deadline = Instant::now() + WRITE_BEHIND_BOUND;
    loop {
        let held = Held::read(pool, item).await?;
        let missing = logs
            .iter()
            .filter(|l| l.accepted && !held.outcomes.contains_key(&l.request_id))
            .count();
        if missing == 0 || Instant::now() >= deadline {
            return Ok(held);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What Redis holds for the item after recovery.
async fn redis_view(path: PathName, path_args: &PathArgs, item: i64) -> anyhow::Result<RedisView> {
    let store = RedisStore::new(&path_args.redis)?;
    let keys = store.keys(item);
    let mut con = store.connection();
    let stock_left: Option<i64> = if path == PathName::RedisList {
        let loaded: bool = redis::cmd("EXISTS")
            .arg(&keys.stock)
            .query_async(&mut con)
            .await?;
        if loaded {
            Some(
                redis::cmd("LLEN")
                    .arg(&keys.tokens)
                    .query_async(&mut con)
                    .await?,
            )
        } else {
            None
        }
    } else {
        redis::cmd("GET")
            .arg(&keys.stock)
            .query_async(&mut con)
            .await?
    };
    let buyers: HashSet<String> = redis::cmd("SMEMBERS")
        .arg(&keys.buyers)
        .query_async(&mut con)
        .await?;
    Ok(RedisView { stock_left, buyers })
}
