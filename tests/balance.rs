//! Several `seckill consume` daemons share the partitions: with N daemons and P partitions each
//! is active on ⌊P/N⌋ or ⌈P/N⌉, and they rebalance when one dies or joins — with every request
//! decided exactly once throughout.
//!
//! "Active" is read from the outside, twice: the broker's single-active-consumer flag
//! (`rabbitmqctl list_consumers`, whose consumer tags carry the daemon's pid) and the holder of
//! each partition's current epoch in the database (`host/pid`). Both must agree and be balanced.
//! A daemon learns it is active from deliveries, so the test keeps requests flowing on every
//! partition while it waits; it polls with generous deadlines and asserts nothing on timings.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::{Daemon, TestEnv};
use nix::sys::signal::Signal;
use seckill::domain::OrderRequest;
use uuid::Uuid;

const PARTITIONS: u16 = 6;
const STOCK: i64 = 40;

/// Short lease timings, so the test waits seconds rather than the production defaults.
const LEASE_ENV: [(&str, &str); 4] = [
    ("SECKILL_PARTITIONS", "6"),
    ("SECKILL_LEASE_HEARTBEAT_MS", "300"),
    ("SECKILL_LEASE_TTL_MS", "3000"),
    ("SECKILL_LEASE_SETTLE_MS", "2000"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_balance_rebalance_when_one_dies_and_when_one_joins() {
    let env = TestEnv::with_broker(|b| b.partitions = PARTITIONS).await;
    let items = items_on_every_partition(&env).await;
    let mut sale = Sale::default();

    let metrics_a = free_port_addr();
    let mut env_a = LEASE_ENV.to_vec();
    env_a.push(("SECKILL_METRICS_BIND", &metrics_a));
    let a = env.spawn_consume("a", &env_a);
    let mut b = env.spawn_consume("b", &LEASE_ENV);
    let c = env.spawn_consume("c", &LEASE_ENV);

    // Three daemons: 2 partitions each.
    let shares = wait_balanced(&env, &items, &mut sale, &[&a, &b, &c], 2).await;
    eprintln!("three daemons: {shares:?}");
    wait_gauge(&metrics_a, 2.0).await;

    // One dies: the survivors take over its partitions at once (single-active-consumer), then
    // balance 3 and 3 once its lease has expired.
    b.signal(Signal::SIGKILL);
    b.wait_exit(Duration::from_secs(30)).await;
    sale.round(&env, &items).await; // decided while its lease may still be alive
    let shares = wait_balanced(&env, &items, &mut sale, &[&a, &c], 3).await;
    eprintln!("after the kill: {shares:?}");

    // One joins: it takes a share once its lease has settled.
    let mut d = env.spawn_consume("d", &LEASE_ENV);
    let shares = wait_balanced(&env, &items, &mut sale, &[&a, &c, &d], 2).await;
    eprintln!("after the join: {shares:?}");
    wait_gauge(&metrics_a, 2.0).await;

    // One stops (SIGTERM): it finishes its batches, deletes its lease on the way out — the
    // others need not wait for it to expire — and the other two balance again.
    let d_pid = d.pid();
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(30)).await.success());
    let leases: i64 = sqlx::query_scalar("SELECT count(*) FROM consumer_leases WHERE id LIKE $1")
        .bind(format!("%/{}/%", d_pid))
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(leases, 0, "a stopped daemon leaves no lease behind");
    assert!(d.log_text().contains("lease released"));
    let shares = wait_balanced(&env, &items, &mut sale, &[&a, &c], 3).await;
    eprintln!("after the stop: {shares:?}");
    wait_gauge(&metrics_a, 3.0).await;

    // Every request decided exactly once; no item oversold; one buyer, one order.
    let ids: Vec<Uuid> = sale.published.iter().map(|r| r.request_id).collect();
    let decided = env.decided_count(&ids).await;
    assert_eq!(decided, ids.len() as i64, "every request decided");
    let mut per_item: HashMap<i64, i64> = HashMap::new();
    for request in &sale.published {
        *per_item.entry(request.item_id).or_default() += 1;
    }
    for item in &items {
        let report = env.assert_audit_clean(*item).await;
        assert_eq!(
            report.outcomes, per_item[item],
            "item {item}: one outcome per request"
        );
        assert!(report.orders <= STOCK);
    }
    for daemon in [&a, &c, &d] {
        let log = daemon.log_text();
        assert!(log.contains("owning partitions ["), "{log}");
    }
    let handovers: usize = [&a, &c, &d]
        .iter()
        .map(|d| d.log_text().matches("handed over p").count())
        .sum();
    assert!(handovers > 0, "balance came from handovers");
    drop((a, c, d));
    env.cleanup().await;
}

/// A single daemon owns every partition: no lease, no handover gets in its way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_daemon_is_active_on_every_partition() {
    let env = TestEnv::with_broker(|b| b.partitions = PARTITIONS).await;
    let items = items_on_every_partition(&env).await;
    let mut sale = Sale::default();
    let only = env.spawn_consume("only", &LEASE_ENV);
    wait_balanced(&env, &items, &mut sale, &[&only], PARTITIONS as usize).await;
    // Well past the settle time, still everything, and never a handover.
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_balanced(&env, &items, &mut sale, &[&only], PARTITIONS as usize).await;
    assert!(!only.log_text().contains("handing over"));
    for item in &items {
        env.assert_audit_clean(*item).await;
    }
    drop(only);
    env.cleanup().await;
}

/// Items until every partition has at least one.
async fn items_on_every_partition(env: &TestEnv) -> Vec<i64> {
    let mut items = Vec::new();
    let mut covered = [false; PARTITIONS as usize];
    while covered.iter().any(|c| !c) {
        let item = env.create_item(STOCK).await;
        covered[usize::from(env.topology.partition_of(item))] = true;
        items.push(item);
    }
    items
}

/// Everything published so far.
#[derive(Default)]
struct Sale {
    published: Vec<OrderRequest>,
    rounds: usize,
}

impl Sale {
    /// A few requests on every item (so on every partition), waited for until all are decided.
    async fn round(&mut self, env: &TestEnv, items: &[i64]) {
        self.rounds += 1;
        let number = self.rounds;
        let round: Vec<OrderRequest> = items
            .iter()
            .flat_map(|item| {
                (0..8).map(move |i| OrderRequest {
                    request_id: Uuid::new_v4(),
                    item_id: *item,
                    // Some buyers come back in later rounds: repeat buyers are decided too.
                    user_id: format!("user-{}", (i * 7 + number) % 60),
                    quantity: 1,
                })
            })
            .collect();
        env.publish_direct(&round).await;
        let ids: Vec<Uuid> = round.iter().map(|r| r.request_id).collect();
        self.published.extend(round);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let decided = env.decided_count(&ids).await;
            if decided == ids.len() as i64 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "round {}: only {decided} of {} decided",
                self.rounds,
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Keeps requests flowing until the broker and the epochs agree that each of `daemons` is
/// active on `each` partitions (and nobody else on any). Returns daemon pid → partitions.
async fn wait_balanced(
    env: &TestEnv,
    items: &[i64],
    sale: &mut Sale,
    daemons: &[&Daemon],
    each: usize,
) -> BTreeMap<i32, Vec<u16>> {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        sale.round(env, items).await;
        let broker = broker_active(env).await;
        let epochs = epoch_holders(env).await;
        let mut shares: BTreeMap<i32, Vec<u16>> = BTreeMap::new();
        for (partition, pid) in &broker {
            shares.entry(*pid).or_default().push(*partition);
        }
        let balanced = broker.len() == usize::from(PARTITIONS)
            && broker == epochs
            && shares.len() == daemons.len()
            && daemons
                .iter()
                .all(|d| shares.get(&d.pid()).is_some_and(|s| s.len() == each));
        if balanced {
            return shares;
        }
        if Instant::now() > deadline {
            let logs: String = daemons
                .iter()
                .map(|d| format!("--- pid {}:\n{}\n", d.pid(), tail(&d.log_text(), 40)))
                .collect();
            panic!(
                "not balanced ({each} each over {} daemons) after {} rounds:\n\
                 broker active: {broker:?}\nepoch holders: {epochs:?}\n{logs}",
                daemons.len(),
                sale.rounds
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Partition → pid of its active consumer, as the broker sees it (single-active-consumer's flag;
/// consumer tags are `seckill-{pid}-p{partition}`).
async fn broker_active(env: &TestEnv) -> BTreeMap<u16, i32> {
    let output = tokio::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_consumers",
            "queue_name",
            "consumer_tag",
            "active",
            "--no-table-headers",
        ])
        .output()
        .await
        .expect("rabbitmqctl runs");
    assert!(output.status.success(), "rabbitmqctl list_consumers");
    let queues: HashMap<String, u16> = (0..PARTITIONS)
        .map(|p| (env.topology.partition_queue(p), p))
        .collect();
    let mut active = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [queue, tag, is_active] = fields[..] else {
            continue;
        };
        let Some(partition) = queues.get(queue) else {
            continue;
        };
        if is_active.trim() != "true" {
            continue;
        }
        let pid = tag
            .strip_prefix("seckill-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("unexpected consumer tag {tag:?}"));
        active.insert(*partition, pid);
    }
    active
}

/// Partition → pid of the holder of its current epoch (`host/pid`), from the database.
async fn epoch_holders(env: &TestEnv) -> BTreeMap<u16, i32> {
    let queues: Vec<String> = (0..PARTITIONS)
        .map(|p| env.topology.partition_queue(p))
        .collect();
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT queue, holder FROM partition_epochs WHERE queue = ANY($1)")
            .bind(&queues)
            .fetch_all(&env.pool)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(queue, holder)| {
            let partition = queues.iter().position(|q| *q == queue).unwrap() as u16;
            let pid = holder
                .rsplit('/')
                .next()
                .and_then(|pid| pid.parse().ok())
                .unwrap_or_else(|| panic!("unexpected holder {holder:?}"));
            (partition, pid)
        })
        .collect()
}

fn free_port_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    format!("127.0.0.1:{port}")
}

/// Waits (bounded) until a daemon's `seckill_consumer_partitions_active` shows `expected`.
async fn wait_gauge(addr: &str, expected: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = None;
    loop {
        if let Ok(response) = reqwest::get(format!("http://{addr}/metrics")).await
            && let Ok(text) = response.text().await
        {
            seen = text
                .lines()
                .find_map(|l| l.strip_prefix("seckill_consumer_partitions_active "))
                .and_then(|v| v.trim().parse::<f64>().ok());
            if seen == Some(expected) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "active-partitions gauge at {addr}: {seen:?}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The lease table on its own: a lease is live until its TTL by the database's clock, settles
/// after the settle time, and one renewed after it expired counts as a new join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_and_settle_by_the_database_clock() {
    use seckill::consumer::lease;
    let env = TestEnv::new().await;
    let prefix = &env.broker.queue_prefix;
    // Wide margins: the machine is slow, and only the database's clock is asked.
    let ttl = Duration::from_secs(5);
    let settle = Duration::from_secs(2);
    lease::renew(&env.pool, "a", prefix, ttl).await.unwrap();
    lease::renew(&env.pool, "other", "another-deployment", ttl)
        .await
        .unwrap();
    let view = lease::read(&env.pool, prefix, settle).await.unwrap();
    let ids: Vec<&str> = view.members.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["a"], "only this deployment's daemons");
    assert!(view.settled().is_empty(), "just joined: not settled yet");

    tokio::time::sleep(Duration::from_millis(2500)).await;
    lease::renew(&env.pool, "a", prefix, ttl).await.unwrap();
    let view = lease::read(&env.pool, prefix, settle).await.unwrap();
    assert_eq!(view.settled(), ["a"]);
    assert!(view.members[0].renewed_at <= view.db_now);

    // Not renewed past its TTL: gone; renewed again: back, but as a newcomer.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    assert!(
        lease::read(&env.pool, prefix, settle)
            .await
            .unwrap()
            .members
            .is_empty()
    );
    lease::renew(&env.pool, "a", prefix, ttl).await.unwrap();
    let view = lease::read(&env.pool, prefix, settle).await.unwrap();
    assert_eq!(view.members.len(), 1);
    assert!(
        view.settled().is_empty(),
        "an expired lease renewed joins afresh"
    );

    lease::release(&env.pool, "a").await.unwrap();
    assert!(
        lease::read(&env.pool, prefix, settle)
            .await
            .unwrap()
            .members
            .is_empty()
    );
    env.cleanup().await;
}
