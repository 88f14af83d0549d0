//! The rows of the comparison: every purchase path, and the queue path twice more: with sold-out
//! shedding turned off, so the report shows what answering `sold_out` at the door saves, and
//! also with one request per broker message, so it shows what batching on the wire saves.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

use crate::sale::PathName;

/// One row of the bench: a purchase path, `queue-no-shed` or `queue-unbatched`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BenchPath {
    /// A path as `POST /orders?path=NAME` names it (`queue` for the default).
    Path(PathName),
    /// The queue path with sold-out shedding turned off: every request goes through the broker
    /// to the decider.
    QueueNoShed,
    /// `queue-no-shed` with one request per broker message (`SECKILL_PUBLISH_BATCH_MAX=1`, and
    /// up to 1,000 messages awaiting their confirm).
    QueueUnbatched,
}

impl BenchPath {
    /// seckill's own path.
    pub const QUEUE: BenchPath = BenchPath::Path(PathName::Queue);
    /// The deliberately unsafe path: its failed audit is the expected result, not a bug.
    pub const NAIVE: BenchPath = BenchPath::Path(PathName::Naive);

    /// Every row, in report order: `queue` first, then the same without shedding, and without
    /// batching either; the unsafe `naive` last.
    pub fn all() -> Vec<BenchPath> {
        let mut rows: Vec<BenchPath> = PathName::ALL
            .iter()
            .map(|p| BenchPath::Path(*p))
            .filter(|p| *p != Self::NAIVE)
            .collect();
        rows.insert(1, BenchPath::QueueNoShed);
        rows.insert(2, BenchPath::QueueUnbatched);
        rows.push(Self::NAIVE);
        rows
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BenchPath::Path(path) => path.as_str(),
            BenchPath::QueueNoShed => "queue-no-shed",
            BenchPath::QueueUnbatched => "queue-unbatched",
        }
    }

    /// Whether it decides through the broker and the consumer (with or without shedding or
    /// batching).
    pub fn is_queue(self) -> bool {
        matches!(
            self,
            BenchPath::QueueNoShed | BenchPath::QueueUnbatched | BenchPath::Path(PathName::Queue)
        )
    }

    /// Whether it needs the bench's own in-process API (it cannot run against `--url`).
    pub fn needs_own_api(self) -> bool {
        matches!(self, BenchPath::QueueNoShed | BenchPath::QueueUnbatched)
    }
}

impl fmt::Display for BenchPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so a table's `{:<14}` lines the rows up.
        f.pad(self.as_str())
    }
}

impl FromStr for BenchPath {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let all = BenchPath::all();
        all.iter()
            .copied()
            .find(|p| p.as_str() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = all.iter().map(|p| p.as_str()).collect();
                format!("unknown path {name:?}; known: {}", known.join(", "))
            })
    }
}

/// In `results.json` a row is its name, as before the type existed.
impl Serialize for BenchPath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_parses_back_from_its_name() {
        let all = BenchPath::all();
        assert_eq!(all[0], BenchPath::QUEUE);
        assert_eq!(all[1], BenchPath::QueueNoShed);
        assert_eq!(all[2], BenchPath::QueueUnbatched);
        assert_eq!(*all.last().unwrap(), BenchPath::NAIVE);
        assert_eq!(all.len(), PathName::ALL.len() + 2);
        for row in all {
            assert_eq!(row.as_str().parse::<BenchPath>(), Ok(row));
        }
        assert!(
            "nope"
                .parse::<BenchPath>()
                .unwrap_err()
                .contains("queue-no-shed")
        );
    }
}
