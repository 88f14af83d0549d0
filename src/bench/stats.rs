//! What one path's run measured: latencies in an HDR histogram, answers counted, throughput.
//! Aggregation is separate from measurement so it can be tested without a run.

use std::collections::HashMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::answer::Answer;
use super::timeline::Timeline;

/// How late a request may be sent after it was due before it counts as sent late (the
/// timer's own granularity is a millisecond).
pub const LATE_AFTER: Duration = Duration::from_millis(10);

/// Latency recorder; values in microseconds, 3 significant digits, up to 10 minutes.
#[derive(Debug, Clone)]
pub struct Recorder {
    histogram: Histogram<u64>,
    counts: HashMap<Answer, u64>,
    /// The same answers second by second, for those recorded with their time.
    timeline: Timeline,
    /// Open model: requests sent more than [`LATE_AFTER`] after they were due.
    sent_late: u64,
    /// When the last answer came, since the run started.
    last_answer: Duration,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
            counts: HashMap::new(),
            timeline: Timeline::default(),
            sent_late: 0,
            last_answer: Duration::ZERO,
        }
    }
}

impl Recorder {
    /// Records one request: what its client was told, and how long it waited.
    pub fn record(&mut self, answer: Answer, latency: Duration) {
        self.histogram
            .record(micros(latency))
            .expect("clamped into bounds");
        *self.counts.entry(answer).or_default() += 1;
    }

    /// Records one request answered `at` after the run started, into the timeline too.
    pub fn record_at(&mut self, answer: Answer, latency: Duration, at: Duration) {
        self.record(answer, latency);
        self.timeline.record(at, micros(latency));
        self.last_answer = self.last_answer.max(at);
    }

    /// Counts one request sent late (open model).
    pub fn sent_late(&mut self) {
        self.sent_late += 1;
    }

    pub fn late(&self) -> u64 {
        self.sent_late
    }

    /// When the last answer came, since the run started.
    pub fn last_answer(&self) -> Duration {
        self.last_answer
    }

    /// The run second by second, up to the last answer.
    pub fn seconds(&self) -> Vec<super::timeline::Second> {
        self.timeline.seconds(self.last_answer)
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.histogram.add(&other.histogram).expect("same bounds");
        for (answer, n) in &other.counts {
            *self.counts.entry(*answer).or_default() += n;
        }
        self.timeline.merge(&other.timeline);
        self.sent_late += other.sent_late;
        self.last_answer = self.last_answer.max(other.last_answer);
    }

    pub fn total(&self) -> u64 {
        self.histogram.len()
    }

    pub fn count(&self, answer: Answer) -> u64 {
        self.counts.get(&answer).copied().unwrap_or(0)
    }

    /// Percentile summary in milliseconds.
    pub fn latency(&self) -> Latency {
        let ms = |q: f64| self.histogram.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            p50_ms: ms(0.50),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
            p99_9_ms: ms(0.999),
            max_ms: self.histogram.max() as f64 / 1000.0,
            mean_ms: self.histogram.mean() / 1000.0,
        }
    }

    /// The latency CDF as (milliseconds, fraction of requests at or below), for charts.
    pub fn cdf(&self, points: usize) -> Vec<(f64, f64)> {
        if self.histogram.is_empty() {
            return Vec::new();
        }
        (0..=points)
            .map(|i| {
                let q = i as f64 / points as f64;
                (self.histogram.value_at_quantile(q) as f64 / 1000.0, q)
            })
            .collect()
    }
}

/// Latency percentiles from the HDR histogram, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p99_9_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// The histogram's value, microseconds, clamped into its bounds.
fn micros(latency: Duration) -> u64 {
    (latency.as_micros() as u64).clamp(1, 600_000_000)
}

/// Decisions per second over a wall-clock span.
pub fn rate(count: u64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        0.0
    } else {
        count as f64 / elapsed.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Status;

    const PURCHASED: Answer = Answer::Decided(Status::Purchased);
    const SOLD_OUT: Answer = Answer::Decided(Status::SoldOut);

    #[test]
    fn percentiles_and_counts() {
        let mut r = Recorder::default();
        for ms in 1..=100 {
            r.record(
                if ms <= 10 { PURCHASED } else { SOLD_OUT },
                Duration::from_millis(ms),
            );
        }
        let l = r.latency();
        assert!((l.p50_ms - 50.0).abs() < 0.1, "{l:?}");
        assert!((l.p99_ms - 99.0).abs() < 0.1, "{l:?}");
        assert!((l.max_ms - 100.0).abs() < 0.1, "{l:?}");
        assert!(l.p99_ms <= l.p99_9_ms && l.p99_9_ms <= l.max_ms, "{l:?}");
        assert_eq!(r.total(), 100);
        assert_eq!(
            (
                r.count(PURCHASED),
                r.count(SOLD_OUT),
                r.count(Answer::Error)
            ),
            (10, 90, 0)
        );
    }

    #[test]
    fn merge_adds_up() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        a.record(PURCHASED, Duration::from_millis(1));
        b.record(PURCHASED, Duration::from_millis(3));
        b.record(Answer::Error, Duration::from_millis(1000));
        a.merge(&b);
        assert_eq!(a.total(), 3);
        assert_eq!(a.count(PURCHASED), 2);
        assert!((a.latency().max_ms - 1000.0).abs() < 1.0);
        let cdf = a.cdf(4);
        assert_eq!(cdf.len(), 5);
        assert!(cdf.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
        assert_eq!(cdf.last().unwrap().1, 1.0);
    }

    #[test]
    fn timed_answers_fill_the_timeline_and_late_sends_add_up() {
        let mut a = Recorder::default();
        a.record_at(
            PURCHASED,
            Duration::from_millis(5),
            Duration::from_millis(1500),
        );
        a.sent_late();
        let mut b = Recorder::default();
        b.record_at(
            SOLD_OUT,
            Duration::from_millis(5),
            Duration::from_millis(300),
        );
        b.sent_late();
        a.merge(&b);
        assert_eq!(a.late(), 2);
        assert_eq!(a.last_answer(), Duration::from_millis(1500));
        let seconds = a.seconds();
        assert_eq!(
            seconds.iter().map(|s| s.answered).collect::<Vec<_>>(),
            [1, 1]
        );
    }

    #[test]
    fn rate_handles_zero_time() {
        assert_eq!(rate(10, Duration::ZERO), 0.0);
        assert_eq!(rate(10, Duration::from_secs(2)), 5.0);
    }
}
