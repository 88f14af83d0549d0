//! `redis-stream` against the real Redis, RabbitMQ and PostgreSQL: a contended sale answered
//! from Redis and written down by the stream writer; a writer killed between its commit and its
//! acknowledgement, taken over by another process; a vanished stream; an unreadable entry;
//! Redis down.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use uuid::Uuid;

use common::{TestApi, TestEnv, request, run_concurrently};
use seckill::config::ServeArgs;
use seckill::domain::Status;
use seckill::paths::redis_store::RedisStore;
use seckill::paths::redis_stream::writer::GROUP;
use seckill::paths::{PathError, Registry};
use seckill::sale::PathName;

/// What a request was told: its status and, for a purchase, its order id.
type Told = (String, Option<String>);

async fn order(api: &TestApi, item: i64, user: &str, request_id: Uuid) -> (u16, Value) {
    api.post(
        "/orders?path=redis-stream",
        json!({"item_id": item, "user_id": user, "request_id": request_id}),
    )
    .await
}

/// Sends every (user, request id) concurrently; every answer must be 200. Returns what each
/// request id was told.
async fn buy_all(api: &TestApi, item: i64, requests: &[(String, Uuid)]) -> HashMap<Uuid, Told> {
    let answers = run_concurrently(
        requests
            .iter()
            .map(|(user, id)| async move { (*id, order(api, item, user, *id).await) })
            .collect(),
        100,
    )
    .await;
    answers
        .into_iter()
        .map(|(id, (status, body))| {
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["request_id"], id.to_string());
            let told = body["status"].as_str().unwrap().to_owned();
            let order_id = body["order_id"].as_str().map(str::to_owned);
            assert_eq!(told == "purchased", order_id.is_some(), "{body}");
            (id, (told, order_id))
        })
        .collect()
}

fn requests_of(users: usize, count: usize) -> Vec<(String, Uuid)> {
    (0..count)
        .map(|i| (format!("user-{}", i % users), Uuid::new_v4()))
        .collect()
}

async fn redis_of(env: &TestEnv) -> (MultiplexedConnection, String) {
    let args = env.path_args().redis;
    let stream = RedisStore::new(&args).unwrap().orders_stream();
    let client = redis::Client::open(args.redis_url).unwrap();
    (
        client.get_multiplexed_async_connection().await.unwrap(),
        stream,
    )
}

/// Entries delivered to a writer and not acknowledged (0 when the group does not exist).
async fn pending(con: &mut MultiplexedConnection, stream: &str) -> i64 {
    let summary: Result<Vec<redis::Value>, _> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(GROUP)
        .query_async(con)
        .await;
    match summary.as_deref() {
        Ok([redis::Value::Int(count), ..]) => *count,
        _ => 0,
    }
}

/// The names of the writers' group's consumers.
async fn group_consumers(con: &mut MultiplexedConnection, stream: &str) -> Vec<String> {
    let consumers: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(GROUP)
        .query_async(con)
        .await
        .expect("XINFO CONSUMERS");
    consumers
        .iter()
        .map(|c| redis::from_redis_value_ref(&c["name"]).expect("a consumer's name"))
        .collect()
}

/// What the database holds for the item: its outcomes (request id → status, order id).
async fn stored(env: &TestEnv, item: i64) -> HashMap<Uuid, Told> {
    let rows: Vec<(Uuid, String, Option<Uuid>, String)> = sqlx::query_as(
        "SELECT request_id, status, order_id, path FROM outcomes WHERE item_id = $1",
    )
    .bind(item)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(id, status, order_id, path)| {
            assert_eq!(path, "redis-stream");
            (id, (status, order_id.map(|o| o.to_string())))
        })
        .collect()
}

/// Every told answer is stored as told, every purchase's order exists under its request id, one
/// order per user, the orders are exactly the purchases, the stock and `sold` add up, the audit
/// is clean. Returns the number of purchases.
async fn assert_written_as_told(
    env: &TestEnv,
    item: i64,
    stock: i64,
    told: &HashMap<Uuid, Told>,
) -> i64 {
    assert_eq!(&stored(env, item).await, told, "outcomes = answers");
    let orders: Vec<(Uuid, Uuid, String)> =
        sqlx::query_as("SELECT id, request_id, user_id FROM orders WHERE item_id = $1")
            .bind(item)
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let users: HashSet<&String> = orders.iter().map(|(_, _, user)| user).collect();
    assert_eq!(users.len(), orders.len(), "at most one order per user");
    let ordered: HashMap<Uuid, String> = orders
        .iter()
        .map(|(id, request, _)| (*request, id.to_string()))
        .collect();
    let purchased: HashMap<Uuid, String> = told
        .iter()
        .filter_map(|(id, (_, order))| order.clone().map(|o| (*id, o)))
        .collect();
    assert_eq!(
        ordered, purchased,
        "the orders are exactly the purchases told"
    );
    let (remaining, sold): (i64, i64) =
        sqlx::query_as("SELECT stock_remaining, sold FROM items WHERE id = $1")
            .bind(item)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let purchases = purchased.len() as i64;
    assert_eq!((remaining, sold), (stock - purchases, purchases));
    let report = env.assert_audit_clean(item).await;
    assert_eq!(report.outcomes, told.len() as i64);
    purchases
}

async fn wait_pending_zero(con: &mut MultiplexedConnection, stream: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = pending(con, stream).await;
        if left == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{left} entries still pending after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_contended_sale_is_answered_from_redis_and_written_exactly_once() {
    const STOCK: i64 = 100;
    const USERS: usize = 300;
    const REQUESTS: usize = 1_200;
    let env = TestEnv::new().await;
    let api = env.start_api(None).await;
    // Created in the database only: the path loads it into Redis on its first request.
    let item = env.create_item(STOCK).await;

    let requests = requests_of(USERS, REQUESTS);
    let told = buy_all(&api, item, &requests).await;
    assert_eq!(told.len(), REQUESTS);
    let purchases = told.values().filter(|(s, _)| s == "purchased").count();
    assert_eq!(
        purchases, STOCK as usize,
        "Redis sells the stock exactly when demand exceeds it"
    );

    env.wait_for_outcomes(item, REQUESTS as i64, Duration::from_secs(60))
        .await;
    assert_eq!(
        assert_written_as_told(&env, item, STOCK, &told).await,
        STOCK
    );

    // Retries of some request ids (every purchase among them) get the same answers, no order.
    let retried: Vec<(String, Uuid)> = requests
        .iter()
        .filter(|(_, id)| told[id].0 == "purchased")
        .chain(requests.iter().take(200))
        .cloned()
        .collect();
    let again = buy_all(&api, item, &retried).await;
    for (id, answer) in &again {
        assert_eq!(
            answer, &told[id],
            "a retry of {id} is answered as the first try"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        assert_written_as_told(&env, item, STOCK, &told).await,
        STOCK
    );

    // Every entry was acknowledged and deleted: the stream holds what is not written yet only.
    let (mut con, stream) = redis_of(&env).await;
    wait_pending_zero(&mut con, &stream, Duration::from_secs(10)).await;
    let length: i64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(length, 0, "written entries are trimmed");

    // The client's mistakes are 4xx, as on every path.
    let (status, body) = api
        .post(
            "/orders?path=redis-stream",
            json!({"item_id": item, "user_id": "u", "quantity": 2}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = api
        .post(
            "/orders?path=redis-stream",
            json!({"item_id": item + 1000, "user_id": "u"}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = api
        .post(
            "/orders?path=redis-stream",
            json!({"item_id": item, "user_id": ""}),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    api.shutdown.cancel();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_writer_killed_between_commit_and_ack_is_taken_over_without_writing_twice() {
    const STOCK: i64 = 60;
    const USERS: usize = 200;
    let env = TestEnv::new().await;
    let serve = env.spawn_serve("api", &["--no-rival-workers"], &[]).await;
    let api = env.client_of(&serve);
    let item = api.create_item(STOCK).await;
    let (mut con, stream) = redis_of(&env).await;

    // No writer yet: answered from Redis, nothing in PostgreSQL.
    let first = requests_of(USERS, 200);
    let mut told = buy_all(&api, item, &first).await;
    assert_eq!(
        env.outcome_count(item).await,
        0,
        "nothing written without a writer"
    );

    let writer_env = [
        ("SECKILL_RIVAL_WORKERS", "true"),
        ("SECKILL_STREAM_BATCH_MAX", "50"),
        ("SECKILL_STREAM_CLAIM_IDLE_MS", "1000"),
    ];
    let mut dying_env = writer_env.to_vec();
    dying_env.push(("SECKILL_FAILPOINT", "stream_after_commit"));
    let mut dying = env.spawn_consume("writer-a", &dying_env);
    let status = dying.wait_exit(Duration::from_secs(60)).await;
    assert!(!status.success(), "the writer aborted at its failpoint");
    assert!(
        dying
            .log_text()
            .contains("failpoint stream_after_commit reached"),
        "{}",
        dying.log_text()
    );
    let committed = env.outcome_count(item).await;
    assert_eq!(committed, 50, "one batch committed");
    assert_eq!(
        pending(&mut con, &stream).await,
        50,
        "and not acknowledged: its entries are pending for a dead writer"
    );

    // More sales while no writer runs, then a second writer: it claims the dead one's entries
    // (skipping what was committed) and writes the rest.
    let second = requests_of(USERS, 200)
        .into_iter()
        .map(|(user, id)| (format!("late-{user}"), id))
        .collect::<Vec<_>>();
    told.extend(buy_all(&api, item, &second).await);
    let mut taking_over = env.spawn_consume("writer-b", &writer_env);
    env.wait_for_outcomes(item, told.len() as i64, Duration::from_secs(60))
        .await;
    wait_pending_zero(&mut con, &stream, Duration::from_secs(30)).await;
    assert!(
        taking_over.log_text().contains("claimed entries"),
        "{}",
        taking_over.log_text()
    );
    assert_eq!(
        assert_written_as_told(&env, item, STOCK, &told).await,
        STOCK
    );
    // The dead writer, with nothing pending any more, is taken out of the group.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let writers = group_consumers(&mut con, &stream).await;
        // Writers are named `writer-{pid}-{tag}`: the one left must be the one alive.
        if writers.len() == 1 {
            let alive = format!("writer-{}-", taking_over.pid());
            assert!(
                writers[0].starts_with(&alive),
                "{writers:?}, alive: {alive}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead writer stays in the group: {writers:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        taking_over.log_text().contains("writers that are gone"),
        "{}",
        taking_over.log_text()
    );

    taking_over.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        taking_over
            .wait_exit(Duration::from_secs(30))
            .await
            .success()
    );
    serve.signal(nix::sys::signal::Signal::SIGTERM);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vanished_stream_is_recreated_and_an_unreadable_entry_set_aside() {
    let env = TestEnv::new().await;
    let api = env.start_api(None).await;
    let item = api.create_item(10).await;
    let (mut con, stream) = redis_of(&env).await;

    let mut told = buy_all(&api, item, &requests_of(5, 5)).await;
    env.wait_for_outcomes(item, 5, Duration::from_secs(30))
        .await;

    // Redis lost the stream and its group (as a restart without persistence would), and someone
    // added an entry the writer cannot read: the writer recreates the group, sets the entry
    // aside once and writes what comes after.
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut con)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("request_id")
        .arg("not-a-uuid")
        .query_async(&mut con)
        .await
        .unwrap();
    let later: Vec<(String, Uuid)> = (0..5)
        .map(|i| (format!("later-{i}"), Uuid::new_v4()))
        .collect();
    told.extend(buy_all(&api, item, &later).await);
    env.wait_for_outcomes(item, 10, Duration::from_secs(30))
        .await;
    wait_pending_zero(&mut con, &stream, Duration::from_secs(10)).await;
    let dead: i64 = redis::cmd("XLEN")
        .arg(format!("{stream}:dead"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(dead, 1, "the unreadable entry was set aside once");
    assert_eq!(assert_written_as_told(&env, item, 10, &told).await, 10);

    api.shutdown.cancel();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_or_database_down_answers_503_with_retry_after() {
    let env = TestEnv::new().await;
    let mut paths = env.path_args();
    paths.redis.redis_url = "redis://127.0.0.1:1".into();
    let api = env.start_api_configured(ServeArgs::loopback(), paths).await;
    let item = env.create_item(10).await;
    let response = api
        .http
        .post(format!("{}/orders?path=redis-stream", api.base))
        .json(&json!({"item_id": item, "user_id": "u1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("redis"), "{body}");
    assert_eq!(env.outcome_count(item).await, 0);

    // PostgreSQL down: an item Redis does not have cannot be loaded (503); one it has is still
    // sold from Redis alone — the design's speed, and why its writer may fall behind.
    let dead_pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy("postgres://postgres@127.0.0.1:1/seckill")
        .unwrap();
    let registry = Registry::new(dead_pool, &env.path_args(), &env.broker).unwrap();
    let path = registry.get(PathName::RedisStream).unwrap();
    let unloaded = registry.purchase(path, &request(item, "dave")).await;
    assert!(
        matches!(unloaded, Err(PathError::Unavailable(_))),
        "{unloaded:?}"
    );
    RedisStore::new(&env.path_args().redis)
        .unwrap()
        .load_item(&env.pool, item, true)
        .await
        .unwrap();
    let sold = registry
        .purchase(path, &request(item, "erin"))
        .await
        .unwrap();
    assert_eq!(sold.status, Status::Purchased);

    api.shutdown.cancel();
    env.cleanup().await;
}
