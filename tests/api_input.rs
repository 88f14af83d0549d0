//! Hostile and mistaken HTTP input: always a 4xx with a JSON error, never a 500, and nothing
//! written to the database.

mod common;

use common::TestEnv;
use serde_json::json;

async fn table_sizes(env: &TestEnv) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM items), (SELECT count(*) FROM requests),
                (SELECT count(*) FROM outcomes)",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_json_4xx_and_touches_nothing() {
    let env = TestEnv::new().await;
    let api = env.start_api(None).await;
    let item = api.create_item(5).await;
    let before = table_sizes(&env).await;

    let json_cases = vec![
        ("/items", json!({"name": "x", "stock": -1})),
        ("/items", json!({"name": "x", "stock": 1_000_000_001i64})),
        ("/items", json!({"name": "", "stock": 1})),
        ("/items", json!({"name": "x", "stock": "10"})),
        ("/items", json!({"name": "x"})),
        ("/items", json!({"name": "x", "stock": 1.5})),
        ("/orders", json!({"item_id": item})),
        ("/orders", json!({"user_id": "u"})),
        ("/orders", json!({"item_id": "1", "user_id": "u"})),
        ("/orders", json!({"item_id": u64::MAX, "user_id": "u"})),
        ("/orders", json!({"item_id": item, "user_id": ""})),
        (
            "/orders",
            json!({"item_id": item, "user_id": "u".repeat(65)}),
        ),
        (
            "/orders",
            json!({"item_id": item, "user_id": "bad\u{0007}bell"}),
        ),
        (
            "/orders",
            json!({"item_id": item, "user_id": "u", "request_id": "not-a-uuid"}),
        ),
        (
            "/orders",
            json!({"item_id": item, "user_id": "u", "extra": true}),
        ),
        ("/orders", json!({"item_id": 424242, "user_id": "u"})),
        ("/orders", json!({"item_id": -1, "user_id": "u"})),
        ("/orders", json!({"item_id": 0, "user_id": "u"})),
        ("/orders", json!({"item_id": 1e30, "user_id": "u"})),
        (
            "/orders",
            json!({"item_id": item, "user_id": "u", "request_id": ""}),
        ),
        ("/orders", json!({"item_id": item, "user_id": null})),
        ("/orders", json!({"item_id": item, "user_id": 42})),
        ("/orders", json!([1, 2, 3])),
        ("/orders", json!(null)),
        ("/items", json!({"name": "x", "stock": 0})),
        ("/items", json!({"name": "x", "stock": i64::MIN})),
        ("/items", json!({"name": "bad\u{0000}name", "stock": 1})),
    ];
    // User ids are identifiers: letters, digits and -_.@:+ only (README, API section).
    let hostile_user_ids = [
        "'; DROP TABLE orders; --",
        "\" OR 1=1 --",
        "robert'); DROP TABLE students;--",
        "u' UNION SELECT * FROM outcomes --",
        "a b",
        "tab\there",
        "nul\u{0000}byte",
        "new\nline",
        "\u{202e}evil-rtl-override",
        "zero\u{200b}width",
        "<script>alert(1)</script>",
        "..\\..\\etc\\passwd",
        "$(reboot)",
        "emoji-🔥",
    ];
    let mut json_cases = json_cases;
    for user_id in hostile_user_ids {
        for path in ["/orders", "/orders?path=pessimistic", "/orders?wait=1000"] {
            json_cases.push((path, json!({"item_id": item, "user_id": user_id})));
        }
    }
    for (path, body) in json_cases {
        let (status, answer) = api.post(path, body.clone()).await;
        assert!(
            (400..500).contains(&status),
            "{path} {body} → {status} {answer}"
        );
        assert!(answer["error"].is_string(), "{path} {body} → {answer}");
    }

    let raw_cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        (
            "/orders",
            "application/json",
            b"{\"item_id\": 1, ".to_vec(),
            400,
        ),
        ("/orders", "application/json", b"".to_vec(), 400),
        (
            "/orders",
            "application/json",
            br#"{"item_id":99999999999999999999999,"user_id":"u"}"#.to_vec(),
            422,
        ),
        (
            "/items",
            "application/json",
            br#"{"name":"x","stock":1e400}"#.to_vec(),
            400,
        ),
        (
            "/orders",
            "text/plain",
            b"{\"item_id\":1,\"user_id\":\"u\"}".to_vec(),
            415,
        ),
        ("/items", "application/json", vec![b' '; 17 * 1024], 413),
        (
            "/orders?wait=soon",
            "application/json",
            br#"{"item_id":1,"user_id":"u"}"#.to_vec(),
            400,
        ),
        (
            "/orders?wait=-5",
            "application/json",
            br#"{"item_id":1,"user_id":"u"}"#.to_vec(),
            400,
        ),
        (
            "/orders?wait=99999999999999999999999",
            "application/json",
            br#"{"item_id":1,"user_id":"u"}"#.to_vec(),
            400,
        ),
        (
            "/orders?path=%3Cscript%3E",
            "application/json",
            br#"{"item_id":1,"user_id":"u"}"#.to_vec(),
            400,
        ),
        // Invalid UTF-8 inside a JSON string.
        (
            "/orders",
            "application/json",
            b"{\"item_id\":1,\"user_id\":\"\xff\xfe\"}".to_vec(),
            400,
        ),
        // Nested 10,000 deep: refused, without a stack overflow.
        ("/orders", "application/json", vec![b'['; 10_000], 422),
    ];
    for (path, content_type, body, expected) in raw_cases {
        let (status, answer) = api.post_raw(path, content_type, body).await;
        assert_eq!(status, expected, "{path} ({content_type}) → {answer}");
        assert!(answer["error"].is_string(), "{path} → {answer}");
    }

    for path in ["/items/abc", "/orders/not-a-uuid", "/items/1/2", "/nope"] {
        let (status, answer) = api.get(path).await;
        assert!((400..500).contains(&status), "{path} → {status}");
        assert!(answer["error"].is_string(), "{path} → {answer}");
    }
    let (status, _) = api.get("/items/999999").await;
    assert_eq!(status, 404);

    assert_eq!(
        table_sizes(&env).await,
        before,
        "rejected requests wrote nothing"
    );
    for partition in 0..common::PARTITIONS {
        assert_eq!(
            env.queue_depth(partition).await,
            0,
            "rejected requests never reach the broker"
        );
    }
    api.shutdown.cancel();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_items_needs_the_admin_token_when_one_is_set() {
    let env = TestEnv::new().await;
    let api = env.start_api(Some("s3cret-token")).await;
    let url = format!("{}/items", api.base);
    let body = json!({"name": "guarded", "stock": 3});

    for auth in [
        None,
        Some("Bearer wrong"),
        Some("s3cret-token"),
        Some("Bearer s3cret-tokenX"),
    ] {
        let mut request = api.http.post(&url).json(&body);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{auth:?}");
    }
    let response = api
        .http
        .post(&url)
        .header("authorization", "Bearer s3cret-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    api.shutdown.cancel();
    env.cleanup().await;
}

/// With a producer token, only its holder may post orders or read their answers; anyone else is
/// told 401, and nothing is recorded for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_needs_the_producer_token_when_one_is_set() {
    let env = TestEnv::new().await;
    let serve = seckill::config::ServeArgs {
        producer_token: Some("shop-backend".into()),
        ..seckill::config::ServeArgs::loopback()
    };
    let api = env.start_api_configured(serve, env.path_args()).await;
    let item = api.create_item(3).await;
    let request_id = uuid::Uuid::new_v4();
    let body = json!({"item_id": item, "user_id": "alice", "request_id": request_id});
    let orders = format!("{}/orders", api.base);
    let answer = format!("{}/orders/{request_id}", api.base);

    for auth in [
        None,
        Some("Bearer wrong"),
        Some("shop-backend"),
        Some("Bearer admin"),
    ] {
        let mut post = api.http.post(&orders).json(&body);
        let mut get = api.http.get(&answer);
        if let Some(auth) = auth {
            post = post.header("authorization", auth);
            get = get.header("authorization", auth);
        }
        let response = post.send().await.unwrap();
        assert_eq!(response.status(), 401, "POST with {auth:?}");
        let error: serde_json::Value = response.json().await.unwrap();
        assert!(
            error["error"].as_str().unwrap().contains("producer"),
            "{error}"
        );
        assert_eq!(get.send().await.unwrap().status(), 401, "GET with {auth:?}");
    }
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM requests")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 0, "a refused caller records nothing");

    let response = api
        .http
        .post(&orders)
        .header("authorization", "Bearer shop-backend")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let response = api
        .http
        .get(&answer)
        .header("authorization", "Bearer shop-backend")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    api.shutdown.cancel();
    env.cleanup().await;
}
