//! Messages that cannot be decided go to the dead-letter queue with the reason, and the
//! partition keeps deciding the requests behind them.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::TestEnv;
use lapin::BasicProperties;
use lapin::types::AMQPValue;
use seckill::broker::message::{self, REASON_HEADER};
use seckill::domain::OrderRequest;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_the_partition_goes_on() {
    let env = TestEnv::new().await;
    let item = env.create_item(3).await;
    let partition = env.topology.partition_of(item);
    let json = || BasicProperties::default().with_content_type(message::CONTENT_TYPE_JSON.into());
    let valid = |user: &str| OrderRequest {
        request_id: Uuid::new_v4(),
        item_id: item,
        user_id: user.into(),
        quantity: 1,
    };

    // Poison first, on the item's own partition, so the valid requests queue up behind it.
    let unknown_item = OrderRequest {
        item_id: item + 1000 * i64::from(common::PARTITIONS),
        ..valid("x")
    };
    let poison: Vec<(Vec<u8>, BasicProperties, &str)> = vec![
        (b"{not json".to_vec(), json(), "invalid request JSON"),
        (
            br#"{"item_id": 1, "user_id": "u"}"#.to_vec(),
            json(),
            "missing field",
        ),
        (message::encode(&unknown_item), json(), "unknown item"),
        (vec![b'x'; 64 * 1024], json(), "over the"),
        (
            message::encode(&valid("y")),
            BasicProperties::default().with_content_type("text/xml".into()),
            "content type",
        ),
    ];
    for (body, props, _) in &poison {
        env.publish_raw(partition, body, props.clone()).await;
    }
    let good: Vec<_> = ["a", "b", "c", "d"].iter().map(|u| valid(u)).collect();
    env.publish_direct(&good).await;

    let consumer = env.start_consumer().await;
    env.wait_for_outcomes(item, 4, Duration::from_secs(20))
        .await;
    let report = env.assert_audit_clean(item).await;
    assert_eq!(report.orders, 3);

    let mut reasons = Vec::new();
    while reasons.len() < poison.len() {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let Some(dead) = env.get_dead_letter().await else {
            assert!(
                std::time::Instant::now() < deadline,
                "dead letters missing: {reasons:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let headers = dead.delivery.properties.headers().clone().expect("headers");
        match headers.inner().get(REASON_HEADER) {
            Some(AMQPValue::LongString(reason)) => reasons.push(reason.to_string()),
            other => panic!("reason header missing: {other:?}"),
        }
    }
    for (_, _, expected) in &poison {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "no dead letter mentions {expected:?}: {reasons:?}"
        );
    }
    assert_eq!(reasons.iter().collect::<HashSet<_>>().len(), poison.len());
    assert!(
        env.get_dead_letter().await.is_none(),
        "nothing else was dead-lettered"
    );

    consumer.cancel();
    env.cleanup().await;
}
