//! The decider: a pure, synchronous state machine. Requests go in, in the order the broker
//! delivered them; outcomes come out. No I/O, no locks, no clock — the consumer loop does the
//! I/O around it, which makes the rules easy to test exhaustively and to reason about.
//!
//! Memory is bounded by the hot set, not by every item ever sold: an item's state is loaded on
//! first use and dropped once idle ([`Sequencer::evict_idle`]); the caller passes the time in.
//!
//! Why it needs no lock: for each item exactly one sequencer is alive (one active consumer per
//! partition queue, and an item always routes to the same partition), so nothing else changes
//! the item's stock or buyers while it decides. The database constraints remain as a backstop.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::domain::{ItemId, OrderRequest, Outcome, Status};

/// What the sequencer knows about one item: rebuilt from the database on first use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemState {
    /// Units left to sell. Never negative.
    pub stock_remaining: i64,
    /// Users holding an order for this item.
    pub buyers: HashSet<String>,
}

impl ItemState {
    /// True when no request can be sold anything any more (until a restock).
    pub fn is_sold_out(&self) -> bool {
        self.stock_remaining == 0
    }

    /// Applies the rules to one request. The buyer check comes first: a repeat buyer must never
    /// take stock, and is told `already_purchased` even when stock has run out.
    pub fn decide(&mut self, user_id: &str) -> Status {
        if self.buyers.contains(user_id) {
            Status::AlreadyPurchased
        } else if self.stock_remaining == 0 {
            Status::SoldOut
        } else {
            self.stock_remaining -= 1;
            self.buyers.insert(user_id.to_owned());
            debug_assert!(self.stock_remaining >= 0, "stock went negative");
            Status::Purchased
        }
    }
}

/// A new order to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub order_id: Uuid,
    pub request_id: Uuid,
    pub item_id: ItemId,
    pub user_id: String,
}

/// A decision made in this batch, to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOutcome {
    pub outcome: Outcome,
    pub item_id: ItemId,
    pub user_id: String,
}

/// Everything one batch decided: what to write, and what to answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BatchDecision {
    /// One outcome per input request, in input order (repeats and stored ones included).
    pub answers: Vec<Outcome>,
    /// Decisions that are new and must be committed.
    pub new_outcomes: Vec<NewOutcome>,
    pub new_orders: Vec<NewOrder>,
    /// Units sold per item in this batch, for the single stock update per item.
    pub sold: HashMap<ItemId, i64>,
}

/// Per-partition decider: the in-memory state of the items it has seen recently.
#[derive(Debug, Default)]
pub struct Sequencer {
    items: HashMap<ItemId, ItemState>,
    /// When each known item last had a request decided (or was loaded).
    last_used: HashMap<ItemId, Instant>,
}

impl Sequencer {
    pub fn new() -> Self {
        Self::default()
    }

    /// True when the item's state is in memory (else load it with [`Sequencer::insert`]).
    pub fn knows(&self, item_id: ItemId) -> bool {
        self.items.contains_key(&item_id)
    }

    /// Number of items whose state is in memory.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn insert(&mut self, item_id: ItemId, state: ItemState) {
        self.items.insert(item_id, state);
    }

    /// Marks these items as used at `now` (they will not be evicted before `now + idle`).
    pub fn touch(&mut self, item_ids: impl IntoIterator<Item = ItemId>, now: Instant) {
        for id in item_ids {
            if self.items.contains_key(&id) {
                self.last_used.insert(id, now);
            }
        }
    }

    /// Drops the state of every item not used for `idle` (an item never touched counts as idle).
    /// Safe at any time between batches: everything decided is committed, and an evicted item
    /// is simply loaded again from the database when its next request comes. Returns how many
    /// items were dropped.
    pub fn evict_idle(&mut self, now: Instant, idle: Duration) -> usize {
        let before = self.items.len();
        let last_used = &self.last_used;
        self.items.retain(|id, _| {
            last_used
                .get(id)
                .is_some_and(|used| now.saturating_duration_since(*used) < idle)
        });
        let items = &self.items;
        self.last_used.retain(|id, _| items.contains_key(id));
        let evicted = before - self.items.len();
        if evicted > 0 && self.items.capacity() > 4 * self.items.len().max(16) {
            // Give the memory of a sale that is over back, not just the entries.
            self.items.shrink_to_fit();
            self.last_used.shrink_to_fit();
        }
        evicted
    }

    /// Drops what it knows of these items, so they are reloaded from the database. Called when a
    /// batch could not be committed: its in-memory decisions were never made durable.
    pub fn forget(&mut self, item_ids: impl IntoIterator<Item = ItemId>) {
        for id in item_ids {
            self.items.remove(&id);
            self.last_used.remove(&id);
        }
    }

    /// Drops everything (a consumer that becomes active rebuilds from the database).
    pub fn forget_all(&mut self) {
        self.items.clear();
        self.last_used.clear();
    }

    pub fn state(&self, item_id: ItemId) -> Option<&ItemState> {
        self.items.get(&item_id)
    }

    /// Decides a batch in order. `stored` holds the outcomes already in the database for any of
    /// these request ids (a redelivery, or a client retry): those are answered, not decided again.
    /// Every item of the batch must be known (see [`Sequencer::knows`]).
    pub fn decide_batch(
        &mut self,
        requests: &[OrderRequest],
        stored: &HashMap<Uuid, Outcome>,
        mut new_order_id: impl FnMut() -> Uuid,
    ) -> BatchDecision {
        let mut decision = BatchDecision::default();
        // Requests decided earlier in this same batch: a repeat gets the same answer.
        let mut decided_here: HashMap<Uuid, Outcome> = HashMap::new();
        for request in requests {
            if let Some(outcome) = stored
                .get(&request.request_id)
                .or_else(|| decided_here.get(&request.request_id))
            {
                decision.answers.push(*outcome);
                continue;
            }
            let state = self
                .items
                .get_mut(&request.item_id)
                .expect("decide_batch: item state must be loaded before deciding");
            let status = state.decide(&request.user_id);
            let order_id = (status == Status::Purchased).then(&mut new_order_id);
            let outcome = Outcome {
                request_id: request.request_id,
                status,
                order_id,
            };
            if let Some(order_id) = order_id {
                decision.new_orders.push(NewOrder {
                    order_id,
                    request_id: request.request_id,
                    item_id: request.item_id,
                    user_id: request.user_id.clone(),
                });
                *decision.sold.entry(request.item_id).or_insert(0) += 1;
            }
            decision.new_outcomes.push(NewOutcome {
                outcome,
                item_id: request.item_id,
                user_id: request.user_id.clone(),
            });
            decided_here.insert(request.request_id, outcome);
            decision.answers.push(outcome);
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(item_id: ItemId, user: &str) -> OrderRequest {
        OrderRequest {
            request_id: Uuid::new_v4(),
            item_id,
            user_id: user.into(),
        }
    }

    fn sequencer_with(item_id: ItemId, stock: i64) -> Sequencer {
        let mut s = Sequencer::new();
        s.insert(
            item_id,
            ItemState {
                stock_remaining: stock,
                buyers: HashSet::new(),
            },
        );
        s
    }

    #[test]
    fn sells_until_stock_runs_out_then_sold_out() {
        let mut s = sequencer_with(1, 2);
        let reqs = vec![request(1, "a"), request(1, "b"), request(1, "c")];
        let d = s.decide_batch(&reqs, &HashMap::new(), Uuid::new_v4);
        let statuses: Vec<_> = d.answers.iter().map(|o| o.status).collect();
        assert_eq!(
            statuses,
            [Status::Purchased, Status::Purchased, Status::SoldOut]
        );
        assert_eq!(d.new_orders.len(), 2);
        assert_eq!(d.new_outcomes.len(), 3);
        assert_eq!(d.sold[&1], 2);
        assert_eq!(s.state(1).unwrap().stock_remaining, 0);
    }

    #[test]
    fn repeat_buyer_never_takes_stock_and_is_told_so_even_when_sold_out() {
        let mut s = sequencer_with(1, 2);
        let reqs = vec![
            request(1, "a"),
            request(1, "a"),
            request(1, "b"),
            request(1, "a"),
        ];
        let d = s.decide_batch(&reqs, &HashMap::new(), Uuid::new_v4);
        let statuses: Vec<_> = d.answers.iter().map(|o| o.status).collect();
        assert_eq!(
            statuses,
            [
                Status::Purchased,
                Status::AlreadyPurchased,
                Status::Purchased,
                Status::AlreadyPurchased
            ]
        );
        assert_eq!(d.sold[&1], 2);
    }

    #[test]
    fn repeated_request_id_gets_the_same_answer_and_is_stored_once() {
        let mut s = sequencer_with(1, 5);
        let r = request(1, "a");
        let d = s.decide_batch(&[r.clone(), r.clone()], &HashMap::new(), Uuid::new_v4);
        assert_eq!(d.answers[0], d.answers[1]);
        assert_eq!(d.new_outcomes.len(), 1);
        assert_eq!(d.new_orders.len(), 1);
        assert_eq!(s.state(1).unwrap().stock_remaining, 4);
    }

    #[test]
    fn stored_outcome_is_answered_not_decided_again() {
        let mut s = sequencer_with(1, 5);
        let r = request(1, "a");
        let earlier = Outcome {
            request_id: r.request_id,
            status: Status::Purchased,
            order_id: Some(Uuid::new_v4()),
        };
        let stored = HashMap::from([(r.request_id, earlier)]);
        let d = s.decide_batch(&[r], &stored, Uuid::new_v4);
        assert_eq!(d.answers, vec![earlier]);
        assert!(d.new_outcomes.is_empty() && d.new_orders.is_empty() && d.sold.is_empty());
        assert_eq!(s.state(1).unwrap().stock_remaining, 5);
    }

    #[test]
    fn items_are_independent_and_forget_drops_state() {
        let mut s = sequencer_with(1, 1);
        s.insert(
            2,
            ItemState {
                stock_remaining: 1,
                buyers: HashSet::new(),
            },
        );
        let d = s.decide_batch(
            &[request(1, "a"), request(2, "a")],
            &HashMap::new(),
            Uuid::new_v4,
        );
        assert!(d.answers.iter().all(|o| o.status == Status::Purchased));
        s.forget([1]);
        assert!(!s.knows(1) && s.knows(2));
    }

    #[test]
    fn idle_items_are_evicted_and_used_ones_kept() {
        let start = Instant::now();
        let idle = Duration::from_secs(60);
        let mut s = sequencer_with(1, 5);
        s.insert(2, ItemState::default());
        s.insert(3, ItemState::default());
        s.touch([1, 2, 3], start);
        s.touch([1, 99], start + Duration::from_secs(50)); // 99 is unknown: ignored
        assert_eq!(s.evict_idle(start + Duration::from_secs(59), idle), 0);
        assert_eq!(s.evict_idle(start + Duration::from_secs(61), idle), 2);
        assert!(s.knows(1) && !s.knows(2) && !s.knows(3) && !s.knows(99));
        assert_eq!(s.len(), 1);
        // Never touched (loaded but not yet used) counts as idle.
        s.insert(4, ItemState::default());
        assert_eq!(s.evict_idle(start + Duration::from_secs(62), idle), 1);
        assert!(s.knows(1) && !s.knows(4));
        assert_eq!(s.evict_idle(start + Duration::from_secs(200), idle), 1);
        assert!(s.is_empty());
    }

    /// Exhaustive check of the invariants on many random interleavings: never more orders than
    /// stock, never two per user, and every purchase has an order id.
    #[test]
    fn invariants_hold_for_random_request_streams() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let stock = rng.random_range(0..20);
            let users = rng.random_range(1..30);
            let mut s = sequencer_with(1, stock);
            let reqs: Vec<_> = (0..rng.random_range(0..100))
                .map(|_| request(1, &format!("u{}", rng.random_range(0..users))))
                .collect();
            let d = s.decide_batch(&reqs, &HashMap::new(), Uuid::new_v4);
            let buyers: HashSet<_> = d.new_orders.iter().map(|o| o.user_id.clone()).collect();
            assert!(d.new_orders.len() as i64 <= stock);
            assert_eq!(buyers.len(), d.new_orders.len());
            // Sold out only once stock really is gone.
            let distinct_users: HashSet<_> = reqs.iter().map(|r| r.user_id.clone()).collect();
            assert_eq!(
                d.new_orders.len() as i64,
                stock.min(distinct_users.len() as i64)
            );
            for o in &d.answers {
                assert_eq!(o.order_id.is_some(), o.status == Status::Purchased);
            }
        }
    }
}
