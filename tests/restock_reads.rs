//! A restock changes an item's stock and generation, never its orders: the consumer re-reads
//! the item's row and keeps the buyers it holds in memory, instead of reading every order of the
//! item again (`Sequencer::refresh`). One test in this binary, so the process-wide count of item
//! loads is this test's alone.

mod common;

use std::time::{Duration, Instant};

use common::{TestApi, TestEnv};
use serde_json::{Value, json};
use uuid::Uuid;

async fn buy(api: &TestApi, item: i64, user: &str) -> Value {
    let (_, body) = api
        .post(
            "/orders?wait=10000",
            json!({ "item_id": item, "user_id": user, "request_id": Uuid::new_v4() }),
        )
        .await;
    body
}

/// Asks for `user` until the restocked units are sold to them: the news of a restock takes a
/// moment to reach the consumer (an announcement, or its check of the generation at most every
/// 200 ms); meanwhile the user is told `sold_out`.
async fn sell_soon(api: &TestApi, item: i64, user: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = buy(api, item, user).await;
        if body["status"] == "purchased" {
            return;
        }
        assert_eq!(body["status"], "sold_out", "{body}");
        assert!(Instant::now() < deadline, "the restock was never sold");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn items_loaded() -> u64 {
    seckill::metrics::get().consumer.items_loaded.get()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restocked_item_is_sold_on_without_reading_its_buyers_again() {
    let env = TestEnv::new().await;
    let api = env.start_api(None).await;
    let consumer = env.start_consumer().await;
    let item = api.create_item(2).await;
    for user in ["a", "b"] {
        assert_eq!(buy(&api, item, user).await["status"], "purchased");
    }
    assert_eq!(buy(&api, item, "c").await["status"], "sold_out");
    let loaded = items_loaded();
    assert!(loaded >= 1);

    // Announced: the consumer hears it, or finds the generation moved at its next sold_out.
    let (code, body) = api
        .post(&format!("/items/{item}/restock"), json!({ "units": 2 }))
        .await;
    assert_eq!(code, 200, "{body}");
    sell_soon(&api, item, "c").await;
    assert_eq!(
        buy(&api, item, "a").await["status"],
        "already_purchased",
        "the buyers are kept"
    );
    assert_eq!(buy(&api, item, "d").await["status"], "purchased");
    assert_eq!(buy(&api, item, "e").await["status"], "sold_out");

    // Not announced: the consumer's own generation check finds it.
    seckill::store::restock(&env.pool, item, 1)
        .await
        .expect("restock")
        .expect("the item exists");
    sell_soon(&api, item, "e").await;
    assert_eq!(buy(&api, item, "b").await["status"], "already_purchased");

    assert_eq!(
        items_loaded(),
        loaded,
        "a restock re-reads the item's row, not its orders"
    );
    let audit = env.assert_audit_clean(item).await;
    assert_eq!((audit.orders, audit.stock_remaining), (5, 0));
    consumer.cancel();
    api.shutdown.cancel();
    env.cleanup().await;
}
