//! The API's side of the broker: publishes purchase requests with publisher confirms (so `202`
//! means "the broker has it"), and receives decisions through RabbitMQ's direct reply-to, so a
//! client asking `?wait=` is answered without any polling of the database.
//!
//! Requests go out through one [`Line`] per partition, which batches those that queue up while
//! the partition's previous messages await their confirm into one message: the broker's cost is
//! per message, so this is what lifts the broker's ceiling (see [`super::publish_line`]).
//!
//! Direct reply-to is consumed on the same channel that publishes. Replies are at-most-once: a
//! waiter that gets none falls back to `202 pending`, and the client to `GET /orders/{id}`.
//! The channel is re-opened lazily after a broker outage (see [`super::link`]).

use std::sync::Arc;
use std::time::Duration;

use lapin::Confirmation;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::item_events::ItemEvent;
pub use super::link::PublishError;
use super::link::{Link, Waiters};
use super::publish_line::Line;
use super::topology::Topology;
use crate::config::PublishArgs;
use crate::domain::{OrderRequest, Outcome};

pub struct Publisher {
    link: Arc<Link>,
    /// One per partition, by partition number.
    lines: Vec<Line>,
}

impl Publisher {
    /// Connects and declares the topology; fails if the broker is unreachable at start-up.
    /// `batching` bounds the messages each partition's line sends (call inside the runtime).
    pub async fn connect(
        amqp_url: &str,
        topology: Topology,
        batching: PublishArgs,
    ) -> anyhow::Result<Self> {
        let link = Arc::new(Link::connect(amqp_url, topology).await?);
        let lines = (0..link.topology().partitions())
            .map(|partition| Line::start(Arc::clone(&link), partition, batching))
            .collect();
        Ok(Self { link, lines })
    }

    pub fn topology(&self) -> &Topology {
        self.link.topology()
    }

    /// True when the broker connection is up (for `/healthz`).
    pub async fn is_connected(&self) -> bool {
        self.link.is_connected().await
    }

    /// Publishes one request and waits for the broker's confirm of the message that carries it
    /// (with others of its partition, when they queue up together). With `reply` the consumer
    /// will send the decision back; receive it with the [`Waiter`] from [`Publisher::wait_for`],
    /// registered *before* publishing so a fast reply cannot be missed.
    pub async fn publish(&self, request: &OrderRequest, reply: bool) -> Result<(), PublishError> {
        let partition = self.link.topology().partition_of(request.item_id);
        self.lines[usize::from(partition)]
            .publish(request, reply)
            .await
    }

    /// Announces an item event (e.g. a restock) to every API instance and consumer, and waits
    /// for the broker's confirm.
    pub async fn announce(&self, event: &ItemEvent) -> Result<(), PublishError> {
        let link = &self.link;
        let channel = link.channel().await?;
        let confirm = super::item_events::publish(&channel, link.topology(), link.user(), event)
            .await
            .map_err(|e| PublishError::Unavailable(e.to_string()))?;
        match confirm.await {
            Ok(Confirmation::Ack(_)) => Ok(()),
            Ok(_) => Err(PublishError::Refused),
            Err(e) => Err(PublishError::Unconfirmed(e.to_string())),
        }
    }

    /// Registers interest in a request's decision.
    pub fn wait_for(&self, request_id: Uuid) -> Waiter {
        let (tx, rx) = oneshot::channel();
        let waiters = self.link.waiters();
        waiters
            .lock()
            .expect("waiters lock")
            .entry(request_id)
            .or_default()
            .push(tx);
        Waiter {
            request_id,
            rx: Some(rx),
            waiters: Arc::clone(waiters),
        }
    }
}

/// A client's interest in one decision. Dropping it withdraws the interest.
pub struct Waiter {
    request_id: Uuid,
    rx: Option<oneshot::Receiver<Outcome>>,
    waiters: Arc<Waiters>,
}

impl Waiter {
    /// The decision, if it arrives within `timeout`.
    pub async fn recv(mut self, timeout: Duration) -> Option<Outcome> {
        let rx = self.rx.take()?;
        tokio::time::timeout(timeout, rx).await.ok()?.ok()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut waiters = self.waiters.lock().expect("waiters lock");
        if let Some(senders) = waiters.get_mut(&self.request_id) {
            senders.retain(|tx| !tx.is_closed());
            if senders.is_empty() {
                waiters.remove(&self.request_id);
            }
        }
    }
}
