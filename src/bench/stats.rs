//! What one path's run measured: latencies in an HDR histogram, outcome counts, throughput.
//! Aggregation is separate from measurement so it can be tested without a run.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency recorder; values in microseconds, 3 significant digits, up to 10 minutes.
#[derive(Debug, Clone)]
pub struct Recorder {
    histogram: Histogram<u64>,
    counts: BTreeMap<String, u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
            counts: BTreeMap::new(),
        }
    }
}

impl Recorder {
    /// Records one answered request: its outcome (`purchased`, `error`, ...) and latency.
    pub fn record(&mut self, outcome: &str, latency: Duration) {
        let micros = (latency.as_micros() as u64).clamp(1, 600_000_000);
        self.histogram.record(micros).expect("clamped into bounds");
        *self.counts.entry(outcome.to_string()).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.histogram.add(&other.histogram).expect("same bounds");
        for (k, v) in &other.counts {
            *self.counts.entry(k.clone()).or_default() += v;
        }
    }

    pub fn total(&self) -> u64 {
        self.histogram.len()
    }

    pub fn count(&self, outcome: &str) -> u64 {
        self.counts.get(outcome).copied().unwrap_or(0)
    }

    pub fn counts(&self) -> &BTreeMap<String, u64> {
        &self.counts
    }

    /// Percentile summary in milliseconds.
    pub fn latency(&self) -> Latency {
        let ms = |q: f64| self.histogram.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            p50_ms: ms(0.50),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
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

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
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

    #[test]
    fn percentiles_and_counts() {
        let mut r = Recorder::default();
        for ms in 1..=100 {
            r.record(
                if ms <= 10 { "purchased" } else { "sold_out" },
                Duration::from_millis(ms),
            );
        }
        let l = r.latency();
        assert!((l.p50_ms - 50.0).abs() < 0.1, "{l:?}");
        assert!((l.p99_ms - 99.0).abs() < 0.1, "{l:?}");
        assert!((l.max_ms - 100.0).abs() < 0.1, "{l:?}");
        assert_eq!(r.total(), 100);
        assert_eq!(
            (r.count("purchased"), r.count("sold_out"), r.count("error")),
            (10, 90, 0)
        );
    }

    #[test]
    fn merge_adds_up() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        a.record("purchased", Duration::from_millis(1));
        b.record("purchased", Duration::from_millis(3));
        b.record("error", Duration::from_millis(1000));
        a.merge(&b);
        assert_eq!(a.total(), 3);
        assert_eq!(a.count("purchased"), 2);
        assert!((a.latency().max_ms - 1000.0).abs() < 1.0);
        let cdf = a.cdf(4);
        assert_eq!(cdf.len(), 5);
        assert!(cdf.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
        assert_eq!(cdf.last().unwrap().1, 1.0);
    }

    #[test]
    fn rate_handles_zero_time() {
        assert_eq!(rate(10, Duration::ZERO), 0.0);
        assert_eq!(rate(10, Duration::from_secs(2)), 5.0);
    }
}
