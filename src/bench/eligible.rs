//! Which of the selected paths a scenario can run on. Most paths sell any goods; only some sell
//! red packets (the queue path, and the lock paths whose [`PurchasePath::sells_red_packets`]
//! says so: the API refuses a red packet to the others with a 400). A path the scenario cannot
//! run on is not a failure: the bench skips it and says why, in the terminal, the report and
//! `results.json`.
//!
//! [`PurchasePath::sells_red_packets`]: crate::paths::PurchasePath::sells_red_packets

use serde::Serialize;

use super::row::BenchPath;
use super::scenario::ScenarioKind;
use crate::sale::PathName;

/// A selected path the scenario did not run on, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub path: BenchPath,
    pub reason: String,
}

/// Splits `paths` into those `kind` runs on and those it skips. `sells_red_packets` answers for
/// a path decided in the request (`None`: this seckill has no such path to ask).
pub fn split(
    paths: Vec<BenchPath>,
    kind: ScenarioKind,
    sells_red_packets: impl Fn(PathName) -> Option<bool>,
) -> (Vec<BenchPath>, Vec<Skipped>) {
    if !kind.is_red_packet() {
        return (paths, Vec::new());
    }
    let mut run = Vec::new();
    let mut skipped = Vec::new();
    for path in paths {
        let reason = match path {
            // Every queue row is the consumer's sequencer, which draws shares (`draw_share`).
            _ if path.is_queue() => None,
            BenchPath::Path(name) => match sells_red_packets(name) {
                Some(true) => None,
                Some(false) => Some(
                    "does not sell red packets: its algorithm counts units, not a payout \
                     (the API answers 400 for a red packet on this path)"
                        .to_string(),
                ),
                None => {
                    Some("not a path this seckill can ask whether it sells red packets".to_string())
                }
            },
            _ => Some("not a path that can sell red packets".to_string()),
        };
        match reason {
            None => run.push(path),
            Some(reason) => skipped.push(Skipped { path, reason }),
        }
    }
    (run, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn red_packets_run_on_the_queue_rows_and_the_paths_that_sell_them() {
        let sells =
            |name: PathName| Some(matches!(name, PathName::Pessimistic | PathName::Optimistic));
        let (run, skipped) = split(BenchPath::all(), ScenarioKind::RedPacket, sells);
        let pessimistic = BenchPath::Path(PathName::Pessimistic);
        let optimistic = BenchPath::Path(PathName::Optimistic);
        assert_eq!(
            run,
            vec![
                BenchPath::QUEUE,
                BenchPath::QueueNoShed,
                BenchPath::QueueUnbatched,
                pessimistic,
                optimistic
            ]
        );
        assert_eq!(skipped.len(), BenchPath::all().len() - run.len());
        assert!(skipped.iter().any(|s| s.path == BenchPath::NAIVE));
        assert!(skipped.iter().all(|s| s.reason.contains("red packet")));

        let (all, none) = split(BenchPath::all(), ScenarioKind::Plenty, sells);
        assert_eq!((all, none), (BenchPath::all(), Vec::new()));
    }
}
