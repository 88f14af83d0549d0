//! Capped, jittered exponential backoff for reconnects and commit retries: many clients that
//! failed together must not retry together.

use std::time::Duration;

use rand::Rng;

/// Delay before retry number `attempt` (0-based): `base * 2^attempt`, capped at `cap`, then
/// scaled by a random factor in [0.5, 1.0].
pub fn delay(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(attempt.min(16)));
    exp.min(cap).mul_f64(rand::rng().random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps_with_jitter() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        for attempt in 0..40 {
            let d = delay(attempt, base, cap);
            let ceiling = (base * 2u32.pow(attempt.min(16))).min(cap);
            assert!(d <= ceiling && d >= ceiling / 2, "attempt {attempt}: {d:?}");
        }
    }
}
