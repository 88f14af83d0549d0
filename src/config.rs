//! Configuration: every setting is a flag with an environment variable behind it and a default
//! that works against the services of `docker-compose.yml` (or this project's CI machine).
//! Secrets (passwords in URLs, the admin token) never appear in logs: see [`redact_url`].

use std::time::Duration;

use clap::Args;

/// Where PostgreSQL is.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL. The database is created if it does not exist, and migrated.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/seckill",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Most connections this process opens to PostgreSQL.
    #[arg(long, env = "SECKILL_DB_POOL_MAX", default_value_t = 16)]
    pub db_pool_max: u32,
}

/// Where RabbitMQ is, and the names and shape of seckill's queues on it.
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// RabbitMQ URL (the vhost is the path, `%2f` for `/`).
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,

    /// Prefix of every exchange and queue seckill declares, so several deployments (or tests)
    /// can share one broker.
    #[arg(long, env = "SECKILL_QUEUE_PREFIX", default_value = "seckill")]
    pub queue_prefix: String,

    /// Number of partition queues items are hashed onto (`item_id mod partitions`). Producers
    /// and consumers must agree on it; changing it re-routes items, so drain the queues first.
    #[arg(long, env = "SECKILL_PARTITIONS", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub partitions: u16,

    /// Most messages one partition queue holds; past it publishes are refused (`reject-publish`)
    /// and the API answers 503, so the earliest buyers are never the ones dropped.
    #[arg(long, env = "SECKILL_QUEUE_LENGTH_MAX", default_value_t = 1_000_000)]
    pub queue_length_max: u32,
}

/// How the consumer daemon batches.
#[derive(Debug, Clone, Args)]
pub struct ConsumerArgs {
    /// Most requests decided and committed in one database transaction.
    #[arg(long, env = "SECKILL_BATCH_SIZE_MAX", default_value_t = 500,
          value_parser = clap::value_parser!(u16).range(1..=10_000))]
    pub batch_size_max: u16,

    /// Longest wait, in milliseconds, for a batch to fill once its first request arrived.
    #[arg(long, env = "SECKILL_BATCH_LINGER_MS", default_value_t = 2)]
    pub batch_linger_ms: u64,

    /// Unacknowledged deliveries the broker may push per partition (must be >= the batch size).
    #[arg(long, env = "SECKILL_PREFETCH", default_value_t = 1000)]
    pub prefetch: u16,
}

impl ConsumerArgs {
    pub fn batch_linger(&self) -> Duration {
        Duration::from_millis(self.batch_linger_ms)
    }
}

/// Hides the password of a URL (`postgres://user:***@host/db`), for logs and errors.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        Ok(url) => url.to_string(),
        Err(_) => "<unparseable url>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/seckill"),
            "postgres://postgres@127.0.0.1/seckill"
        );
        assert!(!redact_url("not a url secret").contains("secret"));
    }
}

/// The HTTP API.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address the API listens on.
    #[arg(long, env = "SECKILL_BIND", default_value = "127.0.0.1:8080")]
    pub bind: std::net::SocketAddr,

    /// Bearer token required by admin endpoints (`POST /items`). Unset: no check, and the
    /// server refuses to listen beyond loopback unless `--allow-public-without-token` is given.
    #[arg(long, env = "SECKILL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Listen on a non-loopback address even without an admin token.
    #[arg(long, env = "SECKILL_ALLOW_PUBLIC_WITHOUT_TOKEN")]
    pub allow_public_without_token: bool,
}
