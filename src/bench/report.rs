//! How the bench shows its results on the terminal: a progress bar while it runs, then the
//! headline and a table; and where it writes `results.json` (for machines and `bench
//! compare`) and `report.html` (see [`super::html`]).

use std::fmt::Write as _;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::args::{Load, Via};
use super::row::BenchPath;
use super::scenario::ScenarioSpec;
use super::summary::{BenchResults, PathResult};

/// A bar for one path: requests answered, current rate. Hidden when stderr is not a terminal.
pub fn progress_bar(path: BenchPath, total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {per_sec:>12} {elapsed}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(path.to_string());
    bar
}

/// The line that opens a run: what it sends, and how.
pub fn intro(spec: &ScenarioSpec, load: &str, length: &str, via: Via) -> String {
    let packet = spec.packet_total.map_or_else(String::new, |total| {
        format!(
            " (a red packet of {total} minor units in {} shares)",
            spec.stock_per_item
        )
    });
    format!(
        "seckill bench: {:?} scenario ({} requests from {} users for stock {} × {} item(s){packet}, \
         grown with the run), {length} per path, {load}, via {:?}, seed {}",
        spec.kind, spec.requests, spec.users, spec.stock_per_item, spec.items, via, spec.seed
    )
}

/// How the clients send, in words.
pub fn load_text(load: Load) -> String {
    match load {
        Load::Closed { concurrency } => format!("closed loop of {concurrency} clients"),
        Load::Open {
            rate_per_s,
            in_flight_max,
        } => {
            format!("open model at {rate_per_s:.0} requests/s (at most {in_flight_max} in flight)")
        }
    }
}

/// The line printed as each path finishes.
pub fn one_line(r: &PathResult) -> String {
    let packet = r.packet.as_ref().map_or_else(String::new, |p| {
        format!(
            ", paid {} of {} in {} shares (sum {})",
            p.paid,
            p.total,
            p.shares_paid,
            p.check()
        )
    });
    format!(
        "{:>15}: {:>8.0} decided/s, p99 {:>8.1} ms, {} requests in {:.1} s, {} orders of {} \
         stock, {} failed_retry, audit {}{packet}",
        r.path,
        r.decided_per_s,
        r.latency.p99_ms,
        r.requests,
        r.elapsed_s,
        r.orders,
        r.stock_total,
        r.outcomes.failed_retry,
        verdict(r)
    )
}

pub(super) fn verdict(r: &PathResult) -> &'static str {
    match (r.audit.clean, r.audit.oversold) {
        (true, _) => "clean",
        (false, true) => "OVERSOLD",
        (false, false) => "VIOLATED",
    }
}

/// What each column of the table means (the report shows the same list; so does
/// `docs/BENCHMARKS.md`).
pub const COLUMNS: &[(&str, &str)] = &[
    (
        "path",
        "the purchase path (queue-no-shed: the queue path without sold-out answers at the door; naive is unsafe on purpose)",
    ),
    (
        "offered/s",
        "open model (--rate, --sweep): requests per second sent on the schedule; '-' for a closed loop",
    ),
    (
        "achieved/s",
        "requests answered (not failed) per second, from the first request to the last answer",
    ),
    (
        "decided/s",
        "decisions the database holds per second, from the first request to the last decision stored (the audit counts these)",
    ),
    (
        "p50 … max ms",
        "latency the client saw, from when the request was due (open model) or sent (closed loop) to its decision; HDR histogram, 3 significant digits",
    ),
    (
        "purchased",
        "requests that bought (the stock, for a safe path: the stock grows with the run)",
    ),
    ("sold_out", "requests told no stock was left"),
    (
        "already",
        "requests told the user had already bought (already_purchased)",
    ),
    (
        "retry",
        "requests the optimistic path gave up on after its retries (failed_retry): nothing sold, stock may remain",
    ),
    (
        "error",
        "requests that got no usable answer (a 503, a refused connection, a timeout)",
    ),
    (
        "late",
        "open model: requests sent more than 10 ms after they were due, every in-flight slot taken",
    ),
    (
        "audit",
        "the invariants checked from the database: clean, OVERSOLD (more units sold than stock) or VIOLATED",
    ),
];

/// The terminal output: the headline, a row per path, the violations found, the ceilings,
/// the comparisons.
pub fn table(results: &BenchResults) -> String {
    let mut out = format!("{}\n\n", results.headline);
    path_rows(&mut out, &results.paths);
    for r in results.paths.iter().filter(|r| !r.audit.clean) {
        for v in r.audit.violations.iter().take(3) {
            let _ = writeln!(out, "  {}: {v}", r.path);
        }
    }
    ceiling_lines(&mut out, results);
    sweep_lines(&mut out, results);
    comparison_lines(&mut out, &results.paths);
    out.push_str(&super::experiments::text(results));
    out
}

/// The table's columns after `path`, in order: the terminal and the HTML page show the same.
pub(super) const TABLE_HEADERS: [&str; 14] = [
    "offered/s",
    "achieved/s",
    "decided/s",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "max ms",
    "purchased",
    "sold_out",
    "already",
    "retry",
    "error",
    "late",
    "audit",
];

/// Terminal widths of the path and of the columns before `audit`.
const PATH_WIDTH: usize = 15;
const WIDTHS: [usize; 13] = [9, 10, 9, 7, 8, 8, 8, 9, 8, 7, 6, 5, 6];

/// A row's cells after its path, formatted, in the order of [`TABLE_HEADERS`].
pub(super) fn table_cells(r: &PathResult) -> [String; 14] {
    let offered = r
        .offered_per_s
        .map_or_else(|| "-".into(), |o| format!("{o:.0}"));
    [
        offered,
        format!("{:.0}", r.achieved_per_s),
        format!("{:.0}", r.decided_per_s),
        format!("{:.1}", r.latency.p50_ms),
        format!("{:.1}", r.latency.p99_ms),
        format!("{:.1}", r.latency.p99_9_ms),
        format!("{:.1}", r.latency.max_ms),
        r.outcomes.purchased.to_string(),
        r.outcomes.sold_out.to_string(),
        r.outcomes.already_purchased.to_string(),
        r.outcomes.failed_retry.to_string(),
        r.outcomes.error.to_string(),
        r.sent_late.to_string(),
        verdict(r).to_string(),
    ]
}

fn path_rows(out: &mut String, paths: &[PathResult]) {
    text_row(out, "path", &TABLE_HEADERS.map(String::from));
    for r in paths {
        text_row(out, r.path.as_str(), &table_cells(r));
    }
}

/// One line of the terminal table: the path, the columns right-aligned, then the audit.
fn text_row(out: &mut String, path: &str, cells: &[String; 14]) {
    let _ = write!(out, "{path:<PATH_WIDTH$}");
    for (cell, width) in cells.iter().zip(WIDTHS) {
        let _ = write!(out, " {cell:>width$}");
    }
    let _ = writeln!(out, "  {}", cells[13]);
}

pub(super) fn find(paths: &[PathResult], path: BenchPath) -> Option<&PathResult> {
    paths.iter().find(|r| r.path == path)
}

/// Each ceiling measured, with how close the queue path came to it.
fn ceiling_lines(out: &mut String, results: &BenchResults) {
    let c = &results.ceilings;
    // The ceilings are of the broker and the database, so they are compared with the queue path
    // as it runs when every request goes through both (answers at the door go through neither).
    let through_broker = find(&results.paths, BenchPath::QueueNoShed)
        .or_else(|| find(&results.paths, BenchPath::QUEUE));
    let fraction = |ceiling: Option<f64>| match (through_broker, ceiling) {
        (Some(q), Some(c)) if c > 0.0 => {
            format!(" ({} at {:.0}%)", q.path, 100.0 * q.decided_per_s / c)
        }
        _ => String::new(),
    };
    if let Some(b) = c.broker_msgs_per_s {
        let _ = writeln!(
            out,
            "ceiling, broker alone:      {b:>8.0} msg/s{}",
            fraction(c.broker_msgs_per_s)
        );
    }
    if let (Some(r), Some(m), Some(n)) = (
        c.broker_batched_requests_per_s,
        c.broker_batched_msgs_per_s,
        c.broker_batch_size,
    ) {
        let _ = writeln!(
            out,
            "ceiling, broker batched:    {r:>8.0} requests/s ({m:.0} msg/s of {n} requests){}",
            fraction(c.broker_batched_requests_per_s)
        );
    }
    if let Some(h) = c.http_requests_per_s {
        let _ = writeln!(
            out,
            "ceiling, HTTP alone:        {h:>8.0} requests/s (the bench's client, a no-work endpoint){}",
            fraction(c.http_requests_per_s)
        );
    }
    if let Some(b) = c.broker_drain_msgs_per_s {
        let _ = writeln!(
            out,
            "ceiling, broker draining:   {b:>8.0} msg/s (consume + ack of a pre-filled queue)"
        );
    }
    if let Some(d) = c.database_decisions_per_s {
        let _ = writeln!(
            out,
            "ceiling, database alone:    {d:>8.0} decisions/s{}",
            fraction(c.database_decisions_per_s)
        );
    }
    if let Some(p) = c.consumer_prefilled_per_s {
        let _ = writeln!(out, "consumer, pre-filled queue: {p:>8.0} decisions/s");
    }
}

/// Each swept path's highest rate within the bound, and where it stopped.
fn sweep_lines(out: &mut String, results: &BenchResults) {
    for c in &results.sweep {
        let _ = writeln!(
            out,
            "sweep {:<15} max within p99 ≤ {:.0} ms: {:>8}  ({} steps; stopped: {})",
            c.path.as_str(),
            results.slo_p99_ms,
            c.max_per_s_within_slo
                .map_or_else(|| "none".to_string(), |r| format!("{r:.0}/s")),
            c.steps.len(),
            c.stopped_because
        );
    }
}

/// The queue path against itself without shedding, and against `pessimistic` — in a closed
/// loop only: offered a rate, every path that keeps up decides just that rate.
fn comparison_lines(out: &mut String, paths: &[PathResult]) {
    if paths.iter().any(|r| r.offered_per_s.is_some()) {
        return;
    }
    let queue = find(paths, BenchPath::QUEUE);
    if let (Some(q), Some(u)) = (queue, find(paths, BenchPath::QueueNoShed))
        && u.decided_per_s > 0.0
    {
        let _ = writeln!(
            out,
            "sold-out shedding: {} of {} requests answered at the door; {:.1}× the decisions/s \
             of {} ({:.0} vs {:.0}), p99 {:.1} ms vs {:.1} ms",
            q.answered_at_door,
            q.requests,
            q.decided_per_s / u.decided_per_s,
            u.path,
            q.decided_per_s,
            u.decided_per_s,
            q.latency.p99_ms,
            u.latency.p99_ms
        );
    }
    if let (Some(b), Some(u)) = (
        find(paths, BenchPath::QueueNoShed),
        find(paths, BenchPath::QueueUnbatched),
    ) && u.decided_per_s > 0.0
    {
        let _ = writeln!(
            out,
            "batching on the wire: {:.1}× the decisions/s of {} ({:.0} vs {:.0}), p99 {:.1} ms vs {:.1} ms",
            b.decided_per_s / u.decided_per_s,
            u.path,
            b.decided_per_s,
            u.decided_per_s,
            b.latency.p99_ms,
            u.latency.p99_ms
        );
    }
    if let (Some(q), Some(p)) = (
        queue,
        find(paths, BenchPath::Path(crate::sale::PathName::Pessimistic)),
    ) && p.decided_per_s > 0.0
    {
        let _ = writeln!(
            out,
            "queue vs pessimistic: {:.1}× the decisions/s, p99 {:.1} ms vs {:.1} ms",
            q.decided_per_s / p.decided_per_s,
            q.latency.p99_ms,
            p.latency.p99_ms
        );
    }
}
