//! The composition root: the one place where a running seckill is put together. `seckill serve`,
//! `seckill consume`, the demo, the benchmark's in-process stack and the tests' harness all start
//! through [`App::start`], so they run the same wiring — the pool, the purchase paths, the
//! confirming publisher, sold-out shedding, the API server, the consumer daemon, the metrics
//! listener — and nothing is assembled by hand anywhere else.
//!
//! An [`App`] holds every task it started. [`App::stop`] cancels them together and awaits each,
//! returning the first error; [`App::run_until_stopped`] also returns (and stops the rest) when a
//! task ends on its own, so a consumer that fails inside `seckill serve --with-consumer` is never
//! lost in a detached task.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::broker::item_events::Announcers;
use crate::broker::{publisher::Publisher, topology::Topology};
use crate::config::{
    BrokerArgs, ConsumerArgs, PathArgs, RedisArgs, RivalArgs, ServeArgs, redact_url,
};
use crate::consumer;
use crate::paths::Registry;
use crate::paths::redis_mq::consumers::Consumers as RedisMqConsumers;
use crate::paths::redis_store::RedisStore;
use crate::paths::redis_stream::writer::StreamWriter;
use crate::shedding::Shedder;

/// What one process runs. Every part is optional but the broker, which both the API and the
/// consumer talk to.
#[derive(Debug, Clone)]
pub struct Settings {
    pub broker: BrokerArgs,
    /// The HTTP API, and the settings of the purchase paths it serves.
    pub api: Option<(ServeArgs, PathArgs)>,
    /// The consumer daemon.
    pub consumer: Option<ConsumerArgs>,
    /// A listener serving `GET /metrics` alone (the API serves its own).
    pub metrics_bind: Option<SocketAddr>,
    /// The asynchronous rival paths' background workers, and the Redis they work on.
    pub rival_workers: Option<(RivalArgs, RedisArgs)>,
}

/// A running seckill: the address it listens on, its API's state, and every task it started.
pub struct App {
    /// Where the API listens, once bound (port 0 in the settings picks a free port).
    api_addr: Option<SocketAddr>,
    /// The API's shared state, for callers that decide in-process (the benchmark's `--via direct`).
    api_state: Option<AppState>,
    /// Every task of this app, named, so that an error says which part failed.
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
    /// Cancelled to stop every task; the caller may hold a clone (a signal handler, a test).
    shutdown: CancellationToken,
}

impl App {
    /// Starts what `settings` asks for over `pool` (see [`crate::store::connect`]); everything stops
    /// when `shutdown` is cancelled. Fails before starting anything on a bad setting, and when
    /// the broker or the API's address cannot be reached.
    pub async fn start(
        pool: PgPool,
        settings: Settings,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        if let Some(consumer) = &settings.consumer {
            consumer.check()?;
        }
        if let Some((serve, _)) = &settings.api {
            serve.check_exposure()?;
        }
        let mut app = Self {
            api_addr: None,
            api_state: None,
            tasks: JoinSet::new(),
            shutdown,
        };
        if let Some(consumer) = settings.consumer.clone() {
            app.start_consumer(pool.clone(), &settings.broker, consumer);
        }
        if let Some((rivals, redis)) = &settings.rival_workers {
            app.start_rival_workers(pool.clone(), &settings.broker, rivals, redis)?;
        }
        if let Some(bind) = settings.metrics_bind {
            app.start_metrics(bind).await?;
        }
        if let Some((serve, paths)) = &settings.api {
            app.start_api(pool, &settings.broker, serve, paths).await?;
        }
        Ok(app)
    }

    fn start_consumer(&mut self, pool: PgPool, broker: &BrokerArgs, args: ConsumerArgs) {
        tracing::info!(
            broker = %redact_url(&broker.amqp_url),
            partitions = broker.partitions,
            batch_size_max = args.batch_size_max,
            "consumer starting"
        );
        let run = consumer::run(pool, broker.clone(), args, self.shutdown.clone());
        self.tasks.spawn(async move { ("consumer", run.await) });
    }

    /// The workers that decide (`redis-mq`) or write down (`redis-stream`) what the asynchronous
    /// rival paths answered at the API.
    fn start_rival_workers(
        &mut self,
        pool: PgPool,
        broker: &BrokerArgs,
        rivals: &RivalArgs,
        redis: &RedisArgs,
    ) -> anyhow::Result<()> {
        let writer = StreamWriter::new(pool.clone(), redis, rivals.stream_writer.clone())?;
        let stop = self.shutdown.clone();
        self.tasks
            .spawn(async move { ("redis-stream writer", writer.run(stop).await) });
        let redis = Arc::new(RedisStore::new(redis)?);
        let consumers = RedisMqConsumers::new(pool, broker, rivals, redis);
        let stop = self.shutdown.clone();
        self.tasks
            .spawn(async move { ("redis-mq consumers", consumers.run(stop).await) });
        Ok(())
    }

    async fn start_metrics(&mut self, bind: SocketAddr) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .with_context(|| format!("cannot listen on {bind}"))?;
        tracing::info!(%bind, "serving /metrics");
        let stop = self.shutdown.clone();
        self.tasks.spawn(async move {
            let served = axum::serve(listener, api::metrics_router())
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            ("metrics listener", served.map_err(Into::into))
        });
        Ok(())
    }

    async fn start_api(
        &mut self,
        pool: PgPool,
        broker: &BrokerArgs,
        serve: &ServeArgs,
        path_args: &PathArgs,
    ) -> anyhow::Result<()> {
        let topology = Topology::new(broker);
        let paths = Registry::new(pool.clone(), path_args, broker)?;
        let publisher =
            Publisher::connect(&broker.amqp_url, topology.clone(), serve.publish).await?;
        let publisher = Arc::new(publisher);
        let announcers = Announcers::from_args(broker)?;
        let shedder = serve.sold_out_ttl().map(|ttl| {
            let shedder = Shedder::new(pool.clone(), ttl);
            let listening = shedder.listen(
                &broker.amqp_url,
                topology,
                announcers,
                self.shutdown.clone(),
            );
            self.tasks.spawn(async move {
                listening.await;
                ("sold-out listener", Ok(()))
            });
            shedder
        });
        let listener = tokio::net::TcpListener::bind(serve.bind)
            .await
            .with_context(|| format!("cannot listen on {}", serve.bind))?;
        let addr = listener.local_addr()?;
        let state = AppState::new(api::Parts {
            pool,
            publisher,
            paths,
            admin_token: serve.admin_token.clone(),
            producer_token: serve.producer_token.clone(),
            limits: serve.limits,
            shedder,
            shutdown: self.shutdown.clone(),
        });
        tracing::info!(
            bind = %addr,
            broker = %redact_url(&broker.amqp_url),
            partitions = broker.partitions,
            admin_token = serve.admin_token.is_some(),
            producer_token = serve.producer_token.is_some(),
            shedding = serve.sold_out_ttl().is_some(),
            publish_batch_max = serve.publish.publish_batch_max,
            "API listening"
        );
        let serving = api::serve(listener, state.clone());
        self.tasks
            .spawn(async move { ("API", serving.await.map_err(Into::into)) });
        self.api_addr = Some(addr);
        self.api_state = Some(state);
        Ok(())
    }

    /// Where the API listens; `None` when this app runs no API.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// `http://ADDR` of the API; `None` when this app runs no API.
    pub fn api_url(&self) -> Option<String> {
        self.api_addr.map(|addr| format!("http://{addr}"))
    }

    /// The API's state: its publisher, purchase paths and shedder, for in-process callers.
    pub fn api_state(&self) -> Option<&AppState> {
        self.api_state.as_ref()
    }

    /// Cancels every task and awaits each; the first error any of them returned, if one did.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.join_all().await
    }

    /// Runs until the shutdown token is cancelled or a task ends by itself (an error, or a part
    /// that should have run until shutdown and did not); then stops the rest and returns the
    /// first error.
    pub async fn run_until_stopped(mut self) -> anyhow::Result<()> {
        let first = tokio::select! {
            _ = self.shutdown.cancelled() => None,
            Some(ended) = self.tasks.join_next() => Some(task_result(ended, &self.shutdown)),
        };
        self.shutdown.cancel();
        let rest = self.join_all().await;
        first.unwrap_or(Ok(())).and(rest)
    }

    async fn join_all(&mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        while let Some(ended) = self.tasks.join_next().await {
            if let Err(e) = task_result(ended, &self.shutdown) {
                tracing::error!(error = %format!("{e:#}"), "stopped with an error");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// A finished task's result; a task that ended by itself before shutdown is an error too.
fn task_result(
    ended: Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    match ended {
        Ok((name, Err(e))) => Err(e.context(format!("{name} failed"))),
        Ok((name, Ok(()))) if !shutdown.is_cancelled() => {
            Err(anyhow::anyhow!("{name} stopped before shutdown was asked"))
        }
        Ok(_) => Ok(()),
        Err(join_error) => Err(anyhow::Error::new(join_error).context("a task panicked")),
    }
}

/// A token cancelled on the first SIGINT or SIGTERM: what a daemon's [`App`] stops on.
pub fn shutdown_on_signal() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let cancel = token.clone();
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown requested: finishing in-flight work");
        cancel.cancel();
    });
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_ending_before_shutdown_is_an_error_that_names_it() {
        let shutdown = CancellationToken::new();
        let early = task_result(Ok(("consumer", Ok(()))), &shutdown).unwrap_err();
        assert_eq!(
            early.to_string(),
            "consumer stopped before shutdown was asked"
        );
        let failed = task_result(Ok(("API", Err(anyhow::anyhow!("boom")))), &shutdown);
        assert_eq!(format!("{:#}", failed.unwrap_err()), "API failed: boom");
        shutdown.cancel();
        assert!(task_result(Ok(("consumer", Ok(()))), &shutdown).is_ok());
        let failed = task_result(Ok(("API", Err(anyhow::anyhow!("boom")))), &shutdown);
        assert!(failed.is_err(), "an error at shutdown is still an error");
    }
}
