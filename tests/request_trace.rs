//! A request can be followed through the logs: at `debug`, the API's line for a request and the
//! consumer's line for its decision carry the same request id, each inside its span (the
//! request's; the batch's, with partition and epoch). At the default `info`, no line per request.

mod common;

use std::time::Duration;

use common::{Daemon, TestApi, TestEnv, wait_for_log};
use serde_json::json;
use uuid::Uuid;

const DEBUG: (&str, &str) = ("RUST_LOG", "seckill=debug");

async fn buy(api: &TestApi, item: i64, user: &str) -> Uuid {
    let request_id = Uuid::new_v4();
    let (code, body) = api
        .post(
            "/orders?wait=10000",
            json!({ "item_id": item, "user_id": user, "request_id": request_id }),
        )
        .await;
    assert_eq!(code, 200, "decided within the wait: {body}");
    request_id
}

/// The first line of the daemon's log that contains every one of `needles`.
fn line_with(daemon: &Daemon, needles: &[&str]) -> String {
    let log = daemon.log_text();
    log.lines()
        .find(|line| needles.iter().all(|n| line.contains(n)))
        .unwrap_or_else(|| panic!("no line with {needles:?} in:\n{log}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_id_leads_from_the_api_log_to_the_consumer_log() {
    let env = TestEnv::new().await;
    let consumer = env.spawn_consume("consumer", &[DEBUG]);
    let server = env.spawn_serve("api", &[], &[DEBUG]).await;
    let api = env.client_of(&server);
    let item = api.create_item(1).await;
    let request_id = buy(&api, item, "alice").await.to_string();

    wait_for_log(&server, &request_id, Duration::from_secs(10)).await;
    let published = line_with(&server, &[&request_id, "request published"]);
    for field in ["order{", &format!("item_id={item}"), "path=queue"] {
        assert!(published.contains(field), "{field} in {published}");
    }
    wait_for_log(&consumer, &request_id, Duration::from_secs(10)).await;
    let decided = line_with(&consumer, &[&request_id, "request decided"]);
    for field in [
        "batch{",
        "partition=",
        "size=",
        "epoch=",
        &format!("item_id={item}"),
        "status=purchased",
    ] {
        assert!(decided.contains(field), "{field} in {decided}");
    }
    drop((consumer, server));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn at_the_default_level_no_request_gets_a_line() {
    let env = TestEnv::new().await;
    let server = env.spawn_serve("api", &["--with-consumer"], &[]).await;
    let api = env.client_of(&server);
    let item = api.create_item(3).await;
    let mut request_ids = Vec::new();
    for user in ["a", "b", "c", "d"] {
        request_ids.push(buy(&api, item, user).await);
    }
    let log = server.log_text();
    for request_id in request_ids {
        assert!(
            !log.contains(&request_id.to_string()),
            "{request_id} logged at info:\n{log}"
        );
    }
    drop(server);
    env.cleanup().await;
}
