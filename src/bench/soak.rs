//! Soak mode (`seckill bench --duration S`): one path at a steady request rate for minutes,
//! sampling every few seconds the rate achieved, the latency of that window and the process's
//! resident memory — a leak or a queue that grows without bound shows as a rising line.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::answer::Answer;
use super::args::SoakSettings;
use super::driver::{Bench, send};
use super::row::BenchPath;
use super::scenario::Attempt;
use super::stats::Recorder;
use super::summary::SoakSample;

/// What the simulated clients record into: the current sampling window, and the whole soak.
#[derive(Default)]
struct Recorders {
    window: Mutex<Recorder>,
    overall: Mutex<Recorder>,
}

/// Sends `attempts` round and round at the soak's rate for its duration, with at most
/// `bench.concurrency` in flight (past that the schedule slips rather than piling up).
pub(super) async fn run(
    bench: &Arc<Bench>,
    path: BenchPath,
    items: &Arc<Vec<i64>>,
    attempts: &Arc<Vec<Attempt>>,
    settings: &SoakSettings,
) -> anyhow::Result<(Recorder, Vec<SoakSample>)> {
    let recorders = Arc::new(Recorders::default());
    let started = Instant::now();
    let deadline = started + settings.duration;
    // The dispatcher ticks at the rate and hands indices to the clients through a bounded
    // channel: a steady open-loop load while the system keeps up.
    let (tx, rx) = async_channel::bounded::<usize>(bench.concurrency);
    let dispatcher = tokio::spawn(dispatch(settings.rate_per_s, deadline, tx));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..bench.concurrency {
        clients.spawn(client(
            Arc::clone(bench),
            path,
            Arc::clone(items),
            Arc::clone(attempts),
            rx.clone(),
            Arc::clone(&recorders),
            started,
        ));
    }
    let samples = sample_windows(path, started, deadline, settings.sample_every, &recorders).await;
    dispatcher.await?;
    while let Some(client) = clients.join_next().await {
        client?;
    }
    let overall = std::mem::take(&mut *recorders.overall.lock().expect("overall"));
    Ok((overall, samples))
}

/// Hands out attempt numbers `rate_per_s` times a second until `deadline`.
async fn dispatch(rate_per_s: u32, deadline: Instant, tx: async_channel::Sender<usize>) {
    let mut tick =
        tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate_per_s.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = 0;
    while Instant::now() < deadline {
        tick.tick().await;
        if tx.send(sent).await.is_err() {
            break;
        }
        sent += 1;
    }
}

/// One simulated client: sends each attempt number it is handed, until the dispatcher stops.
async fn client(
    bench: Arc<Bench>,
    path: BenchPath,
    items: Arc<Vec<i64>>,
    attempts: Arc<Vec<Attempt>>,
    rx: async_channel::Receiver<usize>,
    recorders: Arc<Recorders>,
    started: Instant,
) {
    while let Ok(i) = rx.recv().await {
        let attempt = &attempts[i % attempts.len()];
        // A fresh user name each round, so later rounds are new buyers, not repeats.
        let user = format!("{}-r{}", attempt.user, i / attempts.len());
        let began = Instant::now();
        let answer = send(&bench, path, items[attempt.item], &user).await;
        let latency = began.elapsed();
        recorders
            .window
            .lock()
            .expect("window")
            .record(answer, latency);
        recorders
            .overall
            .lock()
            .expect("overall")
            .record_at(answer, latency, started.elapsed());
    }
}

/// Every `sample_every` until `deadline`: takes the window's recorder and prints its sample.
async fn sample_windows(
    path: BenchPath,
    started: Instant,
    deadline: Instant,
    sample_every: Duration,
    recorders: &Recorders,
) -> Vec<SoakSample> {
    let mut samples = Vec::new();
    let mut window_started = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(sample_every.min(deadline.saturating_duration_since(Instant::now())))
            .await;
        let done = std::mem::take(&mut *recorders.window.lock().expect("window"));
        let latency = done.latency();
        let sample = SoakSample {
            t_s: started.elapsed().as_secs_f64(),
            rss_mib: rss_mib(),
            answered_per_s: done.total() as f64 / window_started.elapsed().as_secs_f64(),
            p50_ms: latency.p50_ms,
            p99_ms: latency.p99_ms,
            errors: done.count(Answer::Error),
        };
        eprintln!(
            "{path:>12} soak t={:>5.0}s rss={:>6.1} MiB {:>7.0}/s p50 {:>6.1} ms p99 {:>7.1} ms errors {}",
            sample.t_s,
            sample.rss_mib,
            sample.answered_per_s,
            sample.p50_ms,
            sample.p99_ms,
            sample.errors
        );
        samples.push(sample);
        window_started = Instant::now();
    }
    samples
}

/// Resident set size of this process, from /proc (0 where /proc is not there).
pub fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rss_is_read_from_proc() {
        let rss = super::rss_mib();
        assert!(rss > 1.0 && rss < 100_000.0, "{rss}");
    }
}
