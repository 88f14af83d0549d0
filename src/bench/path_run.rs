//! One path's run: a warm-up on an item of its own, fresh items, the load (a burst of
//! requests in a closed loop or on the open model's schedule, or a soak), the wait for the last
//! decision, then the summary and the audit. A run is sized in requests, and its stock grows
//! with them ([`ScenarioSpec::scaled`]), so a longer run is the same sale, bigger.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

use super::answer::Answer;
use super::args::{Load, RunLength, SoakSettings};
use super::decided::wait_decided;
use super::driver::{Bench, drive};
use super::open_model;
use super::report;
use super::row::BenchPath;
use super::scenario::{Attempt, ScenarioSpec};
use super::soak;
use super::stats::Recorder;
use super::summary::{PathResult, summarize};

/// Most requests of a fixed-size run's warm-up (a tenth of the run, up to this).
const WARM_UP_REQUESTS_MAX: usize = 1000;

/// How long a sustained run's warm-up lasts at most: long enough for connections, pools and
/// the broker's queues to settle, and to measure the rate that sizes the run.
const WARM_UP_SUSTAINED: Duration = Duration::from_secs(2);

/// Most requests of a sustained run's warm-up (reached first only by a very fast path).
const WARM_UP_SUSTAINED_REQUESTS_MAX: usize = 60_000;

/// Most requests of one path's measured run, whatever its rate (memory stays bounded).
const RUN_REQUESTS_MAX: usize = 1_000_000;

/// Longest wait for a path's last decision once its clients were answered.
const DECISIONS_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs every path in turn, printing a line for each; returns their results and every item
/// they created.
pub(super) async fn run_all(
    bench: &Arc<Bench>,
    paths: &[BenchPath],
    spec: &ScenarioSpec,
    length: RunLength,
    soak: Option<&SoakSettings>,
) -> anyhow::Result<(Vec<PathResult>, Vec<i64>)> {
    let mut results = Vec::new();
    let mut all_items = Vec::new();
    for &path in paths {
        let (warm_up_items, warm_up_rate) = warm_up(bench, path, spec, length).await?;
        all_items.extend(warm_up_items);
        let (result, items) = match soak {
            Some(settings) => soak_path(bench, path, spec, settings).await?,
            None => {
                let requests = requests_for(length, warm_up_rate, spec);
                measure(bench, path, spec, bench.load, requests).await?
            }
        };
        eprintln!("{}", report::one_line(&result));
        all_items.extend(items);
        results.push(result);
    }
    Ok((results, all_items))
}

/// How many requests a measured run sends: the count asked for, or enough for the seconds
/// asked for at the warm-up's rate (at least a tenth of the scenario).
fn requests_for(length: RunLength, warm_up_per_s: f64, spec: &ScenarioSpec) -> usize {
    match length {
        RunLength::Requests(n) => n,
        RunLength::Seconds(s) => ((warm_up_per_s * s).ceil() as usize)
            .max(spec.requests / 10)
            .min(RUN_REQUESTS_MAX),
    }
}

/// The scenario grown to `requests` through one path under `load`: fresh items, the load, the
/// wait for the last decision, the audit. Returns its result and the items it created.
pub(super) async fn measure(
    bench: &Arc<Bench>,
    path: BenchPath,
    spec: &ScenarioSpec,
    load: Load,
    requests: usize,
) -> anyhow::Result<(PathResult, Vec<i64>)> {
    let (spec, attempts) = spec.scaled(requests.max(1));
    let items = Arc::new(create_items(bench, path, &spec).await?);
    let attempts = Arc::new(attempts);
    let door_before = crate::metrics::get().orders_shed_sold_out.get();
    let started = Instant::now();
    let recorder = match load {
        Load::Closed { .. } => drive(bench, path, &items, &attempts, None).await?,
        Load::Open {
            rate_per_s,
            in_flight_max,
        } => open_model::drive(bench, path, &items, &attempts, rate_per_s, in_flight_max).await?,
    };
    let mut result = finish(bench, path, &spec, &items, &recorder, started).await?;
    if let Load::Open { rate_per_s, .. } = load {
        result.offered_per_s = Some(rate_per_s);
    }
    result.answered_at_door = crate::metrics::get().orders_shed_sold_out.get() - door_before;
    Ok((result, items.to_vec()))
}

/// Soak mode: the scenario's attempts round and round at a steady rate for the soak's duration.
async fn soak_path(
    bench: &Arc<Bench>,
    path: BenchPath,
    spec: &ScenarioSpec,
    settings: &SoakSettings,
) -> anyhow::Result<(PathResult, Vec<i64>)> {
    let attempts = Arc::new(spec.attempts());
    let items = Arc::new(create_items(bench, path, spec).await?);
    let started = Instant::now();
    let (recorder, samples) = soak::run(bench, path, &items, &attempts, settings).await?;
    let mut result = finish(bench, path, spec, &items, &recorder, started).await?;
    result.soak = samples;
    result.offered_per_s = Some(f64::from(settings.rate_per_s));
    Ok((result, items.to_vec()))
}

/// Waits for the run's last decision (the queue path may have answered `pending`), then sums
/// it up from the database.
async fn finish(
    bench: &Bench,
    path: BenchPath,
    spec: &ScenarioSpec,
    items: &[i64],
    recorder: &Recorder,
    started: Instant,
) -> anyhow::Result<PathResult> {
    let pool = &bench.stack.pool;
    wait_decided(pool, items, expected(recorder), DECISIONS_TIMEOUT).await?;
    summarize(pool, path, spec, items, recorder, started.elapsed()).await
}

/// Load on an item of its own, not reported: opens the HTTP and database connections and lets
/// the path reach its steady state, so the measured run is not mostly ramp-up. A fixed-size
/// run warms up on a tenth of its attempts; a sustained one for up to two seconds, which also
/// measures the rate that sizes it. Returns the items and the rate reached (answers/s).
pub(super) async fn warm_up(
    bench: &Arc<Bench>,
    path: BenchPath,
    spec: &ScenarioSpec,
    length: RunLength,
) -> anyhow::Result<(Vec<i64>, f64)> {
    let one_item = ScenarioSpec {
        items: 1,
        ..spec.clone()
    };
    let (count, deadline) = match length {
        RunLength::Requests(n) => ((n / 10).clamp(1, WARM_UP_REQUESTS_MAX), None),
        RunLength::Seconds(_) => (
            WARM_UP_SUSTAINED_REQUESTS_MAX,
            Some(Instant::now() + WARM_UP_SUSTAINED),
        ),
    };
    let items = create_items(bench, path, &one_item).await?;
    let warm_up: Vec<Attempt> = one_item
        .scaled(count)
        .1
        .into_iter()
        .map(|a| Attempt { item: 0, ..a })
        .collect();
    let started = Instant::now();
    let recorder = drive(
        bench,
        path,
        &Arc::new(items.clone()),
        &Arc::new(warm_up),
        deadline,
    )
    .await?;
    let rate = steady_rate(&recorder, started.elapsed());
    wait_decided(
        &bench.stack.pool,
        &items,
        expected(&recorder),
        DECISIONS_TIMEOUT,
    )
    .await?;
    Ok((items, rate))
}

/// The rate a warm-up reached past its first second (mostly ramp-up), or its average when
/// it lasted under 1.5 s; with a fifth more, so that a run the warm-up misjudged still lasts
/// about the seconds asked for (without it, runs asked for 10 s lasted 6–23 s here).
fn steady_rate(recorder: &Recorder, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    let average = recorder.total() as f64 / secs.max(1e-3);
    let seconds = recorder.seconds();
    let steady = match seconds.first() {
        Some(first) if secs > 1.5 => (recorder.total() - first.answered) as f64 / (secs - 1.0),
        _ => average,
    };
    1.2 * steady
}

/// Decisions the database will hold for what `recorder` saw: every request but the failed.
fn expected(recorder: &Recorder) -> i64 {
    recorder.total() as i64 - recorder.count(Answer::Error) as i64
}

/// Creates the scenario's items through the API (which also loads them into Redis): goods, or
/// red packets of the scenario's total and shares.
async fn create_items(
    bench: &Bench,
    path: BenchPath,
    spec: &ScenarioSpec,
) -> anyhow::Result<Vec<i64>> {
    let creations = (0..spec.items.max(1)).map(|i| async move {
        let name = format!("bench {path} #{i}");
        let body = match spec.packet_total {
            Some(total) => json!({
                "name": name,
                "kind": "red_packet",
                "total_amount": total,
                "shares": spec.stock_per_item,
            }),
            None => json!({ "name": name, "stock": spec.stock_per_item }),
        };
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
