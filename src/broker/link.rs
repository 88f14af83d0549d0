//! The publisher's connection to the broker, shared by its partitions' lines: a channel in
//! confirm mode that also consumes the direct replies, held in a [`ChannelSlot`] (re-opened
//! lazily after an outage, at most once per `RECONNECT_PAUSE`, and renewed after a refusal). Why a request was not
//! accepted ([`PublishError`]) is said here too, as both the lines and the publisher answer it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::channel_slot::ChannelSlot;
use super::message;
use super::topology::Topology;
use crate::domain::Outcome;

/// Why a request was not accepted. Every request of a message gets its message's error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The broker could not be reached: the message was not handed over.
    #[error("the broker is unavailable: {0}")]
    Unavailable(String),
    /// The message was handed over but the channel broke before the broker confirmed it: the
    /// broker may hold it (and the request may still be decided), or may not.
    #[error("the broker did not confirm the request: {0}")]
    Unconfirmed(String),
    /// The broker refused the message (nack): typically its partition queue is full.
    #[error("the broker refused the request (queue full or overloaded)")]
    Refused,
    /// No queue is bound for the partition (the topology is missing).
    #[error("no queue is bound for this item's partition")]
    Unroutable,
}

/// Clients waiting for the decision of a request id (several may wait on the same id).
pub(super) type Waiters = Mutex<HashMap<Uuid, Vec<oneshot::Sender<Outcome>>>>;

/// The publisher's connection to the broker, shared by its lines: a channel in confirm mode
/// consuming its direct replies, opened lazily again after an outage.
pub(super) struct Link {
    amqp_url: String,
    /// The AMQP user of `amqp_url`: the `user_id` of its announcements.
    user: String,
    topology: Topology,
    slot: ChannelSlot,
    waiters: Arc<Waiters>,
}

impl Link {
    /// Connects and declares the topology; fails if the broker is unreachable.
    pub(super) async fn connect(amqp_url: &str, topology: Topology) -> anyhow::Result<Self> {
        let link = Self {
            amqp_url: amqp_url.to_owned(),
            user: super::amqp_user(amqp_url)?,
            topology,
            slot: ChannelSlot::new("publisher"),
            waiters: Arc::default(),
        };
        link.slot
            .channel(|| link.open())
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the broker: {e}"))?;
        Ok(link)
    }

    pub(super) fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The AMQP user of the link's URL: the `user_id` of its announcements.
    pub(super) fn user(&self) -> &str {
        &self.user
    }

    /// The clients waiting for replies that arrive on this link's channels.
    pub(super) fn waiters(&self) -> &Arc<Waiters> {
        &self.waiters
    }

    /// True when the broker connection is up, reconnecting if it is down (paced like a
    /// publish): `/healthz` asks this, and after an outage with no traffic nothing else would
    /// open the channel again, so health would say "broker down" for good.
    pub(super) async fn is_connected(&self) -> bool {
        self.channel().await.is_ok()
    }

    /// Drops the channel that refused a publish, so the next publish opens a fresh one — at most
    /// once per `RECONNECT_PAUSE`, so a queue that is really full costs one reconnect a second.
    /// Why: a channel keeps the overflow state each quorum queue told it, and one that could not
    /// register as a publisher while the queue elected a new leader (its old leader's node lost)
    /// refuses every later publish to that queue, though the queue is empty (seen on RabbitMQ
    /// 3.10 with a SIGKILLed leader, `tests/cluster.rs`). A fresh channel asks the queue afresh.
    /// Clients still waiting for a reply on the old channel fall back to `202 pending`.
    pub(super) async fn renew_after_refusal(&self, refused_on: &Channel) {
        if self.slot.renew_after_refusal(refused_on).await {
            tracing::warn!("the broker refused a publish; the next publish opens a fresh channel");
        }
    }

    /// The current channel, re-opened if the broker went away.
    pub(super) async fn channel(&self) -> Result<Channel, PublishError> {
        self.slot
            .channel(|| self.open())
            .await
            .map_err(PublishError::Unavailable)
    }

    /// A fresh channel: the topology declared, confirm mode, its direct replies dispatched.
    async fn open(&self) -> anyhow::Result<(Connection, Channel)> {
        // Named after its exchange, so an operator (or a fault test) can tell deployments apart.
        let name = format!("seckill-api {}", self.topology.orders_exchange());
        let connection = super::connect(&self.amqp_url, &name).await?;
        let channel = connection.create_channel().await?;
        self.topology.declare(&channel).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let replies = channel
            .basic_consume(
                message::DIRECT_REPLY_TO.into(),
                "seckill-api-replies".into(),
                // Direct reply-to is always consumed without acks.
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        tokio::spawn(dispatch_replies(replies, Arc::clone(&self.waiters)));
        Ok((connection, channel))
    }
}

/// Hands each reply to the clients waiting for it; ends when the channel closes.
async fn dispatch_replies(mut replies: lapin::Consumer, waiters: Arc<Waiters>) {
    while let Some(Ok(delivery)) = replies.next().await {
        let Some(outcomes) = message::decode_replies(&delivery.data) else {
            tracing::warn!("ignoring an undecodable reply");
            continue;
        };
        let mut waiters = waiters.lock().expect("waiters lock");
        for outcome in outcomes {
            for tx in waiters.remove(&outcome.request_id).into_iter().flatten() {
                let _ = tx.send(outcome);
            }
        }
    }
    tracing::debug!("reply consumer ended");
}
