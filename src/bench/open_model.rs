//! The open model: requests sent on a schedule at a fixed rate, however the path answers, as
//! buyers arrive whether or not the shop is slow. A closed loop lets a slow path slow its own
//! clients down, so it is offered less and its percentiles look better than a buyer's wait
//! (coordinated omission); here each request's latency counts from when it was *due*, and a
//! request that could not be sent on time (every in-flight slot taken) is counted as late.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::driver::{Bench, send};
use super::report;
use super::row::BenchPath;
use super::scenario::Attempt;
use super::stats::{LATE_AFTER, Recorder};

/// Sends attempt `i` at `i / rate_per_s` seconds after the start, at most `in_flight_max` at
/// once; returns what the clients saw, latencies counted from each request's due time.
pub(super) async fn drive(
    bench: &Arc<Bench>,
    path: BenchPath,
    items: &Arc<Vec<i64>>,
    attempts: &[Attempt],
    rate_per_s: f64,
    in_flight_max: usize,
) -> anyhow::Result<Recorder> {
    let progress = report::progress_bar(path, attempts.len() as u64);
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    let slots = Arc::new(Semaphore::new(in_flight_max.max(1)));
    let interval = 1.0 / rate_per_s.max(0.001);
    let started = Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for (i, attempt) in attempts.iter().enumerate() {
        let due = started + Duration::from_secs_f64(i as f64 * interval);
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        } else if i % 64 == 0 {
            // Behind schedule: let the sends run rather than only spawn them.
            tokio::task::yield_now().await;
        }
        let slot = Arc::clone(&slots).acquire_owned().await?;
        let late = due.elapsed() > LATE_AFTER;
        let (bench, recorder, progress) = (Arc::clone(bench), recorder.clone(), progress.clone());
        let (item_id, user) = (items[attempt.item], attempt.user.clone());
        sends.spawn(async move {
            let answer = send(&bench, path, item_id, &user).await;
            drop(slot);
            let mut recorder = recorder.lock().expect("recorder");
            recorder.record_at(answer, due.elapsed(), started.elapsed());
            if late {
                recorder.sent_late();
            }
            progress.inc(1);
        });
        while let Some(done) = sends.try_join_next() {
            done?;
        }
    }
    while let Some(done) = sends.join_next().await {
        done?;
    }
    progress.finish_and_clear();
    let recorder = std::mem::take(&mut *recorder.lock().expect("recorder"));
    Ok(recorder)
}
