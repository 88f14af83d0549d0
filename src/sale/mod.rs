//! The rules of a sale, below everything that sells: what an item allows, what is known of it
//! while it sells, what one request is told, and what a batch of decisions writes. The store
//! persists these types, the lock-based paths and the queue path's sequencer decide with them,
//! and none of them needs the others to do so.
//!
//! The purchase rule itself is [`ItemRules::judge`] — limit first, then stock — and every path
//! that decides in its own code (the sequencer, and the paths that hold the item's lock) calls
//! it, so the rule is written once.

mod batch;
mod path_name;
mod rules;
mod share;
mod state;

pub use batch::{BatchDecision, NewOrder, NewOutcome, Seen};
pub use path_name::{PathName, UnknownPath};
pub use rules::{ItemRules, Refusal};
pub use share::draw_share;
pub use state::{Holding, ItemState, ItemStock, Sold};
