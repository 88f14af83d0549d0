//! Batching on the wire, against the real broker and database: the API's publishing line puts
//! the requests that queue up behind an unconfirmed message into one message; each request is
//! answered with its own message's verdict (a nack fails exactly that message's requests); and
//! concurrent buyers through the batching API still get exactly the stock, one unit each.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{TestApi, TestEnv, requests};
use seckill::broker::publisher::{PublishError, Publisher};
use seckill::config::PublishArgs;
use serde_json::json;

/// With one message in flight at a time, the requests published while it awaits its confirm go
/// out together. The partition queue holds two messages, so a third is refused: exactly its
/// requests fail, every other request is accepted and decided, and no refused one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queued_behind_a_message_share_the_next_and_a_nack_fails_exactly_its_requests() {
    let env = TestEnv::with_broker(|broker| broker.queue_length_max = 2).await;
    let item = env.create_item(1000).await;
    let batching = PublishArgs {
        publish_batch_max: 64,
        publish_in_flight_max: 1,
        ..PublishArgs::default()
    };
    let publisher = Publisher::connect(&env.broker.amqp_url, env.topology.clone(), batching)
        .await
        .expect("publisher");
    let all = requests(item, 150, 150);
    seckill::store::record_accepted(&env.pool, &all)
        .await
        .unwrap();
    let results = futures::future::join_all(all.iter().map(|r| publisher.publish(r, false))).await;

    let mut accepted = HashSet::new();
    let mut refused = HashSet::new();
    for (request, result) in all.iter().zip(&results) {
        match result {
            Ok(()) => accepted.insert(request.request_id),
            Err(PublishError::Refused) => refused.insert(request.request_id),
            Err(other) => panic!("only confirms and nacks expected, got {other}"),
        };
    }
    let partition = env.topology.partition_of(item);
    assert_eq!(
        env.queue_depth(partition).await,
        2,
        "two messages fit, the rest were refused"
    );
    assert!(
        accepted.len() > 2,
        "two messages carry more than two requests: the line batched ({} accepted)",
        accepted.len()
    );
    assert!(!refused.is_empty(), "a third message was refused");

    // The refused ones are taken back, as the API does; the accepted ones are all decided.
    for id in &refused {
        seckill::store::withdraw_accepted(&env.pool, *id)
            .await
            .unwrap();
    }
    let consumer = env.start_consumer().await;
    env.wait_for_outcomes(item, accepted.len() as i64, Duration::from_secs(60))
        .await;
    let ids: Vec<uuid::Uuid> = all.iter().map(|r| r.request_id).collect();
    let stored = seckill::store::stored_outcomes(&env.pool, &ids)
        .await
        .unwrap();
    let decided: HashSet<uuid::Uuid> = stored.keys().copied().collect();
    assert_eq!(decided, accepted, "decided = accepted, exactly");
    let report = env.assert_audit_clean(item).await;
    assert_eq!(report.orders, accepted.len() as i64);
    assert_eq!(report.undecided, 0);
    consumer.cancel();
    env.cleanup().await;
}

/// 1,000 concurrent requests from 400 users for 100 units, through the API with its default
/// batching: exactly 100 orders, one per user, every request answered once — and the messages
/// carried more than one request each on average (the line batched).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_buyers_through_the_batching_api_get_exactly_the_stock() {
    let env = TestEnv::new().await;
    let consumer = env.start_consumer().await;
    let api = env.start_api(None).await;
    let item = api.create_item(100).await;
    let batches = &seckill::metrics::get().publish_batch_size;
    let (messages_before, requests_before) = (batches.get_sample_count(), batches.get_sample_sum());

    let sends = (0..1000).map(|i| {
        let api = &api;
        async move {
            let body = json!({"item_id": item, "user_id": format!("user-{}", i % 400)});
            api.post("/orders?wait=10000", body).await
        }
    });
    let answers = futures::future::join_all(sends).await;
    let mut purchased = 0;
    for (status, body) in &answers {
        assert!(*status == 200 || *status == 202, "{status}: {body}");
        let request_id = body["request_id"].as_str().expect("a request id");
        let settled = wait_decided(&api, request_id).await;
        if settled["status"] == "purchased" {
            purchased += 1;
        }
    }
    assert_eq!(purchased, 100, "exactly the stock sold");
    let report = env.assert_audit_clean(item).await;
    assert_eq!(report.orders, 100);
    assert_eq!(report.outcomes, 1000, "every request decided once");

    let messages = batches.get_sample_count() - messages_before;
    let carried = batches.get_sample_sum() - requests_before;
    assert!(carried >= 1000.0, "every request went out in a message");
    assert!(
        (messages as f64) < carried,
        "{messages} messages for {carried} requests: no message carried two"
    );
    consumer.cancel();
    env.cleanup().await;
}

/// `GET /orders/{id}` until it is no longer pending.
async fn wait_decided(api: &TestApi, request_id: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = api.get(&format!("/orders/{request_id}")).await;
        assert_eq!(status, 200, "{body}");
        if body["status"] != "pending" {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{request_id} still pending"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A message no queue is bound for comes back (mandatory publish): the requests it carried are
/// refused as unroutable. With one message in flight at a time, the first request goes alone and
/// the rest queue up into batch messages; every one of them is answered unroutable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returned_message_fails_exactly_its_requests_as_unroutable() {
    let env = TestEnv::new().await;
    let item = env.create_item(100).await;
    let partition = env.topology.partition_of(item);
    let batching = PublishArgs {
        publish_in_flight_max: 1,
        ..PublishArgs::default()
    };
    let publisher = Publisher::connect(&env.broker.amqp_url, env.topology.clone(), batching)
        .await
        .expect("publisher");
    // After connecting, which declares the topology: no queue for the item's partition.
    env.channel()
        .await
        .queue_delete(
            env.topology.partition_queue(partition).into(),
            Default::default(),
        )
        .await
        .expect("delete the item's partition queue");

    let all = requests(item, 40, 40);
    let results = futures::future::join_all(all.iter().map(|r| publisher.publish(r, false))).await;
    for result in &results {
        assert!(
            matches!(result, Err(PublishError::Unroutable)),
            "every request of a returned message is unroutable: {result:?}"
        );
    }
    env.cleanup().await;
}
