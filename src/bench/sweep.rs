//! The curve (`seckill bench --sweep`): for each path, the open model at a rising offered rate,
//! step after step, until the path passes its knee — its p99 leaves the bound, it achieves
//! less than 90% of what it is offered, or more than 1% of its requests fail. One point per
//! path says how fast it is when it is not overloaded; the steps say how it breaks. Every step
//! is a run of its own: fresh items, the wait for every decision, the audit.

use std::sync::Arc;

use super::args::{Load, RunLength, SweepSettings};
use super::driver::Bench;
use super::path_run::{measure, warm_up};
use super::row::BenchPath;
use super::scenario::ScenarioSpec;
use super::summary::{Curve, PathResult, Step};

/// A step meets the bound only if it achieved at least this share of the offered rate.
const ACHIEVED_SHARE_MIN: f64 = 0.9;

/// A step meets the bound only if at most this share of its requests failed.
const ERROR_SHARE_MAX: f64 = 0.01;

/// Sweeps every path in turn; returns their curves and every item they created.
pub(super) async fn run_all(
    bench: &Arc<Bench>,
    paths: &[BenchPath],
    spec: &ScenarioSpec,
    settings: &SweepSettings,
) -> anyhow::Result<(Vec<Curve>, Vec<i64>)> {
    let mut curves = Vec::new();
    let mut all_items = Vec::new();
    for &path in paths {
        let first = requests_at(settings.from_per_s, settings);
        let (items, _) = warm_up(bench, path, spec, RunLength::Requests(first)).await?;
        all_items.extend(items);
        let (curve, items) = sweep_path(bench, path, spec, settings).await?;
        all_items.extend(items);
        curves.push(curve);
    }
    Ok((curves, all_items))
}

/// One path's steps, from the first rate up to its knee (or the last step allowed).
async fn sweep_path(
    bench: &Arc<Bench>,
    path: BenchPath,
    spec: &ScenarioSpec,
    settings: &SweepSettings,
) -> anyhow::Result<(Curve, Vec<i64>)> {
    let mut steps: Vec<Step> = Vec::new();
    let mut all_items = Vec::new();
    let mut rate = settings.from_per_s;
    let stopped_because = loop {
        let load = Load::Open {
            rate_per_s: rate,
            in_flight_max: settings.in_flight_max,
        };
        let (result, items) = measure(bench, path, spec, load, requests_at(rate, settings)).await?;
        all_items.extend(items);
        let missed_because = judge(&result, settings.slo_p99_ms);
        eprintln!("{}", step_line(&result, missed_because.as_deref()));
        let met_slo = missed_because.is_none();
        steps.push(Step {
            met_slo,
            missed_because: missed_because.clone(),
            result,
        });
        if let Some(why) = missed_because {
            break why;
        }
        if steps.len() >= settings.steps_max {
            break format!(
                "the last step allowed ({}) met the bound",
                settings.steps_max
            );
        }
        rate *= settings.factor;
    };
    let max_per_s_within_slo = steps
        .iter()
        .filter(|s| s.met_slo)
        .map(|s| s.result.achieved_per_s)
        .reduce(f64::max);
    let curve = Curve {
        path,
        steps,
        max_per_s_within_slo,
        stopped_because,
    };
    Ok((curve, all_items))
}

/// Requests of one step: its rate for the step's duration.
fn requests_at(rate_per_s: f64, settings: &SweepSettings) -> usize {
    ((rate_per_s * settings.step.as_secs_f64()).ceil() as usize).max(1)
}

/// Why a step did not meet the bound, or `None` when it did.
fn judge(result: &PathResult, slo_p99_ms: f64) -> Option<String> {
    let offered = result.offered_per_s.unwrap_or(0.0);
    if result.latency.p99_ms > slo_p99_ms {
        return Some(format!(
            "p99 {:.0} ms > {slo_p99_ms:.0} ms",
            result.latency.p99_ms
        ));
    }
    if result.achieved_per_s < ACHIEVED_SHARE_MIN * offered {
        return Some(format!(
            "achieved {:.0}/s < 90% of {offered:.0}/s offered",
            result.achieved_per_s
        ));
    }
    let errors = result.outcomes.error as f64;
    if errors > ERROR_SHARE_MAX * result.requests as f64 {
        return Some(format!(
            "{} of {} requests failed",
            result.outcomes.error, result.requests
        ));
    }
    None
}

/// The line printed as each step finishes.
fn step_line(r: &PathResult, missed_because: Option<&str>) -> String {
    format!(
        "{:>15}: offered {:>7.0}/s achieved {:>7.0}/s p99 {:>8.1} ms, {} late, audit {} — {}",
        r.path,
        r.offered_per_s.unwrap_or(0.0),
        r.achieved_per_s,
        r.latency.p99_ms,
        r.sent_late,
        if r.audit.clean { "clean" } else { "FAILED" },
        missed_because.unwrap_or("within the bound")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steps_rise_by_the_factor_and_last_the_step() {
        let settings = SweepSettings {
            from_per_s: 100.0,
            factor: 1.5,
            step: std::time::Duration::from_secs(4),
            steps_max: 3,
            slo_p99_ms: 500.0,
            in_flight_max: 10,
        };
        assert_eq!(requests_at(100.0, &settings), 400);
        assert_eq!(requests_at(0.1, &settings), 1);
    }
}
