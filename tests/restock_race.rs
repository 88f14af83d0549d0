//! A restock racing a sale loses no unit on any sound path: while hundreds of buyers compete for
//! an item over HTTP, `POST /items/{id}/restock` adds units in a loop, and at the end the stock
//! left plus the units sold is the stock ever put on sale, and the audit is clean.
//!
//! The `redis-*` paths keep their own copy of the stock in Redis, which a restock does not reach
//! (README: reload it with `seckill redis-load`): they sell only the units Redis was loaded with,
//! and the database's sums must still balance.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{TestEnv, run_concurrently};
use serde_json::json;

const STOCK: i64 = 100;
const BUYERS: usize = 600;
const IN_FLIGHT: usize = 100;
const RESTOCK_UNITS: i64 = 5;

/// Sells an item of `STOCK` units to `BUYERS` buyers through `path` while restocking it in a
/// loop; checks the sums and the audit. Returns the restocks made during the sale.
async fn sell_while_restocking(path: &str) -> i64 {
    let env = TestEnv::new().await;
    let api = Arc::new(env.start_api(None).await);
    let item = api.create_item(STOCK).await;
    let selling = Arc::new(AtomicBool::new(true));
    let restocker = {
        let (api, selling) = (api.clone(), selling.clone());
        tokio::spawn(async move {
            let mut restocks = 0;
            while selling.load(Ordering::Relaxed) {
                let url = format!("/items/{item}/restock");
                let (code, body) = api.post(&url, json!({ "units": RESTOCK_UNITS })).await;
                assert_eq!(code, 200, "{body}");
                restocks += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            restocks
        })
    };
    let url = format!("/orders?path={path}");
    let buyers: Vec<_> = (0..BUYERS)
        .map(|i| {
            let (api, url) = (&api, &url);
            let body = json!({"item_id": item, "user_id": format!("user-{i}")});
            async move { api.post(url, body).await }
        })
        .collect();
    for (code, body) in run_concurrently(buyers, IN_FLIGHT).await {
        assert_eq!(code, 200, "{path}: {body}");
    }
    selling.store(false, Ordering::Relaxed);
    let restocks = restocker.await.unwrap();
    assert!(restocks > 0, "{path}: no restock raced the sale");

    let (initial, remaining, sold): (i64, i64, i64) = sqlx::query_as(
        "SELECT stock_initial, stock_remaining,
                (SELECT COALESCE(SUM(quantity), 0)::bigint FROM orders WHERE item_id = items.id)
         FROM items WHERE id = $1",
    )
    .bind(item)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(initial, STOCK + restocks * RESTOCK_UNITS, "{path}");
    assert_eq!(
        remaining + sold,
        initial,
        "{path}: {remaining} left + {sold} sold after {restocks} restocks"
    );
    env.assert_audit_clean(item).await;
    drop(api);
    env.cleanup().await;
    restocks
}

#[tokio::test]
async fn optimistic_loses_no_unit_to_a_restock() {
    sell_while_restocking("optimistic").await;
}

#[tokio::test]
async fn redis_lock_loses_no_unit_to_a_restock() {
    sell_while_restocking("redis-lock").await;
}

#[tokio::test]
async fn pessimistic_loses_no_unit_to_a_restock() {
    sell_while_restocking("pessimistic").await;
}

#[tokio::test]
async fn conditional_loses_no_unit_to_a_restock() {
    sell_while_restocking("conditional").await;
}

#[tokio::test]
async fn advisory_loses_no_unit_to_a_restock() {
    sell_while_restocking("advisory").await;
}

/// The `redis-*` paths sell what Redis was loaded with; the restocked units stay in the database
/// (unsold until `seckill redis-load`), and the database's sums still balance.
#[tokio::test]
async fn the_redis_paths_lose_no_unit_to_a_restock() {
    for path in ["redis-lua", "redis-watch", "redis-list"] {
        sell_while_restocking(path).await;
    }
}
