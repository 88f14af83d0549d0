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
//!
//! What it decides with is the sale's vocabulary ([`crate::sale`]): each item's [`ItemState`],
//! whose rule is the one the lock-based paths apply too; what it adds is the batch — repeats
//! answered alike, and one [`BatchDecision`] for the group commit.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use uuid::Uuid;

use crate::domain::{ItemId, OrderRequest, Outcome, Status};
use crate::sale::{BatchDecision, Holding, ItemState, ItemStock, NewOrder, NewOutcome, Seen, Sold};

/// Per-partition decider: the in-memory state of the items it has seen recently.
#[derive(Debug)]
pub struct Sequencer {
    items: HashMap<ItemId, ItemState>,
    /// When each known item last had a request decided (or was loaded).
    last_used: HashMap<ItemId, Instant>,
    /// Draws red packet shares. Seeded by the caller in tests, so a run can be replayed.
    rng: StdRng,
    /// What the last batch changed, to take it back if its commit is refused.
    last_batch: Vec<Change>,
    /// Known items restocked since their row was read: their row (stock, generation) must be
    /// read again before they are decided, their buyers need not (see [`Sequencer::refresh`]).
    restocked: HashSet<ItemId>,
}

/// One sale's change to an item's state: what it was before.
#[derive(Debug)]
struct Change {
    item_id: ItemId,
    user_id: String,
    stock_remaining: i64,
    packet_remaining: Option<i64>,
    holding: Option<Holding>,
}

impl Default for Sequencer {
    fn default() -> Self {
        Self::new()
    }
}

impl Sequencer {
    pub fn new() -> Self {
        Self::with_rng(StdRng::from_os_rng())
    }

    /// A sequencer drawing red packet shares from `rng` (a seeded one in tests).
    pub fn with_rng(rng: StdRng) -> Self {
        Self {
            items: HashMap::new(),
            last_used: HashMap::new(),
            rng,
            last_batch: Vec::new(),
            restocked: HashSet::new(),
        }
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
        self.restocked.retain(|id| items.contains_key(id));
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
            self.restocked.remove(&id);
        }
    }

    /// Drops everything (a consumer that becomes active rebuilds from the database).
    pub fn forget_all(&mut self) {
        self.items.clear();
        self.last_used.clear();
        self.last_batch.clear();
        self.restocked.clear();
    }

    /// Notes that these items were restocked: their stock and generation are stale, their buyers
    /// are not (a restock writes no order). The caller re-reads their rows before it decides
    /// them ([`Sequencer::restocked`], [`Sequencer::refresh`]) — one row each instead of every
    /// order of the item. Items not in memory are loaded whole anyway and are ignored.
    pub fn mark_restocked(&mut self, item_ids: impl IntoIterator<Item = ItemId>) {
        for id in item_ids {
            if self.items.contains_key(&id) {
                self.restocked.insert(id);
            }
        }
    }

    /// [`Sequencer::mark_restocked`] for every item in memory (restock news was lost).
    pub fn mark_all_restocked(&mut self) {
        self.restocked.extend(self.items.keys().copied());
    }

    /// The items marked restocked, whose rows are to be read for [`Sequencer::refresh`].
    pub fn restocked(&self) -> Vec<ItemId> {
        self.restocked.iter().copied().collect()
    }

    /// Takes the rows read for the items marked restocked, keeping their buyers
    /// ([`ItemState::refresh`]), and clears the marks. A marked item whose row is missing from
    /// `rows` no longer exists: it is forgotten. Only between batches (everything decided is
    /// committed), as the rows must be read then.
    pub fn refresh(&mut self, mut rows: HashMap<ItemId, ItemStock>) {
        for id in std::mem::take(&mut self.restocked) {
            match (self.items.get_mut(&id), rows.remove(&id)) {
                (Some(state), Some(row)) => state.refresh(row),
                (Some(_), None) => self.forget([id]),
                (None, _) => {}
            }
        }
    }

    /// Keeps the last batch's changes for good (its commit succeeded): nothing is left to undo.
    pub fn keep_last_batch(&mut self) {
        self.last_batch.clear();
    }

    /// Takes back every change the last [`Sequencer::decide_batch`] made, leaving each item as
    /// it was before: for a batch whose commit was refused whole (a request id decided before),
    /// which is then decided again without reloading anything. Only right before another call.
    pub fn undo_last_batch(&mut self) {
        while let Some(change) = self.last_batch.pop() {
            let Some(state) = self.items.get_mut(&change.item_id) else {
                continue; // forgotten since: it is reloaded anyway
            };
            state.stock_remaining = change.stock_remaining;
            state.packet_remaining = change.packet_remaining;
            match change.holding {
                Some(holding) => state.buyers.insert(change.user_id, holding),
                None => state.buyers.remove(&change.user_id),
            };
        }
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
        let mut batch = BatchBuilder::default();
        self.last_batch.clear();
        for request in requests {
            if let Some(outcome) = stored
                .get(&request.request_id)
                .or_else(|| batch.decided_here.get(&request.request_id))
            {
                batch.decision.answers.push(*outcome);
                continue;
            }
            let state = self
                .items
                .get_mut(&request.item_id)
                .expect("decide_batch: item state must be loaded before deciding");
            let seen = state.seen_by(&request.user_id);
            let before = Change {
                item_id: request.item_id,
                user_id: request.user_id.clone(),
                stock_remaining: state.stock_remaining,
                packet_remaining: state.packet_remaining,
                holding: state.buyers.get(&request.user_id).copied(),
            };
            let outcome = match state.decide(
                &request.user_id,
                request.quantity,
                &mut self.rng,
                &mut new_order_id,
            ) {
                Err(refusal) => Outcome {
                    request_id: request.request_id,
                    status: refusal.status(),
                    order_id: None,
                    amount: None,
                },
                Ok(sold) => {
                    self.last_batch.push(before);
                    batch.sell(request, sold, state.rules.per_user_limit)
                }
            };
            batch.record(request, outcome, seen);
        }
        batch.decision
    }
}

/// A batch's decision while it is being made, with what it needs to find repeats and the
/// orders it created.
#[derive(Default)]
struct BatchBuilder {
    decision: BatchDecision,
    /// Requests decided earlier in this same batch: a repeat gets the same answer.
    decided_here: HashMap<Uuid, Outcome>,
    /// Orders created in this batch, by id: their index in `decision.new_orders`.
    orders_here: HashMap<Uuid, usize>,
}

impl BatchBuilder {
    /// Adds a sale to what the batch writes: a new order, or units onto the user's order (one
    /// created in this batch, whose insert then carries all its units, or an older one), and the
    /// item's stock (and amount) taken. Returns the request's outcome.
    fn sell(&mut self, request: &OrderRequest, sold: Sold, per_user_limit: i64) -> Outcome {
        let decision = &mut self.decision;
        if sold.new_order {
            self.orders_here
                .insert(sold.order_id, decision.new_orders.len());
            decision.new_orders.push(NewOrder {
                order_id: sold.order_id,
                request_id: request.request_id,
                item_id: request.item_id,
                user_id: request.user_id.clone(),
                quantity: request.quantity,
                per_user_limit,
                amount: sold.amount,
            });
        } else if let Some(&index) = self.orders_here.get(&sold.order_id) {
            decision.new_orders[index].quantity += request.quantity;
        } else {
            *decision.more_units.entry(sold.order_id).or_insert(0) += request.quantity;
        }
        *decision.sold.entry(request.item_id).or_insert(0) += request.quantity;
        if let Some(amount) = sold.amount {
            *decision.spent.entry(request.item_id).or_insert(0) += amount;
        }
        Outcome {
            request_id: request.request_id,
            status: Status::Purchased,
            order_id: Some(sold.order_id),
            amount: sold.amount,
        }
    }

    /// Stores the request's new outcome and answers it.
    fn record(&mut self, request: &OrderRequest, outcome: Outcome, seen: Seen) {
        self.decision.new_outcomes.push(NewOutcome {
            outcome,
            item_id: request.item_id,
            user_id: request.user_id.clone(),
            quantity: request.quantity,
            seen,
        });
        self.decided_here.insert(request.request_id, outcome);
        self.decision.answers.push(outcome);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::sale::draw_share;

    fn request(item_id: ItemId, user: &str) -> OrderRequest {
        units(item_id, user, 1)
    }

    fn units(item_id: ItemId, user: &str, quantity: i64) -> OrderRequest {
        OrderRequest {
            request_id: Uuid::new_v4(),
            item_id,
            user_id: user.into(),
            quantity,
        }
    }

    fn seeded(seed: u64) -> Sequencer {
        Sequencer::with_rng(StdRng::seed_from_u64(seed))
    }

    fn sequencer_with(item_id: ItemId, stock: i64) -> Sequencer {
        let mut s = seeded(1);
        s.insert(item_id, ItemState::goods(stock, 1));
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
    fn an_undone_batch_leaves_every_item_as_it_was() {
        let mut s = seeded(3);
        let mut goods = ItemState::goods(10, 5);
        goods.buyers.insert(
            "a".into(),
            Holding {
                order_id: Uuid::new_v4(),
                units: 1,
            },
        );
        s.insert(1, goods);
        s.insert(2, ItemState::red_packet(1000, 3));
        let first = vec![units(1, "b", 2), request(2, "b")];
        s.decide_batch(&first, &HashMap::new(), Uuid::new_v4);
        let before = (s.state(1).cloned(), s.state(2).cloned());

        // More units for a holder, a new buyer twice, a grab, a refusal: then taken back.
        let refused = vec![
            units(1, "a", 3),
            units(1, "c", 2),
            units(1, "c", 2),
            request(2, "c"),
            request(2, "b"),
        ];
        let d = s.decide_batch(&refused, &HashMap::new(), Uuid::new_v4);
        assert_eq!(d.sold[&1], 7);
        s.undo_last_batch();
        assert_eq!((s.state(1).cloned(), s.state(2).cloned()), before);

        // Decided again, it sells the same units from the same state.
        let again = s.decide_batch(&refused, &HashMap::new(), Uuid::new_v4);
        assert_eq!(again.sold, d.sold);
        assert_eq!(s.state(1).unwrap().stock_remaining, 1);
    }

    #[test]
    fn a_restocked_item_takes_its_new_row_and_keeps_its_buyers() {
        let mut s = sequencer_with(1, 1);
        s.insert(2, ItemState::goods(5, 1));
        let sold = s.decide_batch(&[request(1, "a")], &HashMap::new(), Uuid::new_v4);
        s.keep_last_batch();
        assert_eq!(sold.answers[0].status, Status::Purchased);
        let buyers = s.state(1).unwrap().buyers.clone();

        s.mark_restocked([1, 99]); // 99 is not in memory: it is loaded whole when it comes
        assert_eq!(s.restocked(), [1]);
        let row = ItemStock {
            stock_remaining: 3,
            rules: s.state(1).unwrap().rules,
            packet_remaining: None,
            generation: 1,
        };
        s.refresh(HashMap::from([(1, row)]));
        assert!(s.restocked().is_empty());
        let state = s.state(1).unwrap();
        assert_eq!((state.stock_remaining, state.generation), (3, 1));
        assert_eq!(state.buyers, buyers, "a restock writes no order");
        assert_eq!(
            s.state(2).unwrap().stock_remaining,
            5,
            "not marked: untouched"
        );

        // The buyer is still known: a repeat is refused, new buyers get the new units.
        let reqs = vec![request(1, "a"), request(1, "b")];
        let d = s.decide_batch(&reqs, &HashMap::new(), Uuid::new_v4);
        let statuses: Vec<_> = d.answers.iter().map(|o| o.status).collect();
        assert_eq!(statuses, [Status::AlreadyPurchased, Status::Purchased]);
    }

    #[test]
    fn a_restocked_item_whose_row_is_gone_is_forgotten_and_a_forgotten_one_unmarked() {
        let mut s = sequencer_with(1, 1);
        s.insert(2, ItemState::red_packet(100, 4));
        s.mark_all_restocked();
        let mut marked = s.restocked();
        marked.sort_unstable();
        assert_eq!(marked, [1, 2]);
        s.forget([2]);
        assert_eq!(s.restocked(), [1]);
        s.refresh(HashMap::new());
        assert!(!s.knows(1), "no row: the item no longer exists");
        assert!(s.restocked().is_empty());
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
            amount: None,
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
        s.insert(2, ItemState::goods(1, 1));
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

    fn statuses(d: &BatchDecision) -> Vec<Status> {
        d.answers.iter().map(|o| o.status).collect()
    }

    #[test]
    fn quantities_count_against_the_limit_and_the_stock() {
        let mut s = seeded(1);
        s.insert(1, ItemState::goods(5, 3));
        let reqs = vec![
            units(1, "a", 2),
            units(1, "a", 2), // 2 + 2 > 3: over the limit, takes nothing
            units(1, "b", 3),
            units(1, "a", 1), // 2 + 1 = 3: within the limit, but nothing is left
            units(1, "c", 1), // none left
        ];
        let d = s.decide_batch(&reqs, &HashMap::new(), Uuid::new_v4);
        // Exactly: a gets 2, a is refused 2 more, b gets 3 (3 left), a's 1 more finds none
        // left (sold_out: the limit allows it, the stock does not), c finds none.
        assert_eq!(
            statuses(&d),
            [
                Status::Purchased,
                Status::AlreadyPurchased,
                Status::Purchased,
                Status::SoldOut,
                Status::SoldOut,
            ]
        );
        assert_eq!(d.sold[&1], 5);
        assert_eq!(d.new_orders.len(), 2);
        assert!(d.more_units.is_empty());
        let state = s.state(1).unwrap();
        assert_eq!(state.stock_remaining, 0);
        assert_eq!(state.buyers["a"].units, 2);
        assert_eq!(state.buyers["b"].units, 3);
    }

    #[test]
    fn a_later_purchase_grows_the_users_order_in_the_batch_or_after() {
        let mut s = seeded(1);
        s.insert(1, ItemState::goods(10, 4));
        let d = s.decide_batch(
            &[units(1, "a", 1), units(1, "a", 2)],
            &HashMap::new(),
            Uuid::new_v4,
        );
        assert_eq!(statuses(&d), [Status::Purchased, Status::Purchased]);
        assert_eq!(d.answers[0].order_id, d.answers[1].order_id);
        assert_eq!(d.new_orders.len(), 1);
        assert_eq!(
            d.new_orders[0].quantity, 3,
            "one insert with both purchases"
        );
        assert_eq!(d.new_outcomes[1].quantity, 2);

        let d = s.decide_batch(
            &[units(1, "a", 1), units(1, "a", 1)],
            &HashMap::new(),
            Uuid::new_v4,
        );
        assert_eq!(statuses(&d), [Status::Purchased, Status::AlreadyPurchased]);
        let order_id = d.answers[0].order_id.unwrap();
        assert!(d.new_orders.is_empty());
        assert_eq!(d.more_units, HashMap::from([(order_id, 1)]));
        assert_eq!(d.sold[&1], 1);
        assert_eq!(s.state(1).unwrap().stock_remaining, 6);
    }

    #[test]
    fn refusal_names_quantities_no_request_may_ask() {
        let goods = ItemState::goods(10, 2);
        assert!(goods.refusal(1).is_none() && goods.refusal(2).is_none());
        assert!(goods.refusal(0).unwrap().contains("quantity"));
        assert!(goods.refusal(3).unwrap().contains("per_user_limit"));
        let packet = ItemState::red_packet(100, 5);
        assert!(packet.refusal(1).is_none());
        assert!(packet.refusal(2).unwrap().contains("red packet"));
    }

    #[test]
    fn a_red_packet_pays_out_exactly_its_total_one_share_per_user() {
        let mut s = seeded(42);
        s.insert(1, ItemState::red_packet(1000, 10));
        let mut reqs: Vec<_> = (0..15).map(|i| request(1, &format!("u{i}"))).collect();
        reqs.insert(3, request(1, "u0"));
        let d = s.decide_batch(&reqs, &HashMap::new(), Uuid::new_v4);
        let grabs: Vec<i64> = d.answers.iter().filter_map(|o| o.amount).collect();
        assert_eq!(grabs.len(), 10);
        assert!(grabs.iter().all(|a| *a > 0));
        assert_eq!(grabs.iter().sum::<i64>(), 1000);
        assert_eq!(d.spent[&1], 1000);
        assert_eq!(d.answers[3].status, Status::AlreadyPurchased);
        assert_eq!(
            d.answers
                .iter()
                .filter(|o| o.status == Status::SoldOut)
                .count(),
            5
        );
        for (o, order) in d
            .answers
            .iter()
            .filter(|o| o.status == Status::Purchased)
            .zip(&d.new_orders)
        {
            assert_eq!(o.amount, order.amount);
        }
        let state = s.state(1).unwrap();
        assert_eq!(
            (state.stock_remaining, state.packet_remaining),
            (0, Some(0))
        );
    }

    #[test]
    fn shares_are_drawn_from_the_injected_rng() {
        let run = |seed| {
            let mut s = seeded(seed);
            s.insert(1, ItemState::red_packet(10_000, 20));
            let reqs: Vec<_> = (0..20).map(|i| request(1, &format!("u{i}"))).collect();
            let d = s.decide_batch(&reqs, &HashMap::new(), Uuid::new_v4);
            d.answers
                .iter()
                .map(|o| o.amount.unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5), "same seed, same shares");
        assert_ne!(run(5), run(6));
    }

    #[test]
    fn draw_share_stays_within_its_bounds() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..10_000 {
            let shares = rng.random_range(1..50);
            let remaining = rng.random_range(shares..shares * 100);
            let share = draw_share(remaining, shares, &mut rng);
            assert!(share >= 1, "{share}");
            assert!(remaining - share >= shares - 1, "leaves 1 per later share");
            if shares == 1 {
                assert_eq!(share, remaining);
            } else {
                assert!(share <= (2 * remaining / shares - 1).max(1));
            }
        }
        assert_eq!(draw_share(2, 2, &mut rng), 1);
        assert_eq!(
            draw_share(PACKET_TOTAL_MAX_FOR_TEST, 1, &mut rng),
            PACKET_TOTAL_MAX_FOR_TEST
        );
    }

    const PACKET_TOTAL_MAX_FOR_TEST: i64 = crate::domain::PACKET_TOTAL_MAX;

    /// Random streams of batches with random quantities and limits, goods and red packets, where
    /// some batches "fail to commit": their decisions are forgotten and the state reloaded from
    /// what was committed, as the partition loop does. What was committed always holds: never
    /// more units than stock, never more than the limit per user, a red packet's shares all > 0,
    /// one per user, summing to at most the total and to exactly the total once all are taken.
    #[test]
    fn invariants_hold_for_random_batches_with_quantities_packets_and_redone_commits() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(11);
        for round in 0..300 {
            let packet = round % 3 == 0;
            let (initial, stock, limit, total) = if packet {
                let shares = rng.random_range(1..20);
                let total = rng.random_range(shares..shares * 50 + 1);
                (ItemState::red_packet(total, shares), shares, 1, total)
            } else {
                let stock = rng.random_range(1..40);
                let limit = rng.random_range(1..=stock.min(5));
                (ItemState::goods(stock, limit), stock, limit, 0)
            };
            let users = rng.random_range(1..30);
            let mut s = seeded(round);
            s.insert(1, initial.clone());
            let mut committed = initial;
            // Per user: units and the amounts of their shares, as committed.
            let mut held: HashMap<String, i64> = HashMap::new();
            let mut shares: Vec<(String, i64)> = Vec::new();
            let mut purchases: Vec<Outcome> = Vec::new();
            for _ in 0..rng.random_range(1..8) {
                let reqs: Vec<_> = (0..rng.random_range(0..40))
                    .map(|_| {
                        let q = if packet {
                            1
                        } else {
                            rng.random_range(1..=limit)
                        };
                        units(1, &format!("u{}", rng.random_range(0..users)), q)
                    })
                    .collect();
                let d = s.decide_batch(&reqs, &HashMap::new(), Uuid::new_v4);
                assert_eq!(d.answers.len(), reqs.len());
                if rng.random_bool(0.3) {
                    // The commit failed: nothing of it counts; reload what was committed.
                    s.forget([1]);
                    s.insert(1, committed.clone());
                    continue;
                }
                committed = s.state(1).unwrap().clone();
                for (r, o) in reqs.iter().zip(&d.answers) {
                    assert_eq!(o.order_id.is_some(), o.status == Status::Purchased);
                    assert_eq!(o.amount.is_some(), packet && o.status == Status::Purchased);
                    if o.status == Status::Purchased {
                        *held.entry(r.user_id.clone()).or_insert(0) += r.quantity;
                        purchases.push(*o);
                        if let Some(a) = o.amount {
                            shares.push((r.user_id.clone(), a));
                        }
                    }
                }
                let units_in_batch: i64 = d.new_orders.iter().map(|o| o.quantity).sum::<i64>()
                    + d.more_units.values().sum::<i64>();
                assert_eq!(units_in_batch, d.sold.get(&1).copied().unwrap_or(0));
            }
            let sold: i64 = held.values().sum();
            assert!(sold <= stock, "oversold: {sold} of {stock}");
            assert_eq!(committed.stock_remaining, stock - sold);
            assert!(held.values().all(|u| *u <= limit), "over the limit");
            for (user, units) in &held {
                assert_eq!(committed.buyers[user].units, *units);
            }
            if packet {
                let paid: i64 = shares.iter().map(|(_, a)| a).sum();
                assert!(shares.iter().all(|(_, a)| *a > 0), "a zero share");
                let grabbers: HashSet<_> = shares.iter().map(|(u, _)| u).collect();
                assert_eq!(grabbers.len(), shares.len(), "one share per user");
                assert!(paid <= total);
                assert_eq!(committed.packet_remaining, Some(total - paid));
                if committed.stock_remaining == 0 {
                    assert_eq!(paid, total, "all shares taken: the total exactly");
                }
            }
        }
    }
}
