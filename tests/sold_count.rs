//! `sold`, what `GET /items/{id}` shows, is kept on the item's row (migration 0012) instead of
//! being summed over the orders on every read: each writer adds what it sells in its stock
//! update, triggers take off what a delete removes. These tests hold it to the orders themselves:
//! while the queue consumer's group commits (every partition at once) and every kind of lock
//! path writer (`naive`'s oversell included) sell side by side, in every snapshot taken
//! meanwhile, and after orders are deleted one by one, item by item, or all at once.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{TestApi, TestEnv, run_concurrently};
use serde_json::json;
use uuid::Uuid;

use seckill::domain::{ItemId, ItemSpec};

/// The units the item's orders hold, counted.
async fn units_in_orders(env: &TestEnv, item: ItemId) -> i64 {
    sqlx::query_scalar("SELECT coalesce(sum(quantity), 0)::bigint FROM orders WHERE item_id = $1")
        .bind(item)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// `sold` as `GET /items/{id}` shows it.
async fn sold_shown(api: &TestApi, item: ItemId) -> i64 {
    let (status, body) = api.get(&format!("/items/{item}")).await;
    assert_eq!(status, 200, "{body}");
    body["sold"].as_i64().expect("sold is a number")
}

async fn goods(env: &TestEnv, stock: i64, per_user_limit: i64) -> ItemId {
    let spec = ItemSpec::Goods {
        stock,
        per_user_limit,
    };
    seckill::store::create_item_spec(&env.pool, "counted", &spec)
        .await
        .expect("create item")
        .id
}

/// Items whose stored `sold` differs from their orders' units, in one snapshot.
async fn items_miscounted(env: &TestEnv) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM items i
         WHERE i.sold <> (SELECT coalesce(sum(o.quantity), 0) FROM orders o WHERE o.item_id = i.id)",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sold_is_the_units_of_the_orders_while_the_queue_and_lock_paths_sell_at_once() {
    let env = TestEnv::new().await;
    let api = env.start_api(None).await;
    let consumer = env.start_consumer().await;
    // The queue path: one item per partition (consecutive ids), up to 3 units a user, so
    // holdings also grow in later batches. Each writer of the lock paths: the locked decision
    // that also grows holdings (pessimistic; advisory shares it), the one that oversells
    // (naive), the conditional update (conditional; the Redis gates write through it), the
    // compare-and-set ones (optimistic, redis-lock).
    let mut queue_items = Vec::new();
    for _ in 0..common::PARTITIONS {
        queue_items.push(goods(&env, 150, 3).await);
    }
    let pessimistic = goods(&env, 100, 2).await;
    let naive = goods(&env, 20, 1).await;
    let conditional = goods(&env, 50, 1).await;
    let optimistic = goods(&env, 30, 1).await;
    let redis_lock = goods(&env, 30, 1).await;

    let mut sales: Vec<(String, serde_json::Value)> = Vec::new();
    for i in 0..400 {
        for item in &queue_items {
            let body = json!({"item_id": item, "user_id": format!("q-{}", i % 100),
                              "quantity": 1 + i % 3});
            sales.push(("/orders?wait=10000".into(), body));
        }
        if i < 300 {
            let body = json!({"item_id": pessimistic, "user_id": format!("p-{}", i % 80)});
            sales.push(("/orders?path=pessimistic".into(), body));
        }
        if i < 200 {
            let body = json!({"item_id": naive, "user_id": format!("n-{i}")});
            sales.push(("/orders?path=naive".into(), body));
            let body = json!({"item_id": conditional, "user_id": format!("c-{i}")});
            sales.push(("/orders?path=conditional".into(), body));
        }
        if i < 100 {
            let body = json!({"item_id": optimistic, "user_id": format!("o-{i}")});
            sales.push(("/orders?path=optimistic".into(), body));
            let body = json!({"item_id": redis_lock, "user_id": format!("r-{i}")});
            sales.push(("/orders?path=redis-lock".into(), body));
        }
    }
    let requests = sales.len() as i64;

    // Meanwhile, every snapshot must show each item's count equal to its orders.
    let selling = Arc::new(AtomicBool::new(true));
    let checker = {
        let (pool, selling) = (env.pool.clone(), selling.clone());
        tokio::spawn(async move {
            let mut checks = 0;
            while selling.load(Ordering::Relaxed) {
                let miscounted: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM items i WHERE i.sold <> (
                         SELECT coalesce(sum(o.quantity), 0) FROM orders o WHERE o.item_id = i.id)",
                )
                .fetch_one(&pool)
                .await
                .unwrap();
                assert_eq!(miscounted, 0, "a snapshot taken mid-sale");
                checks += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            checks
        })
    };
    let answers = run_concurrently(
        sales
            .iter()
            .map(|(url, body)| api.post(url, body.clone()))
            .collect(),
        64,
    )
    .await;
    for (status, body) in &answers {
        assert!(*status == 200 || *status == 202, "{status} {body}");
    }
    let decided: i64 = sqlx::query_scalar("SELECT count(*) FROM outcomes")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    if decided < requests {
        for item in &queue_items {
            env.wait_for_outcomes(*item, 400, Duration::from_secs(60))
                .await;
        }
    }
    selling.store(false, Ordering::Relaxed);
    let checks = checker.await.expect("the checker saw no miscount");
    assert!(checks > 0);

    for item in queue_items
        .iter()
        .chain([&pessimistic, &conditional, &optimistic, &redis_lock])
    {
        let audit = env.assert_audit_clean(*item).await;
        assert_eq!(sold_shown(&api, *item).await, audit.units_sold);
        assert_eq!(audit.units_sold, units_in_orders(&env, *item).await);
        assert_eq!(
            audit.units_sold,
            audit.stock_initial - audit.stock_remaining
        );
        assert!(audit.units_sold > 0, "{audit}");
    }
    // naive loses updates of the stock; its orders are real, and `sold` counts every unit.
    let audit = seckill::audit::audit_item(&env.pool, naive, true)
        .await
        .unwrap()
        .unwrap();
    let sold = sold_shown(&api, naive).await;
    assert_eq!(sold, units_in_orders(&env, naive).await);
    assert_eq!(sold, audit.units_sold);
    assert!(
        !audit
            .violations
            .iter()
            .any(|v| matches!(v, seckill::audit::Violation::SoldCountWrong { .. })),
        "{audit}"
    );
    assert_eq!(items_miscounted(&env).await, 0);
    consumer.cancel();
    api.shutdown.cancel();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sold_follows_orders_that_are_deleted_or_truncated() {
    let env = TestEnv::new().await;
    let api = env.start_api(None).await;
    let first = goods(&env, 10, 3).await;
    let second = goods(&env, 10, 3).await;
    let mut sell = Vec::new();
    for (item, user, units) in [
        (first, "ann", 3),
        (first, "bob", 1),
        (first, "bob", 1), // grows bob's order
        (second, "ann", 2),
        (second, "cy", 1),
    ] {
        let body = json!({"item_id": item, "user_id": user, "quantity": units,
                          "request_id": Uuid::new_v4()});
        sell.push(api.post("/orders?path=pessimistic", body));
    }
    for (status, body) in futures::future::join_all(sell).await {
        assert_eq!((status, body["status"].as_str()), (200, Some("purchased")));
    }
    assert_eq!(sold_shown(&api, first).await, 5);
    assert_eq!(sold_shown(&api, second).await, 3);

    // One buyer's order taken back (its outcomes first: they name it).
    for sql in [
        "DELETE FROM outcomes WHERE item_id = $1 AND user_id = 'bob'",
        "DELETE FROM orders WHERE item_id = $1 AND user_id = 'bob'",
    ] {
        sqlx::query(sql)
            .bind(first)
            .execute(&env.pool)
            .await
            .unwrap();
    }
    assert_eq!(sold_shown(&api, first).await, 3);
    assert_eq!(units_in_orders(&env, first).await, 3);

    // Several items' orders in one statement, as the bench's clean-up deletes them.
    let both = vec![first, second];
    for sql in [
        "DELETE FROM outcomes WHERE item_id = ANY($1::bigint[])",
        "DELETE FROM orders WHERE item_id = ANY($1::bigint[])",
    ] {
        sqlx::query(sql)
            .bind(&both)
            .execute(&env.pool)
            .await
            .unwrap();
    }
    assert_eq!(sold_shown(&api, first).await, 0);
    assert_eq!(sold_shown(&api, second).await, 0);

    // Sold again, then every order truncated away.
    let body = json!({"item_id": second, "user_id": "dee", "quantity": 2});
    let (status, body) = api.post("/orders?path=pessimistic", body).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("purchased")));
    assert_eq!(sold_shown(&api, second).await, 2);
    sqlx::query("TRUNCATE orders, outcomes")
        .execute(&env.pool)
        .await
        .unwrap();
    assert_eq!(sold_shown(&api, second).await, 0);
    assert_eq!(items_miscounted(&env).await, 0);
    api.shutdown.cancel();
    env.cleanup().await;
}
