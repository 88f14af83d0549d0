//! Item announcements, on the fanout exchange `{prefix}.item-events`. The consumer announces
//! `sold_out` after the commit that sold an item's last unit (and again after any batch that
//! decided `sold_out` for it, so an API instance started later learns it too); an API instance
//! announces `restocked` after adding units. Every API instance then answers `sold_out` for the
//! item at the door, without publishing (see [`crate::shedding`]), and every consumer drops its
//! in-memory state of a restocked item, so the next request reloads the new stock.
//!
//! Announcements are hints, never the truth: they are transient and may be lost (a listener
//! that was disconnected misses them). The truth stays with the one decider per item and the
//! database, and every hint ages out (see `SECKILL_SOLD_OUT_TTL_MS`). A consumer needs no
//! `restocked` to sell a restock: before it answers `sold_out` it checks the item's stored
//! generation (see [`crate::store::restock`]).
//!
//! Each announcement carries the item's `generation`, its restock count: a `sold_out` the
//! generation its decider's state was loaded at, a `restocked` the generation its restock gave
//! the item. They arrive from several publishers in no guaranteed order, so a listener orders
//! them by it: a `sold_out` decided before a restock (announced after its batch committed,
//! possibly after the `restocked`) is of an older generation, and is ignored by a listener that
//! heard of the restock.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::topology::Topology;
use crate::domain::ItemId;

/// The JSON body of an announcement: `{"event": "sold_out", "item_id": 7, "generation": 2}`
/// or `{"event": "restocked", "item_id": 7, "generation": 3}`. Every field is required.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ItemEvent {
    /// Every unit is sold, as of the item's `generation` (its restock count) the decider's state
    /// was loaded at: requests for it can be answered `sold_out` without deciding, unless a
    /// later generation was heard of.
    SoldOut { item_id: ItemId, generation: i64 },
    /// Units were added by the restock that gave the item this `generation`: forget any
    /// `sold_out` mark of an earlier generation, and any in-memory stock of the item.
    Restocked { item_id: ItemId, generation: i64 },
}

impl ItemEvent {
    pub fn item_id(&self) -> ItemId {
        match *self {
            Self::SoldOut { item_id, .. } | Self::Restocked { item_id, .. } => item_id,
        }
    }

    /// The item's generation the announcement speaks of: announcements of one item are ordered
    /// by it, whoever sent them and in whatever order they arrive.
    pub fn generation(&self) -> i64 {
        match *self {
            Self::SoldOut { generation, .. } | Self::Restocked { generation, .. } => generation,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an item event always serializes")
    }

    pub fn decode(body: &[u8]) -> Option<Self> {
        serde_json::from_slice(body).ok()
    }
}

/// Publishes an announcement on `channel`. Returns once the frame is handed over; the caller
/// awaits the confirm if the channel is in confirm mode.
pub async fn publish(
    channel: &Channel,
    topology: &Topology,
    event: &ItemEvent,
) -> lapin::Result<lapin::PublisherConfirm> {
    channel
        .basic_publish(
            topology.item_events_exchange().into(),
            "".into(),
            BasicPublishOptions::default(),
            &event.encode(),
            // Transient: a hint that outlived a broker restart would be stale anyway.
            BasicProperties::default().with_content_type(super::message::CONTENT_TYPE_JSON.into()),
        )
        .await
}

/// Binds a queue of this listener's own (server-named, exclusive: it goes with the connection)
/// to the exchange and consumes it without acks.
pub async fn subscribe(channel: &Channel, topology: &Topology) -> lapin::Result<lapin::Consumer> {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            topology.item_events_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_consume(
            queue.name().clone(),
            "seckill-item-events".into(),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// What a long-lived listener hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    Event(ItemEvent),
    /// The listener was (re)connected: announcements made meanwhile were missed.
    MayHaveMissedSome,
}

/// Listens until `shutdown`, reconnecting with backoff after a broker outage, and hands each
/// announcement to `on_heard`.
pub async fn listen(
    amqp_url: String,
    topology: Topology,
    connection_name: String,
    mut on_heard: impl FnMut(Heard) + Send,
    shutdown: CancellationToken,
) {
    let mut attempt = 0;
    loop {
        let session = async {
            let connection = super::connect(&amqp_url, &connection_name).await?;
            let channel = connection.create_channel().await?;
            topology.declare(&channel).await?;
            let mut events = subscribe(&channel, &topology).await?;
            attempt = 0;
            on_heard(Heard::MayHaveMissedSome);
            while let Some(delivery) = events.next().await {
                match ItemEvent::decode(&delivery?.data) {
                    Some(event) => on_heard(Heard::Event(event)),
                    None => tracing::warn!("ignoring an undecodable item announcement"),
                }
            }
            anyhow::Ok(())
        };
        let ended = tokio::select! {
            _ = shutdown.cancelled() => return,
            ended = session => ended,
        };
        let pause =
            crate::backoff::delay(attempt, Duration::from_millis(200), Duration::from_secs(10));
        attempt += 1;
        tracing::warn!(
            error = %ended.err().map(|e| format!("{e:#}")).unwrap_or_else(|| "the subscription ended".into()),
            retry_in_ms = pause.as_millis() as u64,
            "lost the item announcements; reconnecting"
        );
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_round_trip_as_documented() {
        let sold_out = ItemEvent::SoldOut {
            item_id: 7,
            generation: 2,
        };
        assert_eq!(
            sold_out.encode(),
            br#"{"event":"sold_out","item_id":7,"generation":2}"#
        );
        assert_eq!(ItemEvent::decode(&sold_out.encode()), Some(sold_out));
        let restocked = ItemEvent::Restocked {
            item_id: -1,
            generation: 3,
        };
        assert_eq!(
            restocked.encode(),
            br#"{"event":"restocked","item_id":-1,"generation":3}"#
        );
        assert_eq!(ItemEvent::decode(&restocked.encode()), Some(restocked));
        assert_eq!((restocked.item_id(), restocked.generation()), (-1, 3));
        assert_eq!(
            ItemEvent::decode(br#"{"event":"gone","item_id":7,"generation":0}"#),
            None
        );
        // Without its generation an announcement cannot be ordered: it is not one.
        assert_eq!(
            ItemEvent::decode(br#"{"event":"sold_out","item_id":7}"#),
            None
        );
        assert_eq!(ItemEvent::decode(b"\xff"), None);
    }
}
