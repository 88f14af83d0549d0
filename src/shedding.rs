//! Load shedding once an item is sold out. After the last unit, a flash sale's rush is all
//! `sold_out` answers; sending each one through the broker and the consumer costs the same as a
//! real purchase. Instead the consumer announces the item sold out (see
//! [`crate::broker::item_events`]) and every API instance answers `sold_out` at the door.
//!
//! An answer at the door is still a decision like any other: it is recorded in `outcomes`
//! (batched, one insert for many requests), so `GET /orders/{id}`, the audit and the benchmark
//! see it, and a request id decided earlier (a client's retry) gets its stored answer, never a
//! contradicting one. Stock only grows by a restock, which is announced and clears the mark; a
//! mark also ages out after `ttl`, so a lost announcement costs at most `ttl` of wrong answers.
//! What shedding gives up: a repeat buyer of a sold-out item hears `sold_out` rather than
//! `already_purchased` (both mean "no new order").

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::batcher::Batcher;
use crate::broker::item_events::{self, Heard, ItemEvent};
use crate::broker::topology::Topology;
use crate::domain::{ItemId, OrderRequest, Outcome};
use crate::store;

/// Most answers one insert records.
const BATCH_SIZE_MAX: usize = 1000;
/// Most answers waiting to be recorded; past it callers wait.
const QUEUE_LEN_MAX: usize = 10_000;

/// The items announced sold out, each until its mark ages out.
#[derive(Debug)]
pub struct SoldOutBoard {
    ttl: Duration,
    marks: RwLock<HashMap<ItemId, Instant>>,
}

impl SoldOutBoard {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            marks: RwLock::default(),
        }
    }

    pub fn is_sold_out(&self, item_id: ItemId, now: Instant) -> bool {
        let marks = self.marks.read().expect("sold-out marks lock");
        marks
            .get(&item_id)
            .is_some_and(|marked| now.saturating_duration_since(*marked) < self.ttl)
    }

    pub fn hear(&self, heard: Heard, now: Instant) {
        let mut marks = self.marks.write().expect("sold-out marks lock");
        match heard {
            Heard::Event(ItemEvent::SoldOut { item_id }) => {
                marks.insert(item_id, now);
                // Marks of sales long over go, so the board stays the size of the live sales.
                if marks.len() > 1024 {
                    let ttl = self.ttl;
                    marks.retain(|_, marked| now.saturating_duration_since(*marked) < ttl);
                }
            }
            Heard::Event(ItemEvent::Restocked { item_id }) => {
                marks.remove(&item_id);
            }
            // A restock may have been missed: trust no mark.
            Heard::MayHaveMissedSome => marks.clear(),
        }
    }
}

/// The board, kept up to date by a listener, and the writer of the answers given at the door.
pub struct Shedder {
    board: Arc<SoldOutBoard>,
    answers: Batcher<OrderRequest, Outcome>,
}

impl Shedder {
    /// A shedder whose marks last `ttl`, with its answer writer started. It hears nothing until
    /// [`Shedder::listen`] runs.
    pub fn new(pool: PgPool, ttl: Duration) -> Arc<Self> {
        let answers = Batcher::start(
            "sold-out answers",
            BATCH_SIZE_MAX,
            QUEUE_LEN_MAX,
            move |requests| {
                let pool = pool.clone();
                async move {
                    store::record_sold_out_at_the_door(&pool, &requests)
                        .await
                        .map_err(|e| format!("cannot record a sold_out answer: {e}"))
                }
            },
        );
        Arc::new(Self {
            board: Arc::new(SoldOutBoard::new(ttl)),
            answers,
        })
    }

    /// Listens to the item announcements until `shutdown`, reconnecting as needed: the task the
    /// caller runs beside the API.
    pub fn listen(
        &self,
        amqp_url: &str,
        topology: Topology,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let board = Arc::clone(&self.board);
        let name = format!("seckill-api-events {}", topology.item_events_exchange());
        item_events::listen(
            amqp_url.to_owned(),
            topology,
            name,
            move |heard| board.hear(heard, Instant::now()),
            shutdown,
        )
    }

    /// Forgets the item's mark (this instance restocked it: it need not wait for the echo).
    pub fn forget(&self, item_id: ItemId) {
        self.board.hear(
            Heard::Event(ItemEvent::Restocked { item_id }),
            Instant::now(),
        );
    }

    /// If the item is announced sold out, the request's answer, recorded (or the one stored
    /// for its id earlier); `None` when the request must go to the decider.
    pub async fn try_answer(&self, request: &OrderRequest) -> Result<Option<Outcome>, String> {
        if !self.board.is_sold_out(request.item_id, Instant::now()) {
            return Ok(None);
        }
        let outcome = self.answers.call(request.clone()).await?;
        crate::metrics::get().orders_shed_sold_out.inc();
        Ok(Some(outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_follow_announcements_and_age_out() {
        let board = SoldOutBoard::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert!(!board.is_sold_out(1, t0));
        board.hear(Heard::Event(ItemEvent::SoldOut { item_id: 1 }), t0);
        board.hear(Heard::Event(ItemEvent::SoldOut { item_id: 2 }), t0);
        assert!(board.is_sold_out(1, t0 + Duration::from_secs(4)));
        assert!(
            !board.is_sold_out(1, t0 + Duration::from_secs(5)),
            "aged out"
        );
        board.hear(Heard::Event(ItemEvent::Restocked { item_id: 1 }), t0);
        assert!(!board.is_sold_out(1, t0) && board.is_sold_out(2, t0));
        board.hear(Heard::MayHaveMissedSome, t0);
        assert!(!board.is_sold_out(2, t0), "a reconnect clears every mark");
    }
}
