//! The API's bounds and what it reports, against a real `seckill serve`: a full partition queue
//! refuses new requests (503) and keeps the earliest; past the bound on waiting clients `?wait=`
//! answers 202 at once; `GET /metrics` counts what happened. (The flood past the in-flight bound
//! is in `tests/faults.rs`: it loads the whole machine, so it runs alone.)

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::TestEnv;
use lapin::BasicProperties;
use seckill::broker::topology::Topology;
use serde_json::{Value, json};
use uuid::Uuid;

/// Parses the Prometheus text format into `name{labels}` → value.
async fn scrape(base: &str) -> (String, HashMap<String, f64>) {
    let response = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let text = response.text().await.unwrap();
    let values = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect();
    (content_type, values)
}

fn sum_of(metrics: &HashMap<String, f64>, family: &str) -> f64 {
    metrics
        .iter()
        .filter(|(k, _)| k.split('{').next() == Some(family))
        .map(|(_, v)| v)
        .sum()
}

/// A partition queue bounded at 20 messages, no consumer: the first 20 requests are accepted,
/// the rest refused with 503 — the earliest buyers are kept, never dropped for later ones. Once
/// a consumer drains the queue, exactly those 20 are decided, and a refused request retried with
/// its request_id is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_partition_queue_refuses_new_requests_and_keeps_the_earliest() {
    const QUEUE_LENGTH_MAX: u32 = 20;
    let mut env = TestEnv::new().await;
    let channel = env.channel().await;
    env.topology.delete(&channel).await.unwrap();
    env.broker.queue_length_max = QUEUE_LENGTH_MAX;
    env.topology = Topology::new(&env.broker);
    env.topology.declare(&channel).await.unwrap();
    let item = env.create_item(100).await;
    let daemon = env.spawn_serve("api", &[], &[]).await;
    let api = env.client_of(&daemon);

    let mut answers = Vec::new();
    for i in 0..30 {
        let request_id = Uuid::new_v4();
        let (status, body) = api
            .post(
                "/orders",
                json!({"item_id": item, "user_id": format!("buyer-{i}"), "request_id": request_id}),
            )
            .await;
        answers.push((request_id, status, body));
    }
    let (kept, refused) = answers.split_at(QUEUE_LENGTH_MAX as usize);
    for (_, status, body) in kept {
        assert_eq!(*status, 202, "{body}");
    }
    for (_, status, body) in refused {
        assert_eq!(*status, 503, "{body}");
        let message = body["error"].as_str().expect("a JSON error");
        assert!(message.contains("queue full"), "{message}");
        assert!(
            message.contains("retry with the same request_id"),
            "{message}"
        );
    }
    // A refused request keeps nothing: it is unknown, not pending.
    for (request_id, _, _) in refused {
        let (status, body) = api.get(&format!("/orders/{request_id}")).await;
        assert_eq!(status, 404, "{body}");
    }

    let consumer = env.start_consumer().await;
    env.wait_for_outcomes(item, i64::from(QUEUE_LENGTH_MAX), Duration::from_secs(60))
        .await;
    let decided: Vec<Uuid> = sqlx::query_scalar("SELECT request_id FROM outcomes ORDER BY 1")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    let mut earliest: Vec<Uuid> = kept.iter().map(|(id, _, _)| *id).collect();
    earliest.sort();
    assert_eq!(
        decided, earliest,
        "exactly the earliest requests are decided"
    );
    env.assert_audit_clean(item).await;

    let (retried, _, _) = &refused[0];
    let (status, body) = api
        .post(
            "/orders",
            json!({"item_id": item, "user_id": "buyer-20", "request_id": retried}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    env.wait_for_outcomes(
        item,
        i64::from(QUEUE_LENGTH_MAX) + 1,
        Duration::from_secs(60),
    )
    .await;
    let report = env.assert_audit_clean(item).await;
    assert_eq!(report.outcomes, 21);
    let (_, metrics) = scrape(&daemon.base).await;
    assert_eq!(metrics["seckill_publishes_total{result=\"refused\"}"], 10.0);
    consumer.cancel();
    drop(daemon);
    env.cleanup().await;
}

/// With room for 2 waiting clients, 5 clients asking `?wait=` get: 3 answered `202 pending` at
/// once, 2 waiting until a consumer decides their requests (`200`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_clients_are_bounded() {
    let env = TestEnv::new().await;
    let item = env.create_item(10).await;
    let daemon = env
        .spawn_serve("api", &[], &[("SECKILL_REPLY_WAITERS_MAX", "2")])
        .await;
    let api = env.client_of(&daemon);
    let clients: Vec<_> = (0..5)
        .map(|i| {
            let http = api.http.clone();
            let url = format!("{}/orders?wait=25000", api.base);
            tokio::spawn(async move {
                let response = http
                    .post(url)
                    .json(&json!({"item_id": item, "user_id": format!("w{i}")}))
                    .send()
                    .await
                    .expect("an answer");
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.unwrap())
            })
        })
        .collect();

    // No consumer yet: only the clients refused a waiting slot can have been answered.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = scrape(&daemon.base).await;
        if metrics["seckill_reply_waiters_refused_total"] == 3.0
            && metrics["seckill_reply_waiters"] == 2.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let consumer = env.start_consumer().await;
    let mut statuses: Vec<u16> = Vec::new();
    for client in clients {
        let (status, body) = client.await.unwrap();
        let expected = if status == 200 {
            "purchased"
        } else {
            "pending"
        };
        assert_eq!(body["status"], expected, "{status} {body}");
        statuses.push(status);
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 202, 202, 202]);
    env.wait_for_outcomes(item, 5, Duration::from_secs(60))
        .await;
    env.assert_audit_clean(item).await;
    consumer.cancel();
    drop(daemon);
    env.cleanup().await;
}

/// After some traffic — decided orders, a bad request, an unknown route, a poison message —
/// `GET /metrics` reports each in the Prometheus text format, with route templates as labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_decisions_and_dead_letters() {
    let env = TestEnv::new().await;
    let daemon = env.spawn_serve("api", &["--with-consumer"], &[]).await;
    let api = env.client_of(&daemon);
    let item = api.create_item(30).await;

    let mut by_status: HashMap<u16, f64> = HashMap::new();
    for i in 0..50 {
        let (status, body) = api
            .post(
                "/orders?wait=10000",
                json!({"item_id": item, "user_id": format!("m{}", i % 40)}),
            )
            .await;
        assert!(status == 200 || status == 202, "{status} {body}");
        *by_status.entry(status).or_default() += 1.0;
    }
    let (status, _) = api
        .post("/orders", json!({"item_id": item, "user_id": "no spaces"}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(api.get("/no/such/route").await.0, 404);
    assert_eq!(api.get("/items/abc").await.0, 400);
    env.publish_raw(
        env.topology.partition_of(item),
        b"{not json",
        BasicProperties::default(),
    )
    .await;
    env.wait_for_outcomes(item, 50, Duration::from_secs(60))
        .await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let (content_type, m) = loop {
        let (content_type, m) = scrape(&api.base).await;
        if m["seckill_dead_lettered_total"] >= 1.0 {
            break (content_type, m);
        }
        assert!(
            Instant::now() < deadline,
            "the poison message was never counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let requests = |method: &str, route: &str, status: u16| {
        m.get(&format!(
            "seckill_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
    };
    for (status, count) in &by_status {
        assert_eq!(requests("POST", "/orders", *status), *count, "{status}");
    }
    assert_eq!(requests("POST", "/orders", 400), 1.0);
    assert_eq!(requests("POST", "/items", 201), 1.0);
    assert_eq!(requests("GET", "/items/{id}", 400), 1.0);
    assert_eq!(requests("GET", "unmatched", 404), 1.0);
    assert!(
        !m.keys().any(|k| k.contains("/no/such/route")),
        "raw paths never become labels"
    );
    assert_eq!(
        m["seckill_http_request_duration_seconds_count{route=\"/orders\"}"],
        51.0
    );
    // Once the 31st request was decided `sold_out`, the API heard it and answered the rest at
    // the door (`serve` sheds by default): those were never published nor seen by the consumer.
    let published = m["seckill_publishes_total{result=\"confirmed\"}"];
    let at_the_door = m["seckill_orders_shed_sold_out_total"];
    assert!(at_the_door >= 1.0, "sold-out shedding answered none");
    assert_eq!(published + at_the_door, 50.0);

    assert_eq!(sum_of(&m, "seckill_decisions_total"), published);
    assert_eq!(m["seckill_decisions_total{status=\"purchased\"}"], 30.0);
    assert_eq!(m["seckill_dead_lettered_total"], 1.0);
    assert_eq!(
        m["seckill_batch_size_sum"],
        published + 1.0,
        "every delivery in a batch"
    );
    assert!(m["seckill_batch_size_count"] >= 1.0);
    assert_eq!(
        m["seckill_batch_commit_seconds_count"],
        m["seckill_batch_size_count"]
    );
    assert_eq!(m["seckill_redeliveries_total"], 0.0);
    assert_eq!(sum_of(&m, "seckill_broker_reconnects_total"), 0.0);
    drop(daemon);
    env.cleanup().await;
}

/// A row lock held elsewhere (a stuck transaction) cannot hold a request forever: the
/// pessimistic path gives up at the connection's `lock_timeout` and answers 503; once the lock
/// is gone the same request goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_lock_held_elsewhere_answers_503_not_a_hang() {
    let env = TestEnv::new().await;
    let api = env.start_api(None).await;
    let item = api.create_item(5).await;
    let order = json!({"item_id": item, "user_id": "patient", "request_id": Uuid::new_v4()});

    let mut stuck = env.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM items WHERE id = $1 FOR UPDATE")
        .bind(item)
        .execute(&mut *stuck)
        .await
        .unwrap();
    let response = api
        .http
        .post(format!("{}/orders?path=pessimistic", api.base))
        .timeout(Duration::from_secs(60))
        .json(&order)
        .send()
        .await
        .expect("an answer, not a hang");
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("retry"), "{body}");
    assert_eq!(env.outcome_count(item).await, 0, "nothing decided");

    stuck.rollback().await.unwrap();
    let (status, body) = api.post("/orders?path=pessimistic", order).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("purchased")));
    api.shutdown.cancel();
    env.cleanup().await;
}
