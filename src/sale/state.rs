//! What is known of one item while it sells, and how one request changes it.

use std::collections::HashMap;

use rand::Rng;
use uuid::Uuid;

use super::{ItemRules, Refusal, draw_share};
use crate::domain::ItemKind;

/// What a decider knows about one item: rebuilt from the database on first use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemState {
    /// Units left to sell (for a red packet: shares left). Never negative.
    pub stock_remaining: i64,
    /// Users holding an order for this item, with the order and the units it holds.
    pub buyers: HashMap<String, Holding>,
    /// The item's kind and per-user limit, as stored: what a request is checked against.
    pub rules: ItemRules,
    /// A red packet's amount not yet paid out, in minor units, to be split among the
    /// `stock_remaining` shares left; `None` for goods.
    pub packet_remaining: Option<i64>,
    /// The item's generation (its restock count) this state was loaded at: a decider about to
    /// answer `sold_out` compares it with the stored one, and reloads the item if a restock it
    /// did not hear of has happened since. Announcements carry it too (see
    /// [`crate::broker::item_events`]).
    pub generation: i64,
}

/// What of an item's state its own row holds: everything but its buyers (those are its orders).
/// A restock changes only this, so a decider that hears of one re-reads it and keeps its buyers
/// ([`ItemState::refresh`]) instead of reading every order of the item again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemStock {
    pub stock_remaining: i64,
    pub rules: ItemRules,
    pub packet_remaining: Option<i64>,
    pub generation: i64,
}

/// One user's order for an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holding {
    pub order_id: Uuid,
    pub units: i64,
}

/// What [`ItemState::decide`] sold to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sold {
    /// The user's order holding these units.
    pub order_id: Uuid,
    /// True when `order_id` is a new order; else the units went into the user's existing one.
    pub new_order: bool,
    /// The red packet share drawn; `None` for goods.
    pub amount: Option<i64>,
}

impl Default for ItemState {
    fn default() -> Self {
        Self::goods(0, 1)
    }
}

impl ItemState {
    /// The state of an item whose row reads `stock` and whose orders are `buyers`.
    pub fn from_parts(stock: ItemStock, buyers: HashMap<String, Holding>) -> Self {
        Self {
            stock_remaining: stock.stock_remaining,
            buyers,
            rules: stock.rules,
            packet_remaining: stock.packet_remaining,
            generation: stock.generation,
        }
    }

    /// Takes what the item's row holds now, keeping the buyers: right whenever the row changed
    /// and the orders did not — a restock, which adds units and bumps the generation of goods,
    /// and never touches an order or a red packet. Valid for every kind, since the whole row is
    /// taken (a red packet's amount left included), and only between batches, when everything
    /// decided in memory is committed: the stored stock is then exactly what memory would hold
    /// but for the restock.
    pub fn refresh(&mut self, stock: ItemStock) {
        debug_assert_eq!(
            self.rules, stock.rules,
            "an item's kind and limit never change"
        );
        self.stock_remaining = stock.stock_remaining;
        self.rules = stock.rules;
        self.packet_remaining = stock.packet_remaining;
        self.generation = stock.generation;
    }

    /// What a decider knows, before deciding, of this item for `user_id`.
    pub fn seen_by(&self, user_id: &str) -> super::Seen {
        super::Seen {
            stock: self.stock_remaining,
            held: self.buyers.get(user_id).map_or(0, |h| h.units),
        }
    }

    /// True when no request can be sold anything any more (until a restock).
    pub fn is_sold_out(&self) -> bool {
        self.stock_remaining == 0
    }

    /// Goods nobody has bought yet.
    pub fn goods(stock: i64, per_user_limit: i64) -> Self {
        Self {
            stock_remaining: stock,
            buyers: HashMap::new(),
            rules: ItemRules {
                kind: ItemKind::Goods,
                per_user_limit,
            },
            packet_remaining: None,
            generation: 0,
        }
    }

    /// A red packet nobody has grabbed yet.
    pub fn red_packet(total: i64, shares: i64) -> Self {
        Self {
            rules: ItemRules {
                kind: ItemKind::RedPacket,
                per_user_limit: 1,
            },
            packet_remaining: Some(total),
            ..Self::goods(shares, 1)
        }
    }

    /// Why no request may ask this quantity of this item (`None`: it may). Such a request is
    /// refused before deciding, like a request for an unknown item; the API refuses it too.
    pub fn refusal(&self, quantity: i64) -> Option<String> {
        self.rules.check_quantity(quantity).err().map(|e| e.0)
    }

    /// Applies the rule ([`ItemRules::judge`]) to one request and, if it may buy, takes the
    /// units from the stock and gives them to the user. A red packet draws the share here, from
    /// what is left (see [`draw_share`]). The quantity must pass [`ItemState::refusal`].
    pub fn decide(
        &mut self,
        user_id: &str,
        quantity: i64,
        rng: &mut impl Rng,
        new_order_id: impl FnOnce() -> Uuid,
    ) -> Result<Sold, Refusal> {
        debug_assert!(self.refusal(quantity).is_none(), "quantity {quantity}");
        debug_assert_eq!(
            self.rules.kind == ItemKind::RedPacket,
            self.packet_remaining.is_some(),
            "a red packet, and only a red packet, has an amount left"
        );
        self.rules
            .judge(self.buyers.get(user_id), quantity, self.stock_remaining)?;
        let amount = self.packet_remaining.map(|rest| {
            let share = draw_share(rest, self.stock_remaining, rng);
            self.packet_remaining = Some(rest - share);
            share
        });
        self.stock_remaining -= quantity;
        debug_assert!(self.stock_remaining >= 0, "stock went negative");
        debug_assert!(
            self.packet_remaining
                .is_none_or(|rest| rest >= self.stock_remaining),
            "a share left without its minor unit"
        );
        if let Some(holding) = self.buyers.get_mut(user_id) {
            holding.units += quantity;
            return Ok(Sold {
                order_id: holding.order_id,
                new_order: false,
                amount,
            });
        }
        let order_id = new_order_id();
        self.buyers.insert(
            user_id.to_owned(),
            Holding {
                order_id,
                units: quantity,
            },
        );
        Ok(Sold {
            order_id,
            new_order: true,
            amount,
        })
    }
}
