//! The `redis-mq` rival path (qiurunze123/miaosha's design) against the real services: Redis
//! pre-deducts, RabbitMQ carries each purchase to competing consumers, the buyer polls
//! `GET /orders/{request_id}`. Every test settles every request it sent and audits the sale.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use common::{TestApi, TestEnv, run_concurrently, wait_for_log};
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::{Value, json};
use uuid::Uuid;

use seckill::api::error::ApiError;
use seckill::paths::redis_store::RedisStore;
use seckill::paths::{PathError, Registry};
use seckill::sale::PathName;
use seckill::store::{self, RequestState};

const ORDERS: &str = "/orders?path=redis-mq";
/// Longest a test waits for the consumers to decide what it sent.
const SETTLE_WITHIN: Duration = Duration::from_secs(120);

/// One request as a client sends it: its id, item and user.
fn body(request_id: Uuid, item: i64, user: &str) -> Value {
    json!({"request_id": request_id, "item_id": item, "user_id": user})
}

/// Sends each body once, `concurrency` at a time; returns (request id, HTTP status, body).
async fn send_all(api: &TestApi, bodies: &[Value], concurrency: usize) -> Vec<(Uuid, u16, Value)> {
    let sends = bodies
        .iter()
        .map(|b| async move {
            let (status, answer) = api.post(ORDERS, b.clone()).await;
            let id: Uuid = b["request_id"].as_str().unwrap().parse().unwrap();
            (id, status, answer)
        })
        .collect();
    run_concurrently(sends, concurrency).await
}

/// Polls `GET /orders/{id}` for every id until none is `pending` (bounded); returns each
/// decision's body.
async fn settle(api: &TestApi, ids: &HashSet<Uuid>) -> HashMap<Uuid, Value> {
    let deadline = Instant::now() + SETTLE_WITHIN;
    let mut decided = HashMap::new();
    let mut pending: Vec<Uuid> = ids.iter().copied().collect();
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} requests still pending after {SETTLE_WITHIN:?}",
            pending.len()
        );
        let polls = pending
            .iter()
            .map(|id| async move { (*id, api.get(&format!("/orders/{id}")).await) })
            .collect();
        let mut still = Vec::new();
        for (id, (status, answer)) in run_concurrently(polls, 50).await {
            assert_eq!(status, 200, "GET /orders/{id}: {answer}");
            if answer["status"] == "pending" {
                still.push(id);
            } else {
                decided.insert(id, answer);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    decided
}

/// The users with a purchase among `decided`, each once; panics on a user who bought twice.
fn buyers(decided: &HashMap<Uuid, Value>, user_of: &HashMap<Uuid, String>) -> HashSet<String> {
    let mut buyers = HashSet::new();
    for (id, answer) in decided {
        if answer["status"] == "purchased" {
            assert!(answer["order_id"].is_string(), "{answer}");
            let user = user_of[id].clone();
            assert!(buyers.insert(user.clone()), "{user} bought twice");
        }
    }
    buyers
}

/// A decision sent back for a request must be the one its `GET` settles on; a `pending`
/// answer is only ever followed by the decision.
fn assert_answers_agree(answers: &[(Uuid, u16, Value)], decided: &HashMap<Uuid, Value>) {
    for (id, status, answer) in answers {
        match status {
            202 => assert_eq!(answer["status"], "pending", "{answer}"),
            200 => assert_eq!(
                (&answer["status"], &answer["order_id"]),
                (&decided[id]["status"], &decided[id]["order_id"]),
                "request {id} was answered {answer} but settled {}",
                decided[id]
            ),
            other => panic!("request {id} answered {other}: {answer}"),
        }
    }
}

/// The item's stock as Redis holds it (`None`: no key).
async fn redis_stock(redis: &RedisStore, item: i64) -> Option<i64> {
    redis::cmd("GET")
        .arg(redis.keys(item).stock)
        .query_async(&mut redis.connection())
        .await
        .unwrap()
}

/// Whether Redis lists `user` among the item's buyers.
async fn redis_lists_buyer(redis: &RedisStore, item: i64, user: &str) -> bool {
    redis::cmd("SISMEMBER")
        .arg(redis.keys(item).buyers)
        .arg(user)
        .query_async(&mut redis.connection())
        .await
        .unwrap()
}

async fn purchases(env: &TestEnv, item: i64) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outcomes WHERE item_id = $1 AND status = 'purchased'")
        .bind(item)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

async fn order_count(env: &TestEnv, item: i64) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM orders WHERE item_id = $1")
        .bind(item)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// 1,200 requests of 400 users on 60 units, sent 200 at a time with retries of 150 request
/// ids among them: every request is answered 202 or 200 and settles; the stock is sold exactly,
/// once per user, and a retry never gets another answer or another order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_buyers_get_exactly_the_stock_once_each_and_retries_keep_their_answers() {
    const STOCK: i64 = 60;
    const USERS: usize = 400;
    let env = TestEnv::new().await;
    let api = env.start_api(None).await;
    let item = api.create_item(STOCK).await;

    let mut user_of = HashMap::new();
    let mut bodies: Vec<Value> = (0..1200)
        .map(|i| {
            let (id, user) = (Uuid::new_v4(), format!("user-{}", i % USERS));
            user_of.insert(id, user.clone());
            body(id, item, &user)
        })
        .collect();
    // Retries of 150 ids, in the same burst as the first tries (every eighth request).
    let retried: Vec<Value> = bodies.iter().step_by(8).cloned().collect();
    bodies.extend(retried.iter().cloned());
    let answers = send_all(&api, &bodies, 200).await;
    assert_eq!(answers.len(), 1350);
    let pending = answers
        .iter()
        .filter(|(_, status, _)| *status == 202)
        .count();
    assert!(
        pending as i64 >= STOCK,
        "every sale is queued: {pending} pending"
    );

    let ids: HashSet<Uuid> = user_of.keys().copied().collect();
    let decided = settle(&api, &ids).await;
    assert_answers_agree(&answers, &decided);
    let bought = buyers(&decided, &user_of);
    assert_eq!(bought.len() as i64, STOCK, "the stock is sold exactly");
    assert_eq!(order_count(&env, item).await, STOCK);

    // Retries after the sale: the same decision, and no order more.
    let again = send_all(&api, &retried, 50).await;
    for (id, status, answer) in &again {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(answer["status"], decided[id]["status"], "{answer}");
        assert_eq!(answer["order_id"], decided[id]["order_id"], "{answer}");
    }
    assert_eq!(order_count(&env, item).await, STOCK);
    let report = env.assert_audit_clean(item).await;
    assert_eq!(
        (report.orders, report.stock_remaining, report.outcomes),
        (STOCK, 0, 1200)
    );
    api.shutdown.cancel();
    env.cleanup().await;
}

/// The consumers run in a `seckill consume --rival-workers` of their own; it is SIGKILLed with
/// requests queued and some in its hands, and another started: every accepted request is still
/// decided, once, and the sale audits clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_process_killed_mid_sale_loses_and_repeats_nothing() {
    const STOCK: i64 = 150;
    let env = TestEnv::new().await;
    let serve = env
        .spawn_serve("mq-api", &["--no-rival-workers"], &[])
        .await;
    let api = env.client_of(&serve);
    let workers = [
        ("SECKILL_RIVAL_WORKERS", "true"),
        ("SECKILL_REDIS_MQ_PREFETCH", "50"),
    ];
    let mut first = env.spawn_consume("mq-consumers-1", &workers);
    wait_for_log(
        &first,
        "redis-mq consumers connected",
        Duration::from_secs(60),
    )
    .await;
    let item = api.create_item(STOCK).await;

    let mut user_of = HashMap::new();
    let bodies: Vec<Value> = (0..600)
        .map(|i| {
            let (id, user) = (Uuid::new_v4(), format!("buyer-{i}"));
            user_of.insert(id, user.clone());
            body(id, item, &user)
        })
        .collect();
    // The sale runs in the background; the consumer process is killed once it has sold a few.
    let sender = env.client_of(&serve);
    let sending = tokio::spawn(async move { send_all(&sender, &bodies, 50).await });
    let deadline = Instant::now() + Duration::from_secs(60);
    while purchases(&env, item).await < 10 {
        assert!(Instant::now() < deadline, "nothing was sold");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.signal(nix::sys::signal::Signal::SIGKILL);
    first.wait_exit(Duration::from_secs(10)).await;
    let sold_at_kill = purchases(&env, item).await;
    assert!(
        sold_at_kill < STOCK,
        "the kill came mid-sale: {sold_at_kill} sold"
    );
    // Accepted meanwhile with no consumer running: they wait on the queue.
    let answers = sending.await.unwrap();
    let second = env.spawn_consume("mq-consumers-2", &workers);

    let decided = settle(&api, &user_of.keys().copied().collect()).await;
    assert_answers_agree(&answers, &decided);
    assert_eq!(buyers(&decided, &user_of).len() as i64, STOCK);
    let report = env.assert_audit_clean(item).await;
    assert_eq!((report.orders, report.outcomes), (STOCK, 600));
    let log = second.log_text();
    assert!(log.contains("redis-mq consumers connected"), "{log}");
    drop(second);
    drop(serve);
    env.cleanup().await;
}

async fn redis_mq_depth(env: &TestEnv) -> u32 {
    env.channel()
        .await
        .queue_declare(
            env.topology.redis_mq_queue().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the redis-mq queue exists")
        .message_count()
}

/// Messages that are no request (not JSON, a batch, two units) are rejected into the dead
/// letters once each, never redelivered, and the consumers go on deciding.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malformed_message_is_dead_lettered_once_and_the_consumers_go_on() {
    let env = TestEnv::new().await;
    let api = env.start_api(None).await;
    let item = api.create_item(5).await;
    // The first request declares the path's queue.
    let first = Uuid::new_v4();
    let (status, answer) = api.post(ORDERS, body(first, item, "ann")).await;
    assert_eq!(status, 202, "{answer}");

    let two_units =
        json!({"request_id": Uuid::new_v4(), "item_id": item, "user_id": "bo", "quantity": 2});
    let batch = json!([{"request_id": Uuid::new_v4(), "item_id": item, "user_id": "cy"}]);
    let poison: Vec<Vec<u8>> = vec![
        b"not json at all".to_vec(),
        serde_json::to_vec(&batch).unwrap(),
        serde_json::to_vec(&two_units).unwrap(),
    ];
    let channel = env.channel().await;
    channel.confirm_select(Default::default()).await.unwrap();
    for body in &poison {
        channel
            .basic_publish(
                "".into(),
                env.topology.redis_mq_queue().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2),
            )
            .await
            .unwrap();
    }
    channel.wait_for_confirms().await.unwrap();

    let mut dead = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while dead.len() < poison.len() {
        assert!(
            Instant::now() < deadline,
            "dead-lettered so far: {}",
            dead.len()
        );
        match env.get_dead_letter().await {
            Some(message) => dead.push(message.delivery.data),
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    dead.sort();
    let mut expected = poison.clone();
    expected.sort();
    assert_eq!(dead, expected, "each one is dead-lettered as it was sent");

    // The consumers go on: a request sent after the poison is decided.
    let after = Uuid::new_v4();
    let (status, answer) = api.post(ORDERS, body(after, item, "dee")).await;
    assert_eq!(status, 202, "{answer}");
    let decided = settle(&api, &HashSet::from([first, after])).await;
    assert_eq!(decided[&first]["status"], "purchased");
    assert_eq!(decided[&after]["status"], "purchased");
    // Never redelivered: nothing is left on the queue, and no dead letter came twice.
    assert_eq!(redis_mq_depth(&env).await, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(env.get_dead_letter().await.is_none(), "a poison came back");
    let report = env.assert_audit_clean(item).await;
    assert_eq!((report.orders, report.outcomes), (2, 2));
    api.shutdown.cancel();
    env.cleanup().await;
}

/// Redis down: the API answers 503 with `Retry-After`, quickly, and the request is not left
/// `pending`. RabbitMQ unreachable (the path pointed at a closed port): 503 with `Retry-After`,
/// and the Redis unit, the buyer's place and the accepted record are all given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_or_rabbitmq_unreachable_answers_503_with_retry_after() {
    let env = TestEnv::new().await;
    let mut no_redis = env.path_args();
    no_redis.redis.redis_url = "redis://127.0.0.1:1".into();
    let serve = seckill::config::ServeArgs {
        sold_out_ttl_ms: 0,
        ..seckill::config::ServeArgs::loopback()
    };
    let api = env.start_api_configured(serve, no_redis).await;
    let item = api.create_item(5).await;
    let id = Uuid::new_v4();
    let started = Instant::now();
    let response = api
        .http
        .post(format!("{}{ORDERS}", api.base))
        .json(&body(id, item, "ann"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().get("retry-after").is_some());
    let answer: Value = response.json().await.unwrap();
    assert!(answer["error"].is_string(), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5), "too slow");
    let (status, _) = api.get(&format!("/orders/{id}")).await;
    assert_eq!(
        status, 404,
        "a request that was not queued is not left pending"
    );
    api.shutdown.cancel();

    // The path alone, with a live Redis and PostgreSQL, its broker a closed port.
    let mut closed = env.broker.clone();
    closed.amqp_url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
    let registry = Registry::new(env.pool.clone(), &env.path_args(), &closed).unwrap();
    let redis = RedisStore::new(&env.path_args().redis).unwrap();
    redis.load_item(&env.pool, item, true).await.unwrap();
    let path = registry.get(PathName::RedisMq).unwrap();
    for _ in 0..2 {
        let request = common::request(item, "bo");
        let started = Instant::now();
        let refused = registry.answer(path, &request).await;
        assert!(
            matches!(refused, Err(PathError::Unavailable(_))),
            "{refused:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "too slow");
        let response = ApiError::from(refused.unwrap_err()).into_response();
        assert_eq!(response.status(), 503);
        assert!(response.headers().get("retry-after").is_some());
        let state = store::request_state(&env.pool, request.request_id)
            .await
            .unwrap();
        assert!(
            matches!(state, RequestState::Unknown),
            "withdrawn: {state:?}"
        );
    }
    assert_eq!(
        (
            redis_stock(&redis, item).await,
            redis_lists_buyer(&redis, item, "bo").await
        ),
        (Some(5), false),
        "the unit and the claim were given back"
    );
    let report = env.assert_audit_clean(item).await;
    assert_eq!((report.orders, report.outcomes), (0, 0));
    env.cleanup().await;
}

/// `tests/lock_paths.rs`'s repeated request id, for the path that answers `pending` first: ten
/// sends of one id at once and one more are each `pending` or the decision, the decision is the
/// same every time, and it is one order and one outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_request_id_is_one_request() {
    let env = TestEnv::new().await;
    let api = env.start_api(None).await;
    let item = api.create_item(10).await;
    let id = Uuid::new_v4();
    let bodies = vec![body(id, item, "alice"); 10];
    let mut answers = send_all(&api, &bodies, 10).await;
    let decided = settle(&api, &HashSet::from([id])).await;
    assert_eq!(decided[&id]["status"], "purchased", "{}", decided[&id]);
    answers.extend(send_all(&api, &bodies[..1], 1).await);
    assert_eq!(
        answers.last().unwrap().1,
        200,
        "decided, a retry gets the decision"
    );
    assert_answers_agree(&answers, &decided);
    let report = env.assert_audit_clean(item).await;
    assert_eq!(
        (report.orders, report.outcomes, report.stock_remaining),
        (1, 1, 9)
    );
    api.shutdown.cancel();
    env.cleanup().await;
}

/// Repeat buyers at the edge of the stock: 200 items of 2 units, each wanted by 6 users who
/// send 4 requests each, one item's 24 requests in flight together. A request that takes a unit
/// and then finds its user in the buyer set must give the unit back; other requests that miss
/// it meanwhile set the in-process sold-out flag, and everyone after them is told `sold_out`
/// with the unit in Redis (with the `DECR` before the claim, 4 to 14 items of the 200 were left
/// a unit short in every run). Every item sells its 2 units, once per user, and audits clean
/// (the audit counts a `sold_out` told while stock was left).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn units_given_back_by_repeat_buyers_at_the_edge_of_the_stock_are_all_sold() {
    const ITEMS: usize = 200;
    const STOCK: i64 = 2;
    const USERS: usize = 6;
    const TRIES: usize = 4;
    let env = TestEnv::new().await;
    let api = env.start_api(None).await;
    let mut items = Vec::new();
    for _ in 0..ITEMS {
        items.push(api.create_item(STOCK).await);
    }
    let mut user_of = HashMap::new();
    let mut bodies = Vec::new();
    // Each item's requests one after the other, so that they are in flight together.
    for &item in &items {
        for round in 0..USERS * TRIES {
            let (id, user) = (Uuid::new_v4(), format!("user-{item}-{}", round % USERS));
            user_of.insert(id, user.clone());
            bodies.push(body(id, item, &user));
        }
    }
    let answers = send_all(&api, &bodies, 300).await;
    let decided = settle(&api, &user_of.keys().copied().collect()).await;
    assert_answers_agree(&answers, &decided);
    buyers(&decided, &user_of);
    let redis = RedisStore::new(&env.path_args().redis).unwrap();
    let mut short = Vec::new();
    for &item in &items {
        let sold = order_count(&env, item).await;
        if sold != STOCK {
            short.push((item, sold, redis_stock(&redis, item).await));
        }
    }
    assert!(
        short.is_empty(),
        "items left unsold (item, orders, Redis stock): {short:?}"
    );
    for &item in &items {
        env.assert_audit_clean(item).await;
    }
    api.shutdown.cancel();
    env.cleanup().await;
}

/// An API process that dies between recording a request and publishing it (or a broker that
/// went down before confirming the message) leaves the request accepted and on no queue: its
/// buyer polls `pending` with nothing to decide it. The buyer's retry of the request id, as the
/// README tells them, publishes it again: it is decided once, and Redis and PostgreSQL agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_recorded_but_never_queued_is_decided_when_its_buyer_retries() {
    let env = TestEnv::new().await;
    let api = env.start_api(None).await;
    let item = api.create_item(5).await;
    let request = seckill::domain::OrderRequest {
        request_id: Uuid::new_v4(),
        item_id: item,
        user_id: "alice".into(),
        quantity: 1,
    };
    // What the dead process did: recorded the request, claimed the buyer, took a unit.
    let redis = RedisStore::new(&env.path_args().redis).unwrap();
    redis.load_item(&env.pool, item, true).await.unwrap();
    let keys = redis.keys(item);
    let mut con = redis.connection();
    let _: () = redis::pipe()
        .sadd(&keys.buyers, "alice")
        .ignore()
        .decr(&keys.stock, 1)
        .ignore()
        .query_async(&mut con)
        .await
        .unwrap();
    store::record_accepted(&env.pool, std::slice::from_ref(&request))
        .await
        .unwrap();
    let id = request.request_id;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, answer) = api.get(&format!("/orders/{id}")).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("pending")),
        "nothing decides it: {answer}"
    );

    let (status, answer) = api.post(ORDERS, body(id, item, "alice")).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (202, Some("pending")),
        "{answer}"
    );
    let decided = settle(&api, &HashSet::from([id])).await;
    assert_eq!(decided[&id]["status"], "purchased", "{}", decided[&id]);
    let report = env.assert_audit_clean(item).await;
    assert_eq!(
        (report.orders, report.outcomes, report.stock_remaining),
        (1, 1, 4)
    );
    assert_eq!(
        redis_stock(&redis, item).await,
        Some(4),
        "Redis agrees with PostgreSQL"
    );
    api.shutdown.cancel();
    env.cleanup().await;
}

/// A buyer who holds an order but is missing from Redis's buyer set (a request of theirs that
/// missed the stock gave its claim back while another of theirs was bought) takes a unit with
/// their next request, which the unique key refuses. The consumers put them back in the set
/// then, so every request after is answered `already_purchased` at once, taking no unit:
/// one unit lost to Redis, not one per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_buyer_missing_from_the_redis_set_is_put_back_by_the_refusal_of_their_next_request() {
    let env = TestEnv::new().await;
    let api = env.start_api(None).await;
    let item = api.create_item(5).await;
    let first = Uuid::new_v4();
    send_all(&api, &[body(first, item, "alice")], 1).await;
    let decided = settle(&api, &HashSet::from([first])).await;
    assert_eq!(
        decided[&first]["status"], "purchased",
        "{}",
        decided[&first]
    );

    let redis = RedisStore::new(&env.path_args().redis).unwrap();
    let keys = redis.keys(item);
    let mut con = redis.connection();
    let _: () = redis::cmd("SREM")
        .arg(&keys.buyers)
        .arg("alice")
        .query_async(&mut con)
        .await
        .unwrap();

    let second = Uuid::new_v4();
    let answers = send_all(&api, &[body(second, item, "alice")], 1).await;
    assert_eq!(answers[0].1, 202, "not in the set: queued with a unit");
    let decided = settle(&api, &HashSet::from([second])).await;
    assert_eq!(decided[&second]["status"], "already_purchased");
    assert!(
        redis_lists_buyer(&redis, item, "alice").await,
        "the refusal put the buyer back in the set"
    );
    assert_eq!(
        redis_stock(&redis, item).await,
        Some(3),
        "the refused request's unit is lost to Redis"
    );

    let (status, answer) = api.post(ORDERS, body(Uuid::new_v4(), item, "alice")).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("already_purchased")),
        "{answer}"
    );
    assert_eq!(
        redis_stock(&redis, item).await,
        Some(3),
        "and it took no unit"
    );
    let report = env.assert_audit_clean(item).await;
    assert_eq!((report.orders, report.stock_remaining), (1, 4));
    api.shutdown.cancel();
    env.cleanup().await;
}
