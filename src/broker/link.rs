//! The publisher's connection to the broker, shared by its partitions' lines: a channel in
//! confirm mode that also consumes the direct replies, re-opened lazily after an outage (at
//! most once per `RECONNECT_PAUSE`), and renewed after a refusal. Why a request was not
//! accepted ([`PublishError`]) is said here too, as both the lines and the publisher answer it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::message;
use super::topology::Topology;
use crate::domain::Outcome;

/// Shortest pause between two attempts to reconnect, so an outage costs each request a fast 503
/// rather than a connection attempt.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

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

/// An open channel in confirm mode, consuming its direct replies.
struct Open {
    /// Kept so the connection lives as long as the channel.
    _connection: Connection,
    channel: Channel,
    /// When it was opened: a channel that refused a publish is renewed at most once per
    /// `RECONNECT_PAUSE` (see [`Link::renew_after_refusal`]).
    opened_at: Instant,
}

/// The publisher's connection to the broker, shared by its lines: opened lazily again after
/// an outage.
pub(super) struct Link {
    amqp_url: String,
    /// The AMQP user of `amqp_url`: the `user_id` of its announcements.
    user: String,
    topology: Topology,
    open: tokio::sync::RwLock<Option<Open>>,
    /// When the last failed reconnect happened, to pace the next one.
    last_failure: Mutex<Option<Instant>>,
    waiters: Arc<Waiters>,
}

impl Link {
    /// Connects and declares the topology; fails if the broker is unreachable.
    pub(super) async fn connect(amqp_url: &str, topology: Topology) -> anyhow::Result<Self> {
        let link = Self {
            amqp_url: amqp_url.to_owned(),
            user: super::amqp_user(amqp_url)?,
            topology,
            open: tokio::sync::RwLock::new(None),
            last_failure: Mutex::new(None),
            waiters: Arc::default(),
        };
        let open = link.open().await?;
        *link.open.write().await = Some(open);
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

    /// True when the broker connection is up.
    pub(super) async fn is_connected(&self) -> bool {
        matches!(&*self.open.read().await, Some(open) if open.channel.status().connected())
    }

    /// Drops the channel that refused a publish, so the next publish opens a fresh one — at most
    /// once per `RECONNECT_PAUSE`, so a queue that is really full costs one reconnect a second.
    /// Why: a channel keeps the overflow state each quorum queue told it, and one that could not
    /// register as a publisher while the queue elected a new leader (its old leader's node lost)
    /// refuses every later publish to that queue, though the queue is empty (seen on RabbitMQ
    /// 3.10 with a SIGKILLed leader, `tests/cluster.rs`). A fresh channel asks the queue afresh.
    /// Clients still waiting for a reply on the old channel fall back to `202 pending`.
    pub(super) async fn renew_after_refusal(&self, refused_on: &Channel) {
        let mut slot = self.open.write().await;
        let stale = slot.as_ref().is_some_and(|open| {
            open.channel.id() == refused_on.id() && open.opened_at.elapsed() >= RECONNECT_PAUSE
        });
        if stale {
            tracing::warn!("the broker refused a publish; the next publish opens a fresh channel");
            slot.take();
        }
    }

    /// The current channel, re-opened if the broker went away.
    pub(super) async fn channel(&self) -> Result<Channel, PublishError> {
        if let Some(open) = &*self.open.read().await
            && open.channel.status().connected()
        {
            return Ok(open.channel.clone());
        }
        let mut slot = self.open.write().await;
        if let Some(open) = &*slot
            && open.channel.status().connected()
        {
            return Ok(open.channel.clone());
        }
        if slot.take().is_some() {
            tracing::warn!("publisher lost its broker connection; reconnecting");
        }
        {
            let last = self.last_failure.lock().expect("last_failure lock");
            if last.is_some_and(|at| at.elapsed() < RECONNECT_PAUSE) {
                return Err(PublishError::Unavailable("reconnecting".into()));
            }
        }
        match self.open().await {
            Ok(open) => {
                crate::metrics::get()
                    .broker_reconnects
                    .with_label_values(&["publisher"])
                    .inc();
                tracing::info!("publisher reconnected to the broker");
                let channel = open.channel.clone();
                *slot = Some(open);
                Ok(channel)
            }
            Err(e) => {
                tracing::warn!(error = %e, "publisher cannot reconnect to the broker");
                *self.last_failure.lock().expect("last_failure lock") = Some(Instant::now());
                Err(PublishError::Unavailable(e.to_string()))
            }
        }
    }

    async fn open(&self) -> anyhow::Result<Open> {
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
        Ok(Open {
            _connection: connection,
            channel,
            opened_at: Instant::now(),
        })
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
