//! What the audit can find wrong with an item: one variant per invariant, carrying the counts
//! that show it. The sentence each prints is what `seckill audit` shows and the tests match.

use std::fmt;

use serde::{Serialize, Serializer};

/// One broken invariant of one item.
///
/// In `seckill audit --json` a violation is its sentence (a JSON string, as `Display` prints
/// it), so the JSON reads the same as the text and as before the variants existed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// More units sold than the item ever had.
    Oversold {
        units_sold: i64,
        orders: i64,
        stock_initial: i64,
    },
    /// What is left and what was sold do not make what there was.
    StockDoesNotAddUp {
        stock_remaining: i64,
        units_sold: i64,
        stock_initial: i64,
    },
    /// The units sold that the item's row stores (what `GET /items/{id}` shows) are not the
    /// units its orders hold: a writer sold without counting it, or orders were written by hand.
    SoldCountWrong { stored: i64, units_sold: i64 },
    /// Users holding more than one order row of the item (there is one per buyer).
    DuplicateBuyers { users: i64 },
    /// Users holding more units than the item's per-user limit.
    OverLimit { users: i64, per_user_limit: i64 },
    /// Orders whose units are not the sum of the `purchased` outcomes that name them.
    UnitsNotPurchased { orders: i64 },
    /// `already_purchased` told to users whose final holding still left room for the request.
    FalseOverLimit { outcomes: i64 },
    /// Orders with no `purchased` outcome of their request and user.
    OrdersWithoutOutcome { orders: i64 },
    /// `purchased` outcomes whose order does not exist.
    PurchasesWithoutOrder { outcomes: i64 },
    /// `already_purchased` told to users who hold no order.
    FalseAlreadyPurchased { outcomes: i64 },
    /// `sold_out` told while enough units were left, even at the end.
    FalseSoldOut {
        told: i64,
        sold_out: i64,
        units_sold: i64,
        stock_initial: i64,
    },
    /// Verdicts that contradict what their decider recorded it saw: `sold_out` with enough
    /// units left, `purchased` without them, `already_purchased` with room under the limit, or
    /// `purchased` past it.
    AgainstWhatWasSeen { outcomes: i64 },
    /// `already_purchased` stored before any purchase of that user (in the order of decisions).
    RefusedBeforeAnyPurchase { outcomes: i64 },
    /// `purchased` outcomes naming an order of another user or item.
    PurchasesOfAnotherOrder { outcomes: i64 },
    /// Accepted requests without an outcome, once everything should have drained.
    NeverDecided { requests: i64 },
    /// Outcomes or accepted requests of an item that does not exist (items are never deleted).
    ItemMissing { outcomes: i64, requests: i64 },
    /// An invariant of the item's kind broken (a red packet's amounts, or goods with one).
    Kind(KindViolation),
}

/// What can be wrong with the amounts of an item, by its kind: a red packet's shares, or goods
/// that carry amounts at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindViolation {
    /// Red packet grabs that are not one share of a positive amount.
    BadShares { bad: i64, grabs: i64 },
    /// A red packet paid out more than its total.
    PacketOverspent { paid: i64, total: i64 },
    /// A red packet's paid shares and its remainder do not make its total.
    PacketDoesNotAddUp {
        paid: i64,
        remaining: Option<i64>,
        total: i64,
    },
    /// Every share of a red packet taken, but not its whole total paid.
    PacketUnderpaid { paid: i64, total: i64 },
    /// Orders of goods (not a red packet) carrying an amount.
    GoodsWithAmount { orders: i64 },
}

impl Violation {
    /// The sentences of the checks that judge a decision against the state it was made in.
    fn fmt_decision_context(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::AgainstWhatWasSeen { outcomes } => write!(
                f,
                "{outcomes} outcomes contradict the stock or holding their decider saw"
            ),
            Self::RefusedBeforeAnyPurchase { outcomes } => write!(
                f,
                "{outcomes} 'already_purchased' outcomes were decided before the user's first purchase"
            ),
            Self::PurchasesOfAnotherOrder { outcomes } => write!(
                f,
                "{outcomes} 'purchased' outcomes name an order of another user or item"
            ),
            Self::ItemMissing { outcomes, requests } => write!(
                f,
                "the item does not exist, yet {outcomes} outcomes and {requests} accepted requests name it"
            ),
            _ => unreachable!("not a decision-context violation"),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Oversold {
                units_sold,
                orders,
                stock_initial,
            } if units_sold == orders => {
                write!(
                    f,
                    "oversold: {orders} orders for a stock of {stock_initial}"
                )
            }
            Self::Oversold {
                units_sold,
                orders,
                stock_initial,
            } => write!(
                f,
                "oversold: {units_sold} units in {orders} orders for a stock of {stock_initial}"
            ),
            Self::StockDoesNotAddUp {
                stock_remaining,
                units_sold,
                stock_initial,
            } => write!(
                f,
                "stock does not add up: remaining {stock_remaining} + units sold {units_sold} != initial {stock_initial}"
            ),
            Self::SoldCountWrong { stored, units_sold } => write!(
                f,
                "the item's row counts {stored} units sold, its orders hold {units_sold}"
            ),
            Self::DuplicateBuyers { users } => write!(f, "{users} users hold more than one order"),
            Self::OverLimit {
                users,
                per_user_limit,
            } => write!(
                f,
                "{users} users hold more than the per-user limit of {per_user_limit}"
            ),
            Self::UnitsNotPurchased { orders } => write!(
                f,
                "{orders} orders hold other than the units of their 'purchased' outcomes"
            ),
            Self::FalseOverLimit { outcomes } => write!(
                f,
                "{outcomes} 'already_purchased' outcomes for users the limit left room for"
            ),
            Self::AgainstWhatWasSeen { .. }
            | Self::RefusedBeforeAnyPurchase { .. }
            | Self::PurchasesOfAnotherOrder { .. }
            | Self::ItemMissing { .. } => self.fmt_decision_context(f),
            Self::OrdersWithoutOutcome { orders } => {
                write!(f, "{orders} orders have no matching 'purchased' outcome")
            }
            Self::PurchasesWithoutOrder { outcomes } => {
                write!(f, "{outcomes} 'purchased' outcomes have no order")
            }
            Self::FalseAlreadyPurchased { outcomes } => write!(
                f,
                "{outcomes} 'already_purchased' outcomes for users without an order"
            ),
            Self::FalseSoldOut {
                told,
                sold_out,
                units_sold,
                stock_initial,
            } => write!(
                f,
                "{told} of {sold_out} requests told 'sold_out' while enough units were left ({units_sold} of {stock_initial} sold)"
            ),
            Self::NeverDecided { requests } => {
                write!(f, "{requests} accepted requests were never decided")
            }
            Self::Kind(kind) => kind.fmt(f),
        }
    }
}

impl fmt::Display for KindViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadShares { bad, grabs } => write!(
                f,
                "{bad} of {grabs} red packet grabs are not one share of a positive amount"
            ),
            Self::PacketOverspent { paid, total } => {
                write!(f, "red packet overspent: {paid} paid of a total of {total}")
            }
            Self::PacketDoesNotAddUp {
                paid,
                remaining,
                total,
            } => write!(
                f,
                "red packet does not add up: {paid} paid + {remaining:?} remaining != total {total}"
            ),
            Self::PacketUnderpaid { paid, total } => {
                write!(f, "every share taken but {paid} paid of a total of {total}")
            }
            Self::GoodsWithAmount { orders } => {
                write!(f, "{orders} orders of goods carry a red packet amount")
            }
        }
    }
}

impl Serialize for Violation {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversold_names_units_only_when_they_differ_from_orders() {
        let one_unit_each = Violation::Oversold {
            units_sold: 2,
            orders: 2,
            stock_initial: 1,
        };
        assert_eq!(
            one_unit_each.to_string(),
            "oversold: 2 orders for a stock of 1"
        );
        let several = Violation::Oversold {
            units_sold: 5,
            orders: 2,
            stock_initial: 4,
        };
        assert_eq!(
            several.to_string(),
            "oversold: 5 units in 2 orders for a stock of 4"
        );
    }

    #[test]
    fn in_json_a_violation_is_its_sentence() {
        let v = Violation::NeverDecided { requests: 3 };
        assert_eq!(
            serde_json::to_value(v).unwrap(),
            serde_json::json!("3 accepted requests were never decided")
        );
    }
}
