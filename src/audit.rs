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
    /// Order rows: one per buyer.
    pub orders: i64,
    /// Units those orders hold (equal to `orders` when every user buys one unit).
    pub units_sold: i64,
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
    let Some((stock_initial, stock_remaining, per_user_limit, packet_total, packet_remaining)) =
        sqlx::query_as::<_, (i64, i64, i64, Option<i64>, Option<i64>)>(
            "SELECT stock_initial, stock_remaining, per_user_limit, packet_total, packet_remaining
             FROM items WHERE id = $1",
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
    let units_sold =
        count("SELECT coalesce(sum(quantity), 0)::bigint FROM orders WHERE item_id = $1").await?;
    let over_limit = count(
        "SELECT count(*) FROM orders o JOIN items i ON i.id = o.item_id
         WHERE o.item_id = $1 AND o.quantity > i.per_user_limit",
    )
    .await?;
    // An order holds exactly the units of the purchases that name it.
    let units_not_purchased = count(
        "SELECT count(*) FROM orders o WHERE o.item_id = $1 AND o.quantity <> (
             SELECT coalesce(sum(c.quantity), 0) FROM outcomes c
             WHERE c.order_id = o.id AND c.status = 'purchased')",
    )
    .await?;
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
    // Refused for the limit although even the user's final holding leaves room for it (a
    // holding only grows, so there was room when it was refused).
    let false_over_limit = count(
        "SELECT count(*) FROM outcomes c
           JOIN orders o ON o.item_id = c.item_id AND o.user_id = c.user_id
           JOIN items i ON i.id = c.item_id
         WHERE c.item_id = $1 AND c.status = 'already_purchased'
           AND o.quantity + c.quantity <= i.per_user_limit",
    )
    .await?;
    let sold_out =
        count("SELECT count(*) FROM outcomes WHERE item_id = $1 AND status = 'sold_out'").await?;
    // Told `sold_out` though even at the end enough units were left for it (stock only falls,
    // but for a restock: a `sold_out` given before one, or while the news of it was on its way
    // to the decider, was right then and is not judged by the final state).
    let false_sold_out = count(
        "SELECT count(*) FROM outcomes c JOIN items i ON i.id = c.item_id
         WHERE c.item_id = $1 AND c.status = 'sold_out'
           AND (i.restocked_at IS NULL OR c.decided_at > i.restocked_at + interval '1 minute')
           AND c.quantity <= i.stock_initial - (
               SELECT coalesce(sum(o.quantity), 0) FROM orders o WHERE o.item_id = c.item_id)",
    )
    .await?;
    let failed_retry =
        count("SELECT count(*) FROM outcomes WHERE item_id = $1 AND status = 'failed_retry'")
            .await?;
    let undecided = count(
        "SELECT count(*) FROM requests r WHERE r.item_id = $1 AND NOT EXISTS (
             SELECT 1 FROM outcomes c WHERE c.request_id = r.request_id)",
    )
    .await?;

    let mut violations = Vec::new();
    if units_sold > stock_initial {
        let sold = if units_sold == orders {
            format!("{orders} orders")
        } else {
            format!("{units_sold} units in {orders} orders")
        };
        violations.push(format!("oversold: {sold} for a stock of {stock_initial}"));
    }
    if stock_remaining + units_sold != stock_initial {
        violations.push(format!(
            "stock does not add up: remaining {stock_remaining} + units sold {units_sold} != initial {stock_initial}"
        ));
    }
    if duplicate_buyers > 0 {
        violations.push(format!("{duplicate_buyers} users hold more than one order"));
    }
    if over_limit > 0 {
        violations.push(format!(
            "{over_limit} users hold more than the per-user limit of {per_user_limit}"
        ));
    }
    if units_not_purchased > 0 {
        violations.push(format!(
            "{units_not_purchased} orders hold other than the units of their 'purchased' outcomes"
        ));
    }
    if false_over_limit > 0 {
        violations.push(format!(
            "{false_over_limit} 'already_purchased' outcomes for users the limit left room for"
        ));
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
    if false_sold_out > 0 {
        violations.push(format!(
            "{false_sold_out} of {sold_out} requests told 'sold_out' while enough units were left ({units_sold} of {stock_initial} sold)"
        ));
    }
    if let Some(total) = packet_total {
        violations.extend(
            audit_red_packet(pool, item_id, total, packet_remaining, stock_remaining).await?,
        );
    } else {
        let amounts =
            count("SELECT count(*) FROM orders WHERE item_id = $1 AND amount IS NOT NULL").await?;
        if amounts > 0 {
            violations.push(format!(
                "{amounts} orders of goods carry a red packet amount"
            ));
        }
    }
    if expect_settled && undecided > 0 {
        violations.push(format!("{undecided} accepted requests were never decided"));
    }
    Ok(Some(ItemAudit {
        item_id,
        stock_initial,
        stock_remaining,
        orders,
        units_sold,
        undecided,
        outcomes,
        failed_retry,
        violations,
    }))
}

/// A red packet's own invariants: every share positive and one per user (one unit per order), the
/// shares paid out plus what remains make the total, and the total is paid out exactly once
/// every share is taken.
async fn audit_red_packet(
    pool: &PgPool,
    item_id: ItemId,
    total: i64,
    remaining: Option<i64>,
    shares_left: i64,
) -> sqlx::Result<Vec<String>> {
    let (grabs, paid, bad_shares): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(amount), 0)::bigint,
                count(*) FILTER (WHERE amount IS NULL OR amount <= 0 OR quantity <> 1)
         FROM orders WHERE item_id = $1",
    )
    .bind(item_id)
    .fetch_one(pool)
    .await?;
    let mut violations = Vec::new();
    if bad_shares > 0 {
        violations.push(format!(
            "{bad_shares} of {grabs} red packet grabs are not one share of a positive amount"
        ));
    }
    if paid > total {
        violations.push(format!(
            "red packet overspent: {paid} paid of a total of {total}"
        ));
    }
    if remaining != Some(total - paid) {
        violations.push(format!(
            "red packet does not add up: {paid} paid + {remaining:?} remaining != total {total}"
        ));
    }
    if shares_left == 0 && paid != total {
        violations.push(format!(
            "every share taken but {paid} paid of a total of {total}"
        ));
    }
    Ok(violations)
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
            "item {}: {verdict} — stock {} → {} remaining, {} units in {} orders, {} outcomes, {} undecided",
            self.item_id,
            self.stock_initial,
            self.stock_remaining,
            self.units_sold,
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
