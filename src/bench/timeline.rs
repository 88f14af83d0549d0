//! The run second by second: how many requests were answered in each second and how long the
//! slowest of them waited. A whole-run percentile hides a stall (a lock convoy, a broker
//! flow-control pause, a batch redone); one point per second shows it.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Most seconds a timeline keeps; later answers land in the last second.
const SECONDS_MAX: usize = 3600;

/// Per-second latency histograms (microseconds, 2 significant digits: a second's p99 needs no
/// more, and a run holds one per second).
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    seconds: Vec<Histogram<u64>>,
}

/// One second of a run: `answered / covered_s` is its rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Second {
    /// Seconds since the run started, at the end of this second.
    pub t_s: u64,
    /// Requests answered in this second.
    pub answered: u64,
    /// How much of this second the run covered: 1 but for its last, partial second.
    pub covered_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Timeline {
    /// Records one answer given `at` after the run started, which had waited `micros`.
    pub fn record(&mut self, at: Duration, micros: u64) {
        let second = (at.as_secs() as usize).min(SECONDS_MAX - 1);
        while self.seconds.len() <= second {
            self.seconds
                .push(Histogram::new_with_bounds(1, 600_000_000, 2).expect("valid bounds"));
        }
        self.seconds[second]
            .record(micros.clamp(1, 600_000_000))
            .expect("clamped into bounds");
    }

    pub fn merge(&mut self, other: &Timeline) {
        for (i, h) in other.seconds.iter().enumerate() {
            if i < self.seconds.len() {
                self.seconds[i].add(h).expect("same bounds");
            } else {
                self.seconds.push(h.clone());
            }
        }
    }

    /// Every second from the start to the last answer, given `end` (a second without answers
    /// reads 0).
    pub fn seconds(&self, end: Duration) -> Vec<Second> {
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let last = self.seconds.len().saturating_sub(1);
        self.seconds
            .iter()
            .enumerate()
            .map(|(i, h)| Second {
                t_s: i as u64 + 1,
                answered: h.len(),
                covered_s: if i == last {
                    (end.as_secs_f64() - i as f64).clamp(0.01, 1.0)
                } else {
                    1.0
                },
                p50_ms: if h.is_empty() { 0.0 } else { ms(h, 0.50) },
                p99_ms: if h.is_empty() { 0.0 } else { ms(h, 0.99) },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_fall_into_their_second_and_a_silent_second_reads_zero() {
        let mut t = Timeline::default();
        for ms in 1..=100 {
            t.record(Duration::from_millis(200), ms * 1000);
        }
        t.record(Duration::from_millis(2500), 7000);
        let s = t.seconds(Duration::from_millis(2500));
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].covered_s, s[2].covered_s), (1.0, 0.5));
        assert_eq!((s[0].t_s, s[0].answered), (1, 100));
        assert!((s[0].p99_ms - 99.0).abs() < 1.0, "{:?}", s[0]);
        assert_eq!((s[1].answered, s[1].p99_ms), (0, 0.0));
        assert_eq!(s[2].answered, 1);
        let mut other = Timeline::default();
        other.record(Duration::from_millis(3100), 1);
        t.merge(&other);
        assert_eq!(t.seconds(Duration::from_millis(3100)).len(), 4);
    }
}
