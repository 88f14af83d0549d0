//! The faults `seckill bench --faults` injects, one at a time, and how each is put right again.
//!
//! Every fault that stops a service returns an [`Outage`] guard: [`Outage::restore`] brings the
//! service back and waits until it answers; if the run fails first (an error, a panic), the
//! guard's `Drop` starts the service again, so a failed bench never leaves the machine without
//! its Redis, RabbitMQ or PostgreSQL. [`check_restartable`] refuses, before anything starts, a
//! fault whose service this machine cannot restart (not on loopback, or its tools missing).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{BrokerArgs, DatabaseArgs, RedisArgs};

/// How long a restored service may take to answer again.
const COME_BACK_WAIT: Duration = Duration::from_secs(90);

/// One fault, injected in the middle of a sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// Redis shut down without saving and started again, empty (as this machine runs it, with
    /// no persistence).
    RedisRestart,
    /// RabbitMQ's application stopped and started (`rabbitmqctl stop_app` / `start_app`).
    RabbitmqRestart,
    /// The deciding process SIGKILLed and started again: `seckill consume` for the queue path
    /// and the asynchronous rivals' workers, `seckill serve` itself for the synchronous paths.
    KillDecider,
    /// `pg_terminate_backend` on every connection of the sale's processes, repeatedly while the
    /// fault lasts.
    PgKillConnections,
    /// PostgreSQL stopped (`pg_ctlcluster stop -m fast`) and started again.
    PgRestart,
}

impl FaultKind {
    pub const ALL: [FaultKind; 5] = [
        FaultKind::RedisRestart,
        FaultKind::RabbitmqRestart,
        FaultKind::KillDecider,
        FaultKind::PgKillConnections,
        FaultKind::PgRestart,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::RedisRestart => "redis-restart",
            FaultKind::RabbitmqRestart => "rabbitmq-restart",
            FaultKind::KillDecider => "kill-decider",
            FaultKind::PgKillConnections => "pg-kill-connections",
            FaultKind::PgRestart => "pg-restart",
        }
    }
}

/// Where the services are, to stop and start them.
#[derive(Debug, Clone)]
pub struct Services {
    pub redis: RedisTarget,
    pub postgres_version: Option<String>,
}

/// Redis's address and the settings it is restarted with (read from the running server, so
/// it comes back as it was).
#[derive(Debug, Clone)]
pub struct RedisTarget {
    pub host: String,
    pub port: u16,
}

/// Refuses, with the reason, every fault in `faults` whose service cannot be restarted here.
pub fn check_restartable(
    faults: &[FaultKind],
    database: &DatabaseArgs,
    broker: &BrokerArgs,
    redis: &RedisArgs,
) -> anyhow::Result<Services> {
    let mut problems = Vec::new();
    let host_of = |url: &str| {
        url::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
    };
    // A cluster's URLs are comma-separated: every node must be here to be restarted.
    let local = |urls: &str| {
        urls.split(',')
            .all(|url| host_of(url.trim()).is_some_and(|h| is_loopback(&h)))
    };
    let redis_host = host_of(&redis.redis_url).unwrap_or_default();
    let redis_port = url::Url::parse(&redis.redis_url)
        .ok()
        .and_then(|u| u.port())
        .unwrap_or(6379);
    let mut postgres_version = None;
    for fault in faults {
        match fault {
            FaultKind::RedisRestart => {
                if !local(&redis.redis_url) {
                    problems.push(format!("{}: Redis is not on loopback", fault.as_str()));
                } else if !on_path("redis-server") || !on_path("redis-cli") {
                    problems.push(format!(
                        "{}: redis-server and redis-cli are needed to restart Redis",
                        fault.as_str()
                    ));
                }
            }
            FaultKind::RabbitmqRestart => {
                if !local(&broker.amqp_url) {
                    problems.push(format!("{}: RabbitMQ is not on loopback", fault.as_str()));
                } else if !succeeds(Command::new("rabbitmqctl").args(["-q", "status"])) {
                    problems.push(format!(
                        "{}: `rabbitmqctl status` fails (run as the broker's owner, e.g. root)",
                        fault.as_str()
                    ));
                }
            }
            FaultKind::PgKillConnections | FaultKind::PgRestart => {
                if !local(&database.database_url) {
                    problems.push(format!("{}: PostgreSQL is not on loopback", fault.as_str()));
                } else if *fault == FaultKind::PgRestart {
                    match postgres_cluster() {
                        Some(v) if on_path("pg_ctlcluster") => postgres_version = Some(v),
                        _ => problems.push(format!(
                            "{}: no pg_ctlcluster cluster under /etc/postgresql to restart",
                            fault.as_str()
                        )),
                    }
                }
            }
            FaultKind::KillDecider => {}
        }
    }
    anyhow::ensure!(
        problems.is_empty(),
        "--faults restarts the services it runs on, and cannot here: {}. Run with --fault \
         naming only the faults this machine allows.",
        problems.join("; ")
    );
    Ok(Services {
        redis: RedisTarget {
            host: redis_host,
            port: redis_port,
        },
        postgres_version,
    })
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .chain(["/usr/sbin".into(), "/usr/local/sbin".into(), "/sbin".into()])
            .any(|dir| dir.join(program).is_file())
    })
}

/// Runs a service tool with the sbin folders on PATH (non-login shells may lack them).
fn run(command: &mut Command) -> std::io::Result<std::process::Output> {
    let path = format!(
        "{}:/usr/local/sbin:/usr/sbin:/sbin",
        std::env::var("PATH").unwrap_or_default()
    );
    command.env("PATH", path).stdin(Stdio::null()).output()
}

fn succeeds(command: &mut Command) -> bool {
    run(command).is_ok_and(|o| o.status.success())
}

/// Runs a service tool; an error says what it printed.
fn run_ok(command: &mut Command) -> anyhow::Result<String> {
    let output = run(command)?;
    anyhow::ensure!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The newest PostgreSQL cluster version under /etc/postgresql, e.g. "15".
fn postgres_cluster() -> Option<String> {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|v| std::path::Path::new(&format!("/etc/postgresql/{v}/main")).is_dir())
        .collect();
    versions.sort_by_key(|v| v.parse::<u32>().unwrap_or(0));
    versions.pop()
}

/// A stopped service; [`restore`](Self::restore) starts it again, and so does `Drop` if the
/// run ends first.
pub struct Outage {
    start: Option<Start>,
}

/// How to start a stopped service again.
enum Start {
    Redis {
        target: RedisTarget,
        config: Vec<String>,
    },
    Rabbitmq,
    Postgres {
        version: String,
    },
}

impl Start {
    fn run(&self) -> anyhow::Result<()> {
        match self {
            Start::Redis { target, config } => {
                let port = target.port.to_string();
                let mut command = Command::new("redis-server");
                command
                    .args([
                        "--daemonize",
                        "yes",
                        "--bind",
                        &target.host,
                        "--port",
                        &port,
                    ])
                    .args(config);
                run_ok(&mut command)?;
            }
            Start::Rabbitmq => {
                run_ok(Command::new("rabbitmqctl").arg("start_app"))?;
            }
            Start::Postgres { version } => {
                run_ok(Command::new("pg_ctlcluster").args([
                    "--skip-systemctl-redirect",
                    version,
                    "main",
                    "start",
                ]))?;
            }
        }
        Ok(())
    }
}

impl Outage {
    /// Stops Redis without saving; it restarts with the settings it ran with (save,
    /// appendonly, appendfsync, dir), so its persistence is what the machine's is.
    pub fn stop_redis(target: &RedisTarget) -> anyhow::Result<Self> {
        let port = target.port.to_string();
        let cli = || {
            let mut c = Command::new("redis-cli");
            c.args(["-h", &target.host, "-p", &port]);
            c
        };
        let mut config = Vec::new();
        for setting in ["save", "appendonly", "appendfsync", "dir"] {
            let out = run_ok(cli().args(["config", "get", setting]))?;
            let value = out.lines().nth(1).unwrap_or_default().to_owned();
            config.push(format!("--{setting}"));
            config.push(value);
        }
        // SHUTDOWN closes the connection: its exit status says nothing, so wait for the port.
        let _ = run(cli().args(["shutdown", "nosave"]));
        let deadline = Instant::now() + Duration::from_secs(10);
        while succeeds(cli().arg("ping")) {
            anyhow::ensure!(Instant::now() < deadline, "Redis did not shut down");
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Self {
            start: Some(Start::Redis {
                target: target.clone(),
                config,
            }),
        })
    }

    pub fn stop_rabbitmq() -> anyhow::Result<Self> {
        run_ok(Command::new("rabbitmqctl").arg("stop_app"))?;
        Ok(Self {
            start: Some(Start::Rabbitmq),
        })
    }

    pub fn stop_postgres(version: &str) -> anyhow::Result<Self> {
        run_ok(Command::new("pg_ctlcluster").args([
            "--skip-systemctl-redirect",
            version,
            "main",
            "stop",
            "-m",
            "fast",
        ]))?;
        Ok(Self {
            start: Some(Start::Postgres {
                version: version.to_owned(),
            }),
        })
    }

    /// Starts the service again and waits until `answers` says it is back.
    pub async fn restore<F, Fut>(mut self, answers: F) -> anyhow::Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        if let Some(start) = self.start.take() {
            tokio::task::spawn_blocking(move || start.run()).await??;
        }
        let deadline = Instant::now() + COME_BACK_WAIT;
        while !answers().await {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the service did not answer within {COME_BACK_WAIT:?} of being started again"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if let Some(start) = self.start.take() {
            eprintln!("bench --faults: starting the stopped service again after a failed run");
            if let Err(e) = start.run() {
                eprintln!("bench --faults: could not start it again: {e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        broker: BrokerArgs,
        #[command(flatten)]
        redis: RedisArgs,
    }

    #[test]
    fn a_service_not_on_loopback_is_refused_with_its_fault_named() {
        let flags = Flags::try_parse_from([
            "x",
            "--redis-url",
            "redis://10.1.2.3:6379",
            "--database-url",
            "postgres://postgres@db.example.com/seckill",
        ])
        .expect("flags parse");
        let error = check_restartable(
            &[FaultKind::RedisRestart, FaultKind::PgKillConnections],
            &flags.database,
            &flags.broker,
            &flags.redis,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("redis-restart: Redis is not on loopback"),
            "{error}"
        );
        assert!(
            error.contains("pg-kill-connections: PostgreSQL is not on loopback"),
            "{error}"
        );
        // Killing our own processes needs nothing of the services.
        assert!(
            check_restartable(
                &[FaultKind::KillDecider],
                &flags.database,
                &flags.broker,
                &flags.redis
            )
            .is_ok()
        );
    }

    #[test]
    fn loopback_names() {
        assert!(is_loopback("127.0.0.1") && is_loopback("localhost") && is_loopback("[::1]"));
        assert!(!is_loopback("10.0.0.1") && !is_loopback("redis"));
    }
}
