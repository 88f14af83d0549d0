//! Restocks whose announcement goes wrong: lost (the consumer must still sell the new units while
//! demand goes on) or overtaken by a `sold_out` decided before it (the API must not shed).

mod common;

use std::time::{Duration, Instant};

use common::{TestApi, TestEnv};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use serde_json::{Value, json};
use uuid::Uuid;

async fn buy(api: &TestApi, item: i64, user: &str, wait_ms: u64) -> (u16, Value) {
    api.post(
        &format!("/orders?wait={wait_ms}"),
        json!({ "item_id": item, "user_id": user, "request_id": Uuid::new_v4() }),
    )
    .await
}

/// Sells `item` out to `users`, then checks the next buyer hears `sold_out`.
async fn sell_out(api: &TestApi, item: i64, users: &[&str]) {
    for user in users {
        let (_, body) = buy(api, item, user, 10_000).await;
        assert_eq!(body["status"], "purchased", "{body}");
    }
    let (_, body) = buy(api, item, "late", 10_000).await;
    assert_eq!(body["status"], "sold_out", "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restock_whose_announcement_was_lost_is_sold_while_demand_goes_on() {
    let env = TestEnv::new().await;
    // Marks age out quickly, as they would after `SECKILL_SOLD_OUT_TTL_MS`; the consumer keeps
    // the item in memory (its idle time is minutes), so only the consumer's own check can
    // reveal the restock.
    let api = env.start_api_shedding(Duration::from_millis(500)).await;
    let consumer = env.start_consumer().await;
    let item = api.create_item(2).await;
    sell_out(&api, item, &["a", "b"]).await;

    // Behind the API's back: the units are stored, nobody announces them.
    seckill::store::restock(&env.pool, item, 3)
        .await
        .expect("restock")
        .expect("the item exists");

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut purchased = 0;
    let mut buyer = 0;
    while purchased < 3 {
        assert!(
            Instant::now() < deadline,
            "only {purchased} of the 3 restocked units were sold in 20 s of demand"
        );
        buyer += 1;
        let (_, body) = buy(&api, item, &format!("buyer-{buyer}"), 5000).await;
        if body["status"] == "purchased" {
            purchased += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let audit = env.assert_audit_clean(item).await;
    assert_eq!(audit.orders, 5);
    consumer.cancel();
    api.shutdown.cancel();
    env.cleanup().await;
}

/// Publishes an announcement by hand on the item-events exchange, as the consumer would.
async fn announce(env: &TestEnv, body: Value) {
    let channel = env.channel().await;
    channel
        .basic_publish(
            env.topology.item_events_exchange().into(),
            "".into(),
            BasicPublishOptions::default(),
            body.to_string().as_bytes(),
            // The broker checks `user_id` against the connection's user: the test's connection
            // is the consumer's user here.
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_user_id("guest".into()),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sold_out_decided_before_a_restock_does_not_shed_the_restocked_item() {
    let env = TestEnv::new().await;
    let api = env.start_api_shedding(Duration::from_secs(600)).await;
    let consumer = env.start_consumer().await;
    let item = api.create_item(1).await;
    let sentinel = api.create_item(1).await;
    sell_out(&api, item, &["a"]).await;
    let (code, body) = api
        .post(&format!("/items/{item}/restock"), json!({ "units": 2 }))
        .await;
    assert_eq!(code, 200, "{body}");
    // With no consumer, a request the API does not shed stays pending (202).
    consumer.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A batch decided before the consumer heard of the restock announces `sold_out` late, with
    // the generation it decided in (0: before the first restock). Then a sentinel item is
    // announced sold out, so the test knows when the API has heard both (in order).
    announce(
        &env,
        json!({ "event": "sold_out", "item_id": item, "generation": 0 }),
    )
    .await;
    announce(
        &env,
        json!({ "event": "sold_out", "item_id": sentinel, "generation": 0 }),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = buy(&api, sentinel, "probe", 200).await;
        if code == 200 {
            assert_eq!(body["status"], "sold_out", "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the API never heard the sentinel"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, body) = buy(&api, item, "b", 200).await;
    assert_eq!(
        code, 202,
        "a stale sold_out must not shed a restocked item: {body}"
    );

    // The request reaches a consumer and buys one of the restocked units.
    let consumer = env.start_consumer().await;
    env.wait_for_outcomes(item, 3, Duration::from_secs(30))
        .await;
    let audit = env.assert_audit_clean(item).await;
    assert_eq!(audit.orders, 2);
    consumer.cancel();
    api.shutdown.cancel();
    env.cleanup().await;
}
