//! The machine, the versions and the settings a run was measured on, recorded beside its
//! figures: a number without them cannot be compared with another.

use serde::Serialize;
use sqlx::PgPool;

use crate::config::{BrokerArgs, ConsumerArgs, DatabaseArgs, PathArgs};

#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    pub cores: usize,
    /// Memory of the machine, MiB (0 where /proc is not there).
    pub memory_mib: u64,
    pub os: String,
    pub seckill_version: &'static str,
    pub git_revision: &'static str,
    pub postgres_version: String,
    pub rabbitmq_version: String,
    pub redis_version: String,
    /// The settings that decide the figures.
    pub settings: Settings,
}

/// What decides how fast the paths can go, besides the machine.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Partition queues (`SECKILL_PARTITIONS`).
    pub partitions: u16,
    /// `classic` or `quorum` (`SECKILL_QUEUE_TYPE`).
    pub queue_type: String,
    /// Requests per consumer batch, at most (`SECKILL_BATCH_SIZE_MAX`).
    pub consumer_batch_size_max: u16,
    /// Wait for a batch to fill, ms (`SECKILL_BATCH_LINGER_MS`).
    pub consumer_batch_linger_ms: u64,
    /// Unacknowledged deliveries per partition (`SECKILL_PREFETCH`).
    pub consumer_prefetch: u16,
    /// PostgreSQL connections per pool (`SECKILL_DB_POOL_MAX`); the bench's API and consumer
    /// each have one.
    pub db_pool_max: u32,
    /// Optimistic path's retries (`SECKILL_OPTIMISTIC_RETRIES_MAX`).
    pub optimistic_retries_max: u32,
    /// PostgreSQL's `synchronous_commit` (every commit waits for its WAL flush when `on`).
    pub synchronous_commit: String,
    /// PostgreSQL's `max_connections`.
    pub postgres_max_connections: String,
    /// PostgreSQL's `shared_buffers`.
    pub postgres_shared_buffers: String,
}

/// The configuration the bench ran with.
pub(super) struct Config<'a> {
    pub database: &'a DatabaseArgs,
    pub broker: &'a BrokerArgs,
    pub consumer: &'a ConsumerArgs,
    pub paths: &'a PathArgs,
}

/// Asks PostgreSQL, RabbitMQ (`rabbitmqctl`) and Redis their versions and settings (`unknown`
/// if they won't say).
pub(super) async fn read(pool: &PgPool, config: &Config<'_>) -> Environment {
    Environment {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_mib: memory_mib(),
        os: std::env::consts::OS.to_string(),
        seckill_version: env!("CARGO_PKG_VERSION"),
        git_revision: option_env!("SECKILL_GIT_REVISION").unwrap_or("unknown"),
        postgres_version: show(pool, "server_version").await,
        rabbitmq_version: rabbitmq_version(),
        redis_version: redis_version(&config.paths.redis.redis_url).await,
        settings: Settings {
            partitions: config.broker.partitions,
            queue_type: format!("{:?}", config.broker.queue_type).to_lowercase(),
            consumer_batch_size_max: config.consumer.batch_size_max,
            consumer_batch_linger_ms: config.consumer.batch_linger_ms,
            consumer_prefetch: config.consumer.prefetch,
            db_pool_max: config.database.db_pool_max,
            optimistic_retries_max: config.paths.optimistic_retries_max,
            synchronous_commit: show(pool, "synchronous_commit").await,
            postgres_max_connections: show(pool, "max_connections").await,
            postgres_shared_buffers: show(pool, "shared_buffers").await,
        },
    }
}

/// The command line as typed, each argument shell-quoted where it needs it.
pub fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One PostgreSQL setting.
async fn show(pool: &PgPool, setting: &str) -> String {
    sqlx::query_scalar::<_, String>("SELECT current_setting($1)")
        .bind(setting)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|_| "unknown".into())
}

fn rabbitmq_version() -> String {
    std::process::Command::new("rabbitmqctl")
        .args(["-q", "version"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The server's `redis_version`, from `INFO server`.
async fn redis_version(url: &str) -> String {
    let asked = async {
        let client = redis::Client::open(url).ok()?;
        let mut connection = client.get_multiplexed_async_connection().await.ok()?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut connection)
            .await
            .ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .map(|v| v.trim().to_string())
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), asked)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| "unknown".into())
}

/// `MemTotal` of /proc/meminfo, MiB.
fn memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_is_read_from_proc() {
        assert!(super::memory_mib() > 100);
    }
}
