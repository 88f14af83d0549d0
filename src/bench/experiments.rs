//! The figures of the seeds' own experiments, beside the comparison's table: for `red-packet`
//! (seed 000) what each path paid out — shares paid, the failed retries, whether the shares sum
//! exactly to the packet's total and none is zero — and for `plenty` (seed 001) how many of the
//! requests each path sold when every one of them could have bought, and how many it failed
//! outright (`failed_retry`). The terminal and `report.html` take their headers and cells from
//! here, so the two show the same; and the paths a scenario skipped, with why.

use std::fmt::Write as _;

use super::eligible::Skipped;
use super::row::BenchPath;
use super::scenario::ScenarioKind;
use super::summary::{BenchResults, PathResult};

/// The red packet table's columns after `path`.
pub const PACKET_HEADERS: [&str; 9] = [
    "grabs/s",
    "shares paid",
    "of",
    "retry",
    "paid",
    "of total",
    "smallest",
    "largest",
    "sum check",
];

/// What each red packet column means (the report lists them).
pub const PACKET_COLUMNS: &[(&str, &str)] = &[
    (
        "grabs/s",
        "grabs decided per second (every grab, whether it got a share or not), as decided/s",
    ),
    (
        "shares paid / of",
        "orders on the packet, from the database, against the shares it was cut into",
    ),
    (
        "retry",
        "grabs the path gave up on after its retries (failed_retry): no share, although shares may be left",
    ),
    (
        "paid / of total",
        "the sum of the shares paid, in minor units (cents), against the packet's total",
    ),
    (
        "smallest / largest",
        "the smallest and the largest share paid, in minor units",
    ),
    (
        "sum check",
        "exact: paid + what the packet still holds = its total (= its total with every share taken) and no share is zero; else WRONG SUM or ZERO SHARE",
    ),
];

/// A red packet row's cells after its path (`None` if the row paid out no packet).
pub fn packet_cells(r: &PathResult) -> Option<[String; 9]> {
    let p = r.packet.as_ref()?;
    Some([
        format!("{:.0}", r.decided_per_s),
        p.shares_paid.to_string(),
        p.shares.to_string(),
        r.outcomes.failed_retry.to_string(),
        p.paid.to_string(),
        p.total.to_string(),
        p.smallest.to_string(),
        p.largest.to_string(),
        p.check().to_string(),
    ])
}

/// The plenty table's columns after `path`.
pub const PLENTY_HEADERS: [&str; 8] = [
    "decided/s",
    "p50 ms",
    "p99 ms",
    "requests",
    "bought",
    "bought %",
    "error",
    "failed_retry",
];

/// A plenty row's cells after its path: what it sold, and the two ways a request that could
/// have bought did not (no usable answer; given up on).
pub fn plenty_cells(r: &PathResult) -> [String; 8] {
    [
        format!("{:.0}", r.decided_per_s),
        format!("{:.1}", r.latency.p50_ms),
        format!("{:.1}", r.latency.p99_ms),
        r.requests.to_string(),
        r.outcomes.purchased.to_string(),
        format!("{:.1}", bought_percent(r)),
        r.outcomes.error.to_string(),
        r.outcomes.failed_retry.to_string(),
    ]
}

/// The share of a row's requests that bought, in percent.
pub fn bought_percent(r: &PathResult) -> f64 {
    100.0 * r.outcomes.purchased as f64 / r.requests.max(1) as f64
}

/// The experiment's table for the terminal, with a sentence on what it shows (empty for the
/// other scenarios).
pub fn text(results: &BenchResults) -> String {
    let mut out = String::new();
    match results.scenario.kind {
        ScenarioKind::RedPacket => {
            let _ = writeln!(out, "\nred packet payout, from the database:");
            text_row(&mut out, "path", &PACKET_HEADERS.map(String::from));
            for r in &results.paths {
                if let Some(cells) = packet_cells(r) {
                    text_row(&mut out, r.path.as_str(), &cells);
                }
            }
        }
        ScenarioKind::Plenty => {
            let _ = writeln!(
                out,
                "\nplenty: stock and a user of its own for every request, so every one could buy:"
            );
            text_row(&mut out, "path", &PLENTY_HEADERS.map(String::from));
            for r in &results.paths {
                text_row(&mut out, r.path.as_str(), &plenty_cells(r));
            }
            for r in results.paths.iter().filter(|r| r.outcomes.failed_retry > 0) {
                let _ = writeln!(out, "{}", failed_outright(r));
            }
        }
        _ => {}
    }
    for line in skipped_lines(&results.skipped) {
        let _ = writeln!(out, "{line}");
    }
    out
}

/// "optimistic failed N of M requests outright (failed_retry) …".
pub fn failed_outright(r: &PathResult) -> String {
    format!(
        "{} failed {} of {} requests outright (failed_retry) with stock left for all of them: \
         {} bought ({:.1}%)",
        r.path,
        r.outcomes.failed_retry,
        r.requests,
        r.outcomes.purchased,
        bought_percent(r)
    )
}

/// One line per skipped path.
pub fn skipped_lines(skipped: &[Skipped]) -> Vec<String> {
    skipped
        .iter()
        .map(|s| format!("skipped {}: {}", s.path, s.reason))
        .collect()
}

/// The red packet rows, for the report's chart.
pub fn packet_rows(results: &BenchResults) -> impl Iterator<Item = (BenchPath, &PathResult)> {
    results
        .paths
        .iter()
        .filter(|r| r.packet.is_some())
        .map(|r| (r.path, r))
}

/// One terminal line: the path, then the cells right-aligned to their header's width.
fn text_row(out: &mut String, path: &str, cells: &[String]) {
    let _ = write!(out, "{path:<15}");
    for cell in cells {
        let _ = write!(out, " {cell:>12}");
    }
    out.push('\n');
}
