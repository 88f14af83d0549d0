//! The run's answer in one sentence, derived from its figures: how fast the queue path went,
//! how many times the best lock-based path that is, how `redis-stream` (which answers before it
//! writes) compares, whether every safe path's audit was clean, and what the unsafe path did. It heads the terminal output and the report.

use super::row::BenchPath;
use super::scenario::ScenarioKind;
use super::summary::{BenchResults, PathResult};

/// The headline of a run.
pub fn of(results: &BenchResults) -> String {
    let mut parts = Vec::new();
    if let Some(speed) = speed(results) {
        parts.push(speed);
    }
    if let Some(stream) = answered_before_written(results) {
        parts.push(stream);
    }
    parts.push(audits(&results.paths));
    if let Some(packets) = payouts(&results.paths) {
        parts.push(packets);
    }
    if results.scenario.kind == ScenarioKind::Plenty
        && let Some(failed) = failed_outright(&results.paths)
    {
        parts.push(failed);
    }
    if let Some(naive) = results.paths.iter().find(|r| r.path == BenchPath::NAIVE) {
        parts.push(unsafe_path(naive));
    }
    parts.join("; ") + "."
}

/// The rate a row is ranked by: with `--sweep`, its highest rate within the bound; else the
/// decisions per second it reached.
fn rate(results: &BenchResults, path: BenchPath) -> Option<f64> {
    if results.sweep.is_empty() {
        results
            .paths
            .iter()
            .find(|r| r.path == path)
            .map(|r| r.decided_per_s)
    } else {
        results
            .sweep
            .iter()
            .find(|c| c.path == path)
            .and_then(|c| c.max_per_s_within_slo)
    }
}

/// The lock-based paths (every path that decides in the request), the unsafe one aside, and
/// `redis-stream` too: it answers before anything is written, so it is compared on its own line.
fn is_lock_path(path: BenchPath) -> bool {
    !path.is_queue() && path != BenchPath::NAIVE && path != REDIS_STREAM
}

const REDIS_STREAM: BenchPath = BenchPath::Path(crate::sale::PathName::RedisStream);

/// "redis-stream (answered before it is written) N/s, p99 M ms, the queue path K× it".
fn answered_before_written(results: &BenchResults) -> Option<String> {
    let stream = results.paths.iter().find(|r| r.path == REDIS_STREAM)?;
    let stream_rate = rate(results, REDIS_STREAM)?;
    let mut part = format!(
        "redis-stream (answered before it is written) {stream_rate:.0}/s, p99 {:.0} ms",
        stream.latency.p99_ms
    );
    if let Some(q) = rate(results, BenchPath::QUEUE)
        && stream_rate > 0.0
    {
        part += &format!(", the queue path {:.1}× it", q / stream_rate);
    }
    Some(part)
}

/// "queue sustained N/s at p99 ≤ B ms, K× the best lock-based path (name, M/s)".
fn speed(results: &BenchResults) -> Option<String> {
    let queue = results.paths.iter().find(|r| r.path == BenchPath::QUEUE)?;
    let queue_rate = rate(results, BenchPath::QUEUE);
    let best_lock = results
        .paths
        .iter()
        .filter(|r| is_lock_path(r.path))
        .filter_map(|r| rate(results, r.path).map(|v| (r, v)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let what = if results.sweep.is_empty() {
        match queue_rate {
            Some(q) => format!(
                "the queue path decided {q:.0} requests/s (p99 {:.0} ms)",
                queue.latency.p99_ms
            ),
            None => return None,
        }
    } else {
        match queue_rate {
            Some(q) => format!(
                "at p99 ≤ {:.0} ms the queue path sustained {q:.0} requests/s",
                results.slo_p99_ms
            ),
            None => format!(
                "the queue path met p99 ≤ {:.0} ms at no rate tried",
                results.slo_p99_ms
            ),
        }
    };
    Some(match (queue_rate, best_lock) {
        (Some(q), Some((lock, l))) if l > 0.0 => format!(
            "{what}, {:.1}× the best lock-based path ({}, {l:.0}/s{})",
            q / l,
            lock.path,
            if results.sweep.is_empty() {
                format!(", p99 {:.0} ms", lock.latency.p99_ms)
            } else {
                String::new()
            }
        ),
        _ => what,
    })
}

/// "every safe path's audit clean", or which failed.
fn audits(paths: &[PathResult]) -> String {
    let failed: Vec<&str> = paths
        .iter()
        .filter(|r| r.path != BenchPath::NAIVE && !r.audit.clean)
        .map(|r| r.path.as_str())
        .collect();
    if failed.is_empty() {
        "every safe path's audit clean".into()
    } else {
        format!("AUDIT FAILED for {}", failed.join(", "))
    }
}

/// What the deliberately unsafe path did.
fn unsafe_path(naive: &PathResult) -> String {
    let over = naive.orders - naive.stock_total;
    if naive.audit.oversold && over > 0 {
        format!(
            "naive (unsafe) oversold by {over} units ({} orders for {})",
            naive.orders, naive.stock_total
        )
    } else if naive.audit.clean {
        "naive (unsafe) happened not to oversell this time".into()
    } else {
        "naive (unsafe) broke the audit".into()
    }
}

/// "every red packet paid out exactly", or which path's did not (`None`: no red packet ran).
fn payouts(paths: &[PathResult]) -> Option<String> {
    let paid: Vec<_> = paths
        .iter()
        .filter_map(|r| r.packet.as_ref().map(|p| (r.path, p)))
        .collect();
    if paid.is_empty() {
        return None;
    }
    let wrong: Vec<&str> = paid
        .iter()
        .filter(|(_, p)| p.check() != "exact")
        .map(|(path, _)| path.as_str())
        .collect();
    Some(if wrong.is_empty() {
        "every red packet's shares sum exactly to what it paid out, none zero".into()
    } else {
        format!("RED PACKET PAYOUT WRONG for {}", wrong.join(", "))
    })
}

/// "with stock for every request, optimistic sold only N of M (K failed_retry)" for the path
/// that failed the most outright (`None`: none did).
fn failed_outright(paths: &[PathResult]) -> Option<String> {
    let worst = paths
        .iter()
        .filter(|r| r.outcomes.failed_retry > 0)
        .max_by_key(|r| r.outcomes.failed_retry)?;
    Some(format!(
        "with stock for every request, {} sold only {} of {} ({} failed_retry)",
        worst.path, worst.outcomes.purchased, worst.requests, worst.outcomes.failed_retry
    ))
}
