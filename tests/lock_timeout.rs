//! A lock path whose item is held by someone else gives up at the connection's lock timeout:
//! the request is answered `503` with `Retry-After`, nothing is written for it, and the same
//! request goes through once the lock is gone. Real PostgreSQL, through the HTTP API.

mod common;

use std::time::{Duration, Instant};

use common::TestEnv;
use seckill::sale::PathName;
use serde_json::{Value, json};
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// The API's lock timeout in this test: a real wait, far below the 10 s default.
const LOCK_TIMEOUT_MS: u64 = 300;

/// What another client holds on the item while the request waits.
enum Held {
    /// A transaction holding the item's row `FOR UPDATE`: `pessimistic` waits for the row lock,
    /// `conditional` for the key share its order's foreign key takes.
    Row(Transaction<'static, Postgres>),
    /// A session holding the advisory lock `advisory` takes (the bare item id).
    Advisory(PoolConnection<Postgres>),
}

impl Held {
    /// Takes on `item` what `path` will wait for.
    async fn take(pool: &PgPool, path: PathName, item: i64) -> Held {
        if path == PathName::Advisory {
            let mut session = pool.acquire().await.unwrap();
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(item)
                .execute(&mut *session)
                .await
                .unwrap();
            return Held::Advisory(session);
        }
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM items WHERE id = $1 FOR UPDATE")
            .bind(item)
            .execute(&mut *tx)
            .await
            .unwrap();
        Held::Row(tx)
    }

    async fn release(self, item: i64) {
        match self {
            Held::Row(tx) => tx.rollback().await.unwrap(),
            Held::Advisory(mut session) => {
                sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(item)
                    .execute(&mut *session)
                    .await
                    .unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_elsewhere_answers_503_with_retry_after_and_writes_nothing() {
    let mut env = TestEnv::new().await;
    env.database.db_lock_timeout_ms = LOCK_TIMEOUT_MS;
    let short_wait = seckill::store::connect(&env.database)
        .await
        .expect("pool with a short lock timeout");
    std::mem::replace(&mut env.pool, short_wait).close().await;
    let api = env.start_api(None).await;

    for path in [
        PathName::Pessimistic,
        PathName::Conditional,
        PathName::Advisory,
    ] {
        let item = api.create_item(5).await;
        let url = format!("{}/orders?path={path}", api.base);
        let order = json!({"item_id": item, "user_id": "patient", "request_id": Uuid::new_v4()});

        let held = Held::take(&env.pool, path, item).await;
        let started = Instant::now();
        let response = api
            .http
            .post(&url)
            .timeout(Duration::from_secs(30))
            .json(&order)
            .send()
            .await
            .expect("an answer, not a hang");
        let waited = started.elapsed();
        assert_eq!(response.status(), 503, "{path}");
        let retry_after = response.headers().get("retry-after").cloned();
        assert_eq!(
            retry_after.as_ref().map(|v| v.to_str().unwrap()),
            Some("1"),
            "{path}: a 503 says when to retry"
        );
        let body: Value = response.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("retry"),
            "{path}: {body}"
        );
        assert!(
            waited >= Duration::from_millis(LOCK_TIMEOUT_MS),
            "{path}: answered after {waited:?}, before the lock timeout"
        );
        assert!(
            waited < Duration::from_secs(8),
            "{path}: {waited:?}: the 10 s default, not the configured lock timeout"
        );
        assert_eq!(
            written(&env, item).await,
            (0, 0, 5),
            "{path}: nothing written"
        );

        held.release(item).await;
        let (status, body) = api.post(&format!("/orders?path={path}"), order).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("purchased")),
            "{path}"
        );
        assert_eq!(
            written(&env, item).await,
            (1, 1, 4),
            "{path}: the retry sold"
        );
    }
    api.shutdown.cancel();
    env.cleanup().await;
}

/// The item's outcomes, orders and stock left.
async fn written(env: &TestEnv, item: i64) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM outcomes WHERE item_id = $1),
                (SELECT count(*) FROM orders WHERE item_id = $1),
                stock_remaining
         FROM items WHERE id = $1",
    )
    .bind(item)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}
