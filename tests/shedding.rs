//! Load shedding once sold out: the consumer announces an item sold out, the API then answers
//! `sold_out` at the door without publishing, and a restock reopens the item — for the API
//! and for the consumer's in-memory stock alike.

mod common;

use std::time::{Duration, Instant};

use common::{TestApi, TestEnv, wait_for_log};
use serde_json::{Value, json};
use uuid::Uuid;

/// A mark that cannot age out during a test.
const TTL: Duration = Duration::from_secs(600);

async fn buy(api: &TestApi, item: i64, user: &str, request_id: Uuid) -> (u16, Value) {
    api.post(
        "/orders?wait=10000",
        json!({ "item_id": item, "user_id": user, "request_id": request_id }),
    )
    .await
}

async fn total_queue_depth(env: &TestEnv) -> u32 {
    let mut depth = 0;
    for partition in 0..env.topology.partitions() {
        depth += env.queue_depth(partition).await;
    }
    depth
}

#[tokio::test(flavor = "multi_thread")]
async fn once_sold_out_requests_are_answered_at_the_door_without_publishing() {
    let env = TestEnv::new().await;
    let api = env.start_api_shedding(TTL).await;
    let consumer = env.start_consumer().await;
    let item = api.create_item(3).await;
    let mut bought = Vec::new();
    for user in ["a", "b", "c"] {
        let id = Uuid::new_v4();
        let (code, body) = buy(&api, item, user, id).await;
        assert_eq!(
            (code, body["status"].as_str()),
            (200, Some("purchased")),
            "{body}"
        );
        bought.push((id, body["order_id"].clone()));
    }

    let (_, body) = buy(&api, item, "d", Uuid::new_v4()).await;
    assert_eq!(body["status"], "sold_out", "{body}");

    // With the consumer stopped, a published request can only stay pending; once the
    // announcement has arrived, the API answers `sold_out` itself.
    consumer.cancel();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = api
            .post(
                "/orders?wait=300",
                json!({ "item_id": item, "user_id": "probe" }),
            )
            .await;
        if code == 200 {
            assert_eq!(body["status"], "sold_out", "{body}");
            break;
        }
        assert_eq!(code, 202, "{body}");
        assert!(
            Instant::now() < deadline,
            "the API never heard that item {item} is sold out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let depth_before = total_queue_depth(&env).await;

    // The rush after the last unit: all answered at once, none published.
    let rush: Vec<_> = (0..100)
        .map(|i| {
            let api = &api;
            async move {
                let id = Uuid::new_v4();
                (id, buy(api, item, &format!("rush-{i}"), id).await)
            }
        })
        .collect();
    let answers = futures::future::join_all(rush).await;
    for (_, (code, body)) in &answers {
        assert_eq!(
            (*code, body["status"].as_str()),
            (200, Some("sold_out")),
            "{body}"
        );
    }
    assert_eq!(
        total_queue_depth(&env).await,
        depth_before,
        "nothing was published"
    );

    // An answer at the door is a stored decision like any other.
    let (rush_id, _) = &answers[0];
    let (code, body) = api.get(&format!("/orders/{rush_id}")).await;
    assert_eq!((code, body["status"].as_str()), (200, Some("sold_out")));
    // A retry of a request decided before gets its stored answer, not `sold_out`.
    let (first_id, first_order) = &bought[0];
    let (code, body) = buy(&api, item, "a", *first_id).await;
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("purchased")),
        "{body}"
    );
    assert_eq!(&body["order_id"], first_order);

    // The probes published before the announcement arrived are decided once a consumer runs.
    let consumer = env.start_consumer().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while total_queue_depth(&env).await > 0 {
        assert!(
            Instant::now() < deadline,
            "published probes were never decided"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let audit = env.assert_audit_clean(item).await;
    assert_eq!(audit.orders, 3);
    consumer.cancel();
    api.shutdown.cancel();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restock_reopens_a_sold_out_item_for_the_api_and_the_consumer() {
    let env = TestEnv::new().await;
    let api = env.start_api_shedding(TTL).await;
    let consumer = env.spawn_consume("consumer", &[]);
    let item = api.create_item(2).await;
    for user in ["a", "b"] {
        let (_, body) = buy(&api, item, user, Uuid::new_v4()).await;
        assert_eq!(body["status"], "purchased", "{body}");
    }
    let (_, body) = buy(&api, item, "c", Uuid::new_v4()).await;
    assert_eq!(body["status"], "sold_out", "{body}");

    let (code, restocked) = api
        .post(&format!("/items/{item}/restock"), json!({ "units": 2 }))
        .await;
    assert_eq!(code, 200, "{restocked}");
    assert_eq!(restocked["stock_initial"], 4);
    assert_eq!(restocked["stock_remaining"], 2);
    // The consumer heard it; its next batch reloads the item (the API forgot its own mark at once).
    wait_for_log(&consumer, "item restocked", Duration::from_secs(30)).await;

    let mut statuses = Vec::new();
    for user in ["a", "d", "e", "f"] {
        let (_, body) = buy(&api, item, user, Uuid::new_v4()).await;
        statuses.push(body["status"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(
        statuses,
        ["already_purchased", "purchased", "purchased", "sold_out"],
        "buyers are remembered across the restock; the new units are sold, then no more"
    );
    let audit = env.assert_audit_clean(item).await;
    assert_eq!(audit.orders, 4);
    api.shutdown.cancel();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restock_refuses_bad_input_and_strangers() {
    let env = TestEnv::new().await;
    let api = env.start_api(Some("s3cret")).await;
    let (code, created) = api
        .post_as("s3cret", "/items", json!({ "name": "x", "stock": 1 }))
        .await;
    assert_eq!(code, 201, "{created}");
    let item = created["id"].as_i64().expect("item created");
    let restock = |token: &'static str, id: i64, body: Value| {
        let api = &api;
        async move {
            api.post_as(token, &format!("/items/{id}/restock"), body)
                .await
        }
    };
    assert_eq!(restock("wrong", item, json!({ "units": 1 })).await.0, 401);
    for bad in [
        json!({ "units": 0 }),
        json!({ "units": -3 }),
        json!({ "units": 2_000_000_000i64 }),
        json!({ "units": 1_000_000_000 }), // 1 + this is past the largest stock
    ] {
        let (code, body) = restock("s3cret", item, bad.clone()).await;
        assert_eq!(code, 422, "{bad} → {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains("units")),
            "{body}"
        );
    }
    assert_eq!(
        restock("s3cret", item, json!({ "units": "many" })).await.0,
        422
    );
    assert_eq!(
        restock("s3cret", item + 1000, json!({ "units": 1 }))
            .await
            .0,
        404
    );
    let (code, packet) = api
        .post_as(
            "s3cret",
            "/items",
            json!({ "name": "p", "kind": "red_packet", "total_amount": 100, "shares": 3 }),
        )
        .await;
    assert_eq!(code, 201, "{packet}");
    let packet = packet["id"].as_i64().expect("red packet created");
    let (code, body) = restock("s3cret", packet, json!({ "units": 1 })).await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("red packet")),
        "{body}"
    );
    let (code, body) = restock("s3cret", item, json!({ "units": 5 })).await;
    assert_eq!((code, &body["stock_initial"]), (200, &json!(6)), "{body}");
    api.shutdown.cancel();
    env.cleanup().await;
}
