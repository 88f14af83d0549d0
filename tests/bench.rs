//! A small `seckill bench` run through every path, in the test suite: the bench's own plumbing
//! (in-process API and consumer, fresh items, audit from the database, results.json and
//! report.html) works, and every path but `naive` passes its audit. No speed is asserted.

mod common;

use clap::Parser;
use common::TestEnv;
use seckill::bench::{self, BenchArgs};

/// Parses bench flags exactly as the command line would.
#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    bench: BenchArgs,
}

fn bench_args(flags: &[&str]) -> BenchArgs {
    Flags::parse_from(std::iter::once("bench").chain(flags.iter().copied())).bench
}

/// Where a test's bench writes results.json and report.html: a folder of its own.
fn out_dir(env: &TestEnv) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("seckill-bench-{}", env.broker.queue_prefix))
}

/// `seckill bench` in-process, on this test's database, queues and Redis keys.
async fn run_bench(env: &TestEnv, args: BenchArgs) -> bench::BenchResults {
    bench::run(
        env.database.clone(),
        env.broker.clone(),
        env.consumer_args(),
        env.path_args(),
        args,
    )
    .await
    .expect("bench runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_run_of_every_path_audits_clean_but_naive() {
    let env = TestEnv::new().await;
    let out = out_dir(&env);
    let args = bench_args(&[
        "--requests",
        "300",
        "--users",
        "120",
        "--stock",
        "40",
        "--concurrency",
        "40",
        "--out",
        out.to_str().unwrap(),
    ]);
    let results = run_bench(&env, args).await;

    assert_eq!(
        results.paths.len(),
        bench::BenchPath::all().len(),
        "every path ran"
    );
    for r in &results.paths {
        let o = &r.outcomes;
        let decided = o.purchased + o.sold_out + o.already_purchased + o.failed_retry;
        assert_eq!(r.requests, 300, "{}", r.path);
        if r.path == bench::BenchPath::NAIVE {
            // Under 40 concurrent buyers naive may or may not lose an update in so short a run;
            // its deterministic oversell is proven in tests/lock_paths.rs.
            continue;
        }
        assert!(r.audit.clean, "{}: {:?}", r.path, r.audit.violations);
        assert_eq!(r.orders, 40, "{} sells exactly the stock", r.path);
        assert_eq!(
            decided, 300,
            "{}: every request decided ({:?})",
            r.path, r.outcomes
        );
        assert!(r.latency.p50_ms > 0.0 && r.latency.p50_ms <= r.latency.p99_ms);
    }
    let c = &results.ceilings;
    assert!(c.broker_msgs_per_s.unwrap() > 0.0);
    assert!(c.database_decisions_per_s.unwrap() > 0.0);
    assert!(c.consumer_prefilled_per_s.unwrap() > 0.0);

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["paths"].as_array().unwrap().len(), results.paths.len());
    assert_eq!(json["scenario"]["kind"], "hot");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("pessimistic") && !html.contains("http://cdn"));

    // The bench removed what it created: no items are left in this test's database.
    let items: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(items, 0);
    let _ = std::fs::remove_dir_all(&out);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn direct_mode_and_the_spread_scenario_audit_clean() {
    let env = TestEnv::new().await;
    let out = out_dir(&env);
    let args = bench_args(&[
        "--paths",
        "queue,conditional,redis-lua",
        "--via",
        "direct",
        "--scenario",
        "spread",
        "--items",
        "20",
        "--requests",
        "400",
        "--users",
        "100",
        "--stock",
        "3",
        "--no-ceilings",
        "--out",
        out.to_str().unwrap(),
    ]);
    let results = run_bench(&env, args).await;
    assert_eq!(results.paths.len(), 3);
    for r in &results.paths {
        assert!(r.audit.clean, "{}: {:?}", r.path, r.audit.violations);
        assert!(
            r.orders <= 60 && r.orders > 0,
            "{}: {} orders",
            r.path,
            r.orders
        );
        assert_eq!(r.outcomes.error, 0, "{}", r.path);
    }
    let _ = std::fs::remove_dir_all(&out);
    env.cleanup().await;
}

/// Every step's run is audited like the comparison's: it sold exactly its stock (grown with
/// the step), one decision per request, a clean verdict.
fn assert_audited(r: &bench::PathResult) {
    let o = &r.outcomes;
    assert!(r.audit.clean, "{}: {:?}", r.path, r.audit.violations);
    assert_eq!(
        r.orders, r.stock_total,
        "{} sells exactly its stock",
        r.path
    );
    assert_eq!(
        o.purchased + o.sold_out + o.already_purchased + o.failed_retry,
        r.requests,
        "{}: every request decided ({o:?})",
        r.path
    );
    let l = &r.latency;
    assert!(
        l.p50_ms > 0.0 && l.p50_ms <= l.p99_ms && l.p99_ms <= l.p99_9_ms && l.p99_9_ms <= l.max_ms
    );
    let answered: u64 = r.timeline.iter().map(|s| s.answered).sum();
    assert_eq!(
        answered, r.requests,
        "{}: every answer in the timeline",
        r.path
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tiny_sweep_steps_the_rate_and_audits_every_step() {
    let env = TestEnv::new().await;
    let out = out_dir(&env);
    let args = bench_args(&[
        "--paths",
        "queue,conditional",
        "--sweep",
        "--sweep-from",
        "40",
        "--sweep-factor",
        "2",
        "--sweep-step-secs",
        "1",
        "--sweep-steps-max",
        "2",
        "--slo-p99-ms",
        "60000",
        "--no-ceilings",
        "--out",
        out.to_str().unwrap(),
    ]);
    let results = run_bench(&env, args).await;
    assert_eq!(results.sweep.len(), 2, "a curve per path");
    for curve in &results.sweep {
        assert!((1..=2).contains(&curve.steps.len()), "{}", curve.path);
        for (i, step) in curve.steps.iter().enumerate() {
            let r = &step.result;
            let offered = 40.0 * 2f64.powi(i as i32);
            assert_eq!(r.offered_per_s, Some(offered), "{}", curve.path);
            assert_eq!(
                r.requests, offered as u64,
                "{}: the rate for one second",
                curve.path
            );
            assert_audited(r);
            assert_eq!(step.met_slo, step.missed_because.is_none());
        }
        let best = curve.steps.iter().rev().find(|s| s.met_slo);
        assert_eq!(
            curve.max_per_s_within_slo,
            best.map(|s| s.result.achieved_per_s)
        );
        assert!(!curve.stopped_because.is_empty());
    }
    assert_eq!(
        results.paths.len(),
        2,
        "the table shows each path's best step"
    );

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["format_version"], 2);
    for curve in json["sweep"].as_array().unwrap() {
        for step in curve["steps"].as_array().unwrap() {
            for field in [
                "met_slo",
                "offered_per_s",
                "achieved_per_s",
                "audit",
                "timeline",
            ] {
                assert!(!step[field].is_null(), "a step has {field}: {step}");
            }
        }
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("Latency against throughput"),
        "the curve is drawn"
    );
    let _ = std::fs::remove_dir_all(&out);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_model_run_keeps_its_schedule_and_reports_offered_and_achieved() {
    let env = TestEnv::new().await;
    let out = out_dir(&env);
    let args = bench_args(&[
        "--paths",
        "queue,pessimistic,naive",
        "--rate",
        "100",
        "--requests",
        "150",
        "--users",
        "60",
        "--stock",
        "20",
        "--no-ceilings",
        "--out",
        out.to_str().unwrap(),
    ]);
    let results = run_bench(&env, args).await;
    assert_eq!(results.paths.len(), 3);
    for r in &results.paths {
        assert_eq!(r.offered_per_s, Some(100.0), "{}", r.path);
        assert_eq!(r.requests, 150, "{}", r.path);
        // The schedule spreads 150 requests over 1.49 s, however fast the path answers.
        assert!(r.elapsed_s >= 1.49, "{}: {} s", r.path, r.elapsed_s);
        assert!(r.achieved_per_s > 0.0 && r.sent_late <= r.requests);
        if r.path == bench::BenchPath::NAIVE {
            continue;
        }
        assert_eq!(
            r.stock_total, 20,
            "--requests fixes the run: the stock as given"
        );
        assert_audited(r);
    }
    assert!(!results.headline.is_empty());
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["load"]["model"], "open");
    assert_eq!(json["load"]["rate_per_s"], 100.0);
    assert!(json["command_line"].as_str().is_some());
    let settings = &json["environment"]["settings"];
    assert!(settings["partitions"].as_u64().unwrap() > 0, "{settings}");
    assert!(
        settings["synchronous_commit"].as_str().is_some(),
        "{settings}"
    );
    assert!(json["paths"][0]["latency"]["p99_9_ms"].as_f64().is_some());

    // `bench compare` reads it back: a line per path.
    let compared = bench::compare::run(&bench::CompareArgs {
        old: out.join("results.json"),
        new: out.join("results.json"),
    })
    .unwrap();
    for path in ["queue", "pessimistic", "naive"] {
        assert!(
            compared.lines().any(|l| l.starts_with(path)),
            "{path} in {compared}"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sustained_run_grows_the_stock_with_its_requests() {
    let env = TestEnv::new().await;
    let out = out_dir(&env);
    let args = bench_args(&[
        "--paths",
        "queue,conditional",
        "--measure-secs",
        "1",
        "--no-ceilings",
        "--out",
        out.to_str().unwrap(),
    ]);
    let results = run_bench(&env, args).await;
    let spec = &results.scenario;
    for r in &results.paths {
        assert_audited(r);
        assert!(r.requests >= spec.requests as u64 / 10, "{}", r.path);
        // The share that found stock is the scenario's: stock / requests, rounded up.
        let expected = (spec.stock_per_item as u64 * r.requests).div_ceil(spec.requests as u64);
        assert_eq!(r.stock_total, expected.max(1) as i64, "{}", r.path);
        assert_eq!(r.offered_per_s, None, "a closed loop offers no rate");
    }
    let _ = std::fs::remove_dir_all(&out);
    env.cleanup().await;
}

/// The red packets' rows of `items`, as the database holds them: shares paid, their sum, the
/// smallest, and what the packets still hold.
async fn packet_rows_held(env: &TestEnv, items: &[i64]) -> (i64, i64, i64, i64) {
    let (shares, paid, smallest): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(amount), 0)::bigint, coalesce(min(amount), 0) \
         FROM orders WHERE item_id = ANY($1::bigint[])",
    )
    .bind(items)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let remaining: i64 = sqlx::query_scalar(
        "SELECT sum(packet_remaining)::bigint FROM items WHERE id = ANY($1::bigint[])",
    )
    .bind(items)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    (shares, paid, smallest, remaining)
}

/// Outcomes of `status` the database holds for `items` through `path`.
async fn outcomes_held(env: &TestEnv, items: &[i64], path: &str, status: &str) -> u64 {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outcomes WHERE item_id = ANY($1::bigint[]) AND path = $2 \
         AND status = $3",
    )
    .bind(items)
    .bind(path)
    .bind(status)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    n as u64
}

/// Seed 000's experiment: one red packet of 30 shares and 3,000 cents per path, 300 grabs from
/// 150 users, 40 at once. It runs on the paths that sell red packets and skips the others with a
/// reason; on each, the shares the database holds sum exactly to what the packet paid out (all
/// of it once every share is taken), none is zero, and the results say the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_red_packet_scenario_pays_out_exactly_and_skips_the_paths_without_red_packets() {
    let env = TestEnv::new().await;
    let out = out_dir(&env);
    let args = bench_args(&[
        "--scenario",
        "red-packet",
        "--requests",
        "300",
        "--users",
        "150",
        "--stock",
        "30",
        "--packet-total",
        "3000",
        "--concurrency",
        "40",
        "--no-ceilings",
        "--keep",
        "--out",
        out.to_str().unwrap(),
    ]);
    let results = run_bench(&env, args).await;

    let ran: Vec<&str> = results.paths.iter().map(|r| r.path.as_str()).collect();
    for path in ["queue", "pessimistic", "optimistic"] {
        assert!(ran.contains(&path), "{path} sells red packets: {ran:?}");
    }
    let skipped: Vec<&str> = results.skipped.iter().map(|s| s.path.as_str()).collect();
    for path in ["naive", "conditional", "advisory", "redis-lua"] {
        assert!(skipped.contains(&path), "{path} skipped: {skipped:?}");
    }
    for path in bench::BenchPath::all() {
        assert!(
            ran.contains(&path.as_str()) != skipped.contains(&path.as_str()),
            "{path} either ran or was skipped"
        );
    }
    for s in &results.skipped {
        assert!(s.reason.contains("red packet"), "{}: {}", s.path, s.reason);
    }

    for r in &results.paths {
        let name = r.path.as_str();
        assert!(r.audit.clean, "{name}: {:?}", r.audit.violations);
        assert_eq!(r.outcomes.decided(), 300, "{name}: every grab decided");
        let p = r.packet.as_ref().expect("a red packet row has its payout");
        assert_eq!(
            (p.total, p.shares),
            (3000, 30),
            "{name}: the packet as given"
        );
        let (shares, paid, smallest, remaining) = packet_rows_held(&env, &r.items).await;
        assert_eq!(
            (p.shares_paid, p.paid, p.remaining),
            (shares, paid, remaining),
            "{name}: the payout is the database's"
        );
        assert_eq!(paid + remaining, 3000, "{name}: nothing created or lost");
        assert!(
            smallest >= 1 && p.smallest == smallest,
            "{name}: no zero share"
        );
        assert_eq!(p.zero_shares, 0, "{name}");
        assert_eq!(p.check(), "exact", "{name}: {p:?}");
        assert_eq!(r.orders, shares, "{name}: one order per share");
        assert_eq!(
            p.histogram.iter().sum::<u64>(),
            shares as u64,
            "{name}: every share in the histogram"
        );
        assert_eq!(
            outcomes_held(&env, &r.items, path_column(r.path), "failed_retry").await,
            r.outcomes.failed_retry,
            "{name}"
        );
        if r.path != bench::BenchPath::Path(seckill::sale::PathName::Optimistic) {
            // 150 users for 30 shares: a path that never gives up takes every share.
            assert_eq!(shares, 30, "{name}: every share taken");
            assert_eq!(paid, 3000, "{name}: exactly the total paid out");
        }
    }

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["scenario"]["kind"], "red-packet");
    assert_eq!(json["scenario"]["packet_total"], 3000);
    assert_eq!(
        json["skipped"].as_array().unwrap().len(),
        results.skipped.len()
    );
    for (row, r) in json["paths"].as_array().unwrap().iter().zip(&results.paths) {
        let p = r.packet.as_ref().unwrap();
        assert_eq!(row["packet"]["paid"], p.paid, "{row}");
        assert_eq!(row["packet"]["shares_paid"], p.shares_paid, "{row}");
        assert_eq!(row["packet"]["sums_exactly"], true, "{row}");
        assert!(row["packet"]["histogram"].is_array(), "{row}");
    }
    let terminal = bench::report::table(&results);
    assert!(terminal.contains("red packet payout"), "{terminal}");
    assert!(terminal.contains("skipped naive: "), "{terminal}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("Red packet payout") && html.contains("Paths skipped"));
    for r in &results.paths {
        assert!(
            html.contains(&format!("<title>{}: ", r.path)),
            "a share-size histogram for {}",
            r.path
        );
    }
    let _ = std::fs::remove_dir_all(&out);
    env.cleanup().await;
}

/// The name a row's decisions carry in `outcomes.path`: every queue row decides as `queue`.
fn path_column(path: bench::BenchPath) -> &'static str {
    if path.is_queue() {
        "queue"
    } else {
        path.as_str()
    }
}

/// Seed 001's experiment: stock and a user of its own for every one of 300 requests, 100 at
/// once. No request is refused for stock or for its user; a path refuses only by giving up
/// (`failed_retry`), and the optimistic lock's count is the database's, shown in the terminal
/// table and the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_plenty_scenario_counts_what_the_optimistic_lock_fails_outright() {
    let env = TestEnv::new().await;
    let out = out_dir(&env);
    let args = bench_args(&[
        "--scenario",
        "plenty",
        "--paths",
        "queue,pessimistic,optimistic,conditional",
        "--requests",
        "300",
        "--concurrency",
        "100",
        "--no-ceilings",
        "--keep",
        "--out",
        out.to_str().unwrap(),
    ]);
    let results = run_bench(&env, args).await;
    let spec = &results.scenario;
    assert_eq!(
        (spec.users, spec.stock_total()),
        (300, 300),
        "a user and a unit for every request"
    );
    assert_eq!(results.paths.len(), 4);
    assert!(results.skipped.is_empty());
    let terminal = bench::report::table(&results);
    for r in &results.paths {
        let (name, o) = (r.path.as_str(), &r.outcomes);
        assert!(r.audit.clean, "{name}: {:?}", r.audit.violations);
        assert_eq!(r.requests, 300, "{name}");
        assert_eq!(
            (o.sold_out, o.already_purchased),
            (0, 0),
            "{name}: nothing refused for stock or user ({o:?})"
        );
        // A `503` (a lock not had in time on a loaded machine) is no decision: it counts in
        // `error`, beside what was decided.
        assert_eq!(o.purchased + o.failed_retry + o.error, 300, "{name}: {o:?}");
        assert_eq!(r.orders as u64, o.purchased, "{name}");
        let column = path_column(r.path);
        assert_eq!(
            outcomes_held(&env, &r.items, column, "failed_retry").await,
            o.failed_retry,
            "{name}: failed_retry as the database holds it"
        );
        assert_eq!(
            outcomes_held(&env, &r.items, column, "purchased").await,
            o.purchased,
            "{name}"
        );
        if name == "optimistic" {
            if o.failed_retry > 0 {
                let line = format!(
                    "optimistic failed {} of 300 requests outright (failed_retry)",
                    o.failed_retry
                );
                assert!(terminal.contains(&line), "{terminal}");
            }
        } else {
            assert_eq!(o.failed_retry, 0, "{name} never gives up");
        }
    }
    let plenty_row = terminal
        .lines()
        .skip_while(|l| !l.starts_with("plenty:"))
        .find(|l| l.starts_with("optimistic"))
        .expect("the plenty table has an optimistic row");
    let optimistic = &results.paths[2];
    assert!(
        plenty_row.ends_with(&format!(" {}", optimistic.outcomes.failed_retry)),
        "failed_retry is the last column: {plenty_row}"
    );

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["scenario"]["kind"], "plenty");
    let row = &json["paths"][2];
    assert_eq!(row["path"], "optimistic");
    assert_eq!(
        row["outcomes"]["failed_retry"].as_u64().unwrap_or(0),
        optimistic.outcomes.failed_retry
    );
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("Every request could buy"),
        "the plenty section"
    );
    assert!(html.contains("<th>failed_retry</th>"));
    let _ = std::fs::remove_dir_all(&out);
    env.cleanup().await;
}
