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
//!
//! Anyone who may publish to the exchange could announce an item sold out and have every API
//! instance shed it (or announce a restock of a huge generation, which would block every later
//! `sold_out`). So each announcement carries its publisher's AMQP user in the `user_id`
//! property — RabbitMQ refuses a message whose `user_id` is not the connection's user — and a
//! listener ignores any whose `user_id` is missing or not one of its [`Announcers`]
//! (`SECKILL_ANNOUNCER_USERS`).

use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::topology::Topology;
use crate::config::BrokerArgs;
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

/// The AMQP users whose announcements a listener believes (see `SECKILL_ANNOUNCER_USERS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcers {
    users: Vec<String>,
}

/// Why a listener ignored a message of the exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    /// Not an announcement seckill knows.
    Undecodable,
    /// Published by no trusted announcer: the `user_id` it carried, if any.
    Untrusted(Option<String>),
}

impl Ignored {
    /// The metric label.
    fn reason(&self) -> &'static str {
        match self {
            Self::Undecodable => "undecodable",
            Self::Untrusted(_) => "untrusted",
        }
    }
}

impl Announcers {
    /// Exactly these users.
    pub fn new(users: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            users: users.into_iter().map(Into::into).collect(),
        }
    }

    /// `SECKILL_ANNOUNCER_USERS` (comma-separated), or else the user of `AMQP_URL`.
    pub fn from_args(args: &BrokerArgs) -> anyhow::Result<Self> {
        let users: Vec<&str> = match &args.announcer_users {
            Some(listed) => listed
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .collect(),
            None => return Ok(Self::new([super::amqp_user(&args.amqp_url)?])),
        };
        anyhow::ensure!(
            !users.is_empty(),
            "SECKILL_ANNOUNCER_USERS names no user: every announcement would be ignored"
        );
        Ok(Self::new(users))
    }

    /// The announcement a delivery carries, if a trusted announcer published it.
    pub fn accept(&self, properties: &BasicProperties, body: &[u8]) -> Result<ItemEvent, Ignored> {
        let user = properties.user_id().as_ref().map(|u| u.as_str());
        if !user.is_some_and(|user| self.users.iter().any(|trusted| trusted == user)) {
            return Err(Ignored::Untrusted(user.map(str::to_owned)));
        }
        ItemEvent::decode(body).ok_or(Ignored::Undecodable)
    }
}

/// Publishes an announcement on `channel`, as `user` — the AMQP user of the channel's
/// connection ([`super::amqp_user`]): the broker closes the channel on any other. Returns once
/// the frame is handed over; the caller awaits the confirm if the channel is in confirm mode.
pub async fn publish(
    channel: &Channel,
    topology: &Topology,
    user: &str,
    event: &ItemEvent,
) -> lapin::Result<lapin::PublisherConfirm> {
    channel
        .basic_publish(
            topology.item_events_exchange().into(),
            "".into(),
            BasicPublishOptions::default(),
            &event.encode(),
            // Transient: a hint that outlived a broker restart would be stale anyway.
            BasicProperties::default()
                .with_content_type(super::message::CONTENT_TYPE_JSON.into())
                .with_user_id(user.into()),
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
/// announcement of one of `announcers` to `on_heard`; the others are counted
/// (`seckill_item_announcements_ignored_total`) and logged, at most one warning per
/// [`IGNORED_WARN_EVERY`].
pub async fn listen(
    amqp_url: String,
    topology: Topology,
    connection_name: String,
    announcers: Announcers,
    mut on_heard: impl FnMut(Heard) + Send,
    shutdown: CancellationToken,
) {
    let mut ignored = IgnoredLog::default();
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
                let delivery = delivery?;
                match announcers.accept(&delivery.properties, &delivery.data) {
                    Ok(event) => on_heard(Heard::Event(event)),
                    Err(why) => ignored.note(&why, &announcers),
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

/// Least time between two warnings about ignored announcements: a flood of forgeries must not
/// flood the log too.
const IGNORED_WARN_EVERY: Duration = Duration::from_secs(10);

/// Counts and logs the announcements a listener ignored.
#[derive(Default)]
struct IgnoredLog {
    warned_at: Option<Instant>,
    /// Ignored since the last warning.
    unreported: u64,
}

impl IgnoredLog {
    fn note(&mut self, why: &Ignored, announcers: &Announcers) {
        crate::metrics::get()
            .item_announcements_ignored
            .with_label_values(&[why.reason()])
            .inc();
        self.unreported += 1;
        if self
            .warned_at
            .is_some_and(|at| at.elapsed() < IGNORED_WARN_EVERY)
        {
            tracing::debug!(?why, "ignoring an item announcement");
            return;
        }
        tracing::warn!(?why, trusted = ?announcers.users, ignored = self.unreported,
            "ignoring item announcements not sent by a trusted announcer (SECKILL_ANNOUNCER_USERS)");
        self.warned_at = Some(Instant::now());
        self.unreported = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_trusted_announcers_are_believed() {
        let announcers = Announcers::new(["seckill-consumer", "seckill-api"]);
        let body = ItemEvent::SoldOut {
            item_id: 7,
            generation: 0,
        }
        .encode();
        let from = |user: &str| BasicProperties::default().with_user_id(user.into());
        assert!(announcers.accept(&from("seckill-consumer"), &body).is_ok());
        assert!(announcers.accept(&from("seckill-api"), &body).is_ok());
        assert_eq!(
            announcers.accept(&from("guest"), &body),
            Err(Ignored::Untrusted(Some("guest".into())))
        );
        assert_eq!(
            announcers.accept(&BasicProperties::default(), &body),
            Err(Ignored::Untrusted(None))
        );
        assert_eq!(
            announcers.accept(&from("seckill-api"), b"{}"),
            Err(Ignored::Undecodable)
        );
    }

    #[test]
    fn announcers_default_to_the_amqp_user() {
        let mut args = BrokerArgs {
            amqp_url: "amqp://seckill:pw@a:5672/%2f,amqp://seckill:pw@b:5672/%2f".into(),
            queue_prefix: "seckill".into(),
            partitions: 1,
            queue_length_max: 1,
            queue_type: crate::config::QueueType::Classic,
            announcer_users: None,
        };
        assert_eq!(
            Announcers::from_args(&args).unwrap(),
            Announcers::new(["seckill"])
        );
        args.announcer_users = Some("consumer, api".into());
        assert_eq!(
            Announcers::from_args(&args).unwrap(),
            Announcers::new(["consumer", "api"])
        );
        args.announcer_users = Some(" , ".into());
        assert!(Announcers::from_args(&args).is_err());
    }

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
