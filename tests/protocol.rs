//! A producer built only from docs/PROTOCOL.md: raw AMQP with lapin, no seckill types on the
//! publishing side, gets its decisions back through direct reply-to.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{PARTITIONS, TestEnv};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection};
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_amqp_producer_following_the_protocol_gets_its_decisions() {
    let env = TestEnv::new().await;
    let consumer = env.start_consumer().await;
    let item = env.create_item(2).await;
    let prefix = &env.broker.queue_prefix;

    let (_connection, channel, mut replies) = raw_producer(&env).await;

    let users = ["ann", "ben", "cid", "ann"];
    let ids: Vec<Uuid> = users.iter().map(|_| Uuid::new_v4()).collect();
    for (user, id) in users.iter().zip(&ids) {
        let body = json!({"request_id": id, "item_id": item, "user_id": user}).to_string();
        let routing_key = (item % i64::from(PARTITIONS)).to_string();
        let confirm = channel
            .basic_publish(
                format!("{prefix}.orders").into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body.as_bytes(),
                BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2)
                    .with_message_id(id.to_string().into())
                    .with_reply_to("amq.rabbitmq.reply-to".into())
                    .with_correlation_id(id.to_string().into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(
            confirm,
            Confirmation::Ack(None),
            "accepted = acked, not returned"
        );
    }

    let decided = decisions(&mut replies, users.len()).await;
    let status = |i: usize| {
        decided[&ids[i].to_string()]["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // Decided in publish order on the item's partition: two units, ann twice.
    assert_eq!(
        (0..4).map(status).collect::<Vec<_>>(),
        ["purchased", "purchased", "sold_out", "already_purchased"]
    );
    assert!(decided[&ids[0].to_string()]["order_id"].is_string());
    assert!(decided[&ids[2].to_string()].get("order_id").is_none());
    env.assert_audit_clean(item).await;

    consumer.cancel();
    env.cleanup().await;
}

/// A batch message built only from docs/PROTOCOL.md: a JSON array of request objects, one of
/// them bad. The bad one is dead-lettered alone, naming its place; every other one is decided,
/// in array order, and answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_batch_message_is_decided_element_by_element_and_its_bad_element_dead_lettered() {
    let env = TestEnv::new().await;
    let consumer = env.start_consumer().await;
    let item = env.create_item(2).await;
    let prefix = &env.broker.queue_prefix;

    let (_connection, channel, mut replies) = raw_producer(&env).await;

    // Element 2 names a user_id with a space: invalid, whatever the others are.
    let users = ["ann", "ben", "bad user", "cid", "ann"];
    let ids: Vec<Uuid> = users.iter().map(|_| Uuid::new_v4()).collect();
    let elements: Vec<Value> = users
        .iter()
        .zip(&ids)
        .map(|(user, id)| json!({"request_id": id, "item_id": item, "user_id": user}))
        .collect();
    let body = serde_json::to_vec(&elements).unwrap();
    let routing_key = (item % i64::from(PARTITIONS)).to_string();
    let confirm = channel
        .basic_publish(
            format!("{prefix}.orders").into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &body,
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_reply_to("amq.rabbitmq.reply-to".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(confirm, Confirmation::Ack(None));

    let decided = decisions(&mut replies, 4).await;
    let status = |i: usize| {
        decided[&ids[i].to_string()]["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // In array order: two units for ann and ben, cid too late, ann's second already bought.
    assert_eq!(
        [0, 1, 3, 4].map(status),
        ["purchased", "purchased", "sold_out", "already_purchased"]
    );
    assert!(
        !decided.contains_key(&ids[2].to_string()),
        "the bad element is not decided"
    );

    let dead = loop {
        if let Some(dead) = env.get_dead_letter().await {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let headers = dead.delivery.properties.headers().clone().expect("headers");
    let header = |name: &str| headers.inner().get(name).cloned();
    assert_eq!(header("x-seckill-element"), Some(AMQPValue::LongLongInt(2)));
    assert_eq!(
        header("x-seckill-elements"),
        Some(AMQPValue::LongLongInt(5))
    );
    let Some(AMQPValue::LongString(reason)) = header("x-seckill-reason") else {
        panic!("a reason header");
    };
    let reason = reason.to_string();
    assert!(reason.contains("user_id"), "{reason}");
    let dead_body: Value = serde_json::from_slice(&dead.delivery.data).expect("JSON");
    assert_eq!(dead_body, elements[2], "the element alone, as it was sent");
    assert!(
        env.get_dead_letter().await.is_none(),
        "nothing else dead-lettered"
    );
    assert_eq!(
        seckill::store::stored_outcomes(&env.pool, &[ids[2]])
            .await
            .unwrap()
            .len(),
        0
    );
    let report = env.assert_audit_clean(item).await;
    assert_eq!(report.orders, 2);

    consumer.cancel();
    env.cleanup().await;
}

/// A producer's channel as the protocol asks: confirm mode, and direct reply-to consumed
/// (no-ack, on the publishing channel) before anything is published.
async fn raw_producer(env: &TestEnv) -> (Connection, lapin::Channel, lapin::Consumer) {
    let connection = Connection::connect(&env.broker.amqp_url, Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let replies = channel
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "raw-producer".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    (connection, channel, replies)
}

/// The first `count` decisions the replies carry, by request id (replies are batched arrays).
async fn decisions(replies: &mut lapin::Consumer, count: usize) -> HashMap<String, Value> {
    let mut decided = HashMap::new();
    while decided.len() < count {
        let delivery = tokio::time::timeout(Duration::from_secs(20), replies.next())
            .await
            .expect("a reply within 20 s")
            .expect("reply stream open")
            .expect("reply");
        let batch: Vec<Value> = serde_json::from_slice(&delivery.data).expect("a JSON array");
        for decision in batch {
            let id = decision["request_id"].as_str().unwrap().to_string();
            decided.insert(id, decision);
        }
    }
    decided
}
