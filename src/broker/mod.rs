//! RabbitMQ: the topology (partition queues, dead letters), the message format, and the API's
//! publisher. The broker is the sequencer of the queue path: an item always routes to the same
//! partition queue, and single-active-consumer lets exactly one consumer read that queue.

pub mod item_events;
pub mod message;
pub mod publisher;
pub mod topology;

use lapin::{Connection, ConnectionProperties};

use crate::config::redact_url;

/// Opens a connection on the current tokio runtime, naming it in the management UI.
pub async fn connect(amqp_url: &str, name: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(amqp_url, props).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to RabbitMQ at {}: {e}",
            redact_url(amqp_url)
        )
    })
}
