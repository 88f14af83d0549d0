//! Item announcements are believed only from trusted announcers: anyone who may publish to
//! `{prefix}.item-events` must not be able to shed an item. Only one test in this file runs a
//! listener, so the process-wide count of ignored announcements is that test's alone.

mod common;

use std::time::{Duration, Instant};

use common::{TestApi, TestEnv, scrape};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use serde_json::{Value, json};
use uuid::Uuid;

const IGNORED: &str = "seckill_item_announcements_ignored_total{reason=\"untrusted\"}";

/// Publishes `sold_out` for `item` on the item-events exchange, with `user_id` if given (the
/// broker accepts only the test connection's own user, `guest`).
async fn announce_sold_out(env: &TestEnv, item: i64, user_id: Option<&str>) {
    let body = json!({ "event": "sold_out", "item_id": item, "generation": 0 });
    let mut props = BasicProperties::default().with_content_type("application/json".into());
    if let Some(user) = user_id {
        props = props.with_user_id(user.into());
    }
    env.channel()
        .await
        .basic_publish(
            env.topology.item_events_exchange().into(),
            "".into(),
            BasicPublishOptions::default(),
            body.to_string().as_bytes(),
            props,
        )
        .await
        .expect("publish")
        .await
        .expect("published");
}

/// The HTTP status of a purchase: with no consumer running, 200 means shed at the door, 202
/// that the request went to the broker.
async fn buy(api: &TestApi, item: i64) -> (u16, Value) {
    api.post(
        "/orders?wait=200",
        json!({ "item_id": item, "user_id": "u", "request_id": Uuid::new_v4() }),
    )
    .await
}

async fn ignored(api: &TestApi) -> f64 {
    scrape(&api.base).await.get(IGNORED).copied().unwrap_or(0.0)
}

async fn wait_until<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn announcements_without_a_trusted_user_id_do_not_shed() {
    let mut env = TestEnv::new().await;
    // Trusts the user of its AMQP_URL (`guest`), as a one-user deployment does.
    let trusting = env.start_api_shedding(Duration::from_secs(600)).await;
    // Trusts only a consumer user of its own, which the test cannot publish as.
    env.broker.announcer_users = Some("seckill-consumer".into());
    let strict = env.start_api_shedding(Duration::from_secs(600)).await;
    let warm_up = trusting.create_item(1).await;
    let forged = trusting.create_item(1).await;
    let sentinel = trusting.create_item(1).await;

    // Both listeners are bound once the trusting one sheds the warm-up item and the strict one
    // has heard it (ignored it, or — were it to believe anyone — shed it).
    wait_until("both listeners hearing", || async {
        announce_sold_out(&env, warm_up, Some("guest")).await;
        buy(&trusting, warm_up).await.0 == 200
            && (ignored(&strict).await >= 1.0 || buy(&strict, warm_up).await.0 == 200)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = ignored(&strict).await;

    // No user_id: ignored by both. Then `guest`: believed by the trusting API only.
    announce_sold_out(&env, forged, None).await;
    announce_sold_out(&env, sentinel, Some("guest")).await;
    wait_until("the trusting API hearing the sentinel", || async {
        buy(&trusting, sentinel).await.0 == 200
    })
    .await;
    let (code, body) = buy(&trusting, forged).await;
    assert_eq!(
        code, 202,
        "a sold_out without user_id shed the item: {body}"
    );

    // Three ignored: the trusting API's no-user_id one, and both announcements at the strict API.
    wait_until("the strict API hearing both", || async {
        ignored(&strict).await >= before + 3.0 || buy(&strict, sentinel).await.0 == 200
    })
    .await;
    for item in [forged, sentinel] {
        let (code, body) = buy(&strict, item).await;
        assert_eq!(
            code, 202,
            "a sold_out from an untrusted user shed item {item}: {body}"
        );
    }
    trusting.shutdown.cancel();
    strict.shutdown.cancel();
    env.cleanup().await;
}

/// The premise of the check: the broker itself refuses a `user_id` that is not the publishing
/// connection's user, so a listener may take `user_id` as the publisher's identity.
#[tokio::test(flavor = "multi_thread")]
async fn the_broker_refuses_a_user_id_not_the_connections() {
    let env = TestEnv::new().await;
    let channel = env.channel().await;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let body = json!({ "event": "sold_out", "item_id": 1, "generation": 0 }).to_string();
    let published = async {
        channel
            .basic_publish(
                env.topology.item_events_exchange().into(),
                "".into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_user_id("seckill-consumer".into()),
            )
            .await?
            .await
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), published)
        .await
        .expect("the broker answers");
    assert!(
        !matches!(outcome, Ok(lapin::Confirmation::Ack(_))),
        "the broker accepted a forged user_id: {outcome:?}"
    );
    assert!(!channel.status().connected(), "the channel was not closed");
    env.cleanup().await;
}
