//! How a red packet's total is split among its grabbers.

use rand::Rng;

/// One red packet share out of `remaining` minor units left for `shares` shares, by the "double
/// average" method: uniform in `[1, 2 · remaining / shares − 1]`, and the last share takes what
/// is left. Every share is at least 1 and at most what leaves 1 for each later share, so the
/// shares sum exactly to the total and none is zero (needs `remaining >= shares >= 1`). The mean
/// share is the average left, so early and late grabbers expect the same.
pub fn draw_share(remaining: i64, shares: i64, rng: &mut impl Rng) -> i64 {
    assert!(
        shares >= 1 && remaining >= shares,
        "{remaining} for {shares} shares"
    );
    if shares == 1 {
        return remaining;
    }
    let double_average = i64::try_from(2 * i128::from(remaining) / i128::from(shares) - 1)
        .expect("remaining is bounded by PACKET_TOTAL_MAX");
    let max = double_average.clamp(1, remaining - (shares - 1));
    rng.random_range(1..=max)
}
