//! `report.html`: the run on one page for a reader deciding how to sell a hot item — the
//! headline first, then the table (every column explained), the seeds' experiments' own figures
//! (`red-packet`: each path's payout and the histogram of its share sizes; `plenty`: what each
//! path sold when every request could buy) and the paths skipped, the latency–throughput curve of
//! every path (with `--sweep`), the second-by-second view where a stall shows, the latency
//! distribution, and what the run was measured on. Self-contained: inline SVG and CSS.

use std::fmt::Write as _;

use super::charts::{Axis, Histogram, Series, bars, color, escape, histogram, lines};
use super::experiments::{
    PACKET_COLUMNS, PACKET_HEADERS, PLENTY_HEADERS, bought_percent, failed_outright, packet_cells,
    packet_rows, plenty_cells,
};
use super::payout::BINS_PER_AVERAGE;
use super::report::{COLUMNS, TABLE_HEADERS, load_text, table, table_cells};
use super::scenario::ScenarioKind;
use super::summary::{BenchResults, PathResult};

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}\
table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}\
td:first-child,th:first-child{text-align:left;white-space:nowrap}tr.bad td{background:#fde0e0}\
.headline{font-size:18px;background:#eef6ee;border-left:6px solid #1b9e77;padding:.8em 1em;margin:1em 0}\
.headline.bad{background:#fdecec;border-color:#c00}svg{display:block;margin:1.5em 0;font-size:12px}\
pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}dt{font-weight:bold;margin-top:.3em}\
dd{margin-left:1.5em}.violation{color:#c00;margin:.2em 0}.swatch{display:inline-block;width:10px;height:10px;margin-right:5px}";

/// The whole page.
pub fn page(results: &BenchResults) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        r#"<h1>seckill bench</h1><div class="headline{}">{}</div>{}"#,
        if results.safe_paths_audit_clean() {
            ""
        } else {
            " bad"
        },
        escape(&results.headline),
        run_line(results)
    );
    body.push_str(&path_table(&results.paths));
    body.push_str(&skipped(results));
    body.push_str(&red_packet(results));
    body.push_str(&plenty(results));
    body.push_str(&curve(results));
    body.push_str(&comparison_bars(&results.paths));
    body.push_str(&timelines(&results.paths));
    body.push_str(&cdf(&results.paths));
    body.push_str(&columns());
    body.push_str(&environment(results));
    let _ = write!(
        body,
        "<h2>Terminal output</h2><pre>{}</pre>",
        escape(&table(results))
    );
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>seckill bench</title><style>{STYLE}</style></head><body>{body}</body></html>"#
    )
}

/// What ran: the scenario, the load, the exact command line.
fn run_line(results: &BenchResults) -> String {
    let s = &results.scenario;
    format!(
        "<p>{:?} scenario: {} requests from {} users for {} units × {} item(s), grown with each \
         run so the share sold stays the same; {}; via {:?}; seed {}. Started {}.</p>\
         <pre>{}</pre>",
        s.kind,
        s.requests,
        s.users,
        s.stock_per_item,
        s.items,
        escape(&load_of(results)),
        results.via,
        s.seed,
        escape(&results.started_at),
        escape(&results.command_line)
    )
}

/// How the clients sent, in words.
fn load_of(results: &BenchResults) -> String {
    if results.sweep.is_empty() {
        load_text(results.load)
    } else {
        format!(
            "open model at a rising rate, step by step, to each path's knee (p99 ≤ {:.0} ms)",
            results.slo_p99_ms
        )
    }
}

/// The table, a row per path, red where the audit found a violation.
fn path_table(paths: &[PathResult]) -> String {
    let mut rows = String::from("<table><tr><th>path</th>");
    for header in TABLE_HEADERS {
        let _ = write!(rows, "<th>{}</th>", escape(header));
    }
    rows.push_str("</tr>");
    for r in paths {
        let _ = write!(
            rows,
            r#"<tr class="{}"><td><span class="swatch" style="background:{}"></span>{}</td>"#,
            if r.audit.clean { "ok" } else { "bad" },
            color(r.path),
            escape(r.path.as_str()),
        );
        for cell in table_cells(r) {
            let _ = write!(rows, "<td>{}</td>", escape(&cell));
        }
        rows.push_str("</tr>");
    }
    rows.push_str("</table>");
    for r in paths.iter().filter(|r| !r.audit.clean) {
        for v in r.audit.violations.iter().take(3) {
            let _ = write!(
                rows,
                r#"<p class="violation">{}: {}</p>"#,
                escape(r.path.as_str()),
                escape(v)
            );
        }
    }
    rows
}

/// The paths the scenario did not run on, with why.
fn skipped(results: &BenchResults) -> String {
    if results.skipped.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "<h2>Paths skipped</h2><p>Selected, but the {:?} scenario cannot run on them:</p><ul>",
        results.scenario.kind
    );
    for s in &results.skipped {
        let _ = write!(
            out,
            "<li><b>{}</b>: {}</li>",
            escape(s.path.as_str()),
            escape(&s.reason)
        );
    }
    out.push_str("</ul>");
    out
}

/// A small table: a header row, then a row per path with its swatch.
fn small_table<'a>(
    headers: &[&str],
    rows: impl Iterator<Item = (&'a PathResult, Vec<String>)>,
) -> String {
    let mut table = String::from("<table><tr><th>path</th>");
    for header in headers {
        let _ = write!(table, "<th>{}</th>", escape(header));
    }
    table.push_str("</tr>");
    for (r, cells) in rows {
        let _ = write!(
            table,
            r#"<tr><td><span class="swatch" style="background:{}"></span>{}</td>"#,
            color(r.path),
            escape(r.path.as_str())
        );
        for cell in cells {
            let _ = write!(table, "<td>{}</td>", escape(&cell));
        }
        table.push_str("</tr>");
    }
    table.push_str("</table>");
    table
}

/// `red-packet`: each path's payout, then the histogram of its share sizes, all on one scale.
fn red_packet(results: &BenchResults) -> String {
    if results.scenario.kind != ScenarioKind::RedPacket {
        return String::new();
    }
    let rows = packet_rows(results).filter_map(|(_, r)| packet_cells(r).map(|c| (r, c.to_vec())));
    let mut out = format!(
        "<h2>Red packet payout</h2><p>One red packet per path, far more grabbers than shares; \
         each share drawn by the double-average rule (uniform from 1 to twice the amount left per \
         share left, less 1; the last share takes the rest). Read from the database after the run.</p>{}<dl>",
        small_table(&PACKET_HEADERS, rows)
    );
    for (name, meaning) in PACKET_COLUMNS {
        let _ = write!(out, "<dt>{}</dt><dd>{}</dd>", escape(name), escape(meaning));
    }
    out.push_str(
        "</dl><h3>Share sizes</h3><p>How many shares of each size a path paid, the size as a \
         multiple of the packet's average share (total ÷ shares), in bins of a tenth: every path \
         should show the same spread, about even from 0 to 2, since they all draw by the same \
         rule.</p>",
    );
    let bins_shown = packet_rows(results)
        .filter_map(|(_, r)| r.packet.as_ref().map(|p| p.histogram.len()))
        .max()
        .unwrap_or(0);
    for (path, r) in packet_rows(results) {
        let Some(p) = &r.packet else { continue };
        let title = format!(
            "{path}: {} shares paid of {}, {} of {} minor units (average share {:.1}), sum {}",
            p.shares_paid,
            p.shares,
            p.paid,
            p.total,
            p.average_share(),
            p.check()
        );
        out.push_str(&histogram(
            &title,
            "share size ÷ the packet's average share",
            "shares",
            &Histogram {
                path,
                counts: &p.histogram,
                bin_width: 1.0 / BINS_PER_AVERAGE as f64,
                bins_shown,
            },
            Some((1.0, "average share")),
        ));
    }
    out
}

/// `plenty`: what each path sold when every request could buy, and what it failed outright.
fn plenty(results: &BenchResults) -> String {
    if results.scenario.kind != ScenarioKind::Plenty {
        return String::new();
    }
    let rows = results.paths.iter().map(|r| (r, plenty_cells(r).to_vec()));
    let mut out = format!(
        "<h2>Every request could buy</h2><p>Stock and a user of its own for every request: a \
         path that sells less than all of them refused buyers it had stock for.</p>{}",
        small_table(&PLENTY_HEADERS, rows)
    );
    for r in results.paths.iter().filter(|r| r.outcomes.failed_retry > 0) {
        let _ = write!(out, "<p><b>{}</b></p>", escape(&failed_outright(r)));
    }
    let bought: Vec<_> = results
        .paths
        .iter()
        .map(|r| (r.path, bought_percent(r)))
        .collect();
    out.push_str(&bars(
        "Requests that bought, % (every one could have)",
        "%",
        &bought,
    ));
    out
}

/// What every column means.
fn columns() -> String {
    let mut dl = String::from(
        "<h2>What the columns mean</h2><details open><summary>every column of the table</summary><dl>",
    );
    for (name, meaning) in COLUMNS {
        let _ = write!(dl, "<dt>{}</dt><dd>{}</dd>", escape(name), escape(meaning));
    }
    dl.push_str("</dl></details>");
    dl
}

/// Throughput against p99, one line per swept path: where each bends up is its knee.
fn curve(results: &BenchResults) -> String {
    if results.sweep.is_empty() {
        return String::new();
    }
    let series: Vec<Series> = results
        .sweep
        .iter()
        .map(|c| Series {
            path: c.path,
            points: c
                .steps
                .iter()
                .map(|s| (s.result.achieved_per_s, s.result.latency.p99_ms))
                .collect(),
            dots: true,
        })
        .collect();
    let bound = format!("p99 bound {:.0} ms", results.slo_p99_ms);
    format!(
        "<h2>Latency against throughput</h2><p>Each dot is one step of the sweep: the open \
         model at an offered rate, the rate achieved (x) and the p99 it cost (y). A path is \
         good up to where its line leaves the bound.</p>{}",
        lines(
            "p99 latency (ms) against achieved requests/s, every path",
            Axis {
                label: "achieved requests/s (log)",
                log: true
            },
            Axis {
                label: "p99 ms (log)",
                log: true
            },
            &series,
            Some((results.slo_p99_ms, &bound)),
        )
    )
}

/// Decisions per second and p99 as bars.
fn comparison_bars(paths: &[PathResult]) -> String {
    let decided: Vec<_> = paths.iter().map(|r| (r.path, r.decided_per_s)).collect();
    let p99: Vec<_> = paths.iter().map(|r| (r.path, r.latency.p99_ms)).collect();
    format!(
        "<h2>Side by side</h2>{}{}",
        bars("Decisions per second (higher is better)", "/s", &decided),
        bars("p99 latency in ms (lower is better)", "ms", &p99)
    )
}

/// Answers per second and p99, second by second, each path from its own start.
fn timelines(paths: &[PathResult]) -> String {
    // A last second covering under half a second says little (a few stragglers, scaled up).
    let series = |value: fn(&super::timeline::Second) -> f64| -> Vec<Series> {
        paths
            .iter()
            .map(|r| Series {
                path: r.path,
                points: r
                    .timeline
                    .iter()
                    .filter(|s| s.covered_s >= 0.5)
                    .map(|s| (s.t_s as f64, value(s)))
                    .collect(),
                dots: false,
            })
            .collect()
    };
    format!(
        "<h2>Second by second</h2><p>Each path's measured run from its first request: a dip \
         in the rate with a rise in p99 is a stall (a lock convoy, a broker pause, a batch \
         redone). A run's last second counts for the part of it the run covered, and is left out \
         under half a second.</p>{}{}",
        lines(
            "Requests answered per second",
            Axis {
                label: "seconds since the path's run started",
                log: false
            },
            Axis {
                label: "answered/s (log)",
                log: true
            },
            &series(|s| s.answered as f64 / s.covered_s),
            None,
        ),
        lines(
            "p99 latency of the requests answered in each second",
            Axis {
                label: "seconds since the path's run started",
                log: false
            },
            Axis {
                label: "p99 ms (log)",
                log: true
            },
            &series(|s| s.p99_ms),
            None,
        )
    )
}

/// The latency distribution of every path.
fn cdf(paths: &[PathResult]) -> String {
    let series: Vec<Series> = paths
        .iter()
        .map(|r| Series {
            path: r.path,
            points: r.cdf.iter().map(|(ms, q)| (ms.max(0.01), *q)).collect(),
            dots: false,
        })
        .collect();
    format!(
        "<h2>Latency distribution</h2>{}",
        lines(
            "Share of requests answered within a latency (CDF)",
            Axis {
                label: "latency ms (log)",
                log: true
            },
            Axis {
                label: "fraction of requests",
                log: false
            },
            &series,
            None,
        )
    )
}

/// The machine, the versions and the settings.
fn environment(results: &BenchResults) -> String {
    let e = &results.environment;
    let s = &e.settings;
    let rows: [(&str, String); 17] = [
        ("load", load_of(results)),
        ("cores", e.cores.to_string()),
        ("memory", format!("{} MiB", e.memory_mib)),
        ("os", e.os.clone()),
        (
            "seckill",
            format!("{} ({})", e.seckill_version, e.git_revision),
        ),
        ("PostgreSQL", e.postgres_version.clone()),
        ("RabbitMQ", e.rabbitmq_version.clone()),
        ("Redis", e.redis_version.clone()),
        ("synchronous_commit", s.synchronous_commit.clone()),
        (
            "PostgreSQL max_connections / shared_buffers",
            format!(
                "{} / {}",
                s.postgres_max_connections, s.postgres_shared_buffers
            ),
        ),
        ("partitions", s.partitions.to_string()),
        ("queue type", s.queue_type.clone()),
        (
            "consumer batch (max requests, linger ms)",
            format!(
                "{}, {}",
                s.consumer_batch_size_max, s.consumer_batch_linger_ms
            ),
        ),
        ("consumer prefetch", s.consumer_prefetch.to_string()),
        ("database pool (per pool)", s.db_pool_max.to_string()),
        ("optimistic retries", s.optimistic_retries_max.to_string()),
        ("closed-loop clients", results.concurrency.to_string()),
    ];
    let mut table = String::from("<h2>Measured on</h2><table>");
    for (name, value) in rows {
        let _ = write!(
            table,
            "<tr><td>{}</td><td>{}</td></tr>",
            escape(name),
            escape(&value)
        );
    }
    table.push_str("</table>");
    table
}
