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
//!
//! Announcements are ordered by the item's generation (its restock count, see
//! [`crate::broker::item_events`]): the board remembers, per item, the newest generation it
//! heard of, and ignores a `sold_out` of an older one — decided before a restock this instance
//! knows of, and announced after it (a batch announces once it has committed). Without that, a
//! stale `sold_out` arriving just after `restocked` would shed a restocked item for `ttl`, and
//! store those `sold_out` answers for good. A `restocked` of an older generation than a
//! `sold_out` heard is stale too (the `sold_out` was decided with that restock's units) and
//! ignored. Only announcements a trusted announcer published are heard at all (their
//! `user_id`, checked by the broker, see [`crate::broker::item_events`]): a client that may
//! publish to the exchange cannot shed an item.
//!
//! What shedding gives up: a repeat buyer of a sold-out item hears `sold_out` rather than
//! `already_purchased` (both mean "no new order").

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::batcher::Batcher;
use crate::broker::item_events::{self, Announcers, Heard, ItemEvent};
use crate::broker::topology::Topology;
use crate::domain::{ItemId, OrderRequest, Outcome};
use crate::store;

/// Most answers one insert records.
const BATCH_SIZE_MAX: usize = 1000;
/// Most answers waiting to be recorded; past it callers wait.
const QUEUE_LEN_MAX: usize = 10_000;

/// Items the board holds before it drops those it has not heard of lately.
const ITEMS_KEPT_MAX: usize = 1024;

/// Shortest time the board remembers an item's newest generation after its last announcement:
/// far longer than a batch takes to commit and announce, so a stale `sold_out` never finds its
/// item forgotten.
const GENERATION_KEPT_MIN: Duration = Duration::from_secs(60);

/// The items announced sold out, each until its mark ages out, and the newest generation heard
/// of each.
#[derive(Debug)]
pub struct SoldOutBoard {
    ttl: Duration,
    marks: RwLock<HashMap<ItemId, Mark>>,
}

/// What the board knows of one item.
#[derive(Debug, Clone, Copy)]
struct Mark {
    /// The newest generation any announcement of the item spoke of.
    generation: i64,
    /// When it was last announced sold out (in `generation`); `None` once restocked.
    sold_out_at: Option<Instant>,
    /// When the item was last announced anything: entries not heard of lately are dropped.
    heard_at: Instant,
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
            .and_then(|mark| mark.sold_out_at)
            .is_some_and(|marked| now.saturating_duration_since(marked) < self.ttl)
    }

    pub fn hear(&self, heard: Heard, now: Instant) {
        let mut marks = self.marks.write().expect("sold-out marks lock");
        let event = match heard {
            Heard::Event(event) => event,
            // A restock may have been missed: trust no mark. The generations stay: they were
            // heard, and still order what comes next.
            Heard::MayHaveMissedSome => {
                marks.values_mut().for_each(|mark| mark.sold_out_at = None);
                return;
            }
        };
        let (item_id, generation) = (event.item_id(), event.generation());
        // A `sold_out` of generation g was decided after restock g: a `restocked` of g heard
        // after it is older news too.
        if let Some(mark) = marks.get(&item_id)
            && (mark.generation > generation
                || (mark.generation == generation
                    && mark.sold_out_at.is_some()
                    && matches!(event, ItemEvent::Restocked { .. })))
        {
            tracing::debug!(
                item_id,
                generation,
                newest = mark.generation,
                ?event,
                "ignoring an announcement older than the item's newest generation heard"
            );
            return;
        }
        let sold_out_at = match event {
            ItemEvent::SoldOut { .. } => Some(now),
            ItemEvent::Restocked { .. } => None,
        };
        marks.insert(
            item_id,
            Mark {
                generation,
                sold_out_at,
                heard_at: now,
            },
        );
        // Items of sales long over go, so the board stays the size of the live sales.
        if marks.len() > ITEMS_KEPT_MAX {
            let kept = self.ttl.max(GENERATION_KEPT_MIN);
            marks.retain(|_, mark| now.saturating_duration_since(mark.heard_at) < kept);
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

    /// Listens to the item announcements of `announcers` until `shutdown`, reconnecting as
    /// needed: the task the caller runs beside the API.
    pub fn listen(
        &self,
        amqp_url: &str,
        topology: Topology,
        announcers: Announcers,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let board = Arc::clone(&self.board);
        let name = format!("seckill-api-events {}", topology.item_events_exchange());
        item_events::listen(
            amqp_url.to_owned(),
            topology,
            name,
            announcers,
            move |heard| board.hear(heard, Instant::now()),
            shutdown,
        )
    }

    /// Forgets the item's mark: this instance restocked it, giving it `generation` (it need
    /// not wait for the echo).
    pub fn restocked(&self, item_id: ItemId, generation: i64) {
        self.board.hear(
            Heard::Event(ItemEvent::Restocked {
                item_id,
                generation,
            }),
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

    fn sold_out(item_id: ItemId, generation: i64) -> Heard {
        Heard::Event(ItemEvent::SoldOut {
            item_id,
            generation,
        })
    }

    fn restocked(item_id: ItemId, generation: i64) -> Heard {
        Heard::Event(ItemEvent::Restocked {
            item_id,
            generation,
        })
    }

    #[test]
    fn marks_follow_announcements_and_age_out() {
        let board = SoldOutBoard::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert!(!board.is_sold_out(1, t0));
        board.hear(sold_out(1, 0), t0);
        board.hear(sold_out(2, 0), t0);
        assert!(board.is_sold_out(1, t0 + Duration::from_secs(4)));
        assert!(
            !board.is_sold_out(1, t0 + Duration::from_secs(5)),
            "aged out"
        );
        board.hear(restocked(1, 1), t0);
        assert!(!board.is_sold_out(1, t0) && board.is_sold_out(2, t0));
        board.hear(Heard::MayHaveMissedSome, t0);
        assert!(!board.is_sold_out(2, t0), "a reconnect clears every mark");
    }

    #[test]
    fn a_sold_out_older_than_a_restock_heard_is_ignored() {
        let board = SoldOutBoard::new(Duration::from_secs(600));
        let t0 = Instant::now();
        board.hear(sold_out(1, 0), t0);
        board.hear(restocked(1, 1), t0);
        // Decided before the restock, announced after it.
        board.hear(sold_out(1, 0), t0);
        assert!(
            !board.is_sold_out(1, t0),
            "a stale sold_out shed a restocked item"
        );
        // Decided with the restock's units: it counts.
        board.hear(sold_out(1, 1), t0);
        assert!(board.is_sold_out(1, t0));
        // A restock heard late, after a sold_out that already sold its units: stale too.
        board.hear(restocked(1, 1), t0);
        assert!(
            board.is_sold_out(1, t0),
            "the same generation's restock, heard after its sold_out, is stale"
        );
        board.hear(sold_out(1, 2), t0);
        board.hear(restocked(1, 1), t0);
        assert!(
            board.is_sold_out(1, t0),
            "an older restock must not clear a newer sold_out"
        );
        // A sold_out may arrive first; a later generation's restock still clears it.
        board.hear(sold_out(2, 0), t0);
        board.hear(restocked(2, 3), t0);
        assert!(!board.is_sold_out(2, t0));
    }

    #[test]
    fn generations_outlive_marks_aging_out_and_reconnects() {
        let ttl = Duration::from_secs(1);
        let board = SoldOutBoard::new(ttl);
        let t0 = Instant::now();
        board.hear(restocked(1, 4), t0);
        board.hear(Heard::MayHaveMissedSome, t0);
        board.hear(sold_out(1, 3), t0);
        assert!(
            !board.is_sold_out(1, t0),
            "a reconnect forgot the generation"
        );
        // Many other items later, past the mark's ttl but within the generation's memory.
        let later = t0 + ttl * 10;
        for item in 100..(100 + ITEMS_KEPT_MAX as ItemId + 1) {
            board.hear(sold_out(item, 0), later);
        }
        board.hear(sold_out(1, 3), later);
        assert!(
            !board.is_sold_out(1, later),
            "pruning forgot the generation"
        );
        // Long after, the item is forgotten with its generation, and any announcement counts.
        let much_later = later + GENERATION_KEPT_MIN;
        for item in 5000..(5000 + ITEMS_KEPT_MAX as ItemId + 1) {
            board.hear(sold_out(item, 0), much_later);
        }
        assert!(board.marks.read().unwrap().len() <= ITEMS_KEPT_MAX + 1);
        board.hear(sold_out(1, 0), much_later);
        assert!(board.is_sold_out(1, much_later));
    }
}
