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

    /// Longest, in milliseconds, a statement waits for a lock (the item's row on `pessimistic`
    /// and `conditional`, its advisory lock on `advisory`); past it the request is answered 503
    /// with `Retry-After` instead of queueing behind the lock without bound. At most the
    /// statement timeout (30 s), which would end the wait anyway.
    #[arg(long, env = "SECKILL_DB_LOCK_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=30_000))]
    pub db_lock_timeout_ms: u64,
}

/// Where RabbitMQ is, and the names and shape of seckill's queues on it.
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// RabbitMQ URL (the vhost is the path, `%2f` for `/`), or the URLs of a cluster's nodes
    /// separated by commas: a client connects to the first that answers and moves to the next
    /// when its node is lost.
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

    /// Most messages one partition queue holds (a batch message counts once); past it publishes
    /// are refused (`reject-publish`) and the API answers 503, so the earliest buyers are never
    /// the ones dropped.
    #[arg(long, env = "SECKILL_QUEUE_LENGTH_MAX", default_value_t = 1_000_000)]
    pub queue_length_max: u32,

    /// Kind of partition queue: `classic` (one node; fastest) or `quorum` (replicated over a
    /// RabbitMQ cluster by Raft: survives the loss of a minority of nodes, costs more per
    /// message). Changing it on existing queues needs them deleted first (drain them).
    #[arg(long, env = "SECKILL_QUEUE_TYPE", value_enum, default_value_t = QueueType::Classic)]
    pub queue_type: QueueType,

    /// RabbitMQ users whose item announcements (`sold_out`, `restocked` on
    /// `{prefix}.item-events`) this process believes, separated by commas; any other
    /// announcement is ignored. The broker refuses a message whose `user_id` is not its
    /// connection's user, so `user_id` says who published. Unset: the user of `AMQP_URL` (its
    /// first node), right when every seckill process connects as one user. With a user per role,
    /// list the consumers' user (they announce `sold_out`) and the API's (it announces
    /// `restocked`).
    #[arg(long, env = "SECKILL_ANNOUNCER_USERS")]
    pub announcer_users: Option<String>,
}

/// See [`BrokerArgs::queue_type`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QueueType {
    Classic,
    Quorum,
}

/// How the consumer daemon batches.
#[derive(Debug, Clone, Args)]
pub struct ConsumerArgs {
    /// Most requests decided and committed in one database transaction. A batch message counts
    /// its requests and is taken whole, so a batch may pass this by one message's requests.
    #[arg(long, env = "SECKILL_BATCH_SIZE_MAX", default_value_t = 500,
          value_parser = clap::value_parser!(u16).range(1..=10_000))]
    pub batch_size_max: u16,

    /// Longest wait, in milliseconds, for a batch to fill once its first request arrived.
    #[arg(long, env = "SECKILL_BATCH_LINGER_MS", default_value_t = 2)]
    pub batch_linger_ms: u64,

    /// Unacknowledged deliveries the broker may push per partition (must be >= the batch size).
    /// A delivery is a message: one request, or a batch of them.
    #[arg(long, env = "SECKILL_PREFETCH", default_value_t = 1000)]
    pub prefetch: u16,

    /// Seconds an item's state (stock left, buyers) stays in memory after its last request;
    /// then it is dropped, and loaded again from the database if a request comes. Bounds the
    /// daemon's memory by the items being sold now, not every item ever sold.
    #[arg(long, env = "SECKILL_ITEM_IDLE_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub item_idle_secs: u64,

    /// How often, in milliseconds, a daemon renews its lease in `consumer_leases` (its proof of
    /// life to the other daemons) and re-reads who is alive, to balance partitions among them.
    #[arg(long, env = "SECKILL_LEASE_HEARTBEAT_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub lease_heartbeat_ms: u64,

    /// How long, in milliseconds, a lease outlives its last renewal (judged by PostgreSQL's
    /// clock). A daemon that stops renewing (killed, paused, cut off) counts as gone after it,
    /// and its share is rebalanced. At least twice the heartbeat.
    #[arg(long, env = "SECKILL_LEASE_TTL_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub lease_ttl_ms: u64,

    /// How long, in milliseconds, a daemon must have held its lease before partitions are
    /// handed over to it: daemons starting together, or one restarting in a loop, cause one
    /// rebalance rather than many.
    #[arg(long, env = "SECKILL_LEASE_SETTLE_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub lease_settle_ms: u64,
}

impl ConsumerArgs {
    /// Refuses settings that cannot work together.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.prefetch >= self.batch_size_max,
            "prefetch ({}) must be at least the batch size ({}), or batches can never fill",
            self.prefetch,
            self.batch_size_max
        );
        anyhow::ensure!(
            self.lease_ttl_ms >= 2 * self.lease_heartbeat_ms,
            "the lease TTL ({} ms) must be at least twice the heartbeat ({} ms), or one late \
             heartbeat makes a live daemon look gone",
            self.lease_ttl_ms,
            self.lease_heartbeat_ms
        );
        Ok(())
    }

    pub fn batch_linger(&self) -> Duration {
        Duration::from_millis(self.batch_linger_ms)
    }

    pub fn item_idle(&self) -> Duration {
        Duration::from_secs(self.item_idle_secs)
    }

    pub fn lease_heartbeat(&self) -> Duration {
        Duration::from_millis(self.lease_heartbeat_ms)
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }

    pub fn lease_settle(&self) -> Duration {
        Duration::from_millis(self.lease_settle_ms)
    }
}

/// Hides the password of a URL (`postgres://user:***@host/db`), or of each URL of a
/// comma-separated list (a cluster's nodes), for logs and errors.
pub fn redact_url(raw: &str) -> String {
    if raw.contains(',') {
        return raw
            .split(',')
            .map(|u| redact_url(u.trim()))
            .collect::<Vec<_>>()
            .join(",");
    }
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
    use super::{ServeArgs, redact_url};

    #[test]
    fn a_public_bind_needs_both_tokens_or_an_explicit_yes() {
        let public = |admin: Option<&str>, producer: Option<&str>, allow: bool| ServeArgs {
            bind: "0.0.0.0:8080".parse().unwrap(),
            admin_token: admin.map(str::to_owned),
            producer_token: producer.map(str::to_owned),
            allow_public_without_token: allow,
            ..ServeArgs::loopback()
        };
        assert!(ServeArgs::loopback().check_exposure().is_ok());
        let neither = public(None, None, false).check_exposure().unwrap_err();
        let neither = neither.to_string();
        assert!(
            neither.contains("SECKILL_ADMIN_TOKEN") && neither.contains("SECKILL_PRODUCER_TOKEN")
        );
        let no_producer = public(Some("a"), None, false).check_exposure().unwrap_err();
        assert!(
            !no_producer.to_string().contains("SECKILL_ADMIN_TOKEN"),
            "{no_producer}"
        );
        assert!(public(None, Some("p"), false).check_exposure().is_err());
        assert!(public(Some("a"), Some("p"), false).check_exposure().is_ok());
        assert!(public(None, None, true).check_exposure().is_ok());
        let empty = public(Some("a"), Some(""), false)
            .check_exposure()
            .unwrap_err();
        assert!(
            empty
                .to_string()
                .contains("SECKILL_PRODUCER_TOKEN is set but empty")
        );
        let loopback_empty = ServeArgs {
            admin_token: Some(" ".into()),
            ..ServeArgs::loopback()
        };
        assert!(loopback_empty.check_exposure().is_err());
    }

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
        assert_eq!(
            redact_url("amqp://g:s1@a:5672/%2f, amqp://g:s2@b:5673/%2f"),
            "amqp://g:***@a:5672/%2f,amqp://g:***@b:5673/%2f"
        );
    }
}

/// The HTTP API.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address the API listens on.
    #[arg(long, env = "SECKILL_BIND", default_value = "127.0.0.1:8080")]
    pub bind: std::net::SocketAddr,

    /// Bearer token required by admin endpoints (`POST /items`, restocks). Unset: no check,
    /// and the server refuses to listen beyond loopback unless `--allow-public-without-token`.
    #[arg(long, env = "SECKILL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Bearer token required by the order routes (`POST /orders`, `GET /orders/{id}`): only the
    /// shop's backend, which authenticated the buyer it names in `user_id`, should hold it.
    /// Unset: anyone who reaches the port may order as any user, and the server refuses to
    /// listen beyond loopback unless `--allow-public-without-token`.
    #[arg(long, env = "SECKILL_PRODUCER_TOKEN", hide_env_values = true)]
    pub producer_token: Option<String>,

    /// Listen on a non-loopback address even without the admin and producer tokens (behind a
    /// gateway that does the checking).
    #[arg(long, env = "SECKILL_ALLOW_PUBLIC_WITHOUT_TOKEN")]
    pub allow_public_without_token: bool,

    /// Milliseconds an item announced sold out is answered `sold_out` at once, without
    /// publishing (each new announcement renews it; a restock ends it). 0: never shed, every
    /// request goes to the decider.
    #[arg(long, env = "SECKILL_SOLD_OUT_TTL_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub sold_out_ttl_ms: u64,

    #[command(flatten)]
    pub limits: ApiLimits,

    #[command(flatten)]
    pub publish: PublishArgs,
}

impl ServeArgs {
    /// An API on a free loopback port, without admin token, with the default bounds and sold-out
    /// shedding (a demo's or a test's).
    pub fn loopback() -> Self {
        Self {
            bind: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_token: None,
            producer_token: None,
            allow_public_without_token: false,
            sold_out_ttl_ms: 5000,
            limits: ApiLimits::default(),
            publish: PublishArgs::default(),
        }
    }

    /// Refuses an empty token, and to listen beyond loopback without an admin token (anyone could
    /// create items) or a producer token (anyone could order as any user), unless the operator
    /// said so.
    pub fn check_exposure(&self) -> anyhow::Result<()> {
        // An empty token would admit a request with no token at all.
        for (token, name) in [
            (&self.admin_token, "SECKILL_ADMIN_TOKEN"),
            (&self.producer_token, "SECKILL_PRODUCER_TOKEN"),
        ] {
            if token.as_deref().is_some_and(|t| t.trim().is_empty()) {
                anyhow::bail!("{name} is set but empty; give it a value or unset it");
            }
        }
        if self.bind.ip().is_loopback() || self.allow_public_without_token {
            return Ok(());
        }
        let missing: Vec<&str> = [
            (
                self.admin_token.is_none(),
                "SECKILL_ADMIN_TOKEN (anyone could create items)",
            ),
            (
                self.producer_token.is_none(),
                "SECKILL_PRODUCER_TOKEN (anyone could order as any user)",
            ),
        ]
        .into_iter()
        .filter_map(|(missing, what)| missing.then_some(what))
        .collect();
        if !missing.is_empty() {
            anyhow::bail!(
                "refusing to listen on {} without {}; set the tokens or pass \
                 --allow-public-without-token",
                self.bind,
                missing.join(" and ")
            );
        }
        Ok(())
    }

    /// How long a sold-out mark lasts; `None` when shedding is off.
    pub fn sold_out_ttl(&self) -> Option<Duration> {
        (self.sold_out_ttl_ms > 0).then(|| Duration::from_millis(self.sold_out_ttl_ms))
    }
}

/// The API's bounds under overload: past them it answers at once rather than queue work and
/// grow memory and latency without limit.
#[derive(Debug, Clone, Copy, Args)]
pub struct ApiLimits {
    /// Most HTTP requests handled at once (`/healthz` and `/metrics` aside); past it a request
    /// is answered `503` at once (load shedding), with `Retry-After`.
    #[arg(long, env = "SECKILL_HTTP_IN_FLIGHT_MAX", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub http_in_flight_max: u32,

    /// Most clients waiting (`?wait=`) for a decision at once; past it a request is answered
    /// `202 pending` without waiting (the client asks `GET /orders/{id}` later).
    #[arg(long, env = "SECKILL_REPLY_WAITERS_MAX", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub reply_waiters_max: u32,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            http_in_flight_max: 4096,
            reply_waiters_max: 10_000,
        }
    }
}

/// How the API batches requests into broker messages. The broker's cost is per message, not per
/// byte: requests for one partition that arrive while its previous messages await the broker's
/// confirm go out together as one message (group commit, applied to publishing: no delay when the
/// line is idle, larger messages as load grows). See `docs/PROTOCOL.md` for the batch body.
#[derive(Debug, Clone, Copy, Args)]
pub struct PublishArgs {
    /// Most requests one broker message carries. 1: one request per message, as a producer
    /// without batching sends them.
    #[arg(long, env = "SECKILL_PUBLISH_BATCH_MAX", default_value_t = PublishArgs::default().publish_batch_max,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub publish_batch_max: u16,

    /// Most bytes of one batch message's body (a request is about 100 bytes). At most the
    /// consumers' limit of 262,144.
    #[arg(long, env = "SECKILL_PUBLISH_BATCH_BYTES_MAX", default_value_t = PublishArgs::default().publish_batch_bytes_max,
          value_parser = clap::value_parser!(u32).range(4096..=262_144))]
    pub publish_batch_bytes_max: u32,

    /// Messages of one partition awaiting the broker's confirm at once; requests that come
    /// meanwhile wait and go out together in the next message.
    #[arg(long, env = "SECKILL_PUBLISH_IN_FLIGHT_MAX", default_value_t = PublishArgs::default().publish_in_flight_max,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub publish_in_flight_max: u16,
}

impl Default for PublishArgs {
    fn default() -> Self {
        Self {
            publish_batch_max: 64,
            publish_batch_bytes_max: 65_536,
            publish_in_flight_max: 4,
        }
    }
}

/// Where Redis is, for the `redis-*` purchase paths. The connection is opened lazily: the API
/// starts (and every other path works) without Redis.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis URL.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// Prefix of every Redis key seckill writes (`{prefix}:item:{id}:stock`, ...), so several
    /// deployments (or tests) can share one Redis.
    #[arg(long, env = "SECKILL_REDIS_PREFIX", default_value = "seckill")]
    pub redis_prefix: String,
}

/// How the synchronous purchase paths (`POST /orders?path=NAME`, see `seckill serve --help`)
/// behave under contention.
#[derive(Debug, Clone, Args)]
pub struct PathArgs {
    /// Retries of a lost compare-and-set (paths `optimistic` and `redis-watch`), each after a
    /// jittered, growing delay. Past it the request is answered `failed_retry`: nothing sold.
    #[arg(long, env = "SECKILL_OPTIMISTIC_RETRIES_MAX", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub optimistic_retries_max: u32,

    /// Lease of the `redis-lock` path's lock, in milliseconds. Shorter than the work under the
    /// lock, a second holder gets in: the fencing token stops the first from writing (no
    /// oversell), but its work is lost and retried.
    #[arg(long, env = "SECKILL_REDIS_LOCK_TTL_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub redis_lock_ttl_ms: u64,

    /// Longest a `redis-lock` request waits for the lock, in milliseconds; then it answers 503
    /// (nothing decided, safe to retry with the same request_id).
    #[arg(long, env = "SECKILL_REDIS_LOCK_WAIT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub redis_lock_wait_ms: u64,

    /// Expiry of a `lock-table` lock, in milliseconds: a lock row older than this is taken for
    /// a dead holder's, deleted and taken over. Shorter than the work under the lock, it is
    /// taken over from a holder that still works — two holders at once, and only the schema's
    /// constraints (stock never negative, one order per user) between them and an oversell.
    #[arg(long, env = "SECKILL_LOCK_TABLE_TTL_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub lock_table_ttl_ms: u64,

    /// Longest a `lock-table` request waits for the lock, in milliseconds; then it answers 503
    /// (nothing decided, safe to retry with the same request_id).
    #[arg(long, env = "SECKILL_LOCK_TABLE_WAIT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub lock_table_wait_ms: u64,

    #[command(flatten)]
    pub redis: RedisArgs,
}

/// The background workers of the asynchronous rival paths (`redis-stream`'s stream writer,
/// `redis-mq`'s queue consumers): they decide, or write down, what those paths' API answered.
/// `seckill serve` runs them in its own process unless `--no-rival-workers`; `seckill consume
/// --rival-workers` runs them beside the queue path's consumer, so that they can be stopped,
/// scaled or killed apart from the API.
#[derive(Debug, Clone, Args)]
pub struct RivalArgs {
    #[command(flatten)]
    pub stream_writer: StreamWriterArgs,

    /// Competing consumers of the `redis-mq` path's queue in this process, each deciding one
    /// message at a time in its own PostgreSQL transaction (its own channel, one connection).
    /// They all update the item's row, so past a few more of them only queue on its lock.
    #[arg(long, env = "SECKILL_REDIS_MQ_CONSUMERS", default_value_t = RivalArgs::default().redis_mq_consumers,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub redis_mq_consumers: u16,

    /// Unacknowledged messages the broker may push to each `redis-mq` consumer: enough that a
    /// consumer never waits on the network between two messages. A consumer killed holding them
    /// hands them all back, to be decided by the others.
    #[arg(long, env = "SECKILL_REDIS_MQ_PREFETCH", default_value_t = RivalArgs::default().redis_mq_prefetch,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub redis_mq_prefetch: u16,
}

impl Default for RivalArgs {
    /// The same as clap's defaults.
    fn default() -> Self {
        Self {
            stream_writer: StreamWriterArgs::default(),
            redis_mq_consumers: 4,
            redis_mq_prefetch: 200,
        }
    }
}

/// The `redis-stream` path's writer: it reads the decisions the API answered off the Redis
/// stream (`XREADGROUP`, one consumer group shared by every writer) and writes them to
/// PostgreSQL, a batch per transaction, acknowledging each batch once committed.
#[derive(Debug, Clone, Args)]
pub struct StreamWriterArgs {
    /// Most stream entries one writer reads at once and writes in one transaction: larger
    /// batches cost fewer commits under load; an idle stream's entries go out at once anyway.
    #[arg(long, env = "SECKILL_STREAM_BATCH_MAX", default_value_t = StreamWriterArgs::default().stream_batch_max,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub stream_batch_max: u32,

    /// Longest, in milliseconds, a read waits for new entries (`XREADGROUP … BLOCK`) before the
    /// writer looks for idle entries to claim and for shutdown again. Below the Redis reply
    /// timeout (5 s): a blocked read must not look like a dead connection.
    #[arg(long, env = "SECKILL_STREAM_BLOCK_MS", default_value_t = StreamWriterArgs::default().stream_block_ms,
          value_parser = clap::value_parser!(u64).range(1..=2_000))]
    pub stream_block_ms: u64,

    /// Milliseconds an entry delivered to a writer may stay unacknowledged before any writer
    /// claims it (`XAUTOCLAIM`): how long the entries of a writer that died wait for another.
    /// Shorter than a slow batch's write, two writers work on one entry (still one order: the
    /// database decides), so keep it well above the time a batch takes.
    #[arg(long, env = "SECKILL_STREAM_CLAIM_IDLE_MS", default_value_t = StreamWriterArgs::default().stream_claim_idle_ms,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub stream_claim_idle_ms: u64,
}

impl Default for StreamWriterArgs {
    fn default() -> Self {
        Self {
            stream_batch_max: 500,
            stream_block_ms: 200,
            stream_claim_idle_ms: 10_000,
        }
    }
}

impl StreamWriterArgs {
    pub fn claim_idle(&self) -> Duration {
        Duration::from_millis(self.stream_claim_idle_ms)
    }
}

impl PathArgs {
    pub fn lock_table_ttl(&self) -> Duration {
        Duration::from_millis(self.lock_table_ttl_ms)
    }

    pub fn lock_table_wait(&self) -> Duration {
        Duration::from_millis(self.lock_table_wait_ms)
    }

    pub fn redis_lock_ttl(&self) -> Duration {
        Duration::from_millis(self.redis_lock_ttl_ms)
    }

    pub fn redis_lock_wait(&self) -> Duration {
        Duration::from_millis(self.redis_lock_wait_ms)
    }

    /// The settings from the environment and the defaults, as the command line would give them
    /// without flags: for callers that have no command line.
    pub fn from_env() -> anyhow::Result<Self> {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            paths: PathArgs,
        }
        use clap::Parser as _;
        Ok(Only::try_parse_from(["seckill"])?.paths)
    }
}
