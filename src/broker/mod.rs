//! RabbitMQ: the topology (partition queues, dead letters), the message format, and the API's
//! publisher. The broker is the sequencer of the queue path: an item always routes to the same
//! partition queue, and single-active-consumer lets exactly one consumer read that queue.

pub mod channel_slot;
pub mod item_events;
mod link;
pub mod message;
mod publish_line;
pub mod publisher;
pub mod topology;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

use crate::config::redact_url;

/// Longest one node may take to accept a connection before the next node is tried: a node
/// whose host vanished answers nothing at all (a stopped one refuses at once).
const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Per node list, the index of the node this process last connected to.
static LAST_REACHED: Mutex<Option<HashMap<String, usize>>> = Mutex::new(None);

/// The nodes of an `AMQP_URL`: one URL, or several separated by commas (a cluster's nodes).
pub fn nodes(amqp_url: &str) -> Vec<&str> {
    amqp_url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// Opens a connection on the current tokio runtime, naming it in the management UI. With
/// several nodes in `amqp_url` it tries them in turn, starting with the one this process
/// reached last, so every client of a cluster stays on one node while it lives and moves on to
/// the next when it is lost (each client's reconnect loop calls this again).
pub async fn connect(amqp_url: &str, name: &str) -> anyhow::Result<Connection> {
    let nodes = nodes(amqp_url);
    anyhow::ensure!(!nodes.is_empty(), "AMQP_URL names no broker");
    let first = last_reached(amqp_url) % nodes.len();
    let mut failures = Vec::with_capacity(nodes.len());
    for index in (0..nodes.len()).map(|i| (first + i) % nodes.len()) {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        let attempt = tokio::time::timeout(
            NODE_CONNECT_TIMEOUT,
            Connection::connect(nodes[index], props),
        );
        match attempt.await {
            Ok(Ok(connection)) => {
                if nodes.len() > 1 {
                    tracing::info!(node = %redact_url(nodes[index]), connection = name, "connected to RabbitMQ");
                }
                remember_reached(amqp_url, index);
                return Ok(connection);
            }
            Ok(Err(e)) => failures.push(format!("{}: {e}", redact_url(nodes[index]))),
            Err(_) => failures.push(format!(
                "{}: no answer within {NODE_CONNECT_TIMEOUT:?}",
                redact_url(nodes[index])
            )),
        }
    }
    anyhow::bail!("cannot connect to RabbitMQ at {}", failures.join("; "))
}

/// The user an `AMQP_URL` connects as: that of its first node (a cluster's users are the same
/// on every node), percent-decoded, `guest` when the URL names none (as the client does).
pub fn amqp_user(amqp_url: &str) -> anyhow::Result<String> {
    let first = nodes(amqp_url)
        .first()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("AMQP_URL names no broker"))?;
    let uri: lapin::uri::AMQPUri = first
        .parse()
        .map_err(|e| anyhow::anyhow!("cannot parse {}: {e}", redact_url(first)))?;
    Ok(uri.authority.userinfo.username)
}

fn last_reached(amqp_url: &str) -> usize {
    let reached = LAST_REACHED.lock().expect("last reached lock");
    reached
        .as_ref()
        .and_then(|m| m.get(amqp_url).copied())
        .unwrap_or(0)
}

fn remember_reached(amqp_url: &str, index: usize) {
    let mut reached = LAST_REACHED.lock().expect("last reached lock");
    reached
        .get_or_insert_with(HashMap::new)
        .insert(amqp_url.to_owned(), index);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_list_is_split_on_commas() {
        assert_eq!(nodes("amqp://a:5672"), ["amqp://a:5672"]);
        assert_eq!(
            nodes("amqp://a:5672/%2f, amqp://b:5673/%2f,"),
            ["amqp://a:5672/%2f", "amqp://b:5673/%2f"]
        );
        assert!(nodes(" , ").is_empty());
    }

    #[test]
    fn the_user_is_the_first_nodes() {
        let user = |url| amqp_user(url).unwrap();
        assert_eq!(user("amqp://guest:guest@127.0.0.1:5672/%2f"), "guest");
        assert_eq!(
            user("amqp://seckill%2Dapi:pw@a/%2f,amqp://other:pw@b/%2f"),
            "seckill-api"
        );
        assert_eq!(
            user("amqp://127.0.0.1:5672/%2f"),
            "guest",
            "the client's default"
        );
        assert!(amqp_user(" , ").is_err());
    }

    #[tokio::test]
    async fn a_dead_node_is_skipped_and_the_live_one_remembered() {
        let live = std::env::var("AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        // Port 1 refuses at once: nothing listens there.
        let list = format!("amqp://guest:guest@127.0.0.1:1/%2f,{live}");
        let connection = connect(&list, "seckill-unit-node-list").await.unwrap();
        assert_eq!(last_reached(&list), 1);
        let _ = connection.close(200, "done".into()).await;
        let error = connect("amqp://guest:guest@127.0.0.1:1/%2f", "x")
            .await
            .unwrap_err();
        assert!(error.to_string().contains("127.0.0.1:1"), "{error}");
    }
}
