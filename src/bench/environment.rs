//! The machine and the versions a run was measured on, recorded beside its figures.

use serde::Serialize;
use sqlx::PgPool;

#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    pub cores: usize,
    pub os: String,
    pub seckill_version: &'static str,
    pub git_revision: &'static str,
    pub postgres_version: String,
    pub rabbitmq_version: String,
    pub redis_version: String,
}

/// Asks PostgreSQL, `rabbitmqctl` and `redis-server` their versions (`unknown` if they won't say).
pub(super) async fn read(pool: &PgPool) -> Environment {
    let postgres_version = sqlx::query_scalar::<_, String>("SHOW server_version")
        .fetch_one(pool)
        .await
        .unwrap_or_else(|_| "unknown".into());
    let rabbitmq_version = std::process::Command::new("rabbitmqctl")
        .args(["-q", "version"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let redis_version = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    Environment {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        os: std::env::consts::OS.to_string(),
        seckill_version: env!("CARGO_PKG_VERSION"),
        git_revision: option_env!("SECKILL_GIT_REVISION").unwrap_or("unknown"),
        postgres_version,
        rabbitmq_version,
        redis_version,
    }
}
