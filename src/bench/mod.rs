//! `seckill bench`: runs the same scenario through every purchase path and compares them —
//! throughput, latency, and above all correctness, judged by the audit from the database after
//! each run, never by the load generator's own counts. In the same run it measures the ceilings
//! the queue path sits under (see [`ceiling`]), so the report can say how close it gets.
//!
//! Each path is measured for a sustained run (`--measure-secs`, 10 s by default, the sale's
//! stock grown with it), by a closed loop of clients or, with `--rate`, on the open model's
//! schedule (latency from when a request was due). `--sweep` steps the offered rate up to each
//! path's knee. It starts whatever it needs in-process (API and consumer, on a queue prefix of
//! its own) unless `--url` points it at a running `seckill serve`; it creates fresh items per
//! run, and removes its queues and rows at the end (unless `--keep`).
//!
//! Rooms: [`args`] (the flags), [`scenario`] (who asks for what), [`eligible`] (which paths a
//! scenario runs on), `preflight` (do the services answer?), `stack` (the system under test,
//! wired in-process), `driver` and `open_model` (sending the load), `path_run` (one path's
//! run), `sweep` (the curve), [`stats`] and [`timeline`] (what the clients saw), [`summary`]
//! (what results.json holds), [`payout`] (what a red packet paid), [`headline`], [`ceiling`]
//! and `http_alone`, [`report`] (the terminal), [`experiments`] (the seeds' scenarios' own
//! figures), `files` (results.json and report.html), `html` and `charts` (the report),
//! [`compare`], `cleanup` and [`environment`].

pub mod answer;
pub mod args;
pub mod ceiling;
pub(crate) mod charts;
mod cleanup;
pub mod compare;
mod decided;
mod driver;
pub mod eligible;
pub mod environment;
pub mod experiments;
pub mod faults;
mod files;
pub mod headline;
mod html;
mod http_alone;
mod open_model;
mod path_run;
pub mod payout;
mod preflight;
pub mod report;
pub mod row;
pub mod scenario;
pub mod soak;
mod stack;
pub mod stats;
pub mod summary;
pub mod sweep;
pub mod timeline;

use std::sync::Arc;

use crate::config::{BrokerArgs, ConsumerArgs, DatabaseArgs, PathArgs};
use args::RunLength;
pub use args::{BenchArgs, Via};
use ceiling::Ceilings;
pub use compare::CompareArgs;
use driver::Bench;
pub use row::BenchPath;
pub use summary::{BenchResults, PathResult};

/// What `seckill bench` can do besides running.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchCommand {
    /// Print each path's change between two runs' results.json (decided/s, p99, p99.9, audit,
    /// and the highest rate within the bound when both swept).
    Compare(CompareArgs),
}

/// Runs the benchmark; returns the results (also written to `--out`).
pub async fn run(
    database: DatabaseArgs,
    mut broker: BrokerArgs,
    consumer_args: ConsumerArgs,
    mut path_args: PathArgs,
    args: BenchArgs,
) -> anyhow::Result<BenchResults> {
    let selected = args.selected_paths()?;
    let spec = args.spec();
    args.check_sizes(&spec)?;
    // Asked only what each path sells: it never connects (the pool is lazy, and so is Redis).
    let registry = crate::paths::Registry::new(
        sqlx::postgres::PgPoolOptions::new().connect_lazy(&database.database_url)?,
        &path_args,
        &broker,
    )?;
    let (paths, skipped) = eligible::split(selected, spec.kind, |name| {
        registry.get(name).map(|p| p.sells_red_packets())
    });
    drop(registry);
    anyhow::ensure!(
        !paths.is_empty(),
        "none of the paths selected can run the {:?} scenario: {}",
        spec.kind,
        skipped
            .iter()
            .map(|s| format!("{} {}", s.path, s.reason))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let started_at = chrono::Utc::now().to_rfc3339();
    let in_process = args.url.is_none();
    let needs_redis = in_process && paths.iter().any(|p| p.as_str().starts_with("redis-"));
    preflight::check(&database, &broker, &path_args, in_process, needs_redis).await?;
    if in_process {
        stack::own_names(&mut broker, &mut path_args);
    }
    let stack = stack::start(&database, &broker, &consumer_args, &path_args, &args).await?;
    let bench = Arc::new(Bench::new(stack, &args)?);
    let soak = args.soak();
    let sweep = args.sweep();
    let length = args.run_length();
    let load = match &sweep {
        Some(s) => format!(
            "open model at a rising rate (at most {} in flight)",
            s.in_flight_max
        ),
        None => report::load_text(bench.load),
    };
    eprintln!(
        "{}",
        report::intro(&spec, &load, &length_text(length, &args), args.via)
    );
    for line in experiments::skipped_lines(&skipped) {
        eprintln!("{line}");
    }
    let (results, curves, mut all_items) = match &sweep {
        Some(settings) => {
            let (curves, items) = sweep::run_all(&bench, &paths, &spec, settings).await?;
            let rows = curves
                .iter()
                .filter_map(|c| c.representative().cloned())
                .collect();
            (rows, curves, items)
        }
        None => {
            let (rows, items) =
                path_run::run_all(&bench, &paths, &spec, length, soak.as_ref()).await?;
            (rows, Vec::new(), items)
        }
    };

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
            &spec.attempts(),
            &mut all_items,
        )
        .await?
    };
    if !args.no_ceilings && args.via == Via::Http {
        let http = http_alone::measure(&bench.http, bench.concurrency).await?;
        ceilings.http_requests_per_s = Some(http);
    }
    bench.stack.stop().await?;
    let config = environment::Config {
        database: &database,
        broker: &broker,
        consumer: &consumer_args,
        paths: &path_args,
    };
    let mut results = BenchResults {
        format_version: summary::FORMAT_VERSION,
        headline: String::new(),
        started_at,
        command_line: environment::command_line(),
        environment: environment::read(pool, &config).await,
        scenario: spec,
        via: args.via,
        concurrency: bench.concurrency,
        load: bench.load,
        slo_p99_ms: args.slo_p99_ms as f64,
        ceilings,
        paths: results,
        skipped,
        sweep: curves,
    };
    results.headline = headline::of(&results);
    if !args.keep {
        cleanup::remove_rows(pool, &all_items).await?;
    }
    if in_process {
        cleanup::remove_queues_and_keys(&broker, &bench.stack.topology, &path_args).await?;
    }
    files::write_all(&results, &args.out)?;
    println!("{}", report::table(&results));
    println!(
        "wrote {} and {}",
        args.out.join("results.json").display(),
        args.out.join("report.html").display()
    );
    Ok(results)
}

/// How long each path runs, in words.
fn length_text(length: RunLength, args: &BenchArgs) -> String {
    if let Some(s) = args.duration {
        return format!("a {s} s soak");
    }
    if args.sweep {
        return format!(
            "steps of {} s from {}/s ×{}",
            args.sweep_step_secs, args.sweep_from, args.sweep_factor
        );
    }
    match length {
        RunLength::Requests(n) => format!("{n} requests"),
        RunLength::Seconds(s) => format!("~{s:.0} s of measured load after a warm-up"),
    }
}
