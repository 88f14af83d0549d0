//! A request id decided before, sent again and again while a sale runs, costs about what a fresh
//! request costs: the consumer answers it from the store without redoing its batches from the
//! database. (The API answers one from the store without publishing it at all: see
//! `tests/queue_path.rs`.) Alone in its file: it counts the process's item loads.

mod common;

use std::time::Duration;

use common::{TestEnv, request, requests};

/// Straight to the broker, bypassing the API: a retried id in batch after batch. Before, each
/// such batch was refused at commit, forgotten and reloaded with its item's whole buyer list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_decided_id_is_answered_from_the_store_without_reloading_the_sale() {
    const BUYERS: usize = 4000;
    const RETRIES: usize = 400;
    let env = TestEnv::new().await;
    let consumer = env.start_consumer().await;
    let item = env.create_item(1000).await;
    let decided = request(item, "first");
    env.publish_direct(std::slice::from_ref(&decided)).await;
    env.wait_for_outcomes(item, 1, Duration::from_secs(30))
        .await;

    let loads = &seckill::metrics::get().consumer.items_loaded;
    let loaded_before = loads.get();
    // The sale, with the decided request again after every tenth buyer.
    let mut sale = Vec::with_capacity(BUYERS + RETRIES);
    for (i, buyer) in requests(item, BUYERS, BUYERS).into_iter().enumerate() {
        sale.push(buyer);
        if i % (BUYERS / RETRIES) == 0 {
            sale.push(decided.clone());
        }
    }
    env.publish_direct(&sale).await;
    env.wait_for_outcomes(item, 1 + BUYERS as i64, Duration::from_secs(120))
        .await;

    let reloads = loads.get() - loaded_before;
    assert_eq!(reloads, 0, "the sale's item was reloaded {reloads} times");
    let report = env.assert_audit_clean(item).await;
    assert_eq!(
        report.outcomes,
        1 + BUYERS as i64,
        "one outcome per request"
    );
    assert_eq!(report.orders, 1000);
    let first: i64 = sqlx::query_scalar("SELECT count(*) FROM outcomes WHERE request_id = $1")
        .bind(decided.request_id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(first, 1);
    consumer.cancel();
    env.cleanup().await;
}
