//! Faults and overload against the real services, with real `seckill` processes: broker
//! connections killed, the broker restarted, database backends killed and PostgreSQL stopped,
//! SIGTERM to each daemon, and a flood far past the API's bound. After each: every request the
//! API accepted (202) is decided exactly once and the audit is clean.
//!
//! These tests stop or disturb services other tests share, so they are `#[ignore]`d: a plain
//! `cargo test` skips them, and `.ci/run` runs them afterwards, one at a time:
//! `cargo test --test faults -- --ignored --test-threads=1`. A test that stops a service restarts
//! it on every exit path (a guard whose `Drop` starts it again).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{TestApi, TestEnv, free_port_addr, requests, scrape, wait_for_log};

/// These tests follow every request through the broker and the consumer while something fails;
/// answering `sold_out` at the door once an item sells out would skip exactly that road, so the
/// API daemons they start do not shed (tests/shedding.rs covers the door).
const NO_SHEDDING: (&str, &str) = ("SECKILL_SOLD_OUT_TTL_MS", "0");
use lapin::options::BasicPublishOptions;
use nix::sys::signal::Signal;
use seckill::domain::OrderRequest;
use serde_json::{Value, json};
use uuid::Uuid;

// ---- helpers ---------------------------------------------------------------------------------

/// Runs `rabbitmqctl` (root, on this machine) and returns its stdout; panics on failure.
fn rabbitmqctl(args: &[&str]) -> String {
    let output = std::process::Command::new("rabbitmqctl")
        .args(args)
        .env("PATH", sbin_path())
        .output()
        .expect("run rabbitmqctl");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn sbin_path() -> String {
    format!(
        "{}:/usr/local/sbin:/usr/sbin:/sbin",
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Closes, from the broker's side, every connection whose name mentions `prefix` (this test's
/// API and consumer only: other tests' connections are left alone). Returns how many.
fn close_broker_connections(prefix: &str) -> usize {
    // One line per connection: `<pid>\t[{"connection_name","seckill-api <prefix>.orders"}, ...]`.
    let listing = rabbitmqctl(&[
        "list_connections",
        "pid",
        "client_properties",
        "--no-table-headers",
        "-q",
    ]);
    let mut closed = 0;
    for line in listing.lines().filter(|l| l.contains(prefix)) {
        let (pid, _) = line.split_once('\t').expect("pid<TAB>client_properties");
        rabbitmqctl(&["close_connection", pid, "fault test: connection killed"]);
        closed += 1;
    }
    closed
}

/// Stops the RabbitMQ application; dropping the guard (on success or panic) starts it again.
struct BrokerStopped {
    running: bool,
}

impl BrokerStopped {
    fn stop() -> Self {
        rabbitmqctl(&["stop_app"]);
        Self { running: false }
    }

    async fn start(&mut self) {
        if !self.running {
            rabbitmqctl(&["start_app"]);
            self.running = true;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while lapin::Connection::connect(&common::amqp_url(), Default::default())
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "RabbitMQ did not come back");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for BrokerStopped {
    fn drop(&mut self) {
        if !self.running {
            eprintln!("restarting RabbitMQ after a failed test");
            let _ = std::process::Command::new("rabbitmqctl")
                .arg("start_app")
                .env("PATH", sbin_path())
                .status();
        }
    }
}

/// Stops the PostgreSQL cluster; dropping the guard (on success or panic) starts it again.
struct PostgresStopped {
    version: String,
    running: bool,
}

impl PostgresStopped {
    /// The cluster's version, if this machine runs PostgreSQL through `pg_ctlcluster`.
    fn cluster() -> Option<String> {
        let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
            .ok()?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        versions.sort();
        versions.pop()
    }

    fn pg_ctlcluster(version: &str, action: &str) -> std::process::ExitStatus {
        let mut cmd = std::process::Command::new("pg_ctlcluster");
        cmd.args(["--skip-systemctl-redirect", version, "main", action]);
        if action == "stop" {
            cmd.args(["-m", "fast"]);
        }
        cmd.env("PATH", sbin_path())
            .stdin(std::process::Stdio::null())
            .status()
            .expect("run pg_ctlcluster")
    }

    fn stop(version: String) -> Self {
        assert!(Self::pg_ctlcluster(&version, "stop").success());
        Self {
            version,
            running: false,
        }
    }

    fn start_blocking(&mut self) {
        if !self.running {
            assert!(Self::pg_ctlcluster(&self.version, "start").success());
            self.running = true;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::process::Command::new("pg_isready")
            .args(["-q", "-h", "127.0.0.1", "-p", "5432"])
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(Instant::now() < deadline, "PostgreSQL did not come back");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for PostgresStopped {
    fn drop(&mut self) {
        if !self.running {
            eprintln!("restarting PostgreSQL after a failed test");
            let _ = Self::pg_ctlcluster(&self.version, "start");
        }
    }
}

/// What a client saw while buying through the API.
#[derive(Default)]
struct Seen {
    /// 503 answers (each checked to carry a JSON error that says to retry).
    unavailable: usize,
}

/// Sends `request` until the API accepts it (202), retrying a 503 with the same request_id,
/// as a client should. Bounded: gives up (panics) after 90 s.
async fn buy_until_accepted(api: &TestApi, request: &OrderRequest) -> Seen {
    let body = json!({
        "item_id": request.item_id,
        "user_id": request.user_id,
        "request_id": request.request_id,
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = Seen::default();
    loop {
        let answer = api
            .http
            .post(format!("{}/orders", api.base))
            .timeout(Duration::from_secs(30))
            .json(&body)
            .send()
            .await;
        match answer {
            Ok(response) if response.status() == 202 => return seen,
            Ok(response) => {
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                assert_eq!(
                    status, 503,
                    "only 202 or 503 expected, got {status}: {text}"
                );
                let error: Value = serde_json::from_str(&text).expect("a JSON error body");
                let message = error["error"].as_str().expect("an error message");
                assert!(message.contains("retry"), "{message}");
                seen.unavailable += 1;
            }
            // The server itself is up in these tests: a transport error is a bug.
            Err(e) => panic!("request failed: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "request {} never accepted",
            request.request_id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Buys every request through the API with bounded concurrency; returns the 503s seen.
async fn buy_all(api: &TestApi, requests: &[OrderRequest], concurrency: usize) -> usize {
    let seen = common::run_concurrently(
        requests
            .iter()
            .map(|r| buy_until_accepted(api, r))
            .collect(),
        concurrency,
    )
    .await;
    seen.iter().map(|s| s.unavailable).sum()
}

/// Every request has exactly one outcome, the audit (with every accepted request decided) is
/// clean, and orders = min(stock, distinct buyers).
async fn assert_each_decided_once(env: &TestEnv, item: i64, requests: &[OrderRequest], stock: i64) {
    let total = requests.len() as i64;
    env.wait_for_outcomes(item, total, Duration::from_secs(180))
        .await;
    let ids: Vec<Uuid> = requests.iter().map(|r| r.request_id).collect();
    let decided = env.decided_count(&ids).await;
    assert_eq!(decided, total, "every accepted request is decided");
    let report = env.assert_audit_clean(item).await;
    assert_eq!(
        report.outcomes, total,
        "one outcome per request, none twice"
    );
    let buyers: HashSet<&str> = requests.iter().map(|r| r.user_id.as_str()).collect();
    assert_eq!(report.orders, stock.min(buyers.len() as i64));
}

// ---- broker ----------------------------------------------------------------------------------

/// The broker drops the API's and the consumer's connections twice while orders flow: both
/// reconnect and carry on; requests caught mid-publish get a 503 and are retried with the same
/// request_id; every accepted request is decided exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "disturbs shared services; run serially by .ci/run"]
async fn broker_connections_killed_mid_load_reconnect_and_lose_nothing() {
    let env = TestEnv::new().await;
    let stock = 300;
    let item = env.create_item(stock).await;
    let api_daemon = env.spawn_serve("api", &[], &[NO_SHEDDING]).await;
    let consumer_metrics = free_port_addr();
    let consumer = env.spawn_consume("consumer", &[("SECKILL_METRICS_BIND", &consumer_metrics)]);
    let api = env.client_of(&api_daemon);
    let all = requests(item, 3000, 1000);

    let load = buy_all(&api, &all, 32);
    let faults = async {
        env.wait_for_outcomes(item, 200, Duration::from_secs(60))
            .await;
        for _ in 0..2 {
            let closed = close_broker_connections(&env.broker.queue_prefix);
            assert!(closed >= 2, "the API's and the consumer's connections");
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    };
    let (unavailable, ()) = tokio::join!(load, faults);
    eprintln!("503s answered while the broker connections were down: {unavailable}");

    assert_each_decided_once(&env, item, &all, stock).await;
    wait_for_log(
        &consumer,
        "consumer reconnected to the broker",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        consumer
            .log_text()
            .contains("consumer lost the broker; reconnecting")
    );
    wait_for_log(
        &api_daemon,
        "publisher reconnected to the broker",
        Duration::from_secs(5),
    )
    .await;

    let api_metrics = scrape(&api_daemon.base).await;
    assert!(api_metrics["seckill_broker_reconnects_total{component=\"publisher\"}"] >= 1.0);
    let consumed = scrape(&format!("http://{consumer_metrics}")).await;
    assert!(consumed["seckill_broker_reconnects_total{component=\"consumer\"}"] >= 2.0);
    let decisions: f64 = consumed
        .iter()
        .filter(|(k, _)| k.starts_with("seckill_decisions_total"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(
        decisions, 3000.0,
        "the one consumer decided each request once"
    );
    drop((api_daemon, consumer));
    env.cleanup().await;
}

/// RabbitMQ is restarted with accepted requests on its queues (and some in a paused
/// consumer's hands): durable queues and persistent messages survive, the paused consumer
/// reconnects, every accepted request is decided. While the broker is down the API answers 503
/// with a JSON error, and the same request_id is accepted once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts RabbitMQ; run serially by .ci/run"]
async fn broker_restart_keeps_accepted_requests() {
    let env = TestEnv::new().await;
    let stock = 100;
    let item = env.create_item(stock).await;
    let api_daemon = env.spawn_serve("api", &[], &[NO_SHEDDING]).await;
    let consumer = env.spawn_consume("consumer", &[]);
    let api = env.client_of(&api_daemon);

    let before = requests(item, 200, 150);
    buy_all(&api, &before, 16).await;
    env.wait_for_outcomes(item, 200, Duration::from_secs(60))
        .await;

    // Accepted while the consumer is paused: they sit on the queue or unacked in its socket.
    consumer.signal(Signal::SIGSTOP);
    let during = requests(item, 500, 400);
    assert_eq!(buy_all(&api, &during, 16).await, 0);

    let mut broker = BrokerStopped::stop();
    let refused = OrderRequest {
        request_id: Uuid::new_v4(),
        item_id: item,
        user_id: "late-buyer".into(),
        quantity: 1,
    };
    let body =
        json!({"item_id": item, "user_id": refused.user_id, "request_id": refused.request_id});
    let (status, answer) = api.post("/orders", body).await;
    assert_eq!(status, 503, "{answer}");
    let message = answer["error"].as_str().expect("a JSON error");
    assert!(
        message.contains("retry with the same request_id"),
        "{message}"
    );
    let (status, health) = api.get("/healthz").await;
    assert_eq!((status, &health["broker"]), (503, &json!(false)));
    broker.start().await;

    consumer.signal(Signal::SIGCONT);
    buy_until_accepted(&api, &refused).await;
    let all: Vec<OrderRequest> = before.into_iter().chain(during).chain([refused]).collect();
    assert_each_decided_once(&env, item, &all, stock).await;
    wait_for_log(
        &consumer,
        "consumer reconnected to the broker",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        api_daemon
            .log_text()
            .contains("publisher reconnected to the broker")
    );
    drop((api_daemon, consumer));
    env.cleanup().await;
}

// ---- database --------------------------------------------------------------------------------

/// Kills every database connection of the test's database (API's and consumer's) over and
/// over while orders flow: requests caught by it get a 503 and are retried; the consumer
/// retries its batch; nothing is lost or decided twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "disturbs shared services; run serially by .ci/run"]
async fn database_backends_killed_repeatedly_lose_nothing() {
    let env = TestEnv::new().await;
    let stock = 300;
    let item = env.create_item(stock).await;
    let api_daemon = env.spawn_serve("api", &[], &[NO_SHEDDING]).await;
    let consumer = env.spawn_consume("consumer", &[]);
    let api = env.client_of(&api_daemon);
    let all = requests(item, 3000, 1000);
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&env.pool)
        .await
        .unwrap();

    let done = tokio_util::sync::CancellationToken::new();
    let load = async {
        let unavailable = buy_all(&api, &all, 32).await;
        done.cancel();
        unavailable
    };
    // Every 50 ms for as long as the load runs, so some kills land mid-statement.
    let faults = async {
        env.wait_for_outcomes(item, 100, Duration::from_secs(60))
            .await;
        let mut killed = 0;
        while !done.is_cancelled() {
            killed += sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = $1 AND pid <> pg_backend_pid()) t",
            )
            .bind(&database)
            .fetch_one(&env.pool)
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        killed
    };
    let (unavailable, killed) = tokio::join!(load, faults);
    let failed_commits = consumer.log_text().matches("cannot commit a batch").count();
    eprintln!(
        "{killed} backends killed; {unavailable} requests answered 503 and retried; \
         {failed_commits} batch commits failed and were retried"
    );
    assert!(killed > 0);

    assert_each_decided_once(&env, item, &all, stock).await;
    drop((api_daemon, consumer));
    env.cleanup().await;
}

/// PostgreSQL is stopped for a few seconds with requests on the queue: the consumer cannot
/// commit, so it acks nothing and decides nothing; the lock-based paths and the queue path
/// answer 503 instead of hanging; once PostgreSQL is back everything is decided exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stops PostgreSQL; run serially by .ci/run"]
async fn postgres_stopped_nothing_is_decided_until_it_is_back() {
    let Some(version) = PostgresStopped::cluster() else {
        panic!("this test stops the local PostgreSQL cluster, and /etc/postgresql has none");
    };
    let env = TestEnv::new().await;
    let stock = 50;
    let item = env.create_item(stock).await;
    let api_daemon = env.spawn_serve("api", &[], &[NO_SHEDDING]).await;
    let consumer = env.spawn_consume("consumer", &[]);
    let api = env.client_of(&api_daemon);
    let before = requests(item, 100, 80);
    buy_all(&api, &before, 16).await;
    env.wait_for_outcomes(item, 100, Duration::from_secs(60))
        .await;
    let (status, _) = api
        .post(
            "/orders?path=pessimistic",
            json!({"item_id": item, "user_id": "lock-buyer-1"}),
        )
        .await;
    assert_eq!(status, 200, "the lock path works before the outage");

    let mut postgres = PostgresStopped::stop(version);
    // Published behind the API's back while the database is down (recorded once it is back).
    let during = requests(item, 300, 200);
    let channel = env.channel().await;
    channel.confirm_select(Default::default()).await.unwrap();
    for request in &during {
        let partition = env.topology.partition_of(request.item_id);
        channel
            .basic_publish(
                env.topology.orders_exchange().into(),
                env.topology.routing_key(partition).into(),
                BasicPublishOptions::default(),
                &seckill::broker::message::encode(request),
                seckill::broker::message::request_properties(request.request_id, None),
            )
            .await
            .unwrap();
    }
    channel.wait_for_confirms().await.unwrap();

    // The lock path answers 503 (bounded by the pool's acquire timeout), not a hang.
    for path in ["pessimistic", "conditional"] {
        let response = api
            .http
            .post(format!("{}/orders?path={path}", api.base))
            .timeout(Duration::from_secs(30))
            .json(&json!({"item_id": item, "user_id": format!("down-{path}")}))
            .send()
            .await
            .expect("an answer, not a hang");
        assert_eq!(response.status(), 503, "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("unavailable"),
            "{body}"
        );
    }
    let retried = OrderRequest {
        request_id: Uuid::new_v4(),
        item_id: item,
        user_id: "retrying-buyer".into(),
        quantity: 1,
    };
    let (status, answer) = api
        .post(
            "/orders",
            json!({"item_id": item, "user_id": retried.user_id, "request_id": retried.request_id}),
        )
        .await;
    assert_eq!(status, 503, "the request cannot be recorded: {answer}");

    wait_for_log(&consumer, "cannot commit a batch", Duration::from_secs(30)).await;
    // Nothing was acked: every message published during the outage is still on the queue
    // (ready or unacked); the request the API could not record was not published.
    let queue = env
        .topology
        .partition_queue(env.topology.partition_of(item));
    let listing = rabbitmqctl(&[
        "list_queues",
        "name",
        "messages",
        "--no-table-headers",
        "-q",
    ]);
    let held: u64 = listing
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{queue}\t")))
        .and_then(|n| n.trim().parse().ok())
        .expect("the partition queue is listed");
    assert!(
        held >= 300,
        "{held} messages held while the database is down"
    );

    let restart = tokio::task::spawn_blocking(move || {
        postgres.start_blocking();
        postgres
    });
    let _postgres = restart.await.unwrap();
    seckill::store::record_accepted(&env.pool, &during)
        .await
        .expect("record accepted");
    buy_until_accepted(&api, &retried).await;
    let all: Vec<OrderRequest> = before.into_iter().chain(during).chain([retried]).collect();
    assert_each_decided_once_plus(&env, item, &all, 1).await;
    wait_for_log(
        &consumer,
        "batch committed after the database came back",
        Duration::from_secs(5),
    )
    .await;
    let (status, _) = api
        .post(
            "/orders?path=pessimistic",
            json!({"item_id": item, "user_id": "lock-buyer-2"}),
        )
        .await;
    assert_eq!(status, 200, "the lock path works again");
    drop((api_daemon, consumer));
    env.cleanup().await;
}

/// Like [`assert_each_decided_once`], with `extra` decisions made through a lock path.
async fn assert_each_decided_once_plus(
    env: &TestEnv,
    item: i64,
    requests: &[OrderRequest],
    extra: i64,
) {
    let total = requests.len() as i64 + extra;
    env.wait_for_outcomes(item, total, Duration::from_secs(180))
        .await;
    let ids: Vec<Uuid> = requests.iter().map(|r| r.request_id).collect();
    let decided = env.decided_count(&ids).await;
    assert_eq!(
        decided,
        requests.len() as i64,
        "every accepted request is decided"
    );
    let report = env.assert_audit_clean(item).await;
    assert_eq!(
        report.outcomes, total,
        "one outcome per request, none twice"
    );
}

// ---- graceful shutdown -----------------------------------------------------------------------

/// SIGTERM to `seckill consume` in the middle of a backlog: it finishes the batch it is on
/// (commits and acks it), exits 0, and leaves every other message on the queue — what is
/// decided plus what is queued is exactly what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing-sensitive process test; run serially by .ci/run"]
async fn sigterm_to_consume_commits_its_batch_and_exits_0() {
    let env = TestEnv::new().await;
    let stock = 1000;
    let item = env.create_item(stock).await;
    let all = requests(item, 20_000, 5000);
    env.publish_direct(&all).await;

    let mut consumer = env.spawn_consume("consumer", &[]);
    env.wait_for_outcomes(item, 500, Duration::from_secs(60))
        .await;
    consumer.signal(Signal::SIGTERM);
    let status = consumer.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}");
    let log = consumer.log_text();
    assert!(log.contains("shutdown requested"), "{log}");
    assert!(
        log.contains("consumer stopped: every batch taken was committed and acked"),
        "{log}"
    );

    let decided = env.outcome_count(item).await;
    assert!(
        decided < all.len() as i64,
        "stopped mid-backlog ({decided})"
    );
    // Unacked deliveries go back to the queue when the connection closes: wait (bounded) for
    // the broker to count them, then nothing may be missing or counted twice.
    let partition = env.topology.partition_of(item);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let queued = i64::from(env.queue_depth(partition).await);
        if decided + queued == all.len() as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "decided {decided} + queued {queued} != sent {}: a batch was committed but not acked, or lost",
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let restarted = env.spawn_consume("consumer-2", &[]);
    assert_each_decided_once(&env, item, &all, stock).await;
    drop(restarted);
    env.cleanup().await;
}

/// SIGTERM to `seckill serve` while clients wait for decisions: it stops accepting, answers
/// the requests in flight (202 pending: their decisions come later), and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing-sensitive process test; run serially by .ci/run"]
async fn sigterm_to_serve_finishes_requests_in_flight_and_exits_0() {
    let env = TestEnv::new().await;
    let item = env.create_item(10).await;
    // No consumer: a client asking ?wait= stays in flight until the server ends its wait.
    let mut api_daemon = env.spawn_serve("api", &[], &[NO_SHEDDING]).await;
    let api = env.client_of(&api_daemon);
    let waiting = requests(item, 20, 20);
    let in_flight: Vec<_> = waiting
        .iter()
        .map(|r| {
            let http = api.http.clone();
            let url = format!("{}/orders?wait=25000", api.base);
            let body =
                json!({"item_id": r.item_id, "user_id": r.user_id, "request_id": r.request_id});
            tokio::spawn(async move { http.post(url).json(&body).send().await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while scrape(&api.base).await["seckill_reply_waiters"] < 20.0 {
        assert!(
            Instant::now() < deadline,
            "the clients never started waiting"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    api_daemon.signal(Signal::SIGTERM);
    for request in in_flight {
        let response = request
            .await
            .unwrap()
            .expect("an in-flight request is answered");
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "pending");
    }
    let status = api_daemon.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}");
    let log = api_daemon.log_text();
    for line in ["shutdown requested", "API stopping", "API stopped"] {
        assert!(log.contains(line), "{line:?} missing from:\n{log}");
    }
    assert!(
        reqwest::get(format!("{}/healthz", api.base)).await.is_err(),
        "no longer accepting"
    );

    // Those requests were accepted: a consumer decides them.
    let consumer = env.start_consumer().await;
    assert_each_decided_once(&env, item, &waiting, 10).await;
    consumer.cancel();
    env.cleanup().await;
}

// ---- overload --------------------------------------------------------------------------------

/// Floods `seckill serve` far past its in-flight bound: the surplus is shed with a fast 503
/// (JSON body), the process's memory stays bounded, and every accepted request is decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "loads the whole machine; run serially by .ci/run"]
async fn a_flood_past_the_bound_is_shed_and_memory_stays_bounded() {
    const IN_FLIGHT_MAX: usize = 16;
    const CONCURRENCY: usize = 256;
    const REQUESTS: usize = 6000;
    /// Most the server's memory may grow during the flood: far above what the bounded server
    /// needs (about 15 MiB here), far below what queueing the flood would take.
    const RSS_GROWTH_MAX_KIB: u64 = 128 * 1024;

    let env = TestEnv::new().await;
    let stock = 500;
    let item = env.create_item(stock).await;
    let daemon = env
        .spawn_serve(
            "api",
            &["--with-consumer"],
            &[
                ("SECKILL_HTTP_IN_FLIGHT_MAX", &IN_FLIGHT_MAX.to_string()),
                NO_SHEDDING,
            ],
        )
        .await;
    let api = env.client_of(&daemon);
    let rss_start = daemon.rss_kib();

    let all = requests(item, REQUESTS, 2000);
    let sampling = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let stop = sampling.clone();
        let pid = daemon.pid();
        tokio::spawn(async move {
            let mut peak = 0;
            while !stop.is_cancelled() {
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    && let Some(kib) = status
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    peak = peak.max(kib);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        })
    };
    let send = |r: &OrderRequest| {
        let http = api.http.clone();
        let url = format!("{}/orders", api.base);
        let body = json!({"item_id": r.item_id, "user_id": r.user_id, "request_id": r.request_id});
        async move {
            let response = http
                .post(url)
                .timeout(Duration::from_secs(60))
                .json(&body)
                .send()
                .await
                .expect("an answer");
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("a JSON body");
            (status, body)
        }
    };
    let answers = tokio::time::timeout(
        Duration::from_secs(300),
        common::run_concurrently(all.iter().map(send).collect(), CONCURRENCY),
    )
    .await
    .expect("the flood is bounded in time");
    sampling.cancel();
    let rss_peak = sampler.await.unwrap();

    let mut accepted = Vec::new();
    let mut shed = 0;
    for (status, body) in &answers {
        match status {
            202 => accepted.push(
                body["request_id"]
                    .as_str()
                    .unwrap()
                    .parse::<Uuid>()
                    .unwrap(),
            ),
            503 => {
                assert!(
                    body["error"].as_str().unwrap().contains("overloaded"),
                    "{body}"
                );
                shed += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    eprintln!(
        "{} accepted, {shed} shed; RSS {rss_start} KiB at start, {rss_peak} KiB at peak",
        accepted.len()
    );
    assert!(
        shed > 0,
        "a flood of {CONCURRENCY} at once past a bound of {IN_FLIGHT_MAX} is shed"
    );
    assert!(!accepted.is_empty());
    assert!(
        rss_peak.saturating_sub(rss_start) < RSS_GROWTH_MAX_KIB,
        "memory grew from {rss_start} to {rss_peak} KiB under the flood"
    );
    let metrics = scrape(&daemon.base).await;
    assert_eq!(metrics["seckill_http_requests_shed_total"], shed as f64);

    // Every accepted request is decided, once; the shed ones left no trace.
    env.wait_for_outcomes(item, accepted.len() as i64, Duration::from_secs(180))
        .await;
    let decided: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outcomes WHERE request_id = ANY($1)")
            .bind(&accepted)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(decided, accepted.len() as i64);
    let report = env.assert_audit_clean(item).await;
    assert_eq!(report.outcomes, accepted.len() as i64);
    drop(daemon);
    env.cleanup().await;
}

// ---- seckill bench --faults ------------------------------------------------------------------

/// A small `seckill bench --faults` on the queue path under every fault: the command exits 0
/// only if every queue cell is clean, and its results.json shows each fault really struck —
/// buyers refused while RabbitMQ was down, a second `consume` started after the SIGKILL, every
/// request of every cell accounted for.
#[test]
#[ignore = "restarts Redis, RabbitMQ and PostgreSQL; run serially by .ci/run"]
fn bench_faults_finds_the_queue_path_clean_under_every_fault() {
    let out = std::env::temp_dir().join(format!("seckill-faults-{}", Uuid::new_v4().simple()));
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_seckill"))
        .args([
            "bench",
            "--faults",
            "--paths",
            "queue",
            "--measure-secs",
            "5",
            "--rate",
            "100",
            "--fault-downtime-secs",
            "2",
            "--out",
        ])
        .arg(&out)
        .env("PATH", sbin_path())
        .status()
        .expect("run seckill bench --faults");
    let results: Value = serde_json::from_slice(
        &std::fs::read(out.join("results.json")).expect("results.json written"),
    )
    .expect("results.json is JSON");
    assert!(
        status.success(),
        "the queue path must be clean in every column: {results:#}"
    );
    let cells = results["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), 5, "one cell per fault");
    for cell in cells {
        assert_eq!(cell["path"], "queue");
        assert_eq!(cell["clean"], true, "{cell:#}");
        // 500 planned; more if mending the fault outlasted them (the load goes on until then).
        let requests = cell["verdict"]["requests"].as_u64().unwrap();
        assert!(requests >= 500, "{cell:#}");
        assert_eq!(cell["verdict"]["lost_sales"], 0);
        assert_eq!(cell["verdict"]["decided_twice"], 0);
    }
    let cell = |fault: &str| {
        cells
            .iter()
            .find(|c| c["fault"] == fault)
            .unwrap_or_else(|| panic!("a {fault} cell"))
    };
    assert!(
        cell("rabbitmq-restart")["verdict"]["unavailable"]
            .as_u64()
            .unwrap()
            > 0,
        "buyers were refused while the broker was down"
    );
    let restarted_consume = std::fs::read_dir(out.join("fault-logs"))
        .expect("the children's logs")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .any(|name| name.starts_with("queue-kill-decider-") && name.ends_with("-consume-1.log"));
    assert!(restarted_consume, "the killed consumer was started again");
    let html = std::fs::read_to_string(out.join("report.html")).expect("report.html");
    assert_eq!(html.matches(r#"class="clean""#).count(), 5);
    let _ = std::fs::remove_dir_all(&out);
}
