//! `seckill audit`: checks the invariants of a sale from the database alone, whichever path sold
//! it. The benchmark and the tests trust this, not the load generator's own counts.

use serde::Serialize;
use sqlx::PgPool;

use crate::domain::ItemId;

/// What the audit found for one item. `violations` empty means the item is sound.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ItemAudit {
    pub item_id: ItemId,
    pub stock_initial: i64,
    pub stock_remaining: i64,
    pub orders: i64,
    /// Accepted requests with no outcome yet (in flight, or lost if nothing is running).
    pub undecided: i64,
    pub outcomes: i64,
    /// Requests an optimistic path gave up on (`failed_retry`): decided, nothing sold — neither
    /// an order nor a claim that stock ran out, so never a violation by itself.
    pub failed_retry: i64,
    pub violations: Vec<String>,
}

impl ItemAudit {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Audits one item; `None` if it does not exist. With `expect_settled`, requests accepted but
/// never decided count as violations (use it once producers and consumers have drained).
pub async fn audit_item(
    pool: &PgPool,
    item_id: ItemId,
    expect_settled: bool,
) -> sqlx::Result<Option<ItemAudit>> {
    let Some((stock_initial, stock_remaining)) = sqlx::query_as::<_, (i64, i64)>(
        "SELECT stock_initial, stock_remaining FROM items WHERE id = $1",
    )
    .bind(item_id)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let count = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .bind(item_id)
            .fetch_one(pool)
            .await
    };
    let orders = count("SELECT count(*) FROM orders WHERE item_id = $1").await?;
    let outcomes = count("SELECT count(*) FROM outcomes WHERE item_id = $1").await?;
    let duplicate_buyers = count(
        "SELECT count(*) FROM (SELECT user_id FROM orders WHERE item_id = $1
                               GROUP BY user_id HAVING count(*) > 1) d",
    )
    .await?;
    let orders_without_outcome = count(
        "SELECT count(*) FROM orders o WHERE o.item_id = $1 AND NOT EXISTS (
             SELECT 1 FROM outcomes c WHERE c.order_id = o.id AND c.status = 'purchased'
                                        AND c.request_id = o.request_id AND c.user_id = o.user_id)",
    )
    .await?;
    let purchases_without_order = count(
        "SELECT count(*) FROM outcomes c WHERE c.item_id = $1 AND c.status = 'purchased'
           AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = c.order_id AND o.item_id = c.item_id)",
    )
    .await?;
    let false_already_purchased = count(
        "SELECT count(*) FROM outcomes c WHERE c.item_id = $1 AND c.status = 'already_purchased'
           AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.item_id = c.item_id AND o.user_id = c.user_id)",
    )
    .await?;
    let sold_out =
        count("SELECT count(*) FROM outcomes WHERE item_id = $1 AND status = 'sold_out'").await?;
    let failed_retry =
        count("SELECT count(*) FROM outcomes WHERE item_id = $1 AND status = 'failed_retry'")
            .await?;
    let undecided = count(
        "SELECT count(*) FROM requests r WHERE r.item_id = $1 AND NOT EXISTS (
             SELECT 1 FROM outcomes c WHERE c.request_id = r.request_id)",
    )
    .await?;

    let mut violations = Vec::new();
    if orders > stock_initial {
        violations.push(format!(
            "oversold: {orders} orders for a stock of {stock_initial}"
        ));
    }
    if stock_remaining + orders != stock_initial {
        violations.push(format!(
            "stock does not add up: remaining {stock_remaining} + orders {orders} != initial {stock_initial}"
        ));
    }
    if duplicate_buyers > 0 {
        violations.push(format!("{duplicate_buyers} users hold more than one order"));
    }
    if orders_without_outcome > 0 {
        violations.push(format!(
            "{orders_without_outcome} orders have no matching 'purchased' outcome"
        ));
    }
    if purchases_without_order > 0 {
        violations.push(format!(
            "{purchases_without_order} 'purchased' outcomes have no order"
        ));
    }
    if false_already_purchased > 0 {
        violations.push(format!(
            "{false_already_purchased} 'already_purchased' outcomes for users without an order"
        ));
    }
    if sold_out > 0 && orders < stock_initial {
        violations.push(format!(
            "{sold_out} requests told 'sold_out' while only {orders} of {stock_initial} units were sold"
        ));
    }
    if expect_settled && undecided > 0 {
        violations.push(format!("{undecided} accepted requests were never decided"));
    }
    Ok(Some(ItemAudit {
        item_id,
        stock_initial,
        stock_remaining,
        orders,
        undecided,
        outcomes,
        failed_retry,
        violations,
    }))
}

/// Audits every item, in id order.
pub async fn audit_all(pool: &PgPool, expect_settled: bool) -> sqlx::Result<Vec<ItemAudit>> {
    let ids: Vec<ItemId> = sqlx::query_scalar("SELECT id FROM items ORDER BY id")
        .fetch_all(pool)
        .await?;
    let mut audits = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(a) = audit_item(pool, id, expect_settled).await? {
            audits.push(a);
        }
    }
    Ok(audits)
}

impl std::fmt::Display for ItemAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.is_clean() { "OK" } else { "VIOLATED" };
        write!(
            f,
            "item {}: {verdict} — stock {} → {} remaining, {} orders, {} outcomes, {} undecided",
            self.item_id,
            self.stock_initial,
            self.stock_remaining,
            self.orders,
            self.outcomes,
            self.undecided
        )?;
        if self.failed_retry > 0 {
            write!(f, ", {} failed_retry", self.failed_retry)?;
        }
        for v in &self.violations {
            write!(f, "\n  ✗ {v}")?;
        }
        Ok(())
    }
}
