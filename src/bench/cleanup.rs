//! What the bench removes when it is done: its rows (its figures are in results.json), and the
//! queues and Redis keys of its own in-process stack.

use sqlx::PgPool;

use crate::broker::topology::Topology;
use crate::config::{BrokerArgs, PathArgs};
use crate::paths::redis_store::RedisStore;

/// Removes the items, orders, outcomes and accepted requests of `items`.
pub(super) async fn remove_rows(pool: &PgPool, items: &[i64]) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for statement in [
        "DELETE FROM outcomes WHERE item_id = ANY($1::bigint[])",
        "DELETE FROM requests WHERE item_id = ANY($1::bigint[])",
        "DELETE FROM orders WHERE item_id = ANY($1::bigint[])",
        "DELETE FROM items WHERE id = ANY($1::bigint[])",
    ] {
        sqlx::query(statement).bind(items).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Deletes the bench's partition queues and its Redis keys (a failure there is only logged).
pub(super) async fn remove_queues_and_keys(
    broker: &BrokerArgs,
    topology: &Topology,
    path_args: &PathArgs,
) -> anyhow::Result<()> {
    let connection = crate::broker::connect(&broker.amqp_url, "seckill-bench-cleanup").await?;
    topology.delete(&connection.create_channel().await?).await?;
    if let Err(e) = RedisStore::new(&path_args.redis)?.clear().await {
        tracing::warn!(error = %e, "could not remove the bench's Redis keys");
    }
    Ok(())
}
