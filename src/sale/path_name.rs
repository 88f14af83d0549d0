//! The names of the purchase paths: what `POST /orders?path=` takes, what `outcomes.path`
//! records, what the bench and the CLI list. A closed set, so a typo is a compile error and a
//! new path cannot be forgotten in one of the places that list them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One purchase path: `queue` (seckill's own, asynchronous) or one of its rivals: the lock-based
/// paths, `redis-stream` (answered from Redis, written to PostgreSQL afterwards by a stream
/// writer) and `redis-mq` (answers `pending` and decides later, as `queue` does).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum PathName {
    Queue,
    Naive,
    Pessimistic,
    Optimistic,
    Conditional,
    Advisory,
    LockTable,
    RedisLock,
    RedisWatch,
    RedisLua,
    RedisList,
    RedisStream,
    RedisMq,
}

impl PathName {
    /// Every path, `queue` (the default) first, in the order the help and the errors list them.
    pub const ALL: [PathName; 13] = [
        PathName::Queue,
        PathName::Naive,
        PathName::Pessimistic,
        PathName::Optimistic,
        PathName::Conditional,
        PathName::Advisory,
        PathName::LockTable,
        PathName::RedisLock,
        PathName::RedisWatch,
        PathName::RedisLua,
        PathName::RedisList,
        PathName::RedisStream,
        PathName::RedisMq,
    ];

    /// The name as the API takes it and `outcomes.path` stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            PathName::Queue => "queue",
            PathName::Naive => "naive",
            PathName::Pessimistic => "pessimistic",
            PathName::Optimistic => "optimistic",
            PathName::Conditional => "conditional",
            PathName::Advisory => "advisory",
            PathName::LockTable => "lock-table",
            PathName::RedisLock => "redis-lock",
            PathName::RedisWatch => "redis-watch",
            PathName::RedisLua => "redis-lua",
            PathName::RedisList => "redis-list",
            PathName::RedisStream => "redis-stream",
            PathName::RedisMq => "redis-mq",
        }
    }
}

impl fmt::Display for PathName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no path; its message names the valid ones and is safe to show a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown path {name:?}; valid paths: {} (naive is UNSAFE: it oversells)",
    PathName::ALL.map(PathName::as_str).join(", ")
)]
pub struct UnknownPath {
    pub name: String,
}

impl FromStr for PathName {
    type Err = UnknownPath;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        PathName::ALL
            .into_iter()
            .find(|path| path.as_str() == name)
            .ok_or_else(|| UnknownPath {
                name: name.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;

    #[test]
    fn every_spelling_of_a_name_agrees() {
        for path in PathName::ALL {
            let name = path.as_str();
            assert_eq!(name.parse(), Ok(path));
            assert_eq!(path.to_string(), name);
            assert_eq!(serde_json::to_value(path).unwrap(), name);
            assert_eq!(
                serde_json::from_value::<PathName>(name.into()).unwrap(),
                path
            );
            let value = path.to_possible_value().expect("not skipped");
            assert_eq!(value.get_name(), name);
        }
        assert_eq!(PathName::value_variants(), PathName::ALL);
        let unknown = "bogus".parse::<PathName>().unwrap_err().to_string();
        assert!(unknown.starts_with("unknown path \"bogus\"; valid paths: queue, naive,"));
        assert!(
            unknown.contains("redis-list") && unknown.contains("UNSAFE"),
            "{unknown}"
        );
    }
}
