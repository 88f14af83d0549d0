//! Crash safety of the consumer, with real processes: SIGKILL mid-work, an abort at every step
//! of the batch cycle, and failover to a standby daemon — with one request per message, and
//! with batch messages (37 requests each, so consumer batches of 100 requests end mid-way through
//! the published ones). After each, every accepted request has exactly one outcome and the audit
//! is clean.

mod common;

use std::time::Duration;

use common::{PARTITIONS, TestEnv, requests};

async fn wait_for_exit(
    child: &mut tokio::process::Child,
    within: Duration,
) -> std::process::ExitStatus {
    tokio::time::timeout(within, child.wait())
        .await
        .expect("the consumer should have stopped")
        .expect("wait")
}

/// Every accepted request has exactly one outcome, orders = min(stock, distinct buyers).
async fn assert_settled(env: &TestEnv, item: i64, total: i64, stock: i64) {
    env.wait_for_outcomes(item, total, Duration::from_secs(120))
        .await;
    let report = env.assert_audit_clean(item).await;
    assert_eq!(
        report.outcomes, total,
        "one outcome per request, none twice"
    );
    assert_eq!(report.orders, stock);
    assert_eq!(report.undecided, 0);
}

/// Requests per batch message in the batch-message variants.
const PER_MESSAGE: usize = 37;

/// Publishes the requests one per message, or `per_message` to a message.
async fn publish(env: &TestEnv, requests: &[seckill::domain::OrderRequest], per_message: usize) {
    if per_message <= 1 {
        env.publish_direct(requests).await;
    } else {
        env.publish_direct_batched(requests, per_message).await;
    }
}

/// SIGKILL while the consumer is in the middle of the queue, then restart it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_work_loses_nothing_and_decides_nothing_twice() {
    sigkill_mid_work(1).await;
}

/// The same with batch messages: the kill lands with some batch messages decided and others
/// not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_work_on_batch_messages_loses_nothing_and_decides_nothing_twice() {
    sigkill_mid_work(PER_MESSAGE).await;
}

async fn sigkill_mid_work(per_message: usize) {
    let env = TestEnv::new().await;
    let stock = 500;
    let item = env.create_item(stock).await;
    let total = 8000;
    publish(&env, &requests(item, total, 2000), per_message).await;

    let mut consumer = env.spawn_consumer_process(None);
    env.wait_for_outcomes(item, 300, Duration::from_secs(60))
        .await;
    consumer.start_kill().expect("SIGKILL"); // tokio's kill is SIGKILL
    wait_for_exit(&mut consumer, Duration::from_secs(10)).await;
    let decided_at_kill = env.outcome_count(item).await;
    assert!(
        decided_at_kill < total as i64,
        "the kill must land mid-work (decided {decided_at_kill} of {total})"
    );

    let mut restarted = env.spawn_consumer_process(None);
    assert_settled(&env, item, total as i64, stock).await;
    restarted.start_kill().unwrap();
    env.cleanup().await;
}

/// Aborts the consumer at `step` on its 3rd batch, restarts a clean one, checks the invariants.
async fn crash_at(step: &str) {
    crash_at_with(step, 1).await;
}

async fn crash_at_with(step: &str, per_message: usize) {
    let env = TestEnv::new().await;
    let stock = 50;
    let item = env.create_item(stock).await;
    let total = 1500;
    publish(&env, &requests(item, total, 300), per_message).await;

    let mut crashing = env.spawn_consumer_process(Some(&format!("{step}:3")));
    let status = wait_for_exit(&mut crashing, Duration::from_secs(60)).await;
    assert!(
        !status.success(),
        "{step}: the failpoint should abort the process"
    );
    let decided = env.outcome_count(item).await;
    assert!(
        decided < total as i64,
        "{step}: crashed before finishing ({decided})"
    );

    let mut clean = env.spawn_consumer_process(None);
    assert_settled(&env, item, total as i64, stock).await;
    clean.start_kill().unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_decide() {
    crash_at("before_decide").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_decide_before_commit() {
    crash_at("before_commit").await;
}

/// The hard case: the batch is committed but not acked, so the broker redelivers it; the new
/// consumer must answer it from the store, not decide it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_commit_before_ack() {
    crash_at("after_commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_ack_before_reply() {
    crash_at("after_ack").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_decide_before_commit_on_batch_messages() {
    crash_at_with("before_commit", PER_MESSAGE).await;
}

/// Batch messages committed but not acked: redelivered whole, answered from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_commit_before_ack_on_batch_messages() {
    crash_at_with("after_commit", PER_MESSAGE).await;
}

/// Two daemons on the same partitions: one decides, the other waits; when the active one dies
/// mid-batch (committed, not acked), the standby takes over with no duplicate decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_when_the_active_daemon_dies() {
    let env = TestEnv::new().await;
    let stock = 100;
    let item = env.create_item(stock).await;

    // A registers first, so single-active-consumer makes it the active one.
    let mut active = env.spawn_consumer_process(Some("after_commit:4"));
    wait_for_consumers(&env, 1).await;
    let mut standby = env.spawn_consumer_process(None);
    wait_for_consumers(&env, 2).await;

    let total = 2000;
    env.publish_direct(&requests(item, total, 400)).await;
    let status = wait_for_exit(&mut active, Duration::from_secs(60)).await;
    assert!(
        !status.success(),
        "the active daemon aborted at its failpoint"
    );
    // What the active daemon decided: everything committed before the standby took the
    // partition's epoch (taking it waits for the active's commit in flight). Counted this way,
    // not by what is stored when the active's exit is seen: the standby may be done by then.
    assert_settled(&env, item, total as i64, stock).await;
    let decided_by_active: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outcomes
         WHERE item_id = $1
           AND decided_at < (SELECT taken_at FROM partition_epochs WHERE queue = $2)",
    )
    .bind(item)
    .bind(
        env.topology
            .partition_queue(env.topology.partition_of(item)),
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(
        decided_by_active > 0,
        "the first daemon was the one deciding"
    );
    assert!(decided_by_active < total as i64, "it died mid-work");

    let paths: Vec<String> = sqlx::query_scalar("SELECT DISTINCT path FROM outcomes")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(paths, ["queue"]);
    standby.start_kill().unwrap();
    env.cleanup().await;
}

/// Waits until every partition queue has `n` registered consumers.
async fn wait_for_consumers(env: &TestEnv, n: u32) {
    let channel = env.channel().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for partition in 0..PARTITIONS {
        loop {
            let queue = channel
                .queue_declare(
                    env.topology.partition_queue(partition).into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    Default::default(),
                )
                .await
                .expect("passive declare");
            if queue.consumer_count() >= n {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "consumers did not register"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The API dies after the broker confirmed a request and before it answered the client: the
/// client heard nothing (as with a lost confirm), yet the request is findable as `pending`, and
/// once a consumer runs it is decided once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_killed_after_the_broker_confirmed_leaves_the_request_pending_then_decided() {
    let env = TestEnv::new().await;
    let item = env.create_item(1).await;
    let mut dying = env
        .spawn_serve(
            "api-dies",
            &[],
            &[("SECKILL_FAILPOINT", "after_publish_confirmed")],
        )
        .await;
    let request_id = uuid::Uuid::new_v4();
    let body = serde_json::json!({"item_id": item, "user_id": "u", "request_id": request_id});
    let answer = reqwest::Client::new()
        .post(format!("{}/orders", dying.base))
        .json(&body)
        .send()
        .await;
    assert!(answer.is_err(), "the API aborted before answering");
    dying.wait_exit(Duration::from_secs(10)).await;

    let api = env.spawn_serve("api", &[], &[]).await;
    let client = env.client_of(&api);
    let (status, body) = client.get(&format!("/orders/{request_id}")).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("pending")),
        "{body}"
    );
    let consumer = env.start_consumer().await;
    env.wait_for_outcomes(item, 1, Duration::from_secs(60))
        .await;
    let (_, body) = client.get(&format!("/orders/{request_id}")).await;
    assert_eq!(body["status"], "purchased", "{body}");
    assert_settled(&env, item, 1, 1).await;
    consumer.cancel();
    drop(api);
    env.cleanup().await;
}
