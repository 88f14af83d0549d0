//! What a run found, path by path: the decisions the database holds, the audit's verdict, the
//! latency the clients saw. This is what `results.json` holds (its layout, versioned by
//! [`FORMAT_VERSION`], is documented in `docs/BENCHMARKS.md`) and the report shows.

use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;

use super::answer::Answer;
use super::args::{Load, Via};
use super::ceiling::Ceilings;
use super::eligible::Skipped;
use super::environment::Environment;
use super::payout::{self, Payout};
use super::row::BenchPath;
use super::scenario::ScenarioSpec;
use super::stats::{self, Latency, Recorder};
use super::timeline::Second;
use crate::audit::{self, ItemAudit};
use crate::domain::Status;

/// The version of `results.json`'s layout: raised when a field changes meaning or goes away
/// (adding one does not). 1 had no `format_version`.
pub const FORMAT_VERSION: u32 = 2;

#[derive(Debug, Clone, Serialize)]
pub struct BenchResults {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// What the run shows, in one sentence derived from it (see [`super::headline`]).
    pub headline: String,
    pub started_at: String,
    /// The command line that ran it, as typed (arguments shell-quoted).
    pub command_line: String,
    pub scenario: ScenarioSpec,
    pub via: Via,
    /// Closed-loop clients (`--concurrency`), also with the open model (`--rate`).
    pub concurrency: usize,
    /// How the comparison's clients sent: a closed loop or an offered rate.
    pub load: Load,
    /// The p99 bound of the sweep and the headline, ms.
    pub slo_p99_ms: f64,
    pub environment: Environment,
    pub ceilings: Ceilings,
    /// One row per path; with `--sweep`, each path's highest step that met the bound (or its
    /// first step if none did).
    pub paths: Vec<PathResult>,
    /// Selected paths the scenario did not run on, each with why (`red-packet`: the paths that
    /// do not sell red packets).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
    /// `--sweep` only: each path's steps.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sweep: Vec<Curve>,
}

impl BenchResults {
    /// Every path's audit is clean but the deliberately unsafe `naive`'s: a safe path failing
    /// it is a bug worth a non-zero exit.
    pub fn safe_paths_audit_clean(&self) -> bool {
        self.paths
            .iter()
            .all(|r| r.audit.clean || r.path == BenchPath::NAIVE)
    }
}

/// What one path did.
#[derive(Debug, Clone, Serialize)]
pub struct PathResult {
    pub path: BenchPath,
    pub requests: u64,
    pub elapsed_s: f64,
    /// Open model: requests per second offered on the schedule (`None`: a closed loop).
    pub offered_per_s: Option<f64>,
    /// Requests answered (not failed) per second, from the start to the last answer.
    pub achieved_per_s: f64,
    /// Decisions stored per second, from the first request sent to the last decision stored.
    pub decided_per_s: f64,
    /// Orders (units sold) per second over the same span: bounded by the stock, not a speed.
    pub orders_per_s: f64,
    /// Latency as the client saw it (to the decision; with `?wait` for the queue path); in the
    /// open model from when each request was due.
    pub latency: Latency,
    /// Open model: requests sent more than 10 ms after they were due (every slot in flight).
    pub sent_late: u64,
    pub outcomes: OutcomeCounts,
    pub orders: i64,
    pub stock_total: i64,
    /// Requests answered `sold_out` at the door, without reaching the broker (queue path).
    pub answered_at_door: u64,
    pub audit: Verdict,
    /// The items the measured run sold (their rows stay with `--keep`).
    pub items: Vec<i64>,
    /// `red-packet` only: what the packet paid out, from the database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packet: Option<Payout>,
    /// (ms, fraction) points of the latency CDF.
    pub cdf: Vec<(f64, f64)>,
    /// Per second since the start: answers and their latency.
    pub timeline: Vec<Second>,
    /// Soak mode only: one sample per window.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub soak: Vec<SoakSample>,
}

/// Outcomes by status as stored in the database, plus `error` for requests whose client got no
/// answer. In JSON an object keyed by status (`purchased`, …, `error`), without zero counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OutcomeCounts {
    #[serde(skip_serializing_if = "is_zero")]
    pub already_purchased: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub error: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub failed_retry: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub purchased: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub sold_out: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl OutcomeCounts {
    fn of_status(&mut self, status: Status) -> &mut u64 {
        match status {
            Status::Purchased => &mut self.purchased,
            Status::SoldOut => &mut self.sold_out,
            Status::AlreadyPurchased => &mut self.already_purchased,
            Status::FailedRetry => &mut self.failed_retry,
        }
    }

    /// Requests some path decided (every count but `error`).
    pub fn decided(&self) -> u64 {
        self.purchased + self.sold_out + self.already_purchased + self.failed_retry
    }
}

/// The audit's verdict over every item a path sold.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub clean: bool,
    /// Some item sold more units than it had (the audit's `oversold`).
    pub oversold: bool,
    /// Each as `item N: ` and the audit's sentence.
    pub violations: Vec<String>,
}

impl Verdict {
    fn of(audits: &[ItemAudit]) -> Verdict {
        let violations: Vec<String> = audits
            .iter()
            .flat_map(|a| {
                a.violations
                    .iter()
                    .map(|v| format!("item {}: {v}", a.item_id))
            })
            .collect();
        Verdict {
            clean: violations.is_empty(),
            oversold: audits.iter().any(ItemAudit::is_oversold),
            violations,
        }
    }
}

/// What the database says a path did with `items`, plus what its clients saw.
pub(super) async fn summarize(
    pool: &PgPool,
    path: BenchPath,
    spec: &ScenarioSpec,
    items: &[i64],
    recorder: &Recorder,
    elapsed: Duration,
) -> anyhow::Result<PathResult> {
    let mut outcomes = outcome_counts(pool, items).await?;
    outcomes.error = recorder.count(Answer::Error);
    let audits = audit::audit_items(pool, items, true).await?;
    let audited: HashSet<i64> = audits.iter().map(|a| a.item_id).collect();
    if let Some(item) = items.iter().find(|i| !audited.contains(i)) {
        anyhow::bail!("item {item} vanished");
    }
    let orders = audits.iter().map(|a| a.orders).sum();
    let packet = if spec.kind.is_red_packet() {
        payout::read(pool, items).await?
    } else {
        None
    };
    let answered = recorder.total() - outcomes.error;
    Ok(PathResult {
        path,
        requests: recorder.total(),
        elapsed_s: elapsed.as_secs_f64(),
        offered_per_s: None,
        achieved_per_s: stats::rate(answered, recorder.last_answer()),
        sent_late: recorder.late(),
        timeline: recorder.seconds(),
        decided_per_s: stats::rate(outcomes.decided(), elapsed),
        orders_per_s: stats::rate(orders as u64, elapsed),
        latency: recorder.latency(),
        outcomes,
        orders,
        stock_total: spec.stock_total(),
        answered_at_door: 0,
        audit: Verdict::of(&audits),
        items: items.to_vec(),
        packet,
        cdf: recorder.cdf(100),
        soak: Vec::new(),
    })
}

/// Counts outcomes by status for a set of items (what the database says was decided).
async fn outcome_counts(pool: &PgPool, items: &[i64]) -> anyhow::Result<OutcomeCounts> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM outcomes WHERE item_id = ANY($1::bigint[]) GROUP BY status",
    )
    .bind(items)
    .fetch_all(pool)
    .await?;
    let mut counts = OutcomeCounts::default();
    for (status, n) in rows {
        let status = Status::parse(&status)
            .ok_or_else(|| anyhow::anyhow!("unknown status {status:?} in outcomes"))?;
        *counts.of_status(status) += n as u64;
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_counts_read_in_json_as_a_map_of_statuses_without_zeros() {
        let mut counts = OutcomeCounts {
            error: 2,
            ..OutcomeCounts::default()
        };
        for (status, n) in [(Status::Purchased, 3), (Status::SoldOut, 5)] {
            *counts.of_status(status) += n;
        }
        assert_eq!(counts.decided(), 8);
        assert_eq!(
            serde_json::to_string(&counts).unwrap(),
            r#"{"error":2,"purchased":3,"sold_out":5}"#
        );
        // Each field is named as the status it counts.
        for status in [
            Status::Purchased,
            Status::SoldOut,
            Status::AlreadyPurchased,
            Status::FailedRetry,
        ] {
            let mut one = OutcomeCounts::default();
            *one.of_status(status) = 1;
            let json = serde_json::to_value(one).unwrap();
            assert_eq!(json[status.as_str()], 1, "{status:?}");
        }
    }
}

/// One path's steps in a sweep (see [`super::sweep`]), and where its knee is.
#[derive(Debug, Clone, Serialize)]
pub struct Curve {
    pub path: BenchPath,
    /// Each step, in rising offered rate.
    pub steps: Vec<Step>,
    /// The achieved rate of the highest step that met the bound (`None`: not even the first).
    pub max_per_s_within_slo: Option<f64>,
    /// Why the sweep stopped for this path.
    pub stopped_because: String,
}

/// One step: a run at an offered rate, and whether it met the bound.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub met_slo: bool,
    /// Why not, when it did not (`p99 812 ms > 500 ms`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missed_because: Option<String>,
    #[serde(flatten)]
    pub result: PathResult,
}

impl Curve {
    /// The step to show in the comparison's table: the highest that met the bound, or the first.
    pub fn representative(&self) -> Option<&PathResult> {
        let best = self.steps.iter().rev().find(|s| s.met_slo);
        best.or(self.steps.first()).map(|s| &s.result)
    }
}

/// One sampling window.
#[derive(Debug, Clone, Serialize)]
pub struct SoakSample {
    /// Seconds since the soak started, at the end of the window.
    pub t_s: f64,
    /// Resident memory of the bench process (API, consumer and load generator), MiB.
    pub rss_mib: f64,
    /// Requests answered per second in the window.
    pub answered_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}
