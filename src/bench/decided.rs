//! Waiting on the database for decisions: a run ends when the database holds its last
//! decision, not when the last client was answered (the queue path may have said `pending`).

use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

/// Waits until `expected` outcomes exist for `items`, polling; returns when the last arrived.
pub async fn wait_decided(
    pool: &PgPool,
    items: &[i64],
    expected: i64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let decided: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outcomes WHERE item_id = ANY($1::bigint[])")
                .bind(items)
                .fetch_one(pool)
                .await?;
        if decided >= expected {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {decided} of {expected} requests were decided within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every one of `request_ids` has an outcome (primary-key lookups only).
pub async fn wait_requests_decided(
    pool: &PgPool,
    request_ids: &[Uuid],
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let decided: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outcomes WHERE request_id = ANY($1::uuid[])")
                .bind(request_ids)
                .fetch_one(pool)
                .await?;
        if decided >= request_ids.len() as i64 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "requests not decided within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
