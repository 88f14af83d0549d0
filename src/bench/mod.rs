//! `seckill bench`: runs the same scenario through every purchase path and compares them —
//! throughput, latency, and above all correctness, judged by the audit from the database after
//! each run, never by the load generator's own counts. In the same run it measures the ceilings
//! the queue path sits under (see [`ceiling`]), so the report can say how close it gets.
//!
//! It starts whatever it needs in-process (API and consumer, on a queue prefix of its own) unless
//! `--url` points it at a running `seckill serve`; it creates fresh items per path, and removes
//! its queues and rows at the end (unless `--keep`).
//!
//! Rooms: [`args`] (the flags), `stack` (the system under test, wired in-process), `driver`
//! (sending the load), `path_run` (one path's run), [`summary`] (what results.json holds),
//! [`ceiling`] and `http_alone`, [`report`] (terminal, JSON, HTML), `cleanup` and
//! [`environment`].

pub mod answer;
pub mod args;
pub mod ceiling;
mod cleanup;
mod decided;
mod driver;
pub mod environment;
mod http_alone;
mod path_run;
pub mod report;
pub mod row;
pub mod scenario;
pub mod soak;
mod stack;
pub mod stats;
pub mod summary;

use std::sync::Arc;

use crate::config::{BrokerArgs, ConsumerArgs, DatabaseArgs, PathArgs};
pub use args::{BenchArgs, Via};
use ceiling::Ceilings;
use driver::Bench;
pub use row::BenchPath;
pub use summary::{BenchResults, PathResult};

/// Runs the benchmark; returns the results (also written to `--out`).
pub async fn run(
    database: DatabaseArgs,
    mut broker: BrokerArgs,
    consumer_args: ConsumerArgs,
    mut path_args: PathArgs,
    args: BenchArgs,
) -> anyhow::Result<BenchResults> {
    let paths = args.selected_paths()?;
    let spec = args.spec();
    let started_at = chrono::Utc::now().to_rfc3339();
    let in_process = args.url.is_none();
    if in_process {
        stack::own_names(&mut broker, &mut path_args);
    }
    let stack = stack::start(&database, &broker, &consumer_args, &path_args, &args).await?;
    let bench = Arc::new(Bench::new(stack, &args)?);
    eprintln!("{}", report::intro(&spec, bench.concurrency, args.via));
    let attempts = Arc::new(spec.attempts());
    let soak = args.soak();
    let (results, mut all_items) =
        path_run::run_all(&bench, &paths, &spec, &attempts, soak.as_ref()).await?;

    let pool = &bench.stack.pool;
    let mut ceilings = if args.no_ceilings || !in_process {
        Ceilings::default()
    } else {
        ceiling::measure(
            pool,
            &broker,
            &consumer_args,
            args.publish,
            &spec,
            &attempts,
            &mut all_items,
        )
        .await?
    };
    if !args.no_ceilings && args.via == Via::Http {
        let http = http_alone::measure(&bench.http, bench.concurrency).await?;
        ceilings.http_requests_per_s = Some(http);
    }
    bench.stack.stop().await?;
    let results = BenchResults {
        started_at,
        environment: environment::read(pool).await,
        scenario: spec,
        via: args.via,
        concurrency: bench.concurrency,
        ceilings,
        paths: results,
    };
    if !args.keep {
        cleanup::remove_rows(pool, &all_items).await?;
    }
    if in_process {
        cleanup::remove_queues_and_keys(&broker, &bench.stack.topology, &path_args).await?;
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
