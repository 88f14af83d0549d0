//! What one batch of decisions writes and answers: built by the sequencer, written by the
//! store's group commit.

use std::collections::HashMap;

use uuid::Uuid;

use crate::domain::{ItemId, Outcome};

/// A new order to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub order_id: Uuid,
    pub request_id: Uuid,
    pub item_id: ItemId,
    pub user_id: String,
    /// Units it holds: this request's, plus those of the same user's later requests in the batch.
    pub quantity: i64,
    /// The item's limit (the database checks `quantity` against it).
    pub per_user_limit: i64,
    /// The red packet share; `None` for goods.
    pub amount: Option<i64>,
}

/// A decision made in this batch, to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOutcome {
    pub outcome: Outcome,
    pub item_id: ItemId,
    pub user_id: String,
    /// Units the request asked for.
    pub quantity: i64,
    /// What the decider knew when it decided, stored for the audit.
    pub seen: Seen,
}

/// What a decider knew of an item when it decided one request: the units left and the units
/// this user held. Stored with the outcome, so the audit judges the verdict against the state
/// it was decided in (`migrations/0010_decision_context.sql`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    pub stock: i64,
    pub held: i64,
}

/// Everything one batch decided: what to write, and what to answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BatchDecision {
    /// One outcome per input request, in input order (repeats and stored ones included).
    pub answers: Vec<Outcome>,
    /// Decisions that are new and must be committed.
    pub new_outcomes: Vec<NewOutcome>,
    pub new_orders: Vec<NewOrder>,
    /// Units added to orders committed before this batch, per order.
    pub more_units: HashMap<Uuid, i64>,
    /// Units sold per item in this batch, for the single stock update per item.
    pub sold: HashMap<ItemId, i64>,
    /// Red packet amounts paid out per item in this batch, for the same update.
    pub spent: HashMap<ItemId, i64>,
}
