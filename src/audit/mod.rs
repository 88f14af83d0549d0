//! `seckill audit`: checks the invariants of a sale from the database alone, whichever path sold
//! it. The benchmark and the tests trust this, not the load generator's own counts.
//!
//! An audit run reads one snapshot (one `REPEATABLE READ, READ ONLY` transaction): counts taken
//! at different moments of a live sale could disagree and show a violation that is not there.

mod facts;
mod violation;

use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};

use crate::domain::ItemId;
use facts::ItemFacts;
pub use violation::{KindViolation, Violation};

/// What the audit found for one item. `violations` empty means the item is sound.
///
/// `seckill audit --json` prints a list of these; each violation in it is its sentence.
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
    pub violations: Vec<Violation>,
}

impl ItemAudit {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// Whether more units were sold than the item had.
    pub fn is_oversold(&self) -> bool {
        self.violations
            .iter()
            .any(|v| matches!(v, Violation::Oversold { .. }))
    }

    fn of(facts: &ItemFacts, expect_settled: bool) -> Self {
        Self {
            item_id: facts.item.id,
            stock_initial: facts.item.stock_initial,
            stock_remaining: facts.item.stock_remaining,
            orders: facts.orders.orders,
            units_sold: facts.orders.units_sold,
            undecided: facts.undecided,
            outcomes: facts.outcomes.outcomes,
            failed_retry: facts.outcomes.failed_retry,
            violations: violations(facts, expect_settled),
        }
    }
}

/// Audits one item; `None` if it does not exist. With `expect_settled`, requests accepted but
/// never decided count as violations (use it once producers and consumers have drained).
pub async fn audit_item(
    pool: &PgPool,
    item_id: ItemId,
    expect_settled: bool,
) -> sqlx::Result<Option<ItemAudit>> {
    Ok(audit_items(pool, &[item_id], expect_settled).await?.pop())
}

/// Audits the items of `ids` that exist, in id order, in one snapshot.
pub async fn audit_items(
    pool: &PgPool,
    ids: &[ItemId],
    expect_settled: bool,
) -> sqlx::Result<Vec<ItemAudit>> {
    let mut snapshot = begin_snapshot(pool).await?;
    let facts = facts::read(&mut snapshot, ids).await?;
    let missing = facts::missing_items(&mut snapshot, Some(ids)).await?;
    snapshot.commit().await?;
    Ok(with_missing(audits(&facts, expect_settled), missing))
}

/// Audits every item, in id order, in one snapshot.
pub async fn audit_all(pool: &PgPool, expect_settled: bool) -> sqlx::Result<Vec<ItemAudit>> {
    let mut snapshot = begin_snapshot(pool).await?;
    let ids: Vec<ItemId> = sqlx::query_scalar("SELECT id FROM items ORDER BY id")
        .fetch_all(&mut *snapshot)
        .await?;
    let facts = facts::read(&mut snapshot, &ids).await?;
    let missing = facts::missing_items(&mut snapshot, None).await?;
    snapshot.commit().await?;
    Ok(with_missing(audits(&facts, expect_settled), missing))
}

/// Adds an audit for each item that decisions or requests name but that does not exist, and
/// keeps the list in id order.
fn with_missing(mut audits: Vec<ItemAudit>, missing: Vec<(ItemId, i64, i64)>) -> Vec<ItemAudit> {
    audits.extend(
        missing
            .into_iter()
            .map(|(item_id, outcomes, requests)| ItemAudit {
                item_id,
                stock_initial: 0,
                stock_remaining: 0,
                orders: 0,
                units_sold: 0,
                undecided: 0,
                outcomes,
                failed_retry: 0,
                violations: vec![Violation::ItemMissing { outcomes, requests }],
            }),
    );
    audits.sort_by_key(|a| a.item_id);
    audits
}

/// One transaction that sees the database as of its first statement, and writes nothing.
async fn begin_snapshot(pool: &PgPool) -> sqlx::Result<Transaction<'static, Postgres>> {
    pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
}

fn audits(facts: &[ItemFacts], expect_settled: bool) -> Vec<ItemAudit> {
    facts
        .iter()
        .map(|f| ItemAudit::of(f, expect_settled))
        .collect()
}

/// Every invariant of one item, in the order `seckill audit` reports them.
fn violations(facts: &ItemFacts, expect_settled: bool) -> Vec<Violation> {
    let (item, orders, outcomes) = (&facts.item, &facts.orders, &facts.outcomes);
    let (units_sold, stock_initial) = (orders.units_sold, item.stock_initial);
    let found = [
        (units_sold > stock_initial).then_some(Violation::Oversold {
            units_sold,
            orders: orders.orders,
            stock_initial,
        }),
        (item.stock_remaining + units_sold != stock_initial).then_some(
            Violation::StockDoesNotAddUp {
                stock_remaining: item.stock_remaining,
                units_sold,
                stock_initial,
            },
        ),
        (item.sold != units_sold).then_some(Violation::SoldCountWrong {
            stored: item.sold,
            units_sold,
        }),
        (orders.duplicate_buyers > 0).then_some(Violation::DuplicateBuyers {
            users: orders.duplicate_buyers,
        }),
        (orders.over_limit > 0).then_some(Violation::OverLimit {
            users: orders.over_limit,
            per_user_limit: item.per_user_limit,
        }),
        (orders.units_not_purchased > 0).then_some(Violation::UnitsNotPurchased {
            orders: orders.units_not_purchased,
        }),
        (outcomes.false_over_limit > 0).then_some(Violation::FalseOverLimit {
            outcomes: outcomes.false_over_limit,
        }),
        (orders.without_outcome > 0).then_some(Violation::OrdersWithoutOutcome {
            orders: orders.without_outcome,
        }),
        (outcomes.purchases_without_order > 0).then_some(Violation::PurchasesWithoutOrder {
            outcomes: outcomes.purchases_without_order,
        }),
        (outcomes.false_already_purchased > 0).then_some(Violation::FalseAlreadyPurchased {
            outcomes: outcomes.false_already_purchased,
        }),
        (outcomes.against_seen > 0).then_some(Violation::AgainstWhatWasSeen {
            outcomes: outcomes.against_seen,
        }),
        (outcomes.refused_before_purchase > 0).then_some(Violation::RefusedBeforeAnyPurchase {
            outcomes: outcomes.refused_before_purchase,
        }),
        (outcomes.purchases_of_another_order > 0).then_some(Violation::PurchasesOfAnotherOrder {
            outcomes: outcomes.purchases_of_another_order,
        }),
        (outcomes.false_sold_out > 0).then_some(Violation::FalseSoldOut {
            told: outcomes.false_sold_out,
            sold_out: outcomes.sold_out,
            units_sold,
            stock_initial,
        }),
    ];
    let settled = (expect_settled && facts.undecided > 0).then_some(Violation::NeverDecided {
        requests: facts.undecided,
    });
    let mut violations: Vec<Violation> = found.into_iter().flatten().collect();
    violations.extend(kind_violations(facts));
    violations.extend(settled);
    violations
}

/// The invariants of the item's kind: a red packet's shares and amounts, or goods without any.
fn kind_violations(facts: &ItemFacts) -> Vec<Violation> {
    let orders = &facts.orders;
    let Some(total) = facts.item.packet_total else {
        let goods = (orders.with_amount > 0).then_some(KindViolation::GoodsWithAmount {
            orders: orders.with_amount,
        });
        return goods.into_iter().map(Violation::Kind).collect();
    };
    // Every share positive and one per user (one unit per order), the shares paid out plus
    // what remains make the total, and the total is paid out exactly once every share is taken.
    let (paid, remaining) = (orders.amount_paid, facts.item.packet_remaining);
    let found = [
        (orders.bad_shares > 0).then_some(KindViolation::BadShares {
            bad: orders.bad_shares,
            grabs: orders.orders,
        }),
        (paid > total).then_some(KindViolation::PacketOverspent { paid, total }),
        (remaining != Some(total - paid)).then_some(KindViolation::PacketDoesNotAddUp {
            paid,
            remaining,
            total,
        }),
        (facts.item.stock_remaining == 0 && paid != total)
            .then_some(KindViolation::PacketUnderpaid { paid, total }),
    ];
    found.into_iter().flatten().map(Violation::Kind).collect()
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

#[cfg(test)]
mod tests {
    use super::facts::{ItemRow, OrderFacts, OutcomeFacts};
    use super::*;

    /// Goods of 10 units, limit 1, of which `sold` were sold to as many buyers and the rest of
    /// `requests` told `sold_out`, all decided.
    fn sound_sale(sold: i64, requests: i64) -> ItemFacts {
        ItemFacts {
            item: ItemRow {
                id: 7,
                stock_initial: 10,
                stock_remaining: 10 - sold,
                per_user_limit: 1,
                sold,
                packet_total: None,
                packet_remaining: None,
            },
            orders: OrderFacts {
                orders: sold,
                units_sold: sold,
                ..OrderFacts::default()
            },
            outcomes: OutcomeFacts {
                outcomes: requests,
                sold_out: requests - sold,
                ..OutcomeFacts::default()
            },
            undecided: 0,
        }
    }

    #[test]
    fn a_sound_sale_is_clean() {
        let audit = ItemAudit::of(&sound_sale(10, 30), true);
        assert!(audit.is_clean(), "{audit}");
        assert!(!audit.is_oversold());
    }

    #[test]
    fn a_lost_update_is_oversold_and_does_not_add_up_in_that_order() {
        let mut facts = sound_sale(10, 30);
        facts.orders.orders = 11;
        facts.orders.units_sold = 11;
        facts.item.sold = 11;
        let audit = ItemAudit::of(&facts, true);
        assert!(audit.is_oversold());
        assert_eq!(
            audit.violations,
            [
                Violation::Oversold {
                    units_sold: 11,
                    orders: 11,
                    stock_initial: 10
                },
                Violation::StockDoesNotAddUp {
                    stock_remaining: 0,
                    units_sold: 11,
                    stock_initial: 10
                },
            ]
        );
    }

    #[test]
    fn a_stored_sold_count_is_checked_against_the_orders() {
        let mut facts = sound_sale(4, 10);
        facts.item.sold = 5;
        assert_eq!(
            ItemAudit::of(&facts, true).violations,
            [Violation::SoldCountWrong {
                stored: 5,
                units_sold: 4
            }]
        );
    }

    #[test]
    fn undecided_requests_count_only_once_settled() {
        let mut facts = sound_sale(3, 5);
        facts.undecided = 2;
        assert!(ItemAudit::of(&facts, false).is_clean());
        assert_eq!(
            ItemAudit::of(&facts, true).violations,
            [Violation::NeverDecided { requests: 2 }]
        );
    }

    #[test]
    fn a_red_packet_is_judged_by_its_amounts_and_goods_by_having_none() {
        let mut packet = sound_sale(10, 10);
        packet.item.packet_total = Some(100);
        packet.item.packet_remaining = Some(0);
        packet.orders.with_amount = 10;
        packet.orders.amount_paid = 90;
        assert_eq!(
            ItemAudit::of(&packet, true).violations,
            [
                Violation::Kind(KindViolation::PacketDoesNotAddUp {
                    paid: 90,
                    remaining: Some(0),
                    total: 100
                }),
                Violation::Kind(KindViolation::PacketUnderpaid {
                    paid: 90,
                    total: 100
                }),
            ]
        );
        let mut goods = sound_sale(2, 2);
        goods.orders.with_amount = 1;
        assert_eq!(
            ItemAudit::of(&goods, true).violations,
            [Violation::Kind(KindViolation::GoodsWithAmount {
                orders: 1
            })]
        );
    }
}
