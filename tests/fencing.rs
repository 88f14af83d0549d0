//! Fenced failover: a consumer paused mid-batch (SIGSTOP) loses its broker connection, the
//! standby takes the partition and a new epoch and decides on; when the old one resumes
//! (SIGCONT) its commit is refused by the fence, it steps down, and the audit is clean.

mod common;

use std::time::{Duration, Instant};

use common::TestEnv;
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_consumer_cannot_commit_after_the_standby_took_over() {
    let env = TestEnv::new().await;
    let stock = 100;
    let item = env.create_item(stock).await;
    // A short heartbeat, so the broker notices the paused consumer within seconds.
    let amqp = format!("{}?heartbeat=1", env.broker.amqp_url);

    // The zombie-to-be registers first (so it is the active consumer) and freezes itself just
    // before committing its 3rd batch.
    let mut zombie = env.spawn_consume(
        "zombie",
        &[
            ("AMQP_URL", &amqp),
            ("SECKILL_FAILPOINT", "before_commit:3:stop"),
        ],
    );
    wait_for_log(&zombie, "waiting for deliveries").await;
    let standby = env.spawn_consume("standby", &[("AMQP_URL", &amqp)]);
    wait_for_log(&standby, "waiting for deliveries").await;

    let total = 3000;
    let requests = common::requests(item, total, 600);
    env.publish_direct(&requests).await;
    wait_for_log(&zombie, "failpoint before_commit reached: stopping").await;
    let decided_by_zombie = env.outcome_count(item).await;

    // The broker drops the silent connection; the standby becomes active and decides the rest,
    // including the batch the zombie was about to commit (redelivered to it).
    env.wait_for_outcomes(item, total as i64, Duration::from_secs(60))
        .await;
    assert!(
        standby.log_text().contains("took a new epoch"),
        "{}",
        standby.log_text()
    );
    let epoch: i64 = sqlx::query_scalar("SELECT epoch FROM partition_epochs WHERE queue = $1")
        .bind(
            env.topology
                .partition_queue(env.topology.partition_of(item)),
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(
        epoch, 2,
        "the standby took the second epoch of the item's partition"
    );

    // The zombie wakes up mid-batch and tries to commit its stale decisions: refused.
    zombie.signal(Signal::SIGCONT);
    wait_for_log(&zombie, "fenced out by a newer consumer").await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let report = env.assert_audit_clean(item).await;
    assert_eq!(
        report.outcomes, total as i64,
        "every request decided exactly once"
    );
    assert_eq!(report.orders, stock);
    let by_zombie: i64 = sqlx::query_scalar("SELECT count(*) FROM outcomes WHERE item_id = $1")
        .bind(item)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(decided_by_zombie > 0 && decided_by_zombie < by_zombie);
    zombie.signal(Signal::SIGKILL);
    let _ = zombie.wait_exit(Duration::from_secs(10)).await;
    env.cleanup().await;
}

async fn wait_for_log(daemon: &common::Daemon, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !daemon.log_text().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{needle:?} not logged within 60 s; log:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
