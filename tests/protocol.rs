//! A producer built only from docs/PROTOCOL.md: raw AMQP with lapin, no seckill types on the
//! publishing side, gets its decisions back through direct reply-to.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{PARTITIONS, TestEnv};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection};
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_amqp_producer_following_the_protocol_gets_its_decisions() {
    let env = TestEnv::new().await;
    let consumer = env.start_consumer().await;
    let item = env.create_item(2).await;
    let prefix = &env.broker.queue_prefix;

    let connection = Connection::connect(&env.broker.amqp_url, Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    // Direct reply-to: consumed, no-ack, on the publishing channel, before publishing.
    let mut replies = channel
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

    let mut decided: HashMap<String, Value> = HashMap::new();
    while decided.len() < users.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(20), replies.next())
            .await
            .expect("a reply within 20 s")
            .expect("reply stream open")
            .expect("reply");
        let batch: Vec<Value> = serde_json::from_slice(&delivery.data).expect("a JSON array");
        for decision in batch {
            decided.insert(
                decision["request_id"].as_str().unwrap().to_string(),
                decision,
            );
        }
    }
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
