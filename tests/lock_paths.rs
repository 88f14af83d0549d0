//! The lock-based purchase paths over real HTTP, PostgreSQL and Redis: each sells exactly its
//! stock to a burst of concurrent buyers; the unsafe one is shown to oversell and the audit to
//! catch it; and the failures the literature warns about — a lock that expired under its holder,
//! a database write that fails after Redis decided, a dead Redis — do no harm.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{TestEnv, request, run_concurrently};
use serde_json::{Value, json};
use tokio::sync::{Barrier, Notify};
use uuid::Uuid;

use seckill::domain::{ItemId, Status};
use seckill::paths::lock_table::LockTable;
use seckill::paths::redis_lock::RedisLock;
use seckill::paths::redis_store::RedisStore;
use seckill::paths::{self, PathError, Pause, Registry};
use seckill::sale::PathName;

/// Units on sale in the concurrency tests: far below demand.
const STOCK: i64 = 100;
/// Distinct buyers, each sending `REQUESTS / USERS` requests at once.
const USERS: usize = 400;
const REQUESTS: usize = 1200;
/// HTTP requests in flight at once.
const IN_FLIGHT: usize = 150;

/// Sends `REQUESTS` requests for one item of `STOCK` units through `path` over HTTP, each user's
/// requests side by side so they are in flight together, and checks what every sound path
/// guarantees: every request answered 200 and decided once, what a client was told is what is
/// stored, no more orders than stock, at most one per user, and a clean audit. Returns the
/// numbers of orders and of `failed_retry` answers.
async fn sell_through(path: &str) -> (i64, i64) {
    let env = TestEnv::new().await;
    let api = env.start_api(None).await;
    let item = api.create_item(STOCK).await;
    let url = format!("/orders?path={path}");
    let per_user = REQUESTS / USERS;
    let requests: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let (api, url) = (&api, &url);
            let body = json!({"item_id": item, "user_id": format!("user-{}", i / per_user)});
            async move { api.post(url, body).await }
        })
        .collect();
    let started = Instant::now();
    let answers = run_concurrently(requests, IN_FLIGHT).await;
    let elapsed = started.elapsed();

    let mut told: HashMap<Uuid, String> = HashMap::new();
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{path}: {body}");
        let id: Uuid = body["request_id"].as_str().unwrap().parse().unwrap();
        told.insert(id, body["status"].as_str().unwrap().to_string());
    }
    assert_eq!(told.len(), REQUESTS, "{path}: every request got its own id");

    let report = env.assert_audit_clean(item).await;
    assert_eq!(
        report.outcomes, REQUESTS as i64,
        "{path}: one outcome per request"
    );
    assert!(report.orders <= STOCK, "{path}: oversold: {report}");
    assert_eq!(report.stock_remaining, STOCK - report.orders, "{path}");

    let stored: Vec<(Uuid, String, String)> =
        sqlx::query_as("SELECT request_id, status, path FROM outcomes WHERE item_id = $1")
            .bind(item)
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (id, status, stored_path) in stored {
        assert_eq!(told[&id], status, "{path}: {id} was told something else");
        assert_eq!(stored_path, path);
        *counts.entry(status).or_default() += 1;
    }
    let buyers: Vec<String> = sqlx::query_scalar("SELECT user_id FROM orders WHERE item_id = $1")
        .bind(item)
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(
        buyers.iter().collect::<HashSet<_>>().len(),
        buyers.len(),
        "{path}: one order per user"
    );
    eprintln!(
        "{path}: {REQUESTS} requests in {:.2}s ({:.0}/s): {counts:?}",
        elapsed.as_secs_f64(),
        REQUESTS as f64 / elapsed.as_secs_f64()
    );

    api.shutdown.cancel();
    env.cleanup().await;
    (report.orders, report.failed_retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pessimistic_sells_exactly_the_stock() {
    assert_eq!(sell_through("pessimistic").await, (STOCK, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn optimistic_never_oversells_and_reports_its_failed_retries() {
    let (orders, failed_retry) = sell_through("optimistic").await;
    assert!(
        orders == STOCK || failed_retry > 0,
        "fewer orders ({orders}) than stock only when retries ran out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conditional_sells_exactly_the_stock() {
    assert_eq!(sell_through("conditional").await, (STOCK, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn advisory_sells_exactly_the_stock() {
    assert_eq!(sell_through("advisory").await, (STOCK, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_table_sells_exactly_the_stock() {
    assert_eq!(sell_through("lock-table").await, (STOCK, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_lock_sells_exactly_the_stock() {
    assert_eq!(sell_through("redis-lock").await, (STOCK, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_watch_sells_exactly_the_stock() {
    let (orders, _failed_retry) = sell_through("redis-watch").await;
    assert_eq!(orders, STOCK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_lua_sells_exactly_the_stock() {
    assert_eq!(sell_through("redis-lua").await, (STOCK, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_list_sells_exactly_the_stock() {
    assert_eq!(sell_through("redis-list").await, (STOCK, 0));
}

/// Two requests forced to interleave between naive's read and its write both sell: with one unit
/// left that is an oversell, with more it is a lost update — and the audit reports both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn naive_loses_an_update_and_the_audit_reports_the_oversell() {
    let env = TestEnv::new().await;
    let barrier = Arc::new(Barrier::new(2));
    let pause = Pause::new(move || {
        let barrier = barrier.clone();
        Box::pin(async move {
            barrier.wait().await;
        })
    });
    let naive = paths::naive::Naive::new(env.pool.clone()).with_pause(pause);

    for (stock, remaining_after) in [(1, 0), (5, 4)] {
        let item = env.create_item(stock).await;
        let (alice, bob) = (request(item, "alice"), request(item, "bob"));
        let (a, b) = tokio::join!(
            paths::decide(&env.pool, &naive, &alice),
            paths::decide(&env.pool, &naive, &bob),
        );
        assert_eq!(a.unwrap().status, Status::Purchased);
        assert_eq!(b.unwrap().status, Status::Purchased);

        let report = seckill::audit::audit_item(&env.pool, item, true)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (report.orders, report.stock_remaining),
            (2, remaining_after),
            "both sold, one decrement lost"
        );
        let violations: Vec<String> = report.violations.iter().map(|v| v.to_string()).collect();
        let violations = violations.join("\n");
        assert!(violations.contains("stock does not add up"), "{report}");
        assert_eq!(
            violations.contains("oversold: 2 orders for a stock of 1"),
            stock == 1,
            "{report}"
        );

        // `seckill audit` says so too, and fails.
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_seckill"))
            .args(["audit", "--item", &item.to_string()])
            .env("DATABASE_URL", &env.database.database_url)
            .env("RUST_LOG", "off")
            .output()
            .await
            .expect("run seckill audit");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(!output.status.success(), "{stdout}");
        assert!(
            stdout.contains("VIOLATED") && stdout.contains("stock does not add up"),
            "{stdout}"
        );
    }
    env.cleanup().await;
}

/// A holder pauses between its read and its write until its lease has expired and a second
/// holder has bought the last unit: the fencing token refuses its write, and, retried, it finds
/// the item sold out. Without the fence it would have written `stock = 1 − 1` and oversold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_lock_holder_whose_lease_expired_cannot_commit() {
    let env = TestEnv::new().await;
    let redis = Arc::new(RedisStore::new(&env.path_args().redis).unwrap());
    let item = env.create_item(1).await;

    let (in_window, resume) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let first_turn = Arc::new(AtomicBool::new(true));
    let pause = {
        let (in_window, resume) = (in_window.clone(), resume.clone());
        Pause::new(move || {
            let (in_window, resume) = (in_window.clone(), resume.clone());
            let first = first_turn.swap(false, Ordering::SeqCst);
            Box::pin(async move {
                if first {
                    in_window.notify_one();
                    resume.notified().await;
                }
            })
        })
    };
    let lease = Duration::from_millis(100);
    let wait = Duration::from_secs(10);
    let slow =
        Arc::new(RedisLock::new(env.pool.clone(), redis.clone(), lease, wait).with_pause(pause));
    let fast = RedisLock::new(
        env.pool.clone(),
        redis.clone(),
        Duration::from_secs(2),
        wait,
    );

    let slow_task = tokio::spawn({
        let (slow, pool) = (slow.clone(), env.pool.clone());
        async move { paths::decide(&pool, &*slow, &request(item, "slow")).await }
    });
    in_window.notified().await; // the slow holder read stock 1 and is about to write
    tokio::time::sleep(lease * 3).await; // ... and its lease is gone
    let fast_outcome = paths::decide(&env.pool, &fast, &request(item, "fast"))
        .await
        .unwrap();
    assert_eq!(
        fast_outcome.status,
        Status::Purchased,
        "a second holder got in"
    );
    resume.notify_one();
    let slow_outcome = slow_task.await.unwrap().unwrap();
    assert_eq!(
        slow_outcome.status,
        Status::SoldOut,
        "the overtaken write was refused; the retry found nothing left"
    );
    assert_eq!(slow.overtaken(), 1, "the fence refused exactly one write");
    let report = env.assert_audit_clean(item).await;
    assert_eq!((report.orders, report.stock_remaining), (1, 0));
    env.cleanup().await;
}

/// What `decide` answered each of `buyers` concurrent buyers of `item` through `path`: the
/// decisions by status, and the number answered 503 (the lock stayed busy). Anything else fails.
async fn grab_concurrently(
    env: &TestEnv,
    path: &LockTable,
    item: ItemId,
    buyers: usize,
) -> (BTreeMap<&'static str, usize>, usize) {
    let requests: Vec<_> = (0..buyers)
        .map(|i| {
            let request = request(item, &format!("buyer-{i}"));
            async move { paths::decide(&env.pool, path, &request).await }
        })
        .collect();
    let (mut decided, mut unavailable) = (BTreeMap::new(), 0);
    for result in run_concurrently(requests, buyers).await {
        match result {
            Ok(outcome) => *decided.entry(outcome.status.as_str()).or_default() += 1,
            Err(PathError::Unavailable(_)) => unavailable += 1,
            Err(e) => panic!("neither a decision nor a 503: {e:?}"),
        }
    }
    (decided, unavailable)
}

/// lock-table's flaw, shown safely. Each holder pauses between its read and its write. With an
/// expiry longer than that pause the lock holds: one holder at a time, nothing taken over. With
/// an expiry of 1 ms every waiter takes the "dead" lock over from a holder that is still working,
/// several holders read the same stock at once, and what stops the oversell is not the lock but
/// the schema: the decrements past zero break `stock_remaining >= 0` and are rolled back and
/// retried. The audit stays clean either way; what the lock let through is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_table_taken_over_from_a_slow_holder_only_the_schema_stops_an_oversell() {
    let env = TestEnv::new().await;
    let slow = || {
        Pause::new(|| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(30)).await;
            })
        })
    };
    let (stock, buyers) = (5, 40);
    let wait = Duration::from_secs(20);

    // Sound expiry: the lock holds.
    let item = env.create_item(stock).await;
    let sound = LockTable::new(env.pool.clone(), Duration::from_secs(10), wait).with_pause(slow());
    let (decided, unavailable) = grab_concurrently(&env, &sound, item, buyers).await;
    eprintln!(
        "lock-table, ttl 10 s: {decided:?}, {unavailable} answered 503; holders at once: {}, \
         taken over: {}, refused by the schema: {}",
        sound.holders_max(),
        sound.taken_over(),
        sound.refused_by_schema()
    );
    assert_eq!(sound.holders_max(), 1, "one holder at a time");
    assert_eq!((sound.taken_over(), sound.refused_by_schema()), (0, 0));
    assert_eq!(unavailable, 0);
    assert_eq!(decided.get("purchased"), Some(&(stock as usize)));
    let report = env.assert_audit_clean(item).await;
    assert_eq!((report.orders, report.stock_remaining), (stock, 0));

    // An expiry far below the work: taken over while it works.
    let item = env.create_item(stock).await;
    let flawed =
        LockTable::new(env.pool.clone(), Duration::from_millis(1), wait).with_pause(slow());
    let (decided, unavailable) = grab_concurrently(&env, &flawed, item, buyers).await;
    let (holders_max, taken_over, refused) = (
        flawed.holders_max(),
        flawed.taken_over(),
        flawed.refused_by_schema(),
    );
    eprintln!(
        "lock-table, ttl 1 ms: {decided:?}, {unavailable} answered 503; holders at once: \
         {holders_max}, taken over: {taken_over}, refused by the schema: {refused}"
    );
    assert!(holders_max >= 2, "two holders got in at once");
    assert!(taken_over >= 1, "a live holder's lock was deleted as dead");
    assert!(
        refused + unavailable as u64 > 0,
        "the holders the lock let through were stopped by the schema (retried) or ran out of time"
    );
    assert_eq!(decided.values().sum::<usize>() + unavailable, buyers);
    let report = env.assert_audit_clean(item).await;
    assert!(report.orders <= stock, "no oversell: {report}");
    assert_eq!(
        report.orders,
        decided.get("purchased").copied().unwrap_or(0) as i64
    );
    assert_eq!(report.outcomes, decided.values().sum::<usize>() as i64);
    assert_eq!(report.stock_remaining, stock - report.orders);
    env.cleanup().await;
}

/// A lock row that stays (a live holder, or a dead one younger than the expiry) makes a
/// `lock-table` request wait its bound, then answer 503 with `Retry-After` — never a 500 — with
/// nothing decided; once the row is gone, the same request id is decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_table_busy_past_its_wait_answers_503_then_decides_on_retry() {
    let env = TestEnv::new().await;
    let mut args = env.path_args();
    (args.lock_table_ttl_ms, args.lock_table_wait_ms) = (60_000, 300);
    let serve = seckill::config::ServeArgs {
        sold_out_ttl_ms: 0,
        ..seckill::config::ServeArgs::loopback()
    };
    let api = env.start_api_configured(serve, args).await;
    let item = api.create_item(3).await;
    sqlx::query("INSERT INTO item_locks (item_id, owner) VALUES ($1, $2)")
        .bind(item)
        .bind(Uuid::new_v4())
        .execute(&env.pool)
        .await
        .unwrap();

    let request_id = Uuid::new_v4();
    let body = json!({"item_id": item, "user_id": "erin", "request_id": request_id});
    let started = Instant::now();
    let response = api
        .http
        .post(format!("{}/orders?path=lock-table", api.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().get("retry-after").is_some());
    let answer: Value = response.json().await.unwrap();
    assert!(answer["error"].as_str().is_some(), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the wait"
    );
    let (status, _) = api.get(&format!("/orders/{request_id}")).await;
    assert_eq!(status, 404, "nothing was decided");

    sqlx::query("DELETE FROM item_locks WHERE item_id = $1")
        .bind(item)
        .execute(&env.pool)
        .await
        .unwrap();
    let (status, answer) = api.post("/orders?path=lock-table", body).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("purchased"))
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM item_locks")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "the holder deleted its lock row");
    let report = env.assert_audit_clean(item).await;
    assert_eq!((report.orders, report.stock_remaining), (1, 2));
    api.shutdown.cancel();
    env.cleanup().await;
}

/// A red packet of 10,000 cents in 50 shares, grabbed by 400 users (600 grabs, some users twice)
/// through `pessimistic` and `optimistic` — seed 000's experiment — with the queue path's share
/// rule: one share per user, none zero, and the shares paid plus the amount left make exactly
/// the total (all of it once every share is taken); every answer carries the share stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn red_packets_on_the_lock_paths_pay_out_exactly_their_total() {
    let env = TestEnv::new().await;
    let api = env.start_api(None).await;
    let (total, shares, grabs, users) = (10_000, 50, 600, 400);
    for path in ["pessimistic", "optimistic"] {
        let (status, packet) = api
            .post(
                "/items",
                json!({"name": path, "kind": "red_packet", "total_amount": total, "shares": shares}),
            )
            .await;
        assert_eq!(status, 201, "{packet}");
        let item = packet["id"].as_i64().unwrap();
        let url = format!("/orders?path={path}");
        let requests: Vec<_> = (0..grabs)
            .map(|i| {
                let (api, url) = (&api, &url);
                let body = json!({"item_id": item, "user_id": format!("user-{}", i % users)});
                async move { api.post(url, body).await }
            })
            .collect();
        let started = Instant::now();
        let answers = run_concurrently(requests, IN_FLIGHT).await;
        let elapsed = started.elapsed();

        let stored: HashMap<Uuid, i64> =
            sqlx::query_as("SELECT request_id, amount FROM orders WHERE item_id = $1")
                .bind(item)
                .fetch_all(&env.pool)
                .await
                .unwrap()
                .into_iter()
                .collect();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for (status, body) in &answers {
            assert_eq!(*status, 200, "{path}: {body}");
            *counts
                .entry(body["status"].as_str().unwrap().to_string())
                .or_default() += 1;
            if body["status"] == "purchased" {
                let id: Uuid = body["request_id"].as_str().unwrap().parse().unwrap();
                assert_eq!(body["amount"].as_i64(), Some(stored[&id]), "{path}: {body}");
            } else {
                assert!(body.get("amount").is_none(), "{path}: {body}");
            }
        }
        let report = env.assert_audit_clean(item).await;
        assert_eq!(
            report.outcomes, grabs as i64,
            "{path}: one outcome per grab"
        );

        let paid: Vec<(String, i64)> =
            sqlx::query_as("SELECT user_id, amount FROM orders WHERE item_id = $1")
                .bind(item)
                .fetch_all(&env.pool)
                .await
                .unwrap();
        assert!(
            paid.iter().all(|(_, a)| *a >= 1),
            "{path}: a zero share: {paid:?}"
        );
        let users_paid: HashSet<_> = paid.iter().map(|(u, _)| u).collect();
        assert_eq!(users_paid.len(), paid.len(), "{path}: one share per user");
        let (_, body) = api.get(&format!("/items/{item}")).await;
        let paid_sum: i64 = paid.iter().map(|(_, a)| a).sum();
        let left = body["amount_remaining"].as_i64().unwrap();
        assert_eq!(paid_sum + left, total, "{path}: the sum is exact");
        assert_eq!(paid.len() as i64, report.orders);
        if path == "pessimistic" {
            assert_eq!((report.orders, report.failed_retry), (shares, 0), "{path}");
        } else {
            assert!(
                report.orders == shares || report.failed_retry > 0,
                "{path}: fewer shares taken ({}) only when retries ran out",
                report.orders
            );
        }
        if report.orders == shares {
            assert_eq!(
                (paid_sum, left),
                (total, 0),
                "{path}: every share taken, all paid"
            );
        }
        let mut sizes: Vec<i64> = paid.iter().map(|(_, a)| *a).collect();
        sizes.sort_unstable();
        eprintln!(
            "{path}: {grabs} grabs of a {total}-cent packet in {shares} shares in {:.2}s: \
             {counts:?}; shares min {:?} median {:?} max {:?}",
            elapsed.as_secs_f64(),
            sizes.first(),
            sizes.get(sizes.len() / 2),
            sizes.last()
        );
    }
    api.shutdown.cancel();
    env.cleanup().await;
}

/// What Redis holds for an item: the stock counter (redis-lua, redis-watch), the buyers, and the
/// number of tokens (redis-list).
async fn redis_state(env: &TestEnv, item: ItemId) -> (Option<i64>, BTreeSet<String>, i64) {
    let client = redis::Client::open(env.path_args().redis.redis_url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let prefix = &env.broker.queue_prefix;
    redis::pipe()
        .get(format!("{prefix}:item:{item}:stock"))
        .smembers(format!("{prefix}:item:{item}:buyers"))
        .llen(format!("{prefix}:item:{item}:tokens"))
        .query_async(&mut con)
        .await
        .unwrap()
}

/// Redis decides, then the database write fails: the Redis side is given back — stock, buyer
/// set and tokens exactly as before — nothing is stored, and the same request succeeds once the
/// database accepts writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_database_write_leaves_redis_as_it_was() {
    let env = TestEnv::new().await;
    let api = env.start_api(None).await;
    for path in ["redis-lua", "redis-watch", "redis-list"] {
        let item = api.create_item(5).await;
        let url = format!("/orders?path={path}");
        let (status, body) = api
            .post(&url, json!({"item_id": item, "user_id": "alice"}))
            .await;
        assert_eq!((status, body["status"].as_str()), (200, Some("purchased")));
        let before = redis_state(&env, item).await;
        let units_left = |(stock, _, tokens): &(Option<i64>, BTreeSet<String>, i64)| {
            if path == "redis-list" {
                *tokens
            } else {
                stock.unwrap()
            }
        };
        assert_eq!(units_left(&before), 4, "{path}");

        sqlx::raw_sql(
            "CREATE FUNCTION fail_orders() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$;
             CREATE TRIGGER fail_orders BEFORE INSERT ON orders
                 FOR EACH ROW EXECUTE FUNCTION fail_orders();",
        )
        .execute(&env.pool)
        .await
        .unwrap();
        let request_id = Uuid::new_v4();
        let bob = json!({"item_id": item, "user_id": "bob", "request_id": request_id});
        let (status, body) = api.post(&url, bob.clone()).await;
        assert_eq!(status, 500, "{path}: {body}");
        assert_eq!(body["error"], "internal error", "no detail leaks");
        assert_eq!(
            redis_state(&env, item).await,
            before,
            "{path}: Redis restored"
        );
        let (status, _) = api.get(&format!("/orders/{request_id}")).await;
        assert_eq!(status, 404, "{path}: nothing was decided");

        sqlx::raw_sql("DROP TRIGGER fail_orders ON orders; DROP FUNCTION fail_orders();")
            .execute(&env.pool)
            .await
            .unwrap();
        let (status, body) = api.post(&url, bob).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("purchased")));
        let after = redis_state(&env, item).await;
        assert_eq!(units_left(&after), 3, "{path}");
        assert_eq!(after.1, BTreeSet::from(["alice".into(), "bob".into()]));
        let report = env.assert_audit_clean(item).await;
        assert_eq!((report.orders, report.stock_remaining), (2, 3));
    }
    api.shutdown.cancel();
    env.cleanup().await;
}

/// A request id sent many times at once, and again later, is one request on every path: one
/// order, one outcome, the same answer each time, and `GET /orders/{id}` agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_request_id_is_one_request_on_every_path() {
    let env = TestEnv::new().await;
    let api = env.start_api(None).await;
    // The paths that decide in the request; `redis-mq` answers `pending` first (its own
    // version of this test is in tests/redis_mq.rs).
    let deciding_now = PathName::ALL[1..]
        .iter()
        .filter(|p| **p != PathName::RedisMq);
    for path in deciding_now {
        let item = api.create_item(10).await;
        let request_id = Uuid::new_v4();
        let body = json!({"item_id": item, "user_id": "alice", "request_id": request_id});
        let url = format!("/orders?path={path}");
        let burst: Vec<_> = (0..10).map(|_| api.post(&url, body.clone())).collect();
        let mut answers = run_concurrently(burst, 10).await;
        answers.push(api.post(&url, body.clone()).await);
        // `redis-stream` answers before its writer records the decision: wait for the record.
        env.wait_for_outcomes(item, 1, Duration::from_secs(30))
            .await;
        answers.push(api.get(&format!("/orders/{request_id}")).await);

        let first = &answers[0].1;
        assert_eq!(first["status"], "purchased", "{path}: {first}");
        for (status, answer) in &answers {
            assert_eq!(*status, 200, "{path}: {answer}");
            assert_eq!(answer, first, "{path}: the same answer every time");
        }
        let report = env.assert_audit_clean(item).await;
        assert_eq!((report.orders, report.outcomes), (1, 1), "{path}");
        assert_eq!(report.stock_remaining, 9, "{path}");
    }
    api.shutdown.cancel();
    env.cleanup().await;
}

/// `?path=` picks the path: an unknown name is a 400 naming the valid ones, `queue` is the
/// queue path (202 without a consumer), and a known one answers 200 — 404 for a missing item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_path_parameter_picks_the_path() {
    let env = TestEnv::new().await;
    let api = env.start_api(None).await;
    let item = api.create_item(3).await;
    let order = json!({"item_id": item, "user_id": "carol"});

    let (status, body) = api.post("/orders?path=bogus", order.clone()).await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"].as_str().unwrap();
    for name in PathName::ALL {
        assert!(message.contains(name.as_str()), "{message}");
    }
    assert!(message.contains("UNSAFE"), "{message}");

    let (status, body) = api.post("/orders?path=queue", order.clone()).await;
    assert_eq!((status, body["status"].as_str()), (202, Some("pending")));

    let (status, body) = api.post("/orders?path=conditional", order.clone()).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("purchased")));
    assert!(body["order_id"].as_str().is_some());
    let (status, body) = api.post("/orders?path=pessimistic", order).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("already_purchased"))
    );
    assert!(body.get("order_id").is_none());

    let missing = json!({"item_id": 424242, "user_id": "carol"});
    let (status, _) = api.post("/orders?path=redis-lua", missing).await;
    assert_eq!(status, 404);
    api.shutdown.cancel();
    env.cleanup().await;
}

/// A Redis or a database that is down is a quick 503 with a JSON error, never a hang — and the
/// paths that do not use Redis keep working without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_redis_or_database_answers_503_quickly() {
    let env = TestEnv::new().await;
    let mut args = env.path_args();
    args.redis.redis_url = "redis://127.0.0.1:1".into();
    let serve = seckill::config::ServeArgs {
        sold_out_ttl_ms: 0,
        ..seckill::config::ServeArgs::loopback()
    };
    let api = env.start_api_configured(serve, args).await;
    let base = api.base.clone();
    let http = reqwest::Client::new();

    let item: Value = http
        .post(format!("{base}/items"))
        .json(&json!({"name": "no redis", "stock": 5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let item = item["id"]
        .as_i64()
        .expect("items are created without Redis");
    for path in [
        "redis-lock",
        "redis-watch",
        "redis-lua",
        "redis-list",
        "pessimistic",
    ] {
        let started = Instant::now();
        let response = http
            .post(format!("{base}/orders?path={path}"))
            .json(&json!({"item_id": item, "user_id": format!("u-{path}")}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        let expected = if path == "pessimistic" { 200 } else { 503 };
        assert_eq!(status, expected, "{path}: {body}");
        assert!(body.get("error").is_some() || status == 200, "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{path}: too slow"
        );
    }

    // PostgreSQL down: the pool gives up after its acquire timeout.
    let dead_pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy("postgres://postgres@127.0.0.1:1/seckill")
        .unwrap();
    let registry = Registry::new(dead_pool, &env.path_args(), &env.broker).unwrap();
    let started = Instant::now();
    let result = registry
        .purchase(
            registry.get(PathName::Conditional).unwrap(),
            &request(item, "dave"),
        )
        .await;
    assert!(
        matches!(result, Err(PathError::Unavailable(_))),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    api.shutdown.cancel();
    env.cleanup().await;
}

/// Redis lost its data mid-sale: `seckill redis-load` puts back what the database holds, and
/// the sale goes on without selling a unit twice or a user twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_load_rebuilds_redis_from_the_database() {
    let env = TestEnv::new().await;
    let api = env.start_api(None).await;
    // Created behind the API's back: the Redis paths load it on first use.
    let item = env.create_item(5).await;
    for user in ["ann", "ben"] {
        let (status, body) = api
            .post(
                "/orders?path=redis-lua",
                json!({"item_id": item, "user_id": user}),
            )
            .await;
        assert_eq!((status, body["status"].as_str()), (200, Some("purchased")));
    }
    let redis = RedisStore::new(&env.path_args().redis).unwrap();
    assert!(redis.clear().await.unwrap() >= 2, "the item's keys existed");

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_seckill"))
        .args(["redis-load", "--item", &item.to_string()])
        .env("DATABASE_URL", &env.database.database_url)
        .env("REDIS_URL", &env.path_args().redis.redis_url)
        .env("SECKILL_REDIS_PREFIX", &env.broker.queue_prefix)
        .env("RUST_LOG", "off")
        .output()
        .await
        .expect("run seckill redis-load");
    assert!(output.status.success(), "{output:?}");
    let (stock, buyers, tokens) = redis_state(&env, item).await;
    assert_eq!((stock, tokens), (Some(3), 3));
    assert_eq!(buyers, BTreeSet::from(["ann".into(), "ben".into()]));

    for (user, expected) in [("ann", "already_purchased"), ("cy", "purchased")] {
        let (status, body) = api
            .post(
                "/orders?path=redis-lua",
                json!({"item_id": item, "user_id": user}),
            )
            .await;
        assert_eq!((status, body["status"].as_str()), (200, Some(expected)));
    }
    let report = env.assert_audit_clean(item).await;
    assert_eq!((report.orders, report.stock_remaining), (3, 2));
    api.shutdown.cancel();
    env.cleanup().await;
}

/// A buyer left in a `redis-*` path's buyer set with no order behind it (what a failed undo
/// leaves) is dropped from it once the database shows no order, and the request is decided — not
/// answered 503 forever. A buyer whose order exists is still told `already_purchased`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_buyer_left_in_redis_without_an_order_is_repaired_then_decided() {
    let env = TestEnv::new().await;
    let api = env.start_api(None).await;
    let client = redis::Client::open(env.path_args().redis.redis_url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let prefix = &env.broker.queue_prefix;
    for path in ["redis-lua", "redis-watch", "redis-list"] {
        let item = api.create_item(5).await;
        let url = format!("/orders?path={path}");
        let (status, body) = api
            .post(&url, json!({"item_id": item, "user_id": "bob"}))
            .await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("purchased")),
            "{path}"
        );
        let _: i64 = redis::cmd("SADD")
            .arg(format!("{prefix}:item:{item}:buyers"))
            .arg("stuck")
            .query_async(&mut con)
            .await
            .unwrap();

        for _ in 0..2 {
            let (status, body) = api
                .post(&url, json!({"item_id": item, "user_id": "stuck"}))
                .await;
            assert_eq!(status, 200, "{path}: {body}");
            assert_ne!(body["status"], "sold_out", "{path}: {body}");
        }
        let (_, body) = api
            .post(&url, json!({"item_id": item, "user_id": "bob"}))
            .await;
        assert_eq!(body["status"], "already_purchased", "{path}");
        let (_, buyers, _) = redis_state(&env, item).await;
        assert_eq!(
            buyers,
            BTreeSet::from(["bob".into(), "stuck".into()]),
            "{path}"
        );
        let report = env.assert_audit_clean(item).await;
        assert_eq!(
            report.orders, 2,
            "{path}: stuck bought once, as the first answer said"
        );
    }
    api.shutdown.cancel();
    env.cleanup().await;
}
