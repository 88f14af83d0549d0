//! Before the bench starts anything: do the services it needs answer? A bench against a
//! missing service used to fail deep inside with a driver's error, logged and then printed
//! again; this says once which service, at which address, and how to start it.

use std::time::Duration;

use crate::config::{BrokerArgs, DatabaseArgs, PathArgs, redact_url};

/// How long a service may take to accept a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What to run to start the services (see README, "Quick start").
pub const HOW_TO_START: &str = "Start the services with `docker compose up -d --wait` (Docker), \
     or `SECKILL_CI_SERVICES_ONLY=1 bash .ci/run` (Debian without Docker)";

/// A service the bench needs, and the URL it is configured at.
struct Service<'a> {
    name: &'static str,
    url: &'a str,
    default_port: u16,
}

/// Checks that every service the run needs accepts connections: PostgreSQL always, RabbitMQ
/// for the in-process stack (any node of a cluster), Redis when a `redis-*` path runs. One
/// error names every one that does not, its address, and how to start them.
pub(super) async fn check(
    database: &DatabaseArgs,
    broker: &BrokerArgs,
    paths: &PathArgs,
    in_process: bool,
    needs_redis: bool,
) -> anyhow::Result<()> {
    let mut services = vec![vec![Service {
        name: "PostgreSQL",
        url: &database.database_url,
        default_port: 5432,
    }]];
    if in_process {
        services.push(
            crate::broker::nodes(&broker.amqp_url)
                .into_iter()
                .map(|url| Service {
                    name: "RabbitMQ",
                    url,
                    default_port: 5672,
                })
                .collect(),
        );
    }
    if needs_redis {
        services.push(vec![Service {
            name: "Redis",
            url: &paths.redis.redis_url,
            default_port: 6379,
        }]);
    }
    let mut down = Vec::new();
    for nodes in &services {
        if let Some(why) = none_answers(nodes).await {
            down.push(why);
        }
    }
    anyhow::ensure!(down.is_empty(), "{}. {HOW_TO_START}", down.join("; "));
    Ok(())
}

/// `None` if some node of a service answers; else which service, where, and what went wrong.
async fn none_answers(nodes: &[Service<'_>]) -> Option<String> {
    let mut failures = Vec::new();
    for node in nodes {
        match answers(node).await {
            Ok(()) => return None,
            Err(e) => failures.push(format!("{} ({e})", redact_url(node.url))),
        }
    }
    let name = nodes.first().map_or("a service", |n| n.name);
    Some(format!("{name} does not answer at {}", failures.join(", ")))
}

/// Whether the service's host and port accept a TCP connection.
async fn answers(service: &Service<'_>) -> anyhow::Result<()> {
    let url = url::Url::parse(service.url)?;
    let host = url.host_str().unwrap_or("127.0.0.1").to_string();
    let port = url.port().unwrap_or(service.default_port);
    let connect = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port));
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => anyhow::bail!("no answer within {CONNECT_TIMEOUT:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_named_with_its_service_and_how_to_start_it() {
        let nodes = [Service {
            name: "PostgreSQL",
            url: "postgres://postgres@127.0.0.1:1/seckill",
            default_port: 5432,
        }];
        let why = none_answers(&nodes).await.expect("port 1 is closed");
        assert!(why.starts_with("PostgreSQL does not answer at "), "{why}");
        assert!(why.contains("127.0.0.1:1"), "{why}");
    }
}
