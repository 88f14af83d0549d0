//! How the bench shows its results: a progress bar while it runs, a table on the terminal,
//! `results.json` for machines, and a self-contained `report.html` (inline SVG, no CDN).

use std::fmt::Write as _;
use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::args::Via;
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
pub fn intro(spec: &ScenarioSpec, concurrency: usize, via: Via) -> String {
    format!(
        "seckill bench: {:?} scenario, {} requests per path from {} users, stock {} × {} item(s), \
         concurrency {}, via {:?}, seed {}",
        spec.kind,
        spec.requests,
        spec.users,
        spec.stock_per_item,
        spec.items,
        concurrency,
        via,
        spec.seed
    )
}

/// The line printed as each path finishes.
pub fn one_line(r: &PathResult) -> String {
    format!(
        "{:>12}: {:>8.0} decided/s, p99 {:>8.1} ms, {} orders of {} stock, audit {}",
        r.path,
        r.decided_per_s,
        r.latency.p99_ms,
        r.orders,
        r.stock_total,
        verdict(r)
    )
}

fn verdict(r: &PathResult) -> &'static str {
    match (r.audit.clean, r.audit.oversold) {
        (true, _) => "clean",
        (false, true) => "OVERSOLD",
        (false, false) => "VIOLATED",
    }
}

/// The terminal table: a row per path, the violations found, the ceilings, the comparisons.
pub fn table(results: &BenchResults) -> String {
    let mut out = String::new();
    path_rows(&mut out, &results.paths);
    for r in results.paths.iter().filter(|r| !r.audit.clean) {
        for v in r.audit.violations.iter().take(3) {
            let _ = writeln!(out, "  {}: {v}", r.path);
        }
    }
    ceiling_lines(&mut out, results);
    comparison_lines(&mut out, &results.paths);
    out
}

fn path_rows(out: &mut String, paths: &[PathResult]) {
    let _ = writeln!(
        out,
        "{:<12} {:>10} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8} {:>8} {:>8} {:>6}  audit",
        "path",
        "decided/s",
        "orders/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "purchased",
        "sold_out",
        "already",
        "retry",
        "error"
    );
    for r in paths {
        let _ = writeln!(
            out,
            "{:<12} {:>10.0} {:>9.0} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>9} {:>8} {:>8} {:>8} {:>6}  {}",
            r.path,
            r.decided_per_s,
            r.orders_per_s,
            r.latency.p50_ms,
            r.latency.p95_ms,
            r.latency.p99_ms,
            r.latency.max_ms,
            r.outcomes.purchased,
            r.outcomes.sold_out,
            r.outcomes.already_purchased,
            r.outcomes.failed_retry,
            r.outcomes.error,
            verdict(r)
        );
    }
}

fn find(paths: &[PathResult], path: BenchPath) -> Option<&PathResult> {
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

/// The queue path against itself without shedding, and against `pessimistic`.
fn comparison_lines(out: &mut String, paths: &[PathResult]) {
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

/// Writes `results.json` and `report.html` into `dir`.
pub fn write_all(results: &BenchResults, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_vec_pretty(results)?,
    )?;
    std::fs::write(dir.join("report.html"), html(results))?;
    Ok(())
}

const COLORS: &[&str] = &[
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
    "#1f78b4", "#b15928",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Horizontal bars, one per path.
fn bar_chart(title: &str, unit: &str, rows: &[(String, f64)]) -> String {
    let width = 720.0;
    let label_w = 110.0;
    let row_h = 24.0;
    let max = rows
        .iter()
        .map(|(_, v)| *v)
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let height = row_h * rows.len() as f64 + 40.0;
    let mut svg = format!(
        r#"<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img"><title>{}</title><text x="0" y="16" font-weight="bold">{}</text>"#,
        escape(title),
        escape(title)
    );
    for (i, (label, value)) in rows.iter().enumerate() {
        let y = 28.0 + i as f64 * row_h;
        let w = (width - label_w - 120.0) * value / max;
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text><rect x="{label_w}" y="{y}" width="{w:.1}" height="{}" fill="{}"/><text x="{}" y="{}">{value:.1} {}</text>"#,
            label_w - 6.0,
            y + 15.0,
            escape(label),
            row_h - 6.0,
            COLORS[i % COLORS.len()],
            label_w + w + 6.0,
            y + 15.0,
            escape(unit)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Latency CDF, log-scaled milliseconds on x.
fn cdf_chart(results: &BenchResults) -> String {
    let (w, h, left, bottom) = (720.0, 360.0, 50.0, 30.0);
    let all: Vec<f64> = results
        .paths
        .iter()
        .flat_map(|r| r.cdf.iter().map(|(ms, _)| ms.max(0.01)))
        .collect();
    let lo = all
        .iter()
        .cloned()
        .fold(f64::INFINITY, f64::min)
        .max(0.01)
        .log10()
        .floor();
    let hi = all
        .iter()
        .cloned()
        .fold(0.0_f64, f64::max)
        .max(1.0)
        .log10()
        .ceil();
    let x = |ms: f64| left + (w - left - 10.0) * (ms.max(0.01).log10() - lo) / (hi - lo).max(1.0);
    let y = |q: f64| (h - bottom) * (1.0 - q) + 10.0;
    let mut svg = format!(
        r#"<svg viewBox="0 0 {w} {}" width="{w}" height="{}" role="img"><title>Latency CDF</title>"#,
        h + 20.0,
        h + 20.0
    );
    for decade in lo as i32..=hi as i32 {
        let ms = 10f64.powi(decade);
        let _ = write!(
            svg,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="10" y2="{1}" stroke="#ddd"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3} ms</text>"##,
            x(ms),
            h - bottom + 10.0,
            h + 5.0,
            ms
        );
    }
    for q in [0.5, 0.9, 0.99] {
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{w}" y1="{0:.1}" y2="{0:.1}" stroke="#eee"/><text x="{1}" y="{0:.1}" text-anchor="end">p{2}</text>"##,
            y(q),
            left - 4.0,
            q * 100.0
        );
    }
    for (i, r) in results.paths.iter().enumerate() {
        let points: Vec<String> = r
            .cdf
            .iter()
            .map(|(ms, q)| format!("{:.1},{:.1}", x(*ms), y(*q)))
            .collect();
        let color = COLORS[i % COLORS.len()];
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/><text x="{}" y="{}" fill="{color}">{}</text>"#,
            points.join(" "),
            w - 100.0,
            20.0 + 14.0 * i as f64,
            escape(r.path.as_str())
        );
    }
    svg.push_str("</svg>");
    svg
}

fn html(results: &BenchResults) -> String {
    let throughput: Vec<(String, f64)> = results
        .paths
        .iter()
        .map(|r| (r.path.to_string(), r.decided_per_s))
        .collect();
    let p99: Vec<(String, f64)> = results
        .paths
        .iter()
        .map(|r| (r.path.to_string(), r.latency.p99_ms))
        .collect();
    let rows = html_rows(&results.paths);
    let s = &results.scenario;
    let e = &results.environment;
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>seckill bench</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em;max-width:1000px}}table{{border-collapse:collapse}}td,th{{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}}td:first-child,th:first-child{{text-align:left}}tr.bad td{{background:#fde0e0}}svg{{display:block;margin:1.5em 0;font-size:12px}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style></head><body>
<h1>seckill bench</h1>
<p>{:?} scenario: {} requests per path from {} users, stock {} × {} item(s), concurrency {}, via {:?}, seed {}.<br>
{} cores, {}, seckill {} ({}), PostgreSQL {}, RabbitMQ {}, {}. Started {}.</p>
<table><tr><th>path</th><th>decided/s</th><th>orders/s</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th><th>max ms</th><th>purchased</th><th>sold_out</th><th>already</th><th>failed_retry</th><th>error</th><th>audit</th></tr>{rows}</table>
{}{}{}
<h2>Summary</h2><pre>{}</pre>
</body></html>"#,
        s.kind,
        s.requests,
        s.users,
        s.stock_per_item,
        s.items,
        results.concurrency,
        results.via,
        s.seed,
        e.cores,
        e.os,
        e.seckill_version,
        e.git_revision,
        escape(&e.postgres_version),
        escape(&e.rabbitmq_version),
        escape(&e.redis_version),
        results.started_at,
        bar_chart(
            "Throughput: decisions per second (higher is better)",
            "/s",
            &throughput
        ),
        bar_chart("p99 latency in ms (lower is better)", "ms", &p99),
        cdf_chart(results),
        escape(&table(results)),
    )
}

/// The table's rows, one per path, red where the audit found a violation.
fn html_rows(paths: &[PathResult]) -> String {
    let mut rows = String::new();
    for r in paths {
        let _ = write!(
            rows,
            "<tr class=\"{}\"><td>{}</td><td>{:.0}</td><td>{:.0}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td></tr>",
            if r.audit.clean { "ok" } else { "bad" },
            escape(r.path.as_str()),
            r.decided_per_s,
            r.orders_per_s,
            r.latency.p50_ms,
            r.latency.p95_ms,
            r.latency.p99_ms,
            r.latency.max_ms,
            r.outcomes.purchased,
            r.outcomes.sold_out,
            r.outcomes.already_purchased,
            r.outcomes.failed_retry,
            r.outcomes.error,
            verdict(r),
            r.audit
                .violations
                .first()
                .map(|v| format!(": {}", escape(v)))
                .unwrap_or_default()
        );
    }
    rows
}
