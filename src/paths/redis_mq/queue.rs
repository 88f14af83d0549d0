//! The `redis-mq` path's way onto its queue: one connection and one channel in confirm mode,
//! shared by every request (each publish has its confirm, so hundreds are in flight at once),
//! held in a [`ChannelSlot`]: opened on first use, and opened again after the broker went away
//! — at most once a second, so an outage costs each request a fast 503 rather than a connection
//! attempt. One message per request, as miaosha sends them.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Confirmation, Connection};

use crate::broker::{self, channel_slot::ChannelSlot, message, topology::Topology};
use crate::config::BrokerArgs;
use crate::domain::OrderRequest;

/// Longest wait for the broker's confirm of one message.
const CONFIRM_WAIT: Duration = Duration::from_secs(10);

/// Why a request is not on the queue.
#[derive(Debug)]
pub(super) enum Unpublished {
    /// The broker certainly does not hold it (unreachable, refused it: queue full, no queue).
    NotHeld(String),
    /// Handed over, but no confirm came: the broker may hold it, and it may still be decided.
    MaybeHeld(String),
}

pub(super) struct QueueLink {
    amqp_url: String,
    topology: Topology,
    slot: ChannelSlot,
}

impl QueueLink {
    pub(super) fn new(broker: &BrokerArgs) -> Self {
        Self {
            amqp_url: broker.amqp_url.clone(),
            topology: Topology::new(broker),
            slot: ChannelSlot::new("redis-mq publisher"),
        }
    }

    /// Publishes one request (persistent) and waits for the broker's confirm.
    pub(super) async fn publish(&self, request: &OrderRequest) -> Result<(), Unpublished> {
        let channel = self.channel().await.map_err(Unpublished::NotHeld)?;
        let message_id = request.request_id.to_string();
        let handed = channel
            .basic_publish(
                "".into(),
                self.topology.redis_mq_queue().into(),
                // mandatory: if the queue is gone the message comes back instead of vanishing.
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &message::encode(request),
                message::request_properties(request.request_id, None),
            )
            .await;
        let confirm = match handed {
            Ok(confirm) => confirm,
            Err(e) => {
                return Err(Unpublished::NotHeld(format!(
                    "the broker is unavailable: {e}"
                )));
            }
        };
        let Ok(confirmed) = tokio::time::timeout(CONFIRM_WAIT, confirm).await else {
            return Err(Unpublished::MaybeHeld(
                "no confirm from the broker in time".into(),
            ));
        };
        match confirmed {
            Ok(Confirmation::Ack(None)) => Ok(()),
            Ok(Confirmation::Ack(Some(returned)))
                if returned
                    .delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .is_some_and(|id| id.as_str() == message_id) =>
            {
                Err(Unpublished::NotHeld(
                    "the redis-mq queue does not exist".into(),
                ))
            }
            // lapin may hand a return to another message's confirm.
            Ok(Confirmation::Ack(Some(_))) => Err(Unpublished::MaybeHeld(
                "the broker returned a message that may not be this one".into(),
            )),
            Ok(Confirmation::Nack(_)) => Err(Unpublished::NotHeld(
                "the broker refused the request (queue full or overloaded)".into(),
            )),
            Ok(Confirmation::NotRequested) => unreachable!("the channel is in confirm mode"),
            Err(e) => Err(Unpublished::MaybeHeld(format!(
                "the broker did not confirm the request: {e}"
            ))),
        }
    }

    /// The open channel, opened (again) if there is none.
    async fn channel(&self) -> Result<Channel, String> {
        self.slot
            .channel(|| self.open())
            .await
            .map_err(|e| format!("the broker is unavailable: {e}"))
    }

    /// A fresh channel in confirm mode, the queue declared.
    async fn open(&self) -> anyhow::Result<(Connection, Channel)> {
        let name = format!("seckill-redis-mq {}", self.topology.redis_mq_queue());
        let connection = broker::connect(&self.amqp_url, &name).await?;
        let channel = connection.create_channel().await?;
        self.topology.declare_redis_mq(&channel).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok((connection, channel))
    }
}
