//! What a path's red packets paid out, read from the database after its run (`red-packet`
//! scenario): the shares taken, whether they sum exactly to what the packet gave away (what is
//! left, if shares are left, stays in `packet_remaining`), whether any is zero, and how the
//! shares' sizes are spread. The load generator's answers count for none of it: a path that
//! answered `purchased` with one amount and stored another is judged by what it stored.
//!
//! The sizes are binned relative to the packet's average share (total ÷ shares), so runs of
//! different sizes — a sustained run grows the packet with its requests, differently per path —
//! draw on one scale: the double-average rule ([`crate::sale::draw_share`]) spreads shares
//! roughly evenly over 0–2× the average.

use serde::Serialize;
use sqlx::PgPool;

/// Bins per average share: each bin is a tenth of it wide.
pub const BINS_PER_AVERAGE: usize = 10;

/// Bins at most; a share above `BINS_MAX / BINS_PER_AVERAGE` × the average (far past what the
/// double-average rule draws, barring the last share) counts in the last.
pub const BINS_MAX: usize = 60;

/// One path's payout over the red packets its measured run sold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Payout {
    /// What the packets give away in all, minor units (`items.packet_total`).
    pub total: i64,
    /// The shares the packets were cut into (`items.stock_initial`).
    pub shares: i64,
    /// Shares paid: orders on the packets.
    pub shares_paid: i64,
    /// The sum of the shares paid, minor units.
    pub paid: i64,
    /// What the packets still hold (`items.packet_remaining`).
    pub remaining: i64,
    /// Shares of zero or less (the schema refuses them: a non-zero count is a bug).
    pub zero_shares: i64,
    /// The smallest and the largest share paid (0 when none was).
    pub smallest: i64,
    pub largest: i64,
    /// `paid + remaining == total`, and with every share taken `paid == total`: nothing created
    /// or lost.
    pub sums_exactly: bool,
    /// Shares per bin of a tenth of the average share: `histogram[i]` counts the shares of
    /// more than `i` and at most `i + 1` tenths of it (the last bin also holds anything larger).
    pub histogram: Vec<u64>,
}

impl Payout {
    /// The verdict in a word, for the tables.
    pub fn check(&self) -> &'static str {
        match (self.sums_exactly, self.zero_shares == 0) {
            (true, true) => "exact",
            (false, _) => "WRONG SUM",
            (true, false) => "ZERO SHARE",
        }
    }

    /// The packet's average share, minor units.
    pub fn average_share(&self) -> f64 {
        self.total as f64 / self.shares.max(1) as f64
    }

    /// From the packets' figures and the amounts of the shares paid.
    fn of(total: i64, shares: i64, remaining: i64, amounts: &[i64]) -> Payout {
        let paid: i64 = amounts.iter().sum();
        let shares_paid = amounts.len() as i64;
        let every_share_taken = shares_paid >= shares;
        let average = total as f64 / shares.max(1) as f64;
        let mut histogram = vec![0u64; BINS_MAX];
        for &amount in amounts {
            // A share of exactly k tenths belongs to bin k − 1 (more than k − 1, at most k).
            let tenths = (amount as f64 * BINS_PER_AVERAGE as f64 / average).ceil() as usize;
            histogram[tenths.saturating_sub(1).min(BINS_MAX - 1)] += 1;
        }
        let used = histogram.iter().rposition(|n| *n > 0).map_or(0, |i| i + 1);
        histogram.truncate(used.max(2 * BINS_PER_AVERAGE));
        Payout {
            total,
            shares,
            shares_paid,
            paid,
            remaining,
            zero_shares: amounts.iter().filter(|a| **a <= 0).count() as i64,
            smallest: amounts.iter().copied().min().unwrap_or(0),
            largest: amounts.iter().copied().max().unwrap_or(0),
            sums_exactly: paid + remaining == total && (!every_share_taken || paid == total),
            histogram,
        }
    }
}

/// Reads the payout of the red packets among `items` (`None` if none is one).
pub async fn read(pool: &PgPool, items: &[i64]) -> anyhow::Result<Option<Payout>> {
    let (packets, total, shares, remaining): (i64, Option<i64>, Option<i64>, Option<i64>) =
        sqlx::query_as(
            "SELECT count(*), sum(packet_total)::bigint, sum(stock_initial)::bigint, \
             sum(packet_remaining)::bigint \
             FROM items WHERE id = ANY($1::bigint[]) AND kind = 'red_packet'",
        )
        .bind(items)
        .fetch_one(pool)
        .await?;
    if packets == 0 {
        return Ok(None);
    }
    let amounts: Vec<i64> = sqlx::query_scalar(
        "SELECT coalesce(o.amount, 0) FROM orders o JOIN items i ON i.id = o.item_id \
         WHERE o.item_id = ANY($1::bigint[]) AND i.kind = 'red_packet'",
    )
    .bind(items)
    .fetch_all(pool)
    .await?;
    Ok(Some(Payout::of(
        total.unwrap_or(0),
        shares.unwrap_or(0),
        remaining.unwrap_or(0),
        &amounts,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exact_payout_is_binned_in_tenths_of_the_average_share() {
        // 4 shares of a 400 packet: the average is 100, a bin is 10 wide.
        let p = Payout::of(400, 4, 0, &[1, 10, 11, 378]);
        assert_eq!(p.check(), "exact");
        assert_eq!(
            (p.shares_paid, p.paid, p.smallest, p.largest),
            (4, 400, 1, 378)
        );
        assert_eq!(p.histogram[0], 2, "1 and 10: at most a tenth");
        assert_eq!(p.histogram[1], 1, "11");
        assert_eq!(p.histogram[37], 1, "378");
        assert_eq!(p.histogram.len(), 38, "up to the largest share");
        assert_eq!(p.histogram.iter().sum::<u64>(), 4);
        assert_eq!(p.average_share(), 100.0);
    }

    #[test]
    fn a_payout_that_creates_or_loses_money_or_pays_zero_is_caught() {
        let partial = Payout::of(400, 4, 150, &[100, 150]);
        assert!(
            partial.sums_exactly,
            "shares left: the rest stays in the packet"
        );
        assert_eq!(partial.histogram.len(), 20, "at least 0–2× the average");
        assert_eq!(
            Payout::of(400, 4, 0, &[100, 100, 100, 99]).check(),
            "WRONG SUM"
        );
        assert_eq!(Payout::of(400, 4, 10, &[100, 150]).check(), "WRONG SUM");
        assert_eq!(
            Payout::of(400, 4, 0, &[200, 200, 0, 0]).check(),
            "ZERO SHARE"
        );
        let huge = Payout::of(400, 4, 0, &[1, 1, 1, 397 * 100]);
        assert_eq!(
            huge.histogram.len(),
            BINS_MAX,
            "a huge share lands in the last bin"
        );
        assert_eq!(huge.histogram[BINS_MAX - 1], 1);
    }
}
