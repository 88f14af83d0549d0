//! Many items: the consumer loads an item's state on first use and drops it when idle, so its
//! memory follows the items being sold now. Dropping must lose nothing: an evicted item comes
//! back from the database with its stock and its buyers.
//!
//! The two `#[ignore]`d tests are the memory report of docs/BENCHMARKS.md (a million buyers on
//! one item; ten thousand items). They take minutes; run them with
//! `cargo test --release --test many_items -- --ignored --nocapture --test-threads=1`.

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, TestEnv, free_port_addr, request, scrape};
use seckill::domain::{OrderRequest, Status};

async fn status_of(env: &TestEnv, request: &OrderRequest) -> Status {
    let text: String = sqlx::query_scalar("SELECT status FROM outcomes WHERE request_id = $1")
        .bind(request.request_id)
        .fetch_one(&env.pool)
        .await
        .expect("outcome stored");
    Status::parse(&text).expect("known status")
}

/// Polls the daemon's metrics until `metric` satisfies `ok`; returns its value.
async fn wait_metric(base: &str, metric: &str, ok: impl Fn(f64) -> bool, daemon: &Daemon) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let value = scrape(base).await.get(metric).copied().unwrap_or(f64::NAN);
        if ok(value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{metric} stayed at {value}; daemon log:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_items_leave_memory_and_come_back_with_their_stock_and_buyers() {
    let env = TestEnv::new().await;
    let metrics = free_port_addr();
    let base = format!("http://{metrics}");
    let consumer = env.spawn_consume(
        "consumer",
        &[
            ("SECKILL_ITEM_IDLE_SECS", "1"),
            ("SECKILL_METRICS_BIND", &metrics),
        ],
    );
    let mut items = Vec::new();
    for _ in 0..20 {
        items.push(env.create_item(3).await);
    }
    // Two buyers per item: each item is left with one unit.
    let first: Vec<_> = items
        .iter()
        .flat_map(|&id| [request(id, "alice"), request(id, "bob")])
        .collect();
    env.publish_direct(&first).await;
    for &id in &items {
        env.wait_for_outcomes(id, 2, Duration::from_secs(60)).await;
    }
    // One second idle, and every item's state is dropped.
    wait_metric(
        &base,
        "seckill_consumer_items_evicted_total",
        |v| v >= 20.0,
        &consumer,
    )
    .await;
    wait_metric(
        &base,
        "seckill_consumer_items_in_memory",
        |v| v == 0.0,
        &consumer,
    )
    .await;

    // Back from the database: alice is still a buyer, one unit is left for carol, none for dave.
    let again: Vec<_> = items
        .iter()
        .flat_map(|&id| {
            [
                request(id, "alice"),
                request(id, "carol"),
                request(id, "dave"),
            ]
        })
        .collect();
    env.publish_direct(&again).await;
    for &id in &items {
        env.wait_for_outcomes(id, 5, Duration::from_secs(60)).await;
    }
    for (i, r) in again.iter().enumerate() {
        let expected = [Status::AlreadyPurchased, Status::Purchased, Status::SoldOut][i % 3];
        assert_eq!(status_of(&env, r).await, expected, "{}", r.user_id);
    }
    for &id in &items {
        let audit = env.assert_audit_clean(id).await;
        assert_eq!(audit.orders, 3);
    }
    env.cleanup().await;
}

/// Publishes `requests` while the daemon decides them, then waits for every decision.
async fn decide_all(env: &TestEnv, items: &[i64], requests: &[OrderRequest]) {
    for chunk in requests.chunks(50_000) {
        env.publish_direct(chunk).await;
    }
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let decided: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outcomes WHERE item_id = ANY($1)")
                .bind(items)
                .fetch_one(&env.pool)
                .await
                .unwrap();
        if decided >= requests.len() as i64 {
            return;
        }
        assert!(Instant::now() < deadline, "only {decided} decided");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "memory report: a million requests, minutes; see the module doc"]
async fn memory_report_one_item_a_million_buyers() {
    const BUYERS: usize = 1_000_000;
    let env = TestEnv::new().await;
    let consumer = env.spawn_consume(
        "consumer",
        &[
            ("SECKILL_BATCH_SIZE_MAX", "500"),
            ("SECKILL_PREFETCH", "1000"),
        ],
    );
    let item = env.create_item(BUYERS as i64).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = consumer.rss_kib();
    let requests: Vec<_> = (0..BUYERS)
        .map(|i| request(item, &format!("user-{i:07}")))
        .collect();
    let started = Instant::now();
    decide_all(&env, &[item], &requests).await;
    let rss = consumer.rss_kib();
    println!(
        "one item, {BUYERS} distinct buyers: consumer RSS {:.1} MiB at rest before, {:.1} MiB \
         with every buyer in memory ({:.0} bytes per buyer); decided in {:.0?}",
        mib(idle_rss),
        mib(rss),
        (rss - idle_rss) as f64 * 1024.0 / BUYERS as f64,
        started.elapsed()
    );
    let audit = env.assert_audit_clean(item).await;
    assert_eq!(audit.orders, BUYERS as i64);
    // A buyer costs its id and a hash-set slot: far below a kilobyte.
    assert!(rss - idle_rss < 1024 * 1024, "{rss} KiB");
    env.cleanup().await;
}

/// Two sales of 10,000 items each, one after the other: the first sale's items go idle and are
/// evicted, and the second reuses their memory instead of adding to it.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "memory report: ten thousand items, minutes; see the module doc"]
async fn memory_report_ten_thousand_items() {
    const ITEMS: i64 = 10_000;
    const BUYERS_PER_ITEM: usize = 10;
    let env = TestEnv::new().await;
    let metrics = free_port_addr();
    let base = format!("http://{metrics}");
    let consumer = env.spawn_consume(
        "consumer",
        &[
            ("SECKILL_ITEM_IDLE_SECS", "20"),
            ("SECKILL_METRICS_BIND", &metrics),
            ("SECKILL_BATCH_SIZE_MAX", "500"),
            ("SECKILL_PREFETCH", "1000"),
        ],
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rest_rss = consumer.rss_kib();
    let mut report = format!("consumer RSS at rest {:.1} MiB", mib(rest_rss));
    let mut peaks = Vec::new();
    for sale in 1..=2 {
        let items: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO items (name, stock_initial, stock_remaining)
             SELECT 'item ' || n, 5, 5 FROM generate_series(1, $1) AS n RETURNING id",
        )
        .bind(ITEMS)
        .fetch_all(&env.pool)
        .await
        .unwrap();
        let requests: Vec<_> = (0..BUYERS_PER_ITEM)
            .flat_map(|u| {
                items
                    .iter()
                    .map(move |&id| request(id, &format!("user-{u}")))
            })
            .collect();
        let started = Instant::now();
        decide_all(&env, &items, &requests).await;
        let peak = consumer.rss_kib();
        let in_memory = scrape(&base).await["seckill_consumer_items_in_memory"];
        wait_metric(
            &base,
            "seckill_consumer_items_in_memory",
            |v| v == 0.0,
            &consumer,
        )
        .await;
        let evicted = consumer.rss_kib();
        report += &format!(
            "; sale {sale} ({ITEMS} items × {BUYERS_PER_ITEM} buyers, decided in {:.0?}): \
             {:.1} MiB with {in_memory} items in memory, {:.1} MiB once all were evicted",
            started.elapsed(),
            mib(peak),
            mib(evicted)
        );
        let sold: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE item_id = ANY($1)")
            .bind(&items)
            .fetch_one(&env.pool)
            .await
            .unwrap();
        assert_eq!(sold, ITEMS * 5, "five units of each item sold");
        for &id in items.iter().step_by(997) {
            env.assert_audit_clean(id).await;
        }
        peaks.push(peak);
    }
    println!("{report}");
    // Without eviction the second sale would add as much again as the first.
    let first_growth = peaks[0].saturating_sub(rest_rss);
    assert!(
        peaks[1] < peaks[0] + first_growth / 2,
        "the second sale did not reuse the first one's memory: {report}"
    );
    env.cleanup().await;
}
