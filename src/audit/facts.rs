//! What the audit reads: every count its checks need, for a set of items, in four statements
//! (items, orders, outcomes, requests), each grouped by item. The caller runs them in one
//! snapshot, so the counts agree with each other even while a sale goes on.

use std::collections::HashMap;

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use crate::domain::ItemId;

/// An item's own row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct ItemRow {
    pub id: ItemId,
    pub stock_initial: i64,
    pub stock_remaining: i64,
    pub per_user_limit: i64,
    /// The units sold as the item's row counts them (what `GET /items/{id}` shows, kept by the
    /// writers and the delete triggers of migration 0012), to be checked against the orders.
    pub sold: i64,
    /// A red packet's total and what of it is not paid out yet (`None` for goods).
    pub packet_total: Option<i64>,
    pub packet_remaining: Option<i64>,
}

/// What an item's orders show.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub(super) struct OrderFacts {
    pub orders: i64,
    pub units_sold: i64,
    /// Orders holding more units than the item's per-user limit.
    pub over_limit: i64,
    /// Orders holding other than the units of the `purchased` outcomes naming them.
    pub units_not_purchased: i64,
    /// Orders without the `purchased` outcome of their own request and user.
    pub without_outcome: i64,
    /// Users holding more than one order.
    pub duplicate_buyers: i64,
    /// Orders carrying an amount (every red packet share; no order of goods).
    pub with_amount: i64,
    /// The amounts paid out, summed (red packets).
    pub amount_paid: i64,
    /// Orders that are not one share of a positive amount (wrong for a red packet).
    pub bad_shares: i64,
}

/// What an item's outcomes show.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub(super) struct OutcomeFacts {
    pub outcomes: i64,
    pub sold_out: i64,
    pub failed_retry: i64,
    /// `purchased` outcomes whose order does not exist.
    pub purchases_without_order: i64,
    /// `already_purchased` outcomes of users who hold no order.
    pub false_already_purchased: i64,
    /// `already_purchased` outcomes (per order of the user) that the limit left room for.
    pub false_over_limit: i64,
    /// `sold_out` outcomes although enough units were left at the end.
    pub false_sold_out: i64,
    /// Verdicts against the stock or holding their decider recorded (`stock_seen`, `held_seen`).
    pub against_seen: i64,
    /// `already_purchased` outcomes with no purchase of that user stored before them.
    pub refused_before_purchase: i64,
    /// `purchased` outcomes whose order belongs to another user or item.
    pub purchases_of_another_order: i64,
}

/// Everything the checks of one item need.
#[derive(Debug, Clone)]
pub(super) struct ItemFacts {
    pub item: ItemRow,
    pub orders: OrderFacts,
    pub outcomes: OutcomeFacts,
    /// Accepted requests with no outcome yet.
    pub undecided: i64,
}

const ITEMS: &str = "
    SELECT id, stock_initial, stock_remaining, per_user_limit, sold, packet_total,
           packet_remaining
    FROM items WHERE id = ANY($1::bigint[]) ORDER BY id";

const ORDERS: &str = "
    SELECT o.item_id,
           count(*) AS orders,
           coalesce(sum(o.quantity), 0)::bigint AS units_sold,
           count(*) FILTER (WHERE o.quantity > i.per_user_limit) AS over_limit,
           -- An order holds exactly the units of the purchases that name it.
           count(*) FILTER (WHERE o.quantity <> (
               SELECT coalesce(sum(c.quantity), 0) FROM outcomes c
               WHERE c.order_id = o.id AND c.status = 'purchased')) AS units_not_purchased,
           count(*) FILTER (WHERE NOT EXISTS (
               SELECT 1 FROM outcomes c
               WHERE c.order_id = o.id AND c.status = 'purchased'
                 AND c.request_id = o.request_id AND c.user_id = o.user_id)) AS without_outcome,
           count(DISTINCT o.user_id) FILTER (WHERE o.orders_of_user > 1) AS duplicate_buyers,
           count(*) FILTER (WHERE o.amount IS NOT NULL) AS with_amount,
           coalesce(sum(o.amount), 0)::bigint AS amount_paid,
           count(*) FILTER (WHERE o.amount IS NULL OR o.amount <= 0 OR o.quantity <> 1)
               AS bad_shares
    FROM (SELECT *, count(*) OVER (PARTITION BY item_id, user_id) AS orders_of_user
          FROM orders WHERE item_id = ANY($1::bigint[])) o
    JOIN items i ON i.id = o.item_id
    GROUP BY o.item_id";

const OUTCOMES: &str = "
    SELECT c.item_id,
           count(*) AS outcomes,
           count(*) FILTER (WHERE c.status = 'sold_out') AS sold_out,
           count(*) FILTER (WHERE c.status = 'failed_retry') AS failed_retry,
           count(*) FILTER (WHERE c.status = 'purchased' AND NOT EXISTS (
               SELECT 1 FROM orders o WHERE o.id = c.order_id AND o.item_id = c.item_id))
               AS purchases_without_order,
           count(*) FILTER (WHERE c.status = 'already_purchased' AND NOT EXISTS (
               SELECT 1 FROM orders o WHERE o.item_id = c.item_id AND o.user_id = c.user_id))
               AS false_already_purchased,
           -- Refused for the limit although even the user's final holding leaves room for it
           -- (a holding only grows, so there was room when it was refused).
           coalesce(sum((
               SELECT count(*) FROM orders o
               WHERE o.item_id = c.item_id AND o.user_id = c.user_id
                 AND o.quantity + c.quantity <= i.per_user_limit))
               FILTER (WHERE c.status = 'already_purchased'), 0)::bigint AS false_over_limit,
           -- Told `sold_out` though even at the end enough units were left for it (stock only
           -- falls, but for a restock). Only where the decider did not record what it saw (an
           -- answer at the door, a path deciding elsewhere): one given before a restock, or while
           -- the news of it was on its way, was right then, and the final state cannot show it.
           count(*) FILTER (WHERE c.status = 'sold_out' AND c.stock_seen IS NULL
               AND (i.restocked_at IS NULL OR c.decided_at > i.restocked_at + interval '1 minute')
               AND c.quantity <= i.stock_initial - coalesce(s.units_sold, 0)) AS false_sold_out,
           -- Each verdict against the state its decider saw, whenever it was decided.
           count(*) FILTER (WHERE
                  (c.status = 'sold_out' AND c.stock_seen >= c.quantity)
               OR (c.status = 'purchased' AND c.stock_seen < c.quantity)
               OR (c.status = 'already_purchased'
                   AND (c.held_seen = 0 OR c.held_seen + c.quantity <= i.per_user_limit))
               OR (c.status = 'purchased' AND c.held_seen + c.quantity > i.per_user_limit))
               AS against_seen,
           count(*) FILTER (WHERE c.status = 'already_purchased' AND NOT EXISTS (
               SELECT 1 FROM outcomes p
               WHERE p.item_id = c.item_id AND p.user_id = c.user_id
                 AND p.status = 'purchased' AND p.seq < c.seq)) AS refused_before_purchase,
           count(*) FILTER (WHERE c.status = 'purchased' AND EXISTS (
               SELECT 1 FROM orders o WHERE o.id = c.order_id
                 AND (o.user_id <> c.user_id OR o.item_id <> c.item_id)))
               AS purchases_of_another_order
    FROM outcomes c
    JOIN items i ON i.id = c.item_id
    LEFT JOIN (SELECT item_id, sum(quantity) AS units_sold FROM orders
               WHERE item_id = ANY($1::bigint[]) GROUP BY item_id) s ON s.item_id = c.item_id
    WHERE c.item_id = ANY($1::bigint[])
    GROUP BY c.item_id";

/// Items that outcomes or accepted requests name but that do not exist (no foreign key stops
/// an outcome's item from going: migration 0003 dropped it for the group commit's sake).
const MISSING_ITEMS: &str = "
    SELECT item_id, sum(outcomes)::bigint AS outcomes, sum(requests)::bigint AS requests FROM (
        SELECT item_id, count(*) AS outcomes, 0 AS requests FROM outcomes
        WHERE ($1::bigint[] IS NULL OR item_id = ANY($1)) GROUP BY item_id
        UNION ALL
        SELECT item_id, 0, count(*) FROM requests
        WHERE ($1::bigint[] IS NULL OR item_id = ANY($1)) GROUP BY item_id
    ) named
    WHERE NOT EXISTS (SELECT 1 FROM items i WHERE i.id = named.item_id)
    GROUP BY item_id ORDER BY item_id";

const UNDECIDED: &str = "
    SELECT r.item_id, count(*) FROM requests r
    WHERE r.item_id = ANY($1::bigint[])
      AND NOT EXISTS (SELECT 1 FROM outcomes c WHERE c.request_id = r.request_id)
    GROUP BY r.item_id";

/// The facts of every item of `ids` that exists, in id order. Run inside one snapshot.
pub(super) async fn read(
    snapshot: &mut PgConnection,
    ids: &[ItemId],
) -> sqlx::Result<Vec<ItemFacts>> {
    let items: Vec<ItemRow> = sqlx::query_as(ITEMS)
        .bind(ids)
        .fetch_all(&mut *snapshot)
        .await?;
    let mut orders = by_item::<OrderFacts>(snapshot, ORDERS, ids).await?;
    let mut outcomes = by_item::<OutcomeFacts>(snapshot, OUTCOMES, ids).await?;
    let undecided: HashMap<ItemId, i64> = sqlx::query_as(UNDECIDED)
        .bind(ids)
        .fetch_all(&mut *snapshot)
        .await?
        .into_iter()
        .collect();
    Ok(items
        .into_iter()
        .map(|item| ItemFacts {
            // An item none of whose rows exist has counts of zero.
            orders: orders.remove(&item.id).unwrap_or_default(),
            outcomes: outcomes.remove(&item.id).unwrap_or_default(),
            undecided: undecided.get(&item.id).copied().unwrap_or(0),
            item,
        })
        .collect())
}

/// Items named by outcomes or requests that do not exist, with how many of each name them:
/// among `ids`, or anywhere (`None`). Run inside the same snapshot.
pub(super) async fn missing_items(
    snapshot: &mut PgConnection,
    ids: Option<&[ItemId]>,
) -> sqlx::Result<Vec<(ItemId, i64, i64)>> {
    sqlx::query_as(MISSING_ITEMS)
        .bind(ids)
        .fetch_all(snapshot)
        .await
}

/// Runs a statement whose rows are `item_id` and the columns of `T`, keyed by item.
async fn by_item<T>(
    snapshot: &mut PgConnection,
    sql: &'static str,
    ids: &[ItemId],
) -> sqlx::Result<HashMap<ItemId, T>>
where
    T: for<'r> sqlx::FromRow<'r, PgRow>,
{
    let rows = sqlx::query(sql).bind(ids).fetch_all(snapshot).await?;
    rows.iter()
        .map(|row| Ok((row.try_get("item_id")?, T::from_row(row)?)))
        .collect()
}
