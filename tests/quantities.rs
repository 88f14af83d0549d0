//! Quantities, per-user limits and red packets on the queue path, end to end over real HTTP,
//! RabbitMQ and PostgreSQL: never more units than stock, never more than the limit per user, a red
//! packet paid out exactly once per share and exactly its total — also across a consumer crash.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{TestEnv, run_concurrently};
use serde_json::{Value, json};
use uuid::Uuid;

use seckill::domain::{ItemSpec, OrderRequest};

/// Units held per user, from the orders table.
async fn holdings(env: &TestEnv, item: i64) -> HashMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>("SELECT user_id, quantity FROM orders WHERE item_id = $1")
        .bind(item)
        .fetch_all(&env.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// Red packet shares paid, per user.
async fn shares(env: &TestEnv, item: i64) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT user_id, amount FROM orders WHERE item_id = $1")
        .bind(item)
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

/// 1,200 concurrent requests of 1–3 units from 300 users for 200 units with a limit of 3 each:
/// never more units than the stock, never more than 3 per user, and each answer matches the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_buyers_with_quantities_never_pass_the_stock_or_the_limit() {
    let env = TestEnv::new().await;
    let consumer = env.start_consumer().await;
    let api = env.start_api(None).await;
    let (status, item) = api
        .post(
            "/items",
            json!({"name": "limited", "stock": 200, "per_user_limit": 3}),
        )
        .await;
    assert_eq!(status, 201, "{item}");
    assert_eq!(item["per_user_limit"], 3);
    assert_eq!(item["kind"], "goods");
    let item = item["id"].as_i64().unwrap();

    let total = 1200;
    let requests: Vec<_> = (0..total)
        .map(|i| {
            let api = &api;
            let body = json!({
                "item_id": item,
                "user_id": format!("user-{}", i % 300),
                // Each user asks varying quantities over their 4 requests.
                "quantity": (i / 300 + i) % 3 + 1,
            });
            async move {
                (
                    body["quantity"].as_i64().unwrap(),
                    api.post("/orders?wait=20000", body).await,
                )
            }
        })
        .collect();
    let answers = run_concurrently(requests, 400).await;
    for (_, (status, body)) in &answers {
        assert!(*status == 200 || *status == 202, "{status} {body}");
        assert!(
            body.get("amount").is_none(),
            "goods carry no amount: {body}"
        );
    }

    env.wait_for_outcomes(item, total as i64, Duration::from_secs(60))
        .await;
    let report = env.assert_audit_clean(item).await;
    assert!(report.units_sold <= 200, "oversold: {report}");
    assert!(
        report.units_sold >= 197,
        "sold out but for a remainder too small: {report}"
    );
    let held = holdings(&env, item).await;
    assert!(held.values().all(|u| (1..=3).contains(u)), "{held:?}");
    assert_eq!(held.values().sum::<i64>(), report.units_sold);
    assert!(
        held.values().any(|u| *u > 1),
        "some users bought several units"
    );

    // What each client was told is what the store says, with the units asked for.
    let stored: HashMap<Uuid, (String, i64)> = sqlx::query_as::<_, (Uuid, String, i64)>(
        "SELECT request_id, status, quantity FROM outcomes WHERE item_id = $1",
    )
    .bind(item)
    .fetch_all(&env.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(id, status, quantity)| (id, (status, quantity)))
    .collect();
    for (quantity, (_, body)) in &answers {
        let id: Uuid = body["request_id"].as_str().unwrap().parse().unwrap();
        let (status, stored_quantity) = &stored[&id];
        assert_eq!(stored_quantity, quantity);
        let told = body["status"].as_str().unwrap();
        assert!(
            told == "pending" || told == status,
            "{id}: {told} vs {status}"
        );
    }

    let (status, body) = api.get(&format!("/items/{item}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["sold"], report.units_sold);
    assert_eq!(body["stock_remaining"], 200 - report.units_sold);

    consumer.cancel();
    api.shutdown.cancel();
    env.cleanup().await;
}

/// A red packet of 10,000 cents in 50 shares, grabbed concurrently by 400 users (some twice):
/// exactly 50 grabs, one per user, every share positive, summing exactly to the total; the grab's
/// answer and `GET /orders/{id}` show its amount.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_red_packet_grabbed_by_more_users_than_shares_pays_out_exactly_its_total() {
    let env = TestEnv::new().await;
    let consumer = env.start_consumer().await;
    let api = env.start_api(None).await;
    let (status, packet) = api
        .post(
            "/items",
            json!({"name": "lucky money", "kind": "red_packet", "total_amount": 10_000, "shares": 50}),
        )
        .await;
    assert_eq!(status, 201, "{packet}");
    assert_eq!(packet["kind"], "red_packet");
    assert_eq!(packet["total_amount"], 10_000);
    assert_eq!(packet["amount_remaining"], 10_000);
    assert_eq!(packet["stock_initial"], 50);
    let item = packet["id"].as_i64().unwrap();

    let total = 600;
    let grabs: Vec<_> = (0..total)
        .map(|i| {
            let api = &api;
            async move {
                api.post(
                    "/orders?wait=20000",
                    json!({"item_id": item, "user_id": format!("user-{}", i % 400)}),
                )
                .await
            }
        })
        .collect();
    let answers = run_concurrently(grabs, 600).await;
    env.wait_for_outcomes(item, total as i64, Duration::from_secs(60))
        .await;
    let report = env.assert_audit_clean(item).await;
    assert_eq!(report.orders, 50, "exactly one grab per share");

    let paid = shares(&env, item).await;
    assert_eq!(paid.len(), 50);
    assert!(paid.iter().all(|(_, a)| *a > 0), "{paid:?}");
    assert_eq!(paid.iter().map(|(_, a)| a).sum::<i64>(), 10_000);
    let users: HashSet<_> = paid.iter().map(|(u, _)| u).collect();
    assert_eq!(users.len(), 50, "one share per user");

    // Every purchase answered with its amount, and GET shows the same.
    let mut answered_amounts = 0;
    for (status, body) in &answers {
        assert!(*status == 200 || *status == 202, "{status} {body}");
        if body["status"] == "purchased" {
            let amount = body["amount"].as_i64().expect("a grab carries its amount");
            answered_amounts += 1;
            let (_, got) = api
                .get(&format!("/orders/{}", body["request_id"].as_str().unwrap()))
                .await;
            assert_eq!(got["amount"], amount, "{got}");
            assert_eq!(got["order_id"], body["order_id"]);
        } else {
            assert!(body.get("amount").is_none(), "{body}");
        }
    }
    assert!(
        answered_amounts > 40,
        "with ?wait nearly every grab is answered"
    );

    let (_, body) = api.get(&format!("/items/{item}")).await;
    assert_eq!(body["amount_remaining"], 0);
    assert_eq!(body["stock_remaining"], 0);
    assert_eq!(body["sold"], 50);

    consumer.cancel();
    api.shutdown.cancel();
    env.cleanup().await;
}

/// The consumer daemon dies right after committing a batch (not acked: the broker redelivers it),
/// then a clean one finishes: the red packet still sums exactly to its total, every request has
/// exactly one outcome, and the redelivered grabs are answered from the store, not drawn again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_red_packet_survives_a_consumer_crash_after_commit() {
    let env = TestEnv::new().await;
    let spec = ItemSpec::RedPacket {
        total: 100_000,
        shares: 300,
    };
    let item = seckill::store::create_item_spec(&env.pool, "packet", &spec)
        .await
        .unwrap()
        .id;
    let total = 2000;
    env.publish_direct(&common::requests(item, total, 800))
        .await;

    let mut crashing = env.spawn_consume("crash", &[("SECKILL_FAILPOINT", "after_commit:3")]);
    let status = crashing.wait_exit(Duration::from_secs(60)).await;
    assert!(!status.success(), "the failpoint aborts the daemon");
    let decided = env.outcome_count(item).await;
    assert!(
        decided > 0 && decided < total as i64,
        "it died mid-work ({decided})"
    );

    let mut clean = env.spawn_consume("clean", &[]);
    env.wait_for_outcomes(item, total as i64, Duration::from_secs(120))
        .await;
    let report = env.assert_audit_clean(item).await;
    assert_eq!(report.outcomes, total as i64, "one outcome per request");
    assert_eq!(report.orders, 300);
    let paid = shares(&env, item).await;
    assert!(paid.iter().all(|(_, a)| *a > 0));
    assert_eq!(paid.iter().map(|(_, a)| a).sum::<i64>(), 100_000);
    clean.child.start_kill().unwrap();
    env.cleanup().await;
}

/// SIGKILL mid-work on goods bought several units at a time: nothing lost, nothing twice, no
/// user past the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_work_keeps_quantities_within_stock_and_limit() {
    let env = TestEnv::new().await;
    let spec = ItemSpec::Goods {
        stock: 1000,
        per_user_limit: 4,
    };
    let item = seckill::store::create_item_spec(&env.pool, "goods", &spec)
        .await
        .unwrap()
        .id;
    let total = 6000;
    let requests: Vec<OrderRequest> = (0..total)
        .map(|i| OrderRequest {
            request_id: Uuid::new_v4(),
            item_id: item,
            user_id: format!("user-{}", i % 700),
            quantity: (i % 4 + 1) as i64,
        })
        .collect();
    env.publish_direct(&requests).await;

    let mut consumer = env.spawn_consume("killed", &[]);
    env.wait_for_outcomes(item, 300, Duration::from_secs(60))
        .await;
    consumer.child.start_kill().expect("SIGKILL");
    consumer.wait_exit(Duration::from_secs(10)).await;
    assert!(
        env.outcome_count(item).await < total as i64,
        "killed mid-work"
    );

    let mut restarted = env.spawn_consume("restarted", &[]);
    env.wait_for_outcomes(item, total as i64, Duration::from_secs(120))
        .await;
    let report = env.assert_audit_clean(item).await;
    assert_eq!(report.outcomes, total as i64);
    assert!(report.units_sold <= 1000);
    let held = holdings(&env, item).await;
    assert!(held.values().all(|u| (1..=4).contains(u)), "{held:?}");
    restarted.child.start_kill().unwrap();
    env.cleanup().await;
}

/// Bad quantities, limits and red packets are refused with a JSON 4xx naming the problem, and
/// reach neither the broker nor the database; a lock-based path refuses what it cannot sell
/// (`pessimistic` and `optimistic` sell red packets since issue 13: see `tests/lock_paths.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_quantities_limits_and_packets_are_refused_with_4xx() {
    let env = TestEnv::new().await;
    let api = env.start_api(None).await;
    let refused_items: Vec<(Value, u16, &str)> = vec![
        (
            json!({"name": "x", "stock": 5, "per_user_limit": 0}),
            400,
            "per_user_limit",
        ),
        (
            json!({"name": "x", "stock": 5, "per_user_limit": 6}),
            400,
            "per_user_limit",
        ),
        (
            json!({"name": "x", "stock": 5, "per_user_limit": -1}),
            400,
            "per_user_limit",
        ),
        (
            json!({"name": "x", "per_user_limit": 2}),
            400,
            "stock is required",
        ),
        (
            json!({"name": "x", "stock": 5, "shares": 2}),
            400,
            "red packets only",
        ),
        (
            json!({"name": "x", "kind": "red_packet", "total_amount": 5, "shares": 6}),
            400,
            "no share is zero",
        ),
        (
            json!({"name": "x", "kind": "red_packet", "total_amount": 0, "shares": 1}),
            400,
            "total_amount",
        ),
        (
            json!({"name": "x", "kind": "red_packet", "total_amount": 10, "shares": 0}),
            400,
            "shares",
        ),
        (
            json!({"name": "x", "kind": "red_packet", "total_amount": 10}),
            400,
            "needs total_amount and shares",
        ),
        (
            json!({"name": "x", "kind": "red_packet", "total_amount": 10, "shares": 2, "stock": 2}),
            400,
            "not stock",
        ),
        (
            json!({"name": "x", "kind": "red_packet", "total_amount": 10, "shares": 2, "per_user_limit": 2}),
            400,
            "per_user_limit must be 1",
        ),
        (
            json!({"name": "x", "kind": "red_packet", "total_amount": 1e20, "shares": 2}),
            422,
            "",
        ),
        (
            json!({"name": "x", "kind": "lottery", "stock": 2}),
            422,
            "kind",
        ),
        (
            json!({"name": "x", "stock": 5, "per_user_limit": "2"}),
            422,
            "per_user_limit",
        ),
    ];
    for (body, expected, mentions) in refused_items {
        let (status, answer) = api.post("/items", body.clone()).await;
        assert_eq!(status, expected, "{body} → {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(mentions), "{body} → {error}");
    }
    let items: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(items, 0, "no refused item was created");

    let (_, goods) = api
        .post(
            "/items",
            json!({"name": "g", "stock": 10, "per_user_limit": 3}),
        )
        .await;
    let goods = goods["id"].as_i64().unwrap();
    let (_, packet) = api
        .post(
            "/items",
            json!({"name": "p", "kind": "red_packet", "total_amount": 100, "shares": 3}),
        )
        .await;
    let packet = packet["id"].as_i64().unwrap();
    let one_per_user = api.create_item(5).await;
    let refused_orders: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/orders",
            json!({"item_id": goods, "user_id": "u", "quantity": 0}),
            400,
            "quantity must be",
        ),
        (
            "/orders",
            json!({"item_id": goods, "user_id": "u", "quantity": -3}),
            400,
            "quantity must be",
        ),
        (
            "/orders",
            json!({"item_id": goods, "user_id": "u", "quantity": 4}),
            400,
            "per_user_limit of 3",
        ),
        (
            "/orders",
            json!({"item_id": one_per_user, "user_id": "u", "quantity": 2}),
            400,
            "per_user_limit of 1",
        ),
        (
            "/orders",
            json!({"item_id": packet, "user_id": "u", "quantity": 2}),
            400,
            "one share at a time",
        ),
        (
            "/orders",
            json!({"item_id": goods, "user_id": "u", "quantity": "2"}),
            422,
            "quantity",
        ),
        (
            "/orders",
            json!({"item_id": goods, "user_id": "u", "quantity": 1.5}),
            422,
            "quantity",
        ),
        (
            "/orders?path=optimistic",
            json!({"item_id": goods, "user_id": "u"}),
            400,
            "path optimistic supports only",
        ),
        (
            "/orders?path=lock-table",
            json!({"item_id": packet, "user_id": "u"}),
            400,
            "path lock-table supports only ordinary goods;",
        ),
        (
            "/orders?path=conditional",
            json!({"item_id": one_per_user, "user_id": "u", "quantity": 2}),
            400,
            "per_user_limit of 1",
        ),
        (
            "/orders?path=redis-lua",
            json!({"item_id": packet, "user_id": "u"}),
            400,
            "path redis-lua supports only",
        ),
        (
            "/orders?path=advisory",
            json!({"item_id": packet, "user_id": "u"}),
            400,
            "queue path",
        ),
    ];
    for (path, body, expected, mentions) in refused_orders {
        let (status, answer) = api.post(path, body.clone()).await;
        assert_eq!(status, expected, "{path} {body} → {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(mentions), "{path} {body} → {error}");
    }
    for table in ["requests", "outcomes", "orders"] {
        let sql = match table {
            "requests" => "SELECT count(*) FROM requests",
            "outcomes" => "SELECT count(*) FROM outcomes",
            _ => "SELECT count(*) FROM orders",
        };
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&env.pool).await.unwrap();
        assert_eq!(n, 0, "nothing refused reached {table}");
    }
    for partition in 0..common::PARTITIONS {
        assert_eq!(env.queue_depth(partition).await, 0, "nothing was published");
    }

    // A lock path still sells a default item with quantity 1 given explicitly.
    let (status, answer) = api
        .post(
            "/orders?path=pessimistic",
            json!({"item_id": one_per_user, "user_id": "u", "quantity": 1}),
        )
        .await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("purchased")),
        "{answer}"
    );

    api.shutdown.cancel();
    env.cleanup().await;
}

/// The locking paths that sell quantities (pessimistic, advisory, lock-table) hold to the same
/// rules: 600 concurrent requests of 1–3 units from 150 users for 120 units with a limit of 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn locking_paths_sell_quantities_within_the_stock_and_the_limit() {
    let env = TestEnv::new().await;
    let api = env.start_api(None).await;
    for path in ["pessimistic", "advisory", "lock-table"] {
        let (status, item) = api
            .post(
                "/items",
                json!({"name": path, "stock": 120, "per_user_limit": 3}),
            )
            .await;
        assert_eq!(status, 201, "{item}");
        let item = item["id"].as_i64().unwrap();
        let uri = format!("/orders?path={path}");
        let requests: Vec<_> = (0..600)
            .map(|i| {
                let (api, uri) = (&api, &uri);
                let body = json!({
                    "item_id": item,
                    "user_id": format!("user-{}", i % 150),
                    "quantity": (i / 150 + i) % 3 + 1,
                });
                async move { api.post(uri, body).await }
            })
            .collect();
        for (status, body) in run_concurrently(requests, 32).await {
            assert_eq!(status, 200, "{path}: {body}");
        }
        let report = env.assert_audit_clean(item).await;
        assert_eq!(report.outcomes, 600, "{path}");
        assert!(
            report.units_sold <= 120 && report.units_sold >= 117,
            "{path}: {report}"
        );
        let held = holdings(&env, item).await;
        assert!(
            held.values().all(|u| (1..=3).contains(u)),
            "{path}: {held:?}"
        );
        assert!(held.values().any(|u| *u > 1), "{path}: orders grew");
    }
    api.shutdown.cancel();
    env.cleanup().await;
}

/// A producer writing to the broker directly cannot get past the item's rules either: a quantity
/// over the limit, or on a red packet, is dead-lettered with the reason, and the partition goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quantity_the_item_forbids_is_dead_lettered_from_the_broker() {
    let env = TestEnv::new().await;
    let goods = seckill::store::create_item_spec(
        &env.pool,
        "g",
        &ItemSpec::Goods {
            stock: 10,
            per_user_limit: 2,
        },
    )
    .await
    .unwrap()
    .id;
    let request = |user: &str, quantity| OrderRequest {
        request_id: Uuid::new_v4(),
        item_id: goods,
        user_id: user.into(),
        quantity,
    };
    env.publish_direct(&[request("a", 3), request("b", 2)])
        .await;
    let consumer = env.start_consumer().await;
    env.wait_for_outcomes(goods, 1, Duration::from_secs(30))
        .await;
    let mut reason = None;
    for _ in 0..100 {
        if let Some(dead) = env.get_dead_letter().await {
            let headers = dead
                .delivery
                .properties
                .headers()
                .clone()
                .unwrap_or_default();
            reason = match headers.inner().get(seckill::broker::message::REASON_HEADER) {
                Some(lapin::types::AMQPValue::LongString(reason)) => Some(reason.to_string()),
                other => panic!("reason header missing: {other:?}"),
            };
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reason = reason.expect("the over-limit request was dead-lettered");
    assert!(reason.contains("per_user_limit of 2"), "{reason}");
    assert_eq!(
        holdings(&env, goods).await,
        HashMap::from([("b".to_string(), 2)])
    );
    assert_eq!(env.outcome_count(goods).await, 1);
    consumer.cancel();
    env.cleanup().await;
}

/// The schema is the backstop whatever a path gets wrong: a holding over the limit, a limit
/// copied wrong, a red packet share without an amount or of zero, goods with an amount, a red
/// packet overspent or left unpaid once every share is taken — each write is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_what_a_wrong_path_would_write() {
    let env = TestEnv::new().await;
    let create = |spec: ItemSpec| {
        let pool = env.pool.clone();
        async move {
            seckill::store::create_item_spec(&pool, "x", &spec)
                .await
                .unwrap()
                .id
        }
    };
    let goods = create(ItemSpec::Goods {
        stock: 10,
        per_user_limit: 2,
    })
    .await;
    let packet = create(ItemSpec::RedPacket {
        total: 10,
        shares: 3,
    })
    .await;
    let order = |item: i64, quantity: i64, limit: i64, amount: Option<i64>| {
        let pool = env.pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO orders (id, item_id, user_id, request_id, quantity, per_user_limit, amount)
                 VALUES ($1, $2, 'u', $3, $4, $5, $6)",
            )
            .bind(Uuid::new_v4())
            .bind(item)
            .bind(Uuid::new_v4())
            .bind(quantity)
            .bind(limit)
            .bind(amount)
            .execute(&pool)
            .await
        }
    };
    assert!(order(goods, 3, 2, None).await.is_err(), "over the limit");
    assert!(order(goods, 3, 3, None).await.is_err(), "a wrong limit");
    assert!(
        order(goods, 1, 2, Some(5)).await.is_err(),
        "goods with an amount"
    );
    assert!(
        order(packet, 1, 1, None).await.is_err(),
        "a share without amount"
    );
    assert!(order(packet, 1, 1, Some(0)).await.is_err(), "a zero share");
    assert!(
        order(packet, 2, 1, Some(4)).await.is_err(),
        "two shares at once"
    );
    assert!(order(goods, 2, 2, None).await.is_ok());
    assert!(order(packet, 1, 1, Some(4)).await.is_ok());

    let set = |stock: i64, remaining: i64| {
        let pool = env.pool.clone();
        async move {
            sqlx::query(
                "UPDATE items SET stock_remaining = $2, packet_remaining = $3 WHERE id = $1",
            )
            .bind(packet)
            .bind(stock)
            .bind(remaining)
            .execute(&pool)
            .await
        }
    };
    assert!(
        set(2, 1).await.is_err(),
        "2 shares left with 1 cent: one would be zero"
    );
    assert!(
        set(0, 3).await.is_err(),
        "every share taken, 3 cents unpaid"
    );
    assert!(set(2, -1).await.is_err(), "overspent");
    assert!(set(2, 6).await.is_ok());
    env.cleanup().await;
}
