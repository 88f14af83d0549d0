//! Test harness: every test gets its own database and its own queue prefix on the real
//! PostgreSQL and RabbitMQ, so tests run in parallel and repeatedly without seeing each other.
#![allow(dead_code)]

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::migrate::MigrateDatabase;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use seckill::app::{App, Settings};
use seckill::broker::topology::Topology;
use seckill::config::{
    BrokerArgs, ConsumerArgs, DatabaseArgs, PathArgs, RedisArgs, RivalArgs, ServeArgs,
};

pub const PARTITIONS: u16 = 4;

fn base_database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/seckill".into())
}

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub struct TestEnv {
    pub database: DatabaseArgs,
    pub broker: BrokerArgs,
    pub pool: PgPool,
    pub topology: Topology,
}

impl TestEnv {
    /// A fresh, migrated database and a fresh queue prefix.
    pub async fn new() -> Self {
        Self::with_broker(|_| {}).await
    }

    /// Like [`TestEnv::new`], with broker settings changed before the topology is declared.
    pub async fn with_broker(configure: impl FnOnce(&mut BrokerArgs)) -> Self {
        let tag = Uuid::new_v4().simple().to_string()[..12].to_string();
        let mut url = url::Url::parse(&base_database_url()).expect("DATABASE_URL parses");
        url.set_path(&format!("seckill_test_{tag}"));
        let database = DatabaseArgs {
            database_url: url.to_string(),
            db_pool_max: 16,
            db_lock_timeout_ms: 10_000,
        };
        let mut broker = BrokerArgs {
            amqp_url: amqp_url(),
            queue_prefix: format!("seckill-test-{tag}"),
            partitions: PARTITIONS,
            queue_length_max: 1_000_000,
            queue_type: seckill::config::QueueType::Classic,
            announcer_users: None,
        };
        configure(&mut broker);
        let pool = seckill::store::connect(&database)
            .await
            .expect("test database");
        let topology = Topology::new(&broker);
        let env = Self {
            database,
            broker,
            pool,
            topology,
        };
        let channel = env.channel().await;
        env.topology
            .declare(&channel)
            .await
            .expect("declare topology");
        env
    }

    /// The lock-based paths' settings, with this test's own Redis key prefix (its queue prefix).
    pub fn path_args(&self) -> PathArgs {
        PathArgs {
            optimistic_retries_max: 8,
            redis_lock_ttl_ms: 2000,
            redis_lock_wait_ms: 30_000,
            lock_table_ttl_ms: 2000,
            lock_table_wait_ms: 30_000,
            redis: RedisArgs {
                redis_url: std::env::var("REDIS_URL")
                    .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
                redis_prefix: self.broker.queue_prefix.clone(),
            },
        }
    }

    pub fn consumer_args(&self) -> ConsumerArgs {
        ConsumerArgs {
            batch_size_max: 200,
            batch_linger_ms: 2,
            prefetch: 400,
            item_idle_secs: 300,
            lease_heartbeat_ms: 1000,
            lease_ttl_ms: 10_000,
            lease_settle_ms: 10_000,
        }
    }

    pub async fn channel(&self) -> Channel {
        let connection = seckill::broker::connect(&self.broker.amqp_url, "seckill-test")
            .await
            .expect("broker connection");
        let channel = connection.create_channel().await.expect("channel");
        // Keep the connection alive as long as the test runs.
        std::mem::forget(connection);
        channel
    }

    /// Starts the API in-process on a free port.
    pub async fn start_api(&self, admin_token: Option<&str>) -> TestApi {
        self.start_api_with(admin_token, None).await
    }

    /// An API that answers `sold_out` at the door once an item is announced sold out, each mark
    /// lasting `sold_out_ttl` (see `seckill::shedding`).
    pub async fn start_api_shedding(&self, sold_out_ttl: Duration) -> TestApi {
        self.start_api_with(None, Some(sold_out_ttl)).await
    }

    async fn start_api_with(
        &self,
        admin_token: Option<&str>,
        sold_out_ttl: Option<Duration>,
    ) -> TestApi {
        let serve = ServeArgs {
            admin_token: admin_token.map(str::to_owned),
            sold_out_ttl_ms: sold_out_ttl.map_or(0, |ttl| ttl.as_millis() as u64),
            ..ServeArgs::loopback()
        };
        self.start_api_configured(serve, self.path_args()).await
    }

    /// Starts the API in-process, through the composition root, with these settings.
    pub async fn start_api_configured(&self, serve: ServeArgs, paths: PathArgs) -> TestApi {
        let shutdown = CancellationToken::new();
        let settings = Settings {
            broker: self.broker.clone(),
            rival_workers: Some((RivalArgs::default(), paths.redis.clone())),
            api: Some((serve, paths)),
            consumer: None,
            metrics_bind: None,
        };
        let app = App::start(self.pool.clone(), settings, shutdown.clone())
            .await
            .expect("start the API");
        TestApi {
            base: app.api_url().expect("an API"),
            http: reqwest::Client::new(),
            shutdown,
            _app: Some(app),
        }
    }

    /// Starts a consumer in this process, through the composition root; `cancel()` stops it.
    pub async fn start_consumer(&self) -> InProcess {
        let shutdown = CancellationToken::new();
        let settings = Settings {
            broker: self.broker.clone(),
            api: None,
            consumer: Some(self.consumer_args()),
            metrics_bind: None,
            rival_workers: None,
        };
        let app = App::start(self.pool.clone(), settings, shutdown.clone())
            .await
            .expect("start the consumer");
        InProcess {
            shutdown,
            _app: app,
        }
    }

    /// Starts `seckill consume` as a child process (killable with SIGKILL).
    pub fn spawn_consumer_process(&self, failpoint: Option<&str>) -> tokio::process::Child {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_seckill"));
        cmd.arg("consume")
            .env("DATABASE_URL", &self.database.database_url)
            .env("AMQP_URL", &self.broker.amqp_url)
            .env("SECKILL_QUEUE_PREFIX", &self.broker.queue_prefix)
            .env("SECKILL_PARTITIONS", PARTITIONS.to_string())
            .env("SECKILL_BATCH_SIZE_MAX", "100")
            .env("SECKILL_PREFETCH", "300")
            .env("RUST_LOG", "seckill=info")
            .env_remove("SECKILL_FAILPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(fp) = failpoint {
            cmd.env("SECKILL_FAILPOINT", fp);
        }
        cmd.spawn().expect("spawn seckill consume")
    }

    pub async fn create_item(&self, stock: i64) -> i64 {
        seckill::store::create_item(&self.pool, "test item", stock)
            .await
            .expect("create item")
            .id
    }

    /// Publishes requests straight to the partition queues, like a producer without the API.
    /// Records them as accepted, as the API would, so the audit can find undecided ones.
    pub async fn publish_direct(&self, requests: &[seckill::domain::OrderRequest]) {
        let channel = self.record_then_confirming_channel(requests).await;
        for request in requests {
            let partition = self.topology.partition_of(request.item_id);
            channel
                .basic_publish(
                    self.topology.orders_exchange().into(),
                    self.topology.routing_key(partition).into(),
                    BasicPublishOptions::default(),
                    &seckill::broker::message::encode(request),
                    seckill::broker::message::request_properties(request.request_id, None),
                )
                .await
                .expect("publish");
        }
        channel.wait_for_confirms().await.expect("confirms");
    }

    /// Records the requests as accepted (as the API would), then opens a channel in confirm mode.
    async fn record_then_confirming_channel(
        &self,
        requests: &[seckill::domain::OrderRequest],
    ) -> Channel {
        seckill::store::record_accepted(&self.pool, requests)
            .await
            .expect("record accepted");
        let channel = self.channel().await;
        channel
            .confirm_select(Default::default())
            .await
            .expect("confirm_select");
        channel
    }

    /// Like [`TestEnv::publish_direct`], but `per_message` requests to a message: batch
    /// messages as `docs/PROTOCOL.md` describes them (the requests of one item, in order).
    pub async fn publish_direct_batched(
        &self,
        requests: &[seckill::domain::OrderRequest],
        per_message: usize,
    ) {
        use seckill::broker::message;
        let channel = self.record_then_confirming_channel(requests).await;
        for chunk in requests.chunks(per_message.max(1)) {
            let partition = self.topology.partition_of(chunk[0].item_id);
            assert!(
                chunk
                    .iter()
                    .all(|r| self.topology.partition_of(r.item_id) == partition),
                "a batch message carries one partition's requests"
            );
            let encoded: Vec<Vec<u8>> = chunk.iter().map(message::encode).collect();
            channel
                .basic_publish(
                    self.topology.orders_exchange().into(),
                    self.topology.routing_key(partition).into(),
                    BasicPublishOptions::default(),
                    &message::encode_batch(encoded.iter().map(Vec::as_slice)),
                    message::batch_properties(None),
                )
                .await
                .expect("publish");
        }
        channel.wait_for_confirms().await.expect("confirms");
    }

    pub async fn publish_raw(&self, partition: u16, body: &[u8], props: BasicProperties) {
        let channel = self.channel().await;
        channel
            .basic_publish(
                "".into(),
                self.topology.partition_queue(partition).into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .expect("publish raw");
    }

    /// Takes one message off the dead-letter queue, if any.
    pub async fn get_dead_letter(&self) -> Option<lapin::message::BasicGetMessage> {
        let channel = self.channel().await;
        channel
            .basic_get(
                self.topology.dead_letter_queue().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic_get")
    }

    pub async fn queue_depth(&self, partition: u16) -> u32 {
        let channel = self.channel().await;
        channel
            .queue_declare(
                self.topology.partition_queue(partition).into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare")
            .message_count()
    }

    pub async fn outcome_count(&self, item_id: i64) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outcomes WHERE item_id = $1")
            .bind(item_id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// How many of these requests have an outcome stored.
    pub async fn decided_count(&self, request_ids: &[Uuid]) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outcomes WHERE request_id = ANY($1)")
            .bind(request_ids)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Waits (bounded) until `n` outcomes exist for the item.
    pub async fn wait_for_outcomes(&self, item_id: i64, n: i64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let have = self.outcome_count(item_id).await;
            if have >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {have} of {n} requests decided within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asserts the audit is clean with every accepted request decided.
    pub async fn assert_audit_clean(&self, item_id: i64) -> seckill::audit::ItemAudit {
        let report = seckill::audit::audit_item(&self.pool, item_id, true)
            .await
            .unwrap()
            .expect("item exists");
        assert!(report.is_clean(), "audit: {report}");
        report
    }

    /// Drops the queues, the Redis keys and the database.
    pub async fn cleanup(self) {
        let channel = self.channel().await;
        let _ = self.topology.delete(&channel).await;
        if let Ok(redis) = seckill::paths::redis_store::RedisStore::new(&self.path_args().redis) {
            let _ = redis.clear().await;
        }
        self.pool.close().await;
        let _ = sqlx::Postgres::drop_database(&self.database.database_url).await;
    }
}

pub struct TestApi {
    pub base: String,
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
    /// Holds an in-process API's tasks (dropping an `App` ends them); `None` for a client of a
    /// daemon.
    _app: Option<App>,
}

/// Parts of seckill running in the test's process; dropping it ends them.
pub struct InProcess {
    pub shutdown: CancellationToken,
    _app: App,
}

impl InProcess {
    /// Asks every part to stop (as SIGTERM would a daemon).
    pub fn cancel(&self) {
        self.shutdown.cancel();
    }
}

impl TestApi {
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("request");
        split(response).await
    }

    /// `post` with `Authorization: Bearer <token>` (admin endpoints).
    pub async fn post_as(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("request");
        split(response).await
    }

    pub async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        split(response).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request");
        split(response).await
    }

    pub async fn create_item(&self, stock: i64) -> i64 {
        let (status, body) = self
            .post("/items", json!({"name": "hot item", "stock": stock}))
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_i64().unwrap()
    }
}

async fn split(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }));
    (status, body)
}

/// `count` fresh requests for one item from `users` buyers in turn (`user-0`, `user-1`, …).
pub fn requests(item_id: i64, count: usize, users: usize) -> Vec<seckill::domain::OrderRequest> {
    (0..count)
        .map(|i| request(item_id, &format!("user-{}", i % users)))
        .collect()
}

/// A fresh request for one unit of an item.
pub fn request(item_id: i64, user: &str) -> seckill::domain::OrderRequest {
    seckill::domain::OrderRequest {
        request_id: Uuid::new_v4(),
        item_id,
        user_id: user.to_string(),
        quantity: 1,
    }
}

/// Drains a stream-like list of futures with bounded concurrency.
pub async fn run_concurrently<F, T>(futures: Vec<F>, concurrency: usize) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    futures::stream::iter(futures)
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// A `seckill` daemon run as a child process, its stderr (the log) kept in a file.
pub struct Daemon {
    pub child: tokio::process::Child,
    /// Where its log goes.
    pub log: std::path::PathBuf,
    /// `http://127.0.0.1:PORT` of a `serve` daemon.
    pub base: String,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.child.id().expect("the daemon is running") as i32
    }

    /// Sends a signal (SIGTERM, SIGSTOP, ...).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).expect("signal");
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) for the daemon to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!(
                "the daemon did not exit within {within:?}; its log:\n{}",
                self.log_text()
            ),
        }
    }

    /// Its resident memory, from /proc (Linux).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/PID/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }
}

impl TestEnv {
    /// `seckill <args>` with this test's database, broker prefix and Redis prefix, logging to
    /// a file named after the test's prefix and `name`.
    fn daemon(&self, name: &str, args: &[&str], extra_env: &[(&str, &str)]) -> Daemon {
        let log = std::env::temp_dir().join(format!("{}-{name}.log", self.broker.queue_prefix));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_seckill"));
        cmd.args(args)
            .env("DATABASE_URL", &self.database.database_url)
            .env("AMQP_URL", &self.broker.amqp_url)
            .env("SECKILL_QUEUE_PREFIX", &self.broker.queue_prefix)
            .env("SECKILL_PARTITIONS", PARTITIONS.to_string())
            .env(
                "SECKILL_QUEUE_LENGTH_MAX",
                self.broker.queue_length_max.to_string(),
            )
            .env(
                "SECKILL_QUEUE_TYPE",
                match self.broker.queue_type {
                    seckill::config::QueueType::Classic => "classic",
                    seckill::config::QueueType::Quorum => "quorum",
                },
            )
            .env("SECKILL_REDIS_PREFIX", &self.broker.queue_prefix)
            .env("SECKILL_BATCH_SIZE_MAX", "100")
            .env("SECKILL_PREFETCH", "300")
            .env("RUST_LOG", "seckill=info")
            .env("NO_COLOR", "1")
            .env_remove("SECKILL_FAILPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        for (key, value) in extra_env {
            cmd.env(key, value);
        }
        Daemon {
            child: cmd.spawn().expect("spawn seckill"),
            log,
            base: String::new(),
        }
    }

    /// Starts `seckill consume` as a child process.
    pub fn spawn_consume(&self, name: &str, extra_env: &[(&str, &str)]) -> Daemon {
        self.daemon(name, &["consume"], extra_env)
    }

    /// Starts `seckill serve` (add `--with-consumer` in `args`) on a free loopback port and
    /// waits (bounded) until its `/healthz` answers 200.
    pub async fn spawn_serve(
        &self,
        name: &str,
        args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> Daemon {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let bind = format!("127.0.0.1:{port}");
        let mut env: Vec<(&str, &str)> = vec![("SECKILL_BIND", &bind)];
        env.extend_from_slice(extra_env);
        let mut all_args = vec!["serve"];
        all_args.extend_from_slice(args);
        let mut daemon = self.daemon(name, &all_args, &env);
        daemon.base = format!("http://{bind}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("{}/healthz", daemon.base)).send().await
                && r.status() == 200
            {
                return daemon;
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("seckill serve exited ({status}): {}", daemon.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "seckill serve did not become healthy: {}",
                daemon.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client of a `serve` daemon.
    pub fn client_of(&self, daemon: &Daemon) -> TestApi {
        TestApi {
            base: daemon.base.clone(),
            http: reqwest::Client::new(),
            shutdown: CancellationToken::new(),
            _app: None,
        }
    }
}

/// Parses the Prometheus text format into `name{labels}` → value.
pub async fn scrape(base: &str) -> HashMap<String, f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

pub fn free_port_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// Waits (bounded) until the daemon's log contains `needle`.
pub async fn wait_for_log(daemon: &Daemon, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !daemon.log_text().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{needle:?} not logged within {within:?}; log:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
