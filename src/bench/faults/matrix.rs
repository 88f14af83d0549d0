//! What `seckill bench --faults` leaves: `results.json` ([`FaultResults`]), the matrix in the
//! terminal (path rows, fault columns, each cell `clean` or its counts, then how long each path
//! refused), and `report.html` with the same matrix coloured and each unclean cell's details.

use std::fmt::Write as _;

use serde::Serialize;

use super::fault::FaultKind;
use super::verdict::CellVerdict;
use crate::bench::charts::escape;

/// Bumped when the layout of results.json changes.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct FaultResults {
    pub format_version: u32,
    /// Always "faults": tells this results.json from a comparison's.
    pub mode: &'static str,
    pub started_at: String,
    pub command_line: String,
    pub rate_per_s: u32,
    pub load_secs: u64,
    pub fault_at_secs: f64,
    pub downtime_secs: u64,
    pub stock: i64,
    pub users: usize,
    pub paths: Vec<&'static str>,
    pub faults: Vec<FaultKind>,
    pub cells: Vec<Cell>,
}

/// One path under one fault.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub path: &'static str,
    pub fault: FaultKind,
    pub clean: bool,
    /// The cell as the matrix prints it.
    pub text: String,
    /// The run could not be carried out (a process would not start, a service would not
    /// come back): no verdict.
    pub error: Option<String>,
    pub verdict: CellVerdict,
}

impl FaultResults {
    /// Whether every cell of the queue path is clean: the command's exit status.
    pub fn queue_clean(&self) -> bool {
        self.cells
            .iter()
            .filter(|c| c.path == "queue")
            .all(|c| c.clean)
    }

    fn cell(&self, path: &str, fault: FaultKind) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.path == path && c.fault == fault)
    }
}

/// The terminal's matrices.
pub fn terminal(results: &FaultResults) -> String {
    let mut out = String::new();
    let width = |f: FaultKind| {
        results
            .paths
            .iter()
            .filter_map(|p| results.cell(p, f))
            .map(|c| c.text.chars().count())
            .chain([f.as_str().len()])
            .max()
            .unwrap_or(8)
    };
    let name_width = results
        .paths
        .iter()
        .map(|p| p.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let header = |out: &mut String, title: &str| {
        let _ = writeln!(out, "{title}");
        let _ = write!(out, "{:name_width$}", "path");
        for f in &results.faults {
            let _ = write!(out, "  {:w$}", f.as_str(), w = width(*f));
        }
        out.push('\n');
    };
    let mut table = |title: &str, text: &dyn Fn(Option<&Cell>) -> String| {
        if !out.is_empty() {
            out.push('\n');
        }
        header(&mut out, title);
        for path in &results.paths {
            let _ = write!(out, "{path:name_width$}");
            for f in &results.faults {
                let _ = write!(out, "  {:w$}", text(results.cell(path, *f)), w = width(*f));
            }
            out.push('\n');
        }
    };
    table(
        "verdict: clean, or what was lost, sold twice or oversold",
        &|c| c.map_or("-".to_owned(), |c| c.text.clone()),
    );
    table(
        "refused: seconds with a 503, a failed connection or a 5xx (5xx count)",
        &|c| c.map_or("-".to_owned(), refusal_text),
    );
    let _ = write!(
        out,
        "\n{} request(s) per cell at {}/s for {} s, {} units for {} users; each fault at {:.1} s, \
         its service down (or its process dead) for {} s.\n",
        results.cells.first().map_or(0, |c| c.verdict.requests),
        results.rate_per_s,
        results.load_secs,
        results.stock,
        results.users,
        results.fault_at_secs,
        results.downtime_secs
    );
    let _ = writeln!(
        out,
        "queue path: {}",
        if results.queue_clean() {
            "clean under every fault"
        } else {
            "NOT CLEAN (see above)"
        }
    );
    out
}

fn refusal_text(c: &Cell) -> String {
    if c.error.is_some() {
        return "error".into();
    }
    let v = &c.verdict;
    if v.server_errors > 0 {
        format!("{:.1} s ({} 5xx)", v.refused_secs, v.server_errors)
    } else {
        format!("{:.1} s", v.refused_secs)
    }
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:2em;max-width:1300px;color:#222}\
table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{padding:4px 8px;border:1px solid #ddd;text-align:center}\
td:first-child{text-align:left;font-weight:bold}td.clean{background:#e3f4e3}td.bad{background:#fbd5d5}\
td.error{background:#eee}small{color:#555}pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}\
.headline{font-size:18px;background:#eef6ee;border-left:6px solid #1b9e77;padding:.8em 1em;margin:1em 0}\
.headline.bad{background:#fdecec;border-color:#c00}li{margin:.2em 0}";

/// The whole page.
pub fn page(results: &FaultResults) -> String {
    let mut body = String::new();
    let clean = results.queue_clean();
    let _ = write!(
        body,
        r#"<h1>seckill bench --faults</h1><div class="headline{}">queue path: {}</div><p>{}</p>"#,
        if clean { "" } else { " bad" },
        if clean {
            "clean under every fault"
        } else {
            "NOT clean under every fault"
        },
        escape(&format!(
            "{} requests per cell at {}/s for {} s; {} units for {} users; each fault at {:.1} s, \
             its service down (or its process dead) for {} s. Each cell is one sale, settled, \
             then held against the database. Command: {}",
            results.cells.first().map_or(0, |c| c.verdict.requests),
            results.rate_per_s,
            results.load_secs,
            results.stock,
            results.users,
            results.fault_at_secs,
            results.downtime_secs,
            results.command_line
        ))
    );
    body.push_str("<table><tr><th>path</th>");
    for f in &results.faults {
        let _ = write!(body, "<th>{}</th>", f.as_str());
    }
    body.push_str("</tr>");
    for path in &results.paths {
        let _ = write!(body, "<tr><td>{path}</td>");
        for f in &results.faults {
            match results.cell(path, *f) {
                Some(c) => {
                    let class = match (&c.error, c.clean) {
                        (Some(_), _) => "error",
                        (None, true) => "clean",
                        (None, false) => "bad",
                    };
                    let _ = write!(
                        body,
                        r#"<td class="{class}">{}<br><small>refused {}</small></td>"#,
                        escape(&c.text),
                        escape(&refusal_text(c))
                    );
                }
                None => body.push_str("<td>-</td>"),
            }
        }
        body.push_str("</tr>");
    }
    body.push_str("</table>");
    body.push_str(
        "<p><small>lost-sale: told purchased, no order in the database · lost-req: accepted, \
         never decided · twice: one request id answered two ways · oversold / over-limit: from \
         the audit · redis≠pg: Redis's stock or buyers differ from the database after recovery \
         · gave-up: never accepted within the retry bound · refused: seconds in which requests \
         got 503, a failed connection or a 5xx.</small></p>",
    );
    let unclean: Vec<&Cell> = results.cells.iter().filter(|c| !c.clean).collect();
    if !unclean.is_empty() {
        body.push_str("<h2>What went wrong</h2><ul>");
        for c in unclean {
            let mut what: Vec<String> = c.error.iter().cloned().collect();
            what.extend(c.verdict.audit.iter().cloned());
            what.extend(c.verdict.redis_disagrees.iter().cloned());
            what.extend(c.verdict.examples.iter().take(3).cloned());
            let _ = write!(
                body,
                "<li><b>{} × {}</b>: {}</li>",
                c.path,
                c.fault.as_str(),
                escape(&what.join(" · "))
            );
        }
        body.push_str("</ul>");
    }
    let _ = write!(
        body,
        "<h2>Terminal output</h2><pre>{}</pre>",
        escape(&terminal(results))
    );
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>seckill bench --faults</title><style>{STYLE}</style></head><body>{body}</body></html>"#
    )
}

/// Writes `results.json` and `report.html` into `dir`.
pub fn write_all(results: &FaultResults, dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_vec_pretty(results)?,
    )?;
    std::fs::write(dir.join("report.html"), page(results))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(path: &'static str, fault: FaultKind, lost: usize) -> Cell {
        let verdict = CellVerdict {
            requests: 10,
            lost_sales: lost,
            refused_secs: 1.5,
            ..CellVerdict::default()
        };
        Cell {
            path,
            fault,
            clean: verdict.is_clean(),
            text: verdict.cell_text(),
            error: None,
            verdict,
        }
    }

    #[test]
    fn the_matrix_has_a_row_per_path_and_a_column_per_fault() {
        let results = FaultResults {
            format_version: FORMAT_VERSION,
            mode: "faults",
            started_at: String::new(),
            command_line: "seckill bench --faults".into(),
            rate_per_s: 100,
            load_secs: 4,
            fault_at_secs: 1.0,
            downtime_secs: 1,
            stock: 5,
            users: 10,
            paths: vec!["queue", "redis-stream"],
            faults: vec![FaultKind::RedisRestart, FaultKind::KillDecider],
            cells: vec![
                cell("queue", FaultKind::RedisRestart, 0),
                cell("queue", FaultKind::KillDecider, 0),
                cell("redis-stream", FaultKind::RedisRestart, 7),
                cell("redis-stream", FaultKind::KillDecider, 0),
            ],
        };
        assert!(results.queue_clean());
        let text = terminal(&results);
        let row = text
            .lines()
            .find(|l| l.starts_with("redis-stream"))
            .expect("a row per path");
        assert!(
            row.contains("lost-sale 7") && row.contains("clean"),
            "{row}"
        );
        assert!(text.contains("redis-restart") && text.contains("kill-decider"));
        assert!(text.contains("1.5 s"));
        let html = page(&results);
        assert_eq!(html.matches(r#"class="bad""#).count(), 1);
        assert_eq!(html.matches(r#"class="clean""#).count(), 3);
        assert!(html.contains("redis-stream × redis-restart"));
    }
}
