//! `seckill bench compare OLD.json NEW.json`: each path's change between two runs — its
//! decisions per second, p99 and p99.9, audit, and (when both swept) its highest rate within
//! the bound. Reads any `results.json` layout up to [`FORMAT_VERSION`], by field name, so a
//! run from before a field existed compares on the fields it has.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::Value;

use super::summary::FORMAT_VERSION;

/// The two runs to compare.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// The earlier run's results.json.
    pub old: PathBuf,
    /// The later run's results.json.
    pub new: PathBuf,
}

/// Reads both runs and returns the comparison as text.
pub fn run(args: &CompareArgs) -> anyhow::Result<String> {
    let (old, new) = (read(&args.old)?, read(&args.new)?);
    Ok(compare(&old, &new))
}

fn read(path: &Path) -> anyhow::Result<Value> {
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let json: Value = serde_json::from_slice(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", path.display()))?;
    let version = json["format_version"].as_u64().unwrap_or(1);
    anyhow::ensure!(
        version <= u64::from(FORMAT_VERSION),
        "{} has results.json format {version}; this seckill reads up to {FORMAT_VERSION}",
        path.display()
    );
    anyhow::ensure!(
        json["paths"].is_array(),
        "{} has no `paths`: not a seckill bench results.json",
        path.display()
    );
    Ok(json)
}

/// The comparison of two parsed runs: a line per path of the new run.
pub fn compare(old: &Value, new: &Value) -> String {
    let mut out = String::new();
    for (label, run) in [("old", old), ("new", new)] {
        let _ = writeln!(
            out,
            "{label}: {} ({} scenario, via {}){}",
            run["started_at"].as_str().unwrap_or("?"),
            run["scenario"]["kind"].as_str().unwrap_or("?"),
            run["via"].as_str().unwrap_or("?"),
            run["headline"]
                .as_str()
                .map(|h| format!("\n     {h}"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(
        out,
        "{:<14} {:>24} {:>24} {:>24} {:>24}  audit",
        "path", "decided/s", "p99 ms", "p99.9 ms", "max/s within SLO"
    );
    for path in new["paths"].as_array().into_iter().flatten() {
        let name = path["path"].as_str().unwrap_or("?");
        let before = find(old, name);
        let field = |run: Option<&Value>, f: &dyn Fn(&Value) -> Option<f64>| run.and_then(f);
        let decided = |r: &Value| r["decided_per_s"].as_f64();
        let p99 = |r: &Value| r["latency"]["p99_ms"].as_f64();
        let p999 = |r: &Value| r["latency"]["p99_9_ms"].as_f64();
        let knee_old = knee(old, name);
        let knee_new = knee(new, name);
        let _ = writeln!(
            out,
            "{name:<14} {:>24} {:>24} {:>24} {:>24}  {} → {}",
            change(field(before, &decided), decided(path), 0),
            change(field(before, &p99), p99(path), 1),
            change(field(before, &p999), p999(path), 1),
            change(knee_old, knee_new, 0),
            before.map_or("-", audit),
            audit(path)
        );
    }
    out
}

/// The row of `path` in a run.
fn find<'a>(run: &'a Value, path: &str) -> Option<&'a Value> {
    run["paths"]
        .as_array()?
        .iter()
        .find(|r| r["path"].as_str() == Some(path))
}

/// A path's highest rate within the bound, if the run swept it.
fn knee(run: &Value, path: &str) -> Option<f64> {
    run["sweep"]
        .as_array()?
        .iter()
        .find(|c| c["path"].as_str() == Some(path))?["max_per_s_within_slo"]
        .as_f64()
}

fn audit(row: &Value) -> &'static str {
    match (
        row["audit"]["clean"].as_bool(),
        row["audit"]["oversold"].as_bool(),
    ) {
        (Some(true), _) => "clean",
        (Some(false), Some(true)) => "OVERSOLD",
        (Some(false), _) => "VIOLATED",
        (None, _) => "?",
    }
}

/// `old → new (+x%)`, or what is known of it.
fn change(old: Option<f64>, new: Option<f64>, decimals: usize) -> String {
    match (old, new) {
        (Some(o), Some(n)) if o > 0.0 => {
            format!(
                "{o:.decimals$} → {n:.decimals$} ({:+.0}%)",
                100.0 * (n - o) / o
            )
        }
        (Some(o), Some(n)) => format!("{o:.decimals$} → {n:.decimals$}"),
        (None, Some(n)) => format!("- → {n:.decimals$}"),
        (Some(o), None) => format!("{o:.decimals$} → -"),
        (None, None) => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_path_shows_its_change_and_a_version_1_file_compares() {
        let old = json!({"paths": [
            {"path": "queue", "decided_per_s": 1000.0, "latency": {"p99_ms": 50.0},
             "audit": {"clean": true, "oversold": false}}]});
        let new = json!({"format_version": 2, "paths": [
            {"path": "queue", "decided_per_s": 1500.0,
             "latency": {"p99_ms": 40.0, "p99_9_ms": 60.0},
             "audit": {"clean": true, "oversold": false}},
            {"path": "naive", "decided_per_s": 10.0, "latency": {"p99_ms": 4.0},
             "audit": {"clean": false, "oversold": true}}]});
        let text = compare(&old, &new);
        let queue = text.lines().find(|l| l.starts_with("queue")).unwrap();
        assert!(queue.contains("1000 → 1500 (+50%)"), "{queue}");
        assert!(queue.contains("50.0 → 40.0 (-20%)"), "{queue}");
        assert!(queue.contains("- → 60.0"), "{queue}");
        assert!(queue.ends_with("clean → clean"), "{queue}");
        let naive = text.lines().find(|l| l.starts_with("naive")).unwrap();
        assert!(naive.ends_with("- → OVERSOLD"), "{naive}");
    }
}
