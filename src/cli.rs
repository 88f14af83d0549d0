//! The `seckill` command line: what each subcommand takes, and which part of the library it
//! runs. Parsing and dispatch only: every command's work (and every policy) is in the library,
//! the running system is put together by [`crate::app`], and `src/main.rs` only parses, starts
//! the logs and maps the result to an exit code.

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::app::{self, App, Settings};
use crate::config::{
    BrokerArgs, ConsumerArgs, DatabaseArgs, PathArgs, RedisArgs, RivalArgs, ServeArgs, redact_url,
};
#[cfg(feature = "bench")]
use crate::demo;
use crate::paths::{self, redis_store::RedisStore};
use crate::{audit, store};

/// Flash-sale order processor: purchase requests go through RabbitMQ, and one consumer per item
/// decides them in order, without locks, committing in batches.
///
/// Every option can also be set by the environment variable shown with it. Logs go to stderr;
/// set RUST_LOG (e.g. RUST_LOG=seckill=debug) for more.
#[derive(Debug, Parser)]
#[command(name = "seckill", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API (producer side): accepts orders and publishes them to RabbitMQ, or, with
    /// ?path=NAME, decides them through a lock-based path (naive is UNSAFE: it oversells).
    #[command(after_help = paths::HELP)]
    Serve {
        #[command(flatten)]
        serve: ServeArgs,
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        broker: BrokerArgs,
        /// Also run a consumer in this process (handy on one machine; run `consume` separately
        /// to scale or fail over).
        #[arg(long)]
        with_consumer: bool,
        #[command(flatten)]
        consumer: ConsumerArgs,
        #[command(flatten)]
        paths: PathArgs,
        /// Do not run the asynchronous rival paths' workers (the redis-stream writer, the
        /// redis-mq consumers) in this process: run them with `seckill consume --rival-workers`.
        #[arg(long, env = "SECKILL_NO_RIVAL_WORKERS")]
        no_rival_workers: bool,
        #[command(flatten)]
        rivals: RivalArgs,
    },
    /// Run the consumer daemon: decides the requests of every partition it is active on.
    /// Start several to share the partitions: they balance them through leases in the
    /// database (each active on about P/N), and each stands by on the others for failover.
    Consume {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        broker: BrokerArgs,
        #[command(flatten)]
        consumer: ConsumerArgs,
        /// Serve `GET /metrics` (Prometheus text format) on this address; unset, no listener.
        #[arg(long, env = "SECKILL_METRICS_BIND")]
        metrics_bind: Option<std::net::SocketAddr>,
        /// Also run the asynchronous rival paths' workers (the redis-stream writer, the
        /// redis-mq consumers) in this process, for an API started with `--no-rival-workers`.
        #[arg(long, env = "SECKILL_RIVAL_WORKERS")]
        rival_workers: bool,
        #[command(flatten)]
        rivals: RivalArgs,
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Create the database if needed and apply pending migrations, then exit.
    Migrate {
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Load items from PostgreSQL into Redis for the redis-* paths, overwriting what Redis has.
    ///
    /// Copies each item's stock, buyers and fencing counter. Run it while no Redis-path sale of
    /// those items is on: after Redis lost its data, or after selling an item through another path.
    RedisLoad {
        /// Item to load.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        item: Option<i64>,
        /// Load every item.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Check the invariants of a sale from the database; exit status 1 on any violation.
    Audit {
        /// Item to audit (default: every item).
        #[arg(long)]
        item: Option<i64>,
        /// Count accepted-but-undecided requests as violations (use once the queues drained).
        #[arg(long)]
        expect_settled: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    #[cfg(feature = "bench")]
    /// Compare every purchase path on one scenario: throughput, latency and the audit verdict.
    /// Writes a table to the terminal, results.json and report.html to --out. `seckill bench
    /// compare OLD.json NEW.json` compares two runs.
    #[command(args_conflicts_with_subcommands = true)]
    Bench {
        #[command(subcommand)]
        action: Option<crate::bench::BenchCommand>,
        /// Boxed: the bench's flags would make every command as large as this one.
        #[command(flatten)]
        bench: Box<crate::bench::BenchArgs>,
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        broker: BrokerArgs,
        #[command(flatten)]
        consumer: ConsumerArgs,
        #[command(flatten)]
        paths: PathArgs,
    },
    #[cfg(feature = "bench")]
    /// Run the queue path end to end in-process: one item, a burst of buyers, the audit.
    Demo {
        #[command(flatten)]
        demo: demo::DemoArgs,
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        broker: BrokerArgs,
        #[command(flatten)]
        consumer: ConsumerArgs,
    },
}

/// How a command ended, for the exit code: `Failed` is a verdict (an audit violation, an unsafe
/// path sold more than it had), not an error of seckill's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failed,
}

impl From<bool> for Verdict {
    fn from(success: bool) -> Self {
        if success {
            Verdict::Success
        } else {
            Verdict::Failed
        }
    }
}

impl Command {
    /// The logs shown when `RUST_LOG` does not say: the daemons' and tools' INFO lines; for
    /// the bench only warnings, so its progress and results are not buried under the
    /// in-process API's and consumer's lines.
    pub fn default_log_filter(&self) -> &'static str {
        match self {
            #[cfg(feature = "bench")]
            Command::Bench { .. } => "seckill=warn",
            _ => "seckill=info",
        }
    }

    /// Runs the command to its end (a daemon: until SIGINT or SIGTERM).
    pub async fn run(self) -> anyhow::Result<Verdict> {
        match self {
            Command::Serve {
                serve,
                database,
                broker,
                with_consumer,
                consumer,
                paths,
                no_rival_workers,
                rivals,
            } => {
                let rival_workers = (!no_rival_workers).then(|| (rivals, paths.redis.clone()));
                let settings = Settings {
                    broker,
                    api: Some((serve, paths)),
                    consumer: with_consumer.then_some(consumer),
                    metrics_bind: None,
                    rival_workers,
                };
                run_daemon(&database, settings, "API stopped").await
            }
            Command::Consume {
                database,
                broker,
                consumer,
                metrics_bind,
                rival_workers,
                rivals,
                redis,
            } => {
                let settings = Settings {
                    broker,
                    api: None,
                    consumer: Some(consumer),
                    metrics_bind,
                    rival_workers: rival_workers.then_some((rivals, redis)),
                };
                run_daemon(&database, settings, "consumer exiting").await
            }
            Command::Migrate { database } => migrate(&database).await,
            Command::RedisLoad {
                item,
                all: _,
                database,
                redis,
            } => redis_load(&database, &redis, item).await,
            Command::Audit {
                item,
                expect_settled,
                json,
                database,
            } => print_audit(&database, item, expect_settled, json).await,
            #[cfg(feature = "bench")]
            Command::Bench {
                action: Some(crate::bench::BenchCommand::Compare(runs)),
                ..
            } => {
                print!("{}", crate::bench::compare::run(&runs)?);
                Ok(Verdict::Success)
            }
            #[cfg(feature = "bench")]
            Command::Bench {
                action: None,
                bench,
                database,
                broker,
                // The fault run's consumers are child processes, configured by the environment.
                consumer: _,
                paths,
            } if bench.faults => {
                let results = crate::bench::faults::run(database, broker, paths, *bench).await?;
                Ok(results.queue_clean().into())
            }
            #[cfg(feature = "bench")]
            Command::Bench {
                action: None,
                bench,
                database,
                broker,
                consumer,
                paths,
            } => {
                let results = crate::bench::run(database, broker, consumer, paths, *bench).await?;
                Ok(results.safe_paths_audit_clean().into())
            }
            #[cfg(feature = "bench")]
            Command::Demo {
                demo: args,
                database,
                broker,
                consumer,
            } => {
                let pool = store::connect(&database).await?;
                Ok(demo::run(pool, broker, consumer, args).await?.into())
            }
        }
    }
}

/// Runs a daemon's [`App`] until SIGINT or SIGTERM (or until a part of it fails).
async fn run_daemon(
    database: &DatabaseArgs,
    settings: Settings,
    stopped: &str,
) -> anyhow::Result<Verdict> {
    let shutdown = app::shutdown_on_signal()?;
    let pool = store::connect(database).await?;
    App::start(pool, settings, shutdown)
        .await?
        .run_until_stopped()
        .await?;
    tracing::info!("{stopped}");
    Ok(Verdict::Success)
}

/// `seckill migrate`.
async fn migrate(database: &DatabaseArgs) -> anyhow::Result<Verdict> {
    store::connect(database).await?;
    println!(
        "database {} is migrated",
        redact_url(&database.database_url)
    );
    Ok(Verdict::Success)
}

/// `seckill redis-load`: one item, or every item (`None`).
async fn redis_load(
    database: &DatabaseArgs,
    redis: &RedisArgs,
    item: Option<i64>,
) -> anyhow::Result<Verdict> {
    let pool = &store::connect(database).await?;
    let store = RedisStore::new(redis)?;
    let shown = redact_url(&redis.redis_url);
    match item {
        Some(id) => {
            store.load_item(pool, id, true).await?;
            println!("item {id} loaded into Redis at {shown}");
        }
        None => {
            let loaded = store.load_all(pool).await?;
            println!("{loaded} item(s) loaded into Redis at {shown}");
        }
    }
    Ok(Verdict::Success)
}

/// `seckill audit`: prints one item's audit or every item's, as text or JSON; whether all are
/// clean.
async fn print_audit(
    database: &DatabaseArgs,
    item: Option<i64>,
    expect_settled: bool,
    json: bool,
) -> anyhow::Result<Verdict> {
    let pool = &store::connect(database).await?;
    let audits = match item {
        Some(id) => vec![
            audit::audit_item(pool, id, expect_settled)
                .await?
                .with_context(|| format!("item {id} does not exist"))?,
        ],
        None => audit::audit_all(pool, expect_settled).await?,
    };
    let clean = audits.iter().all(audit::ItemAudit::is_clean);
    if json {
        println!("{}", serde_json::to_string_pretty(&audits)?);
        return Ok(clean.into());
    }
    for a in &audits {
        println!("{a}");
    }
    let verdict = if clean {
        "all invariants hold"
    } else {
        "VIOLATIONS FOUND"
    };
    println!("{} item(s) audited: {verdict}", audits.len());
    Ok(clean.into())
}
