//! The flags of `seckill bench`, and the paths, scenario and soak settings they select.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::row::BenchPath;
use super::scenario::{ScenarioKind, ScenarioSpec};

/// A red packet's average share when `--packet-total` does not say, in minor units (1.00).
const PACKET_SHARE_AVERAGE_MINOR: i64 = 100;

/// The soak's rate when `--rate` does not say, requests per second.
const SOAK_RATE_PER_S: u32 = 1000;

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
    /// Demand shape (each value below). `red-packet` runs only on the paths that sell red
    /// packets (today the queue rows, pessimistic and optimistic), says why it skips the others, and
    /// reports each path's payout, checked from the database, and a histogram of its share
    /// sizes; `plenty` reports what each path sold when every request could buy, and what it
    /// failed outright (`failed_retry`). Sized by `--requests`, `--users`, `--stock` (and
    /// `--packet-total`).
    #[arg(long, value_enum, default_value_t = ScenarioKind::Hot)]
    pub scenario: ScenarioKind,
    /// Units per item; red-packet: its shares (default: hot 500, spread 3, retry-storm 10,
    /// red-packet 500, plenty as many as `--requests`).
    #[arg(long)]
    pub stock: Option<i64>,
    /// Distinct buyers (default: hot 2,500, spread 2,500, retry-storm 20, red-packet 2,500,
    /// plenty as many as `--requests`).
    #[arg(long)]
    pub users: Option<usize>,
    /// Requests per path: given, each path's run sends exactly this many, for the stock given
    /// (`--stock`); not given, runs are sustained (`--measure-secs`) and this is the size of one
    /// round of the scenario (hot 5,000, spread 5,000, retry-storm 3,000, red-packet 5,000,
    /// plenty 5,000), repeated with new buyers and more stock as the run needs.
    #[arg(long)]
    pub requests: Option<usize>,
    /// red-packet: the amount the packet pays out in all, in minor units (cents), at least one
    /// per share (default: 100 per share; a sustained run grows it with the shares).
    #[arg(long, value_name = "MINOR_UNITS",
          value_parser = clap::value_parser!(i64).range(1..=crate::domain::PACKET_TOTAL_MAX))]
    pub packet_total: Option<i64>,
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
    /// Open model: offer this many requests per second, on a schedule, whatever the path's
    /// answers (latency counts from when each request was due). Without it the clients are a
    /// closed loop of `--concurrency`. Soak mode's steady rate (default 1,000).
    #[arg(long, value_name = "PER_SECOND", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate: Option<u32>,
    /// Seconds of measured load per path after its warm-up, when `--requests` does not fix the
    /// count: the run sends enough requests to fill them (at `--rate`, or at the rate the
    /// warm-up reached), and the stock grows with the requests, so the scenario's sold-out
    /// share holds.
    #[arg(long, value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub measure_secs: u64,
    /// Most requests in flight at once in the open model (`--rate`, `--sweep`): past it a due
    /// request waits for a free slot, and counts as sent late.
    #[arg(long, default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=20_000))]
    pub in_flight_max: u64,
    /// The curve: for each path, step the offered rate up (open model) until its p99 passes
    /// `--slo-p99-ms`, it achieves less than 90% of the offered rate, or more than 1% of its
    /// requests fail; report each path's highest rate that met the bound.
    #[arg(long, conflicts_with_all = ["duration", "rate", "requests"])]
    pub sweep: bool,
    /// The latency bound of `--sweep` (and of the headline), p99 in milliseconds.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub slo_p99_ms: u64,
    /// The first offered rate of `--sweep`, requests per second.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub sweep_from: u32,
    /// Each step of `--sweep` offers this many times the rate of the step before.
    #[arg(long, default_value_t = 1.5)]
    pub sweep_factor: f64,
    /// Seconds of load per step of `--sweep`.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub sweep_step_secs: u64,
    /// Most steps per path in `--sweep`.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub sweep_steps_max: u64,
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
        conflicts_with_all = ["duration", "rate", "sweep"]
    )]
    pub resend_decided: usize,
    /// Fault mode — correctness under faults, path by path. It RESTARTS Redis, RabbitMQ and
    /// PostgreSQL on this machine (and refuses services it cannot restart, or that are not on
    /// loopback), and puts them back. For each path of `--paths` × fault of `--fault` it starts
    /// `seckill serve` and `seckill consume` as child processes, runs a sale at `--rate`
    /// (default 200/s) for `--measure-secs`, injects the fault at a fifth of it for
    /// `--fault-downtime-secs`, settles every request (clients retry 503s and resets with the
    /// same request_id and poll pending ones), and prints a matrix: each cell `clean`, or the
    /// sales lost, requests lost, ids decided twice, units oversold, Redis against PostgreSQL.
    /// Exit status 1 if the queue path is not clean in every column.
    #[arg(long, conflicts_with_all = ["url", "sweep", "duration", "requests", "resend_decided"])]
    pub faults: bool,
    /// The faults of `--faults`, comma-separated (default: all of them).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub fault: Vec<super::faults::fault::FaultKind>,
    /// How long each fault of `--faults` keeps its service down, or its process dead.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=120))]
    pub fault_downtime_secs: u64,
}

impl BenchArgs {
    pub fn spec(&self) -> ScenarioSpec {
        let (requests, users, stock, items) = match self.scenario {
            ScenarioKind::Hot | ScenarioKind::RedPacket => (5_000, 2_500, 500, 1),
            ScenarioKind::Spread => (5_000, 2_500, 3, 1_000),
            ScenarioKind::RetryStorm => (3_000, 20, 10, 1),
            ScenarioKind::Plenty => (5_000, 5_000, 5_000, 1),
        };
        let requests = self.requests.unwrap_or(requests);
        // Plenty's point is a unit and a user for every request, whatever their number.
        let (users, stock) = match self.scenario {
            ScenarioKind::Plenty => (requests, requests as i64),
            _ => (users, stock),
        };
        let stock_per_item = self.stock.unwrap_or(stock);
        ScenarioSpec {
            kind: self.scenario,
            requests,
            users: self.users.unwrap_or(users),
            stock_per_item,
            items: if self.scenario == ScenarioKind::Spread {
                self.items.unwrap_or(items)
            } else {
                1
            },
            seed: self.seed,
            packet_total: self.scenario.is_red_packet().then(|| {
                self.packet_total
                    .unwrap_or(PACKET_SHARE_AVERAGE_MINOR * stock_per_item)
            }),
        }
    }

    /// Refuses sizes the scenario cannot be run with, before anything starts.
    pub(super) fn check_sizes(&self, spec: &ScenarioSpec) -> anyhow::Result<()> {
        anyhow::ensure!(
            spec.stock_per_item >= 1,
            "--stock must be at least 1 (it is {})",
            spec.stock_per_item
        );
        anyhow::ensure!(
            self.packet_total.is_none() || spec.kind.is_red_packet(),
            "--packet-total sizes a red packet: it needs --scenario red-packet"
        );
        if let Some(total) = spec.packet_total {
            anyhow::ensure!(
                total >= spec.stock_per_item,
                "--packet-total {total} is less than one minor unit for each of the {} shares \
                 (--stock): no share may be zero",
                spec.stock_per_item
            );
        }
        Ok(())
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

    /// How the comparison's clients send (the sweep sets its own rate per step).
    pub(super) fn load(&self) -> Load {
        match self.rate {
            Some(rate_per_s) => Load::Open {
                rate_per_s: f64::from(rate_per_s),
                in_flight_max: self.in_flight_max as usize,
            },
            None => Load::Closed {
                concurrency: self.concurrency.max(1),
            },
        }
    }

    /// How many requests each path's measured run sends: `--requests` if given, else enough
    /// for `--measure-secs` at the offered rate (`None`: at the rate its warm-up reached).
    pub(super) fn run_length(&self) -> RunLength {
        match (self.requests, self.rate) {
            (Some(n), _) => RunLength::Requests(n),
            (None, Some(rate)) => {
                RunLength::Requests((f64::from(rate) * self.measure_secs as f64).ceil() as usize)
            }
            (None, None) => RunLength::Seconds(self.measure_secs as f64),
        }
    }

    /// The sweep's settings, if `--sweep` asks for it.
    pub(super) fn sweep(&self) -> Option<SweepSettings> {
        self.sweep.then(|| SweepSettings {
            from_per_s: f64::from(self.sweep_from),
            factor: self.sweep_factor.max(1.05),
            step: Duration::from_secs(self.sweep_step_secs),
            steps_max: self.sweep_steps_max as usize,
            slo_p99_ms: self.slo_p99_ms as f64,
            in_flight_max: self.in_flight_max as usize,
        })
    }

    /// Soak mode's settings, if `--duration` asks for it.
    pub(super) fn soak(&self) -> Option<SoakSettings> {
        self.duration.map(|s| SoakSettings {
            duration: Duration::from_secs(s),
            rate_per_s: self.rate.unwrap_or(SOAK_RATE_PER_S),
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

/// How the simulated clients send.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "model", rename_all = "kebab-case")]
pub enum Load {
    /// `concurrency` clients, each sending its next request when its last was answered: a slow
    /// path is offered less (what a closed loop measures is capacity, not a buyer's wait).
    Closed { concurrency: usize },
    /// Requests sent on a schedule at `rate_per_s`, however the path answers; each one's
    /// latency counts from when it was due. At most `in_flight_max` in flight.
    Open {
        rate_per_s: f64,
        in_flight_max: usize,
    },
}

/// How long a path's measured run is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum RunLength {
    /// Exactly this many requests.
    Requests(usize),
    /// Enough requests to last this many seconds at the rate the warm-up reached.
    Seconds(f64),
}

/// How a sweep steps its offered rate, and when a path has passed its knee.
#[derive(Debug, Clone)]
pub(super) struct SweepSettings {
    pub from_per_s: f64,
    pub factor: f64,
    pub step: Duration,
    pub steps_max: usize,
    pub slo_p99_ms: f64,
    pub in_flight_max: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn args(flags: &[&str]) -> BenchArgs {
        Flags::try_parse_from(std::iter::once("bench").chain(flags.iter().copied()))
            .expect("flags parse")
            .bench
    }

    fn check(flags: &[&str]) -> anyhow::Result<ScenarioSpec> {
        let a = args(flags);
        let spec = a.spec();
        a.check_sizes(&spec).map(|()| spec)
    }

    #[test]
    fn the_seeds_scenarios_are_sized_by_the_usual_flags() {
        let packet = check(&["--scenario", "red-packet"]).unwrap();
        assert_eq!((packet.requests, packet.users), (5000, 2500));
        assert_eq!(
            (packet.stock_per_item, packet.packet_total),
            (500, Some(50_000))
        );
        let packet = check(&["--scenario", "red-packet", "--stock", "7"]).unwrap();
        assert_eq!(packet.packet_total, Some(700), "100 per share by default");
        let plenty = check(&["--scenario", "plenty", "--requests", "1000"]).unwrap();
        assert_eq!(
            (plenty.users, plenty.stock_per_item, plenty.packet_total),
            (1000, 1000, None),
            "a user and a unit for every request"
        );
        assert_eq!(check(&["--scenario", "hot"]).unwrap().packet_total, None);
    }

    #[test]
    fn a_packet_that_would_pay_a_zero_share_or_a_total_without_a_packet_is_refused() {
        let zero = check(&[
            "--scenario",
            "red-packet",
            "--stock",
            "10",
            "--packet-total",
            "9",
        ]);
        assert!(
            zero.unwrap_err()
                .to_string()
                .contains("no share may be zero")
        );
        let stray = check(&["--scenario", "hot", "--packet-total", "100"]);
        assert!(
            stray
                .unwrap_err()
                .to_string()
                .contains("--scenario red-packet")
        );
        let no_stock = check(&["--stock", "0"]);
        assert!(no_stock.unwrap_err().to_string().contains("at least 1"));
        assert!(
            Flags::try_parse_from(["bench", "--packet-total", "0"]).is_err(),
            "a total of at least one minor unit"
        );
    }
}
