//! The `seckill` command: a thin CLI over the library (see `src/lib.rs` for the layout).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use seckill::api::{self, AppState};
use seckill::broker::{publisher::Publisher, topology::Topology};
use seckill::config::{
    BrokerArgs, ConsumerArgs, DatabaseArgs, PathArgs, RedisArgs, ServeArgs, redact_url,
};
#[cfg(feature = "bench")]
use seckill::demo;
use seckill::paths::{self, Registry, redis_store::RedisStore};
use seckill::shedding::Shedder;
use seckill::{audit, consumer, store};

/// Flash-sale order processor: purchase requests go through RabbitMQ, and one consumer per item
/// decides them in order, without locks, committing in batches.
///
/// Every option can also be set by the environment variable shown with it. Logs go to stderr;
/// set RUST_LOG (e.g. RUST_LOG=seckill=debug) for more.
#[derive(Debug, Parser)]
#[command(name = "seckill", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    /// Compare every purchase path on one scenario: throughput, latency and the audit verdict.
    /// Writes a table to the terminal, results.json and report.html to --out.
    #[cfg(feature = "bench")]
    Bench {
        #[command(flatten)]
        bench: seckill::bench::BenchArgs,
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        broker: BrokerArgs,
        #[command(flatten)]
        consumer: ConsumerArgs,
        #[command(flatten)]
        paths: PathArgs,
    },
    /// Run the queue path end to end in-process: one item, a burst of buyers, the audit.
    #[cfg(feature = "bench")]
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("seckill=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the tokio runtime");
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve {
            serve,
            database,
            broker,
            with_consumer,
            consumer: consumer_args,
            paths: path_args,
        } => {
            if !serve.bind.ip().is_loopback()
                && serve.admin_token.is_none()
                && !serve.allow_public_without_token
            {
                anyhow::bail!(
                    "refusing to listen on {} without SECKILL_ADMIN_TOKEN (anyone could create items); \
                     set a token or pass --allow-public-without-token",
                    serve.bind
                );
            }
            let pool = store::connect(&database).await?;
            let registry = Registry::new(pool.clone(), &path_args)?;
            let publisher =
                Arc::new(Publisher::connect(&broker.amqp_url, Topology::new(&broker)).await?);
            let shutdown = shutdown_on_signal();
            let consumer_task = with_consumer.then(|| {
                tokio::spawn(consumer::run(
                    pool.clone(),
                    broker.clone(),
                    consumer_args,
                    shutdown.clone(),
                ))
            });
            let listener = tokio::net::TcpListener::bind(serve.bind)
                .await
                .with_context(|| format!("cannot listen on {}", serve.bind))?;
            tracing::info!(
                bind = %serve.bind,
                broker = %redact_url(&broker.amqp_url),
                partitions = broker.partitions,
                admin_token = serve.admin_token.is_some(),
                "API listening"
            );
            let sold_out_ttl = serve.sold_out_ttl();
            let mut state = AppState::new(pool.clone(), publisher, registry, serve.admin_token)
                .with_limits(serve.limits);
            if let Some(ttl) = sold_out_ttl {
                state = state.with_shedding(Shedder::start(
                    pool,
                    broker.amqp_url.clone(),
                    Topology::new(&broker),
                    ttl,
                    shutdown.clone(),
                ));
            }
            api::serve(listener, state, shutdown).await?;
            if let Some(task) = consumer_task {
                task.await??;
            }
            tracing::info!("API stopped");
            Ok(ExitCode::SUCCESS)
        }
        Command::Consume {
            database,
            broker,
            consumer: consumer_args,
            metrics_bind,
        } => {
            let pool = store::connect(&database).await?;
            let shutdown = shutdown_on_signal();
            if let Some(bind) = metrics_bind {
                let listener = tokio::net::TcpListener::bind(bind)
                    .await
                    .with_context(|| format!("cannot listen on {bind}"))?;
                tracing::info!(%bind, "serving /metrics");
                let stop = shutdown.clone();
                tokio::spawn(async move {
                    axum::serve(listener, api::metrics_router())
                        .with_graceful_shutdown(async move { stop.cancelled().await })
                        .await
                });
            }
            tracing::info!(
                broker = %redact_url(&broker.amqp_url),
                partitions = broker.partitions,
                batch_size_max = consumer_args.batch_size_max,
                "consumer starting"
            );
            consumer::run(pool, broker, consumer_args, shutdown).await?;
            tracing::info!("consumer exiting");
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { database } => {
            store::connect(&database).await?;
            println!(
                "database {} is migrated",
                redact_url(&database.database_url)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::RedisLoad {
            item,
            all: _,
            database,
            redis,
        } => {
            let pool = store::connect(&database).await?;
            let store = RedisStore::new(&redis)?;
            let shown = redact_url(&redis.redis_url);
            match item {
                Some(id) => {
                    store.load_item(&pool, id, true).await?;
                    println!("item {id} loaded into Redis at {shown}");
                }
                None => {
                    let loaded = store.load_all(&pool).await?;
                    println!("{loaded} item(s) loaded into Redis at {shown}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            item,
            expect_settled,
            json,
            database,
        } => {
            let pool = store::connect(&database).await?;
            let audits = match item {
                Some(id) => vec![
                    audit::audit_item(&pool, id, expect_settled)
                        .await?
                        .with_context(|| format!("item {id} does not exist"))?,
                ],
                None => audit::audit_all(&pool, expect_settled).await?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&audits)?);
            } else {
                for a in &audits {
                    println!("{a}");
                }
            }
            let clean = audits.iter().all(audit::ItemAudit::is_clean);
            if !json {
                println!(
                    "{} item(s) audited: {}",
                    audits.len(),
                    if clean {
                        "all invariants hold"
                    } else {
                        "VIOLATIONS FOUND"
                    }
                );
            }
            Ok(if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        #[cfg(feature = "bench")]
        Command::Bench {
            bench,
            database,
            broker,
            consumer: consumer_args,
            paths: path_args,
        } => {
            let results =
                seckill::bench::run(database, broker, consumer_args, path_args, bench).await?;
            // A path other than `naive` failing its audit is a bug worth a non-zero exit.
            let sound = results
                .paths
                .iter()
                .all(|r| r.audit.clean || r.path == "naive");
            Ok(if sound {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        #[cfg(feature = "bench")]
        Command::Demo {
            demo: args,
            database,
            broker,
            consumer: consumer_args,
        } => {
            let pool = store::connect(&database).await?;
            let clean = demo::run(pool, broker, consumer_args, args).await?;
            Ok(if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// A token cancelled on the first SIGINT or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("cannot install the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown requested: finishing in-flight work");
        cancel.cancel();
    });
    token
}
