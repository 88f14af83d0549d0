//! What a run leaves behind in `--out`: `results.json` (its layout is in docs/BENCHMARKS.md)
//! and `report.html` (see [`super::html`]). Apart from the terminal report, which the page
//! borrows its table from, so the two never import each other.

use std::path::Path;

use super::summary::BenchResults;

/// Writes `results.json` and `report.html` into `dir`.
pub fn write_all(results: &BenchResults, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_vec_pretty(results)?,
    )?;
    std::fs::write(dir.join("report.html"), super::html::page(results))?;
    Ok(())
}
