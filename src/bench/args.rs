//! The flags of `seckill bench`, and the paths, scenario and soak settings they select.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::row::BenchPath;
use super::scenario::{ScenarioKind, ScenarioSpec};

/// How requests reach the paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// Over real HTTP to the API, as a browser or `ab` would.
    Http,
    /// In-process calls, to show each approach's own cost without HTTP.
    Direct,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Paths to compare, comma-separated, or `all`.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub paths: Vec<String>,
    /// Demand shape: `hot` (one item, stock far below demand, each user 1–3 tries), `spread`
    /// (1,000 items, modest demand each), `retry-storm` (few users hammering one item).
    #[arg(long, value_enum, default_value_t = ScenarioKind::Hot)]
    pub scenario: ScenarioKind,
    /// Units per item (default: hot 500, spread 3, retry-storm 10).
    #[arg(long)]
    pub stock: Option<i64>,
    /// Distinct buyers (default: hot 2,500, spread 2,500, retry-storm 20).
    #[arg(long)]
    pub users: Option<usize>,
    /// Requests per path (default: hot 5,000, spread 5,000, retry-storm 3,000).
    #[arg(long)]
    pub requests: Option<usize>,
    /// Items on sale for `spread` (default 1,000).
    #[arg(long)]
    pub items: Option<usize>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// `http` drives the API over real HTTP; `direct` calls the paths in-process.
    #[arg(long, value_enum, default_value_t = Via::Http)]
    pub via: Via,
    /// Seed of the scenario: the same seed replays the same requests in the same order.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Folder for results.json and report.html.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// Base URL of a running `seckill serve` to drive instead of an in-process one.
    #[arg(long)]
    pub url: Option<String>,
    /// The producer token of the server `--url` names, if it requires one (unused without
    /// `--url`: the bench's own server has none).
    #[arg(long, env = "SECKILL_PRODUCER_TOKEN", hide_env_values = true)]
    pub producer_token: Option<String>,
    /// Skip the broker-alone, database-alone, HTTP-alone and pre-filled-consumer ceilings.
    #[arg(long)]
    pub no_ceilings: bool,
    /// How the bench's own APIs batch requests into broker messages (`queue-unbatched` always
    /// sends one per message).
    #[command(flatten)]
    pub publish: crate::config::PublishArgs,
    /// Keep the bench's items, orders and outcomes in the database afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Soak mode: run each path for this many seconds at a steady --rate instead of sending
    /// --requests (with `--paths all`, only the queue path), sampling memory and latency.
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<u64>,
    /// Requests per second in soak mode.
    #[arg(long, default_value_t = 1000, requires = "duration")]
    pub rate: u32,
    /// Seconds between two soak samples.
    #[arg(long, default_value_t = 10, requires = "duration")]
    pub sample_every: u64,
    /// Clients that, during each path's run, re-send one request id already decided in a loop
    /// (a client retrying an answered request): a retried id should cost about what a fresh
    /// request costs. Their answers are not counted in the run's figures.
    #[arg(
        long,
        value_name = "CLIENTS",
        default_value_t = 0,
        conflicts_with = "duration"
    )]
    pub resend_decided: usize,
}

impl BenchArgs {
    pub fn spec(&self) -> ScenarioSpec {
        let (requests, users, stock, items) = match self.scenario {
            ScenarioKind::Hot => (5_000, 2_500, 500, 1),
            ScenarioKind::Spread => (5_000, 2_500, 3, 1_000),
            ScenarioKind::RetryStorm => (3_000, 20, 10, 1),
        };
        ScenarioSpec {
            kind: self.scenario,
            requests: self.requests.unwrap_or(requests),
            users: self.users.unwrap_or(users),
            stock_per_item: self.stock.unwrap_or(stock),
            items: if self.scenario == ScenarioKind::Spread {
                self.items.unwrap_or(items)
            } else {
                1
            },
            seed: self.seed,
        }
    }

    /// The paths to run, refusing what only the bench's own in-process API and consumer can
    /// do when `--url` points it at a running server.
    pub(super) fn selected_paths(&self) -> anyhow::Result<Vec<BenchPath>> {
        let paths = self.named_paths()?;
        let in_process = self.url.is_none();
        if let Some(own) = paths.iter().find(|p| p.needs_own_api()) {
            anyhow::ensure!(
                in_process,
                "{own} needs the bench's own API; it cannot be combined with --url"
            );
        }
        anyhow::ensure!(
            in_process || self.via == Via::Http,
            "--via direct runs the paths in this process; it cannot be combined with --url"
        );
        Ok(paths)
    }

    /// The paths `--paths` names (`all`: every path, or only `queue` in soak mode).
    fn named_paths(&self) -> anyhow::Result<Vec<BenchPath>> {
        if self.paths.iter().any(|p| p == "all") {
            return Ok(if self.duration.is_some() {
                vec![BenchPath::QUEUE]
            } else {
                BenchPath::all()
            });
        }
        self.paths
            .iter()
            .map(|p| p.parse().map_err(anyhow::Error::msg))
            .collect()
    }

    /// Soak mode's settings, if `--duration` asks for it.
    pub(super) fn soak(&self) -> Option<SoakSettings> {
        self.duration.map(|s| SoakSettings {
            duration: Duration::from_secs(s),
            rate_per_s: self.rate,
            sample_every: Duration::from_secs(self.sample_every.max(1)),
        })
    }
}

/// How a soak runs: for how long, at which rate, sampled how often.
pub(super) struct SoakSettings {
    pub duration: Duration,
    pub rate_per_s: u32,
    pub sample_every: Duration,
}
