//! One path's run: a warm-up on an item of its own, fresh items, the load (a burst of
//! `--requests`, or a soak), the wait for the last decision, then the summary and the audit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

use super::answer::Answer;
use super::args::SoakSettings;
use super::decided::wait_decided;
use super::driver::{Bench, drive};
use super::report;
use super::row::BenchPath;
use super::scenario::{Attempt, ScenarioSpec};
use super::soak;
use super::stats::Recorder;
use super::summary::{PathResult, summarize};

/// Most requests of a path's warm-up (a tenth of the run, up to this).
const WARM_UP_REQUESTS_MAX: usize = 1000;

/// Longest wait for a path's last decision once its clients were answered.
const DECISIONS_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs every path in turn, printing a line for each; returns their results and every item
/// they created.
pub(super) async fn run_all(
    bench: &Arc<Bench>,
    paths: &[BenchPath],
    spec: &ScenarioSpec,
    attempts: &Arc<Vec<Attempt>>,
    soak: Option<&SoakSettings>,
) -> anyhow::Result<(Vec<PathResult>, Vec<i64>)> {
    let mut results = Vec::new();
    let mut all_items = Vec::new();
    for &path in paths {
        let (result, items) = run_path(bench, path, spec, attempts, soak).await?;
        eprintln!("{}", report::one_line(&result));
        all_items.extend(items);
        results.push(result);
    }
    Ok((results, all_items))
}

/// Runs the scenario through one path: fresh items, the load, then the audit. Returns its
/// result and the items it created (warm-up included).
async fn run_path(
    bench: &Arc<Bench>,
    path: BenchPath,
    spec: &ScenarioSpec,
    attempts: &Arc<Vec<Attempt>>,
    soak: Option<&SoakSettings>,
) -> anyhow::Result<(PathResult, Vec<i64>)> {
    let mut created = warm_up(bench, path, spec, attempts).await?;
    let items = Arc::new(create_items(bench, path, spec).await?);
    let door_before = crate::metrics::get().orders_shed_sold_out.get();
    let started = Instant::now();
    let (recorder, samples) = match soak {
        Some(settings) => soak::run(bench, path, &items, attempts, settings).await?,
        None => (drive(bench, path, &items, attempts).await?, Vec::new()),
    };
    // The queue path may have answered `pending` to some; the run ends at the last decision.
    wait_decided(
        &bench.stack.pool,
        &items,
        expected(&recorder),
        DECISIONS_TIMEOUT,
    )
    .await?;
    let elapsed = started.elapsed();
    let mut result = summarize(&bench.stack.pool, path, spec, &items, &recorder, elapsed).await?;
    result.soak = samples;
    result.answered_at_door = crate::metrics::get().orders_shed_sold_out.get() - door_before;
    created.extend(items.iter());
    Ok((result, created))
}

/// A tenth of the attempts (up to a limit) on an item of its own, not reported: opens the HTTP
/// and database connections and lets the path reach its steady state, so the measured run is
/// not mostly ramp-up. Returns the item.
async fn warm_up(
    bench: &Arc<Bench>,
    path: BenchPath,
    spec: &ScenarioSpec,
    attempts: &[Attempt],
) -> anyhow::Result<Vec<i64>> {
    let warm_up_spec = ScenarioSpec {
        items: 1,
        ..spec.clone()
    };
    let items = create_items(bench, path, &warm_up_spec).await?;
    let warm_up: Vec<Attempt> = attempts
        .iter()
        .take((attempts.len() / 10).clamp(1, WARM_UP_REQUESTS_MAX))
        .map(|a| Attempt {
            item: 0,
            user: a.user.clone(),
        })
        .collect();
    let recorder = drive(bench, path, &Arc::new(items.clone()), &Arc::new(warm_up)).await?;
    wait_decided(
        &bench.stack.pool,
        &items,
        expected(&recorder),
        DECISIONS_TIMEOUT,
    )
    .await?;
    Ok(items)
}

/// Decisions the database will hold for what `recorder` saw: every request but the failed.
fn expected(recorder: &Recorder) -> i64 {
    recorder.total() as i64 - recorder.count(Answer::Error) as i64
}

/// Creates the scenario's items through the API (which also loads them into Redis).
async fn create_items(
    bench: &Bench,
    path: BenchPath,
    spec: &ScenarioSpec,
) -> anyhow::Result<Vec<i64>> {
    let creations = (0..spec.items.max(1)).map(|i| async move {
        let body = json!({ "name": format!("bench {path} #{i}"), "stock": spec.stock_per_item });
        let item: serde_json::Value = bench
            .http
            .post(format!("{}/items", bench.stack.base_url))
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
