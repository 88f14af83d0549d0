//! The queue path end to end over real HTTP, RabbitMQ and PostgreSQL.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{PARTITIONS, TestEnv, run_concurrently};
use serde_json::json;
use uuid::Uuid;

/// 2,000 concurrent orders for one item of stock 100 from 500 users (4 tries each): exactly 100
/// orders, at most one per user, every request decided once, and every answer matches the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_concurrent_orders_sell_exactly_the_stock() {
    let env = TestEnv::new().await;
    let consumer = env.start_consumer().await;
    let api = env.start_api(None).await;
    let item = api.create_item(100).await;

    let requests: Vec<_> = (0..2000)
        .map(|i| {
            let api = &api;
            async move {
                api.post(
                    "/orders?wait=20000",
                    json!({"item_id": item, "user_id": format!("user-{}", i % 500)}),
                )
                .await
            }
        })
        .collect();
    let answers = run_concurrently(requests, 2000).await;

    let mut answered: HashMap<Uuid, String> = HashMap::new();
    for (status, body) in &answers {
        assert!(*status == 200 || *status == 202, "{status} {body}");
        let id: Uuid = body["request_id"].as_str().unwrap().parse().unwrap();
        answered.insert(id, body["status"].as_str().unwrap().to_string());
    }
    assert_eq!(answered.len(), 2000, "every request got its own id");

    env.wait_for_outcomes(item, 2000, Duration::from_secs(60))
        .await;
    let report = env.assert_audit_clean(item).await;
    assert_eq!(report.orders, 100, "exactly the stock is sold");
    assert_eq!(report.stock_remaining, 0);
    assert_eq!(report.outcomes, 2000, "one outcome per request");

    let buyers: Vec<String> = sqlx::query_scalar("SELECT user_id FROM orders WHERE item_id = $1")
        .bind(item)
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(
        buyers.iter().collect::<HashSet<_>>().len(),
        100,
        "one order per user"
    );

    // What each client was told is what the store says.
    let stored: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT request_id, status FROM outcomes WHERE item_id = $1")
            .bind(item)
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let mut purchased = 0;
    for (id, status) in stored {
        let told = &answered[&id];
        assert!(
            told == "pending" || *told == status,
            "{id}: told {told}, stored {status}"
        );
        purchased += usize::from(status == "purchased");
    }
    assert_eq!(purchased, 100);
    assert!(
        answered.values().filter(|s| *s != "pending").count() > 1900,
        "with ?wait nearly every request is answered with its decision"
    );

    let (status, body) = api.get(&format!("/items/{item}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["sold"], 100);
    assert_eq!(body["stock_remaining"], 0);
    assert_eq!(body["stock_initial"], 100);

    consumer.cancel();
    api.shutdown.cancel();
    env.cleanup().await;
}

/// A request id sent many times, at once and later, is one request: one outcome, one order,
/// the same answer every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_request_id_is_the_same_request() {
    let env = TestEnv::new().await;
    let consumer = env.start_consumer().await;
    let api = env.start_api(None).await;
    let item = api.create_item(10).await;
    let request_id = Uuid::new_v4();
    let body = json!({"item_id": item, "user_id": "alice", "request_id": request_id});

    let burst: Vec<_> = (0..20)
        .map(|_| api.post("/orders?wait=10000", body.clone()))
        .collect();
    let mut answers = run_concurrently(burst, 20).await;
    answers.push(api.post("/orders?wait=10000", body.clone()).await);

    let orders: Vec<Uuid> = answers
        .iter()
        .filter_map(|(status, b)| {
            assert!(*status == 200 || *status == 202, "{status} {b}");
            b["order_id"].as_str().map(|s| s.parse().unwrap())
        })
        .collect();
    assert!(!orders.is_empty());
    assert!(
        orders.iter().all(|o| *o == orders[0]),
        "one order id for all answers"
    );
    for (_, b) in &answers {
        assert_eq!(b["request_id"], request_id.to_string());
        assert!(
            b["status"] == "purchased" || b["status"] == "pending",
            "{b}"
        );
    }
    env.wait_for_outcomes(item, 1, Duration::from_secs(10))
        .await;
    let report = env.assert_audit_clean(item).await;
    assert_eq!((report.orders, report.outcomes), (1, 1));
    assert_eq!(report.stock_remaining, 9);

    consumer.cancel();
    api.shutdown.cancel();
    env.cleanup().await;
}

/// Without a consumer a request is `pending`; once one runs it is decided; an id never sent
/// is 404; `?wait` answers 202 when no decision comes in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn order_status_goes_from_pending_to_decided() {
    let env = TestEnv::new().await;
    let api = env.start_api(None).await;
    let item = api.create_item(1).await;

    let (status, body) = api
        .post(
            "/orders?wait=300",
            json!({"item_id": item, "user_id": "bob"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "pending");
    let id = body["request_id"].as_str().unwrap().to_string();
    let (status, body) = api.get(&format!("/orders/{id}")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("pending")));

    let (status, _) = api.get(&format!("/orders/{}", Uuid::new_v4())).await;
    assert_eq!(status, 404);

    let consumer = env.start_consumer().await;
    env.wait_for_outcomes(item, 1, Duration::from_secs(10))
        .await;
    let (status, body) = api.get(&format!("/orders/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "purchased");
    assert!(body["order_id"].as_str().is_some());

    // The second buyer finds it sold out, and is told so synchronously.
    let (status, body) = api
        .post(
            "/orders?wait=10000",
            json!({"item_id": item, "user_id": "carol"}),
        )
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("sold_out")),
        "{body}"
    );
    // And bob, asking again with a new request, already has his.
    let (status, body) = api
        .post(
            "/orders?wait=10000",
            json!({"item_id": item, "user_id": "bob"}),
        )
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("already_purchased")),
        "{body}"
    );
    assert!(body.get("order_id").is_none());

    let (status, body) = api.get("/healthz").await;
    assert_eq!(
        (status, &body["database"], &body["broker"]),
        (200, &json!(true), &json!(true))
    );

    env.assert_audit_clean(item).await;
    consumer.cancel();
    api.shutdown.cancel();
    env.cleanup().await;
}

/// The same path on quorum queues (replicated in a cluster; here on the one local node):
/// concurrent orders, a consumer killed mid-work and restarted, exactly the stock sold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quorum_partition_queues_sell_exactly_the_stock_across_a_consumer_crash() {
    let env = TestEnv::with_broker(|b| b.queue_type = seckill::config::QueueType::Quorum).await;
    let api = env.start_api(None).await;
    let item = api.create_item(50).await;
    let requests: Vec<_> = (0..600)
        .map(|i| {
            let api = &api;
            async move {
                api.post(
                    "/orders",
                    json!({"item_id": item, "user_id": format!("user-{}", i % 200)}),
                )
                .await
            }
        })
        .collect();
    for (status, body) in run_concurrently(requests, 100).await {
        assert_eq!(status, 202, "{body}");
    }
    // Crash a consumer after its 2nd commit (committed, not acked), then a clean one.
    let mut crashing = env.spawn_consume("crashing", &[("SECKILL_FAILPOINT", "after_commit:2")]);
    assert!(!crashing.wait_exit(Duration::from_secs(60)).await.success());
    let clean = env.spawn_consume("clean", &[]);
    env.wait_for_outcomes(item, 600, Duration::from_secs(60))
        .await;
    let report = env.assert_audit_clean(item).await;
    assert_eq!((report.orders, report.outcomes), (50, 600));
    // The broker says what it made of the declaration.
    let listing = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "type", "--no-table-headers"])
        .output()
        .expect("rabbitmqctl runs");
    let listing = String::from_utf8_lossy(&listing.stdout);
    let queue = env
        .topology
        .partition_queue(env.topology.partition_of(item));
    assert!(
        listing
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == [queue.as_str(), "quorum"]),
        "{queue} should be a quorum queue:\n{listing}"
    );
    drop(clean);
    api.shutdown.cancel();
    env.cleanup().await;
}

/// Over HTTP, a retry of a decided id gets the stored answer even with no consumer running: it
/// was not published (a published one would wait, then answer 202 `pending`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_a_retried_decided_id_from_the_store_without_publishing() {
    let env = TestEnv::new().await;
    let api = env.start_api(None).await;
    let consumer = env.start_consumer().await;
    let item = api.create_item(5).await;
    let request_id = Uuid::new_v4();
    let body = json!({"item_id": item, "user_id": "u", "request_id": request_id});
    let (status, first) = api.post("/orders?wait=10000", body.clone()).await;
    assert_eq!(
        (status, first["status"].as_str()),
        (200, Some("purchased")),
        "{first}"
    );
    consumer.cancel();

    for _ in 0..20 {
        let (status, again) = api.post("/orders?wait=2000", body.clone()).await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again, first, "the same answer");
    }
    for partition in 0..PARTITIONS {
        assert_eq!(env.queue_depth(partition).await, 0, "nothing was published");
    }
    let report = env.assert_audit_clean(item).await;
    assert_eq!((report.outcomes, report.orders), (1, 1));
    api.shutdown.cancel();
    env.cleanup().await;
}
