//! What the process counts, for `GET /metrics` (Prometheus text format). One set per process:
//! the API and the consumer record into it wherever they run (`serve --with-consumer` shows
//! both; `consume --metrics-bind ADDR` serves the consumer's alone), so no handle has to be
//! threaded through every call that counts something.
//!
//! Names follow Prometheus' conventions: `_total` for counters, the unit last (`_seconds`).
//! Every label has a small, fixed set of values (route templates, not raw paths), so a hostile
//! client cannot grow the registry.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests answered, by method, route template and status code.
    pub http_requests: IntCounterVec,
    /// HTTP request latency, by route template.
    pub http_latency: HistogramVec,
    /// HTTP requests being handled now.
    pub http_in_flight: IntGauge,
    /// HTTP requests refused with 503 because too many were in flight.
    pub http_shed: IntCounter,
    /// Publishes to the broker, by result: confirmed, refused (nack: queue full), unroutable,
    /// unavailable (no connection: not handed over), unconfirmed (it broke before the confirm).
    pub publishes: IntCounterVec,
    /// Requests per message the API published (see `SECKILL_PUBLISH_BATCH_MAX`).
    pub publish_batch_size: Histogram,
    /// Clients waiting (`?wait=`) for a decision now.
    pub reply_waiters: IntGauge,
    /// `?wait=` requests answered 202 at once because too many clients were waiting already.
    pub reply_waiters_refused: IntCounter,
    /// `POST /orders` answered `sold_out` without publishing: the item was announced sold out.
    pub orders_shed_sold_out: IntCounter,
    /// Broker connections re-established after a loss, by component (consumer, publisher).
    pub broker_reconnects: IntCounterVec,
    /// Messages on the item-events exchange a listener ignored, by reason: `untrusted` (no
    /// `user_id`, or not a trusted announcer's), `undecodable`.
    pub item_announcements_ignored: IntCounterVec,
    /// What the queue consumer counts.
    pub consumer: ConsumerMetrics,
}

/// The queue consumer's metrics.
pub struct ConsumerMetrics {
    /// Requests per committed batch (a batch message counts its elements).
    pub batch_size: Histogram,
    /// Time from a batch's start to its commit (decide + commit, retries included).
    pub commit_latency: Histogram,
    /// Decisions committed by the queue consumer, by status.
    pub decisions: IntCounterVec,
    /// Deliveries the broker flagged as redelivered (after a consumer or connection died).
    pub redeliveries: IntCounter,
    /// Messages sent to the dead-letter queue.
    pub dead_lettered: IntCounter,
    /// Batch commits that failed and were retried (database down, connection killed, ...).
    pub commit_failures: IntCounter,
    /// Items whose state the consumer holds in memory (all partitions of this process).
    pub items_in_memory: IntGauge,
    pub items_evicted: IntCounter,
    /// Item states loaded from the database (every order of the item read): first use, after
    /// eviction, a failed commit. A steady sale loads its item once; a restock re-reads only the
    /// item's row.
    pub items_loaded: IntCounter,
    /// Partitions this process's consumer is the active one on (it took the epoch and still
    /// holds the subscription). With several daemons, each should show about P/N.
    pub partitions_active: IntGauge,
    /// Partitions the balance assigns to this process's consumer (0 until its lease settled).
    pub partitions_owned: IntGauge,
    /// Partitions this consumer handed over to their owner (after committing and acking).
    pub partition_handovers: IntCounter,
}

/// The process's metrics, created on first use.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| Metrics::new().expect("metric definitions are valid and unique"))
}

/// Buckets of every latency histogram, in seconds, 0.5 ms to 10 s: a group commit takes
/// milliseconds, an outage retries for long.
const SECONDS_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of every histogram of counts (requests per message or per batch).
const COUNT_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1000.0,
];

/// Creates metrics and registers each in the registry, so none can be forgotten there.
struct Registrar<'r>(&'r Registry);

impl Registrar<'_> {
    fn counter(&self, name: &str, help: &str) -> prometheus::Result<IntCounter> {
        let c = IntCounter::new(name, help)?;
        self.0.register(Box::new(c.clone()))?;
        Ok(c)
    }

    fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        let c = IntCounterVec::new(Opts::new(name, help), labels)?;
        self.0.register(Box::new(c.clone()))?;
        Ok(c)
    }

    fn gauge(&self, name: &str, help: &str) -> prometheus::Result<IntGauge> {
        let g = IntGauge::new(name, help)?;
        self.0.register(Box::new(g.clone()))?;
        Ok(g)
    }

    fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> prometheus::Result<Histogram> {
        let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?;
        self.0.register(Box::new(h.clone()))?;
        Ok(h)
    }

    fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> prometheus::Result<HistogramVec> {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        let h = HistogramVec::new(opts, labels)?;
        self.0.register(Box::new(h.clone()))?;
        Ok(h)
    }
}

impl Metrics {
    fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let r = Registrar(&registry);
        Ok(Self {
            http_requests: r.counter_vec(
                "seckill_http_requests_total",
                "HTTP requests answered, by method, route and status code",
                &["method", "route", "status"],
            )?,
            http_latency: r.histogram_vec(
                "seckill_http_request_duration_seconds",
                "HTTP request latency by route",
                &["route"],
                &SECONDS_BUCKETS,
            )?,
            http_in_flight: r.gauge(
                "seckill_http_requests_in_flight",
                "HTTP requests being handled now",
            )?,
            http_shed: r.counter(
                "seckill_http_requests_shed_total",
                "HTTP requests refused with 503 because too many were in flight",
            )?,
            publishes: r.counter_vec(
                "seckill_publishes_total",
                "Purchase requests published to the broker, by result",
                &["result"],
            )?,
            publish_batch_size: r.histogram(
                "seckill_publish_batch_size",
                "Purchase requests per message the API published",
                &COUNT_BUCKETS,
            )?,
            reply_waiters: r.gauge(
                "seckill_reply_waiters",
                "Clients waiting (?wait=) for a decision",
            )?,
            reply_waiters_refused: r.counter(
                "seckill_reply_waiters_refused_total",
                "?wait= requests answered 202 at once because too many clients were waiting",
            )?,
            orders_shed_sold_out: r.counter(
                "seckill_orders_shed_sold_out_total",
                "Orders answered sold_out at once, without publishing, because the item was announced sold out",
            )?,
            broker_reconnects: r.counter_vec(
                "seckill_broker_reconnects_total",
                "Broker connections re-established after a loss, by component",
                &["component"],
            )?,
            item_announcements_ignored: r.counter_vec(
                "seckill_item_announcements_ignored_total",
                "Item announcements ignored by a listener, by reason (untrusted, undecodable)",
                &["reason"],
            )?,
            consumer: ConsumerMetrics::new(&r)?,
            registry,
        })
    }

    /// Every metric in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("the text encoder writes to memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl ConsumerMetrics {
    fn new(r: &Registrar) -> prometheus::Result<Self> {
        Ok(Self {
            batch_size: r.histogram(
                "seckill_batch_size",
                "Deliveries per committed batch",
                &[
                    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 10_000.0,
                ],
            )?,
            commit_latency: r.histogram(
                "seckill_batch_commit_seconds",
                "Time from a batch's start to its commit, retries included",
                &SECONDS_BUCKETS,
            )?,
            decisions: r.counter_vec(
                "seckill_decisions_total",
                "Decisions committed by the queue consumer, by status",
                &["status"],
            )?,
            redeliveries: r.counter(
                "seckill_redeliveries_total",
                "Deliveries flagged as redelivered by the broker",
            )?,
            dead_lettered: r.counter(
                "seckill_dead_lettered_total",
                "Messages sent to the dead-letter queue",
            )?,
            commit_failures: r.counter(
                "seckill_batch_commit_failures_total",
                "Batch commits that failed and were retried",
            )?,
            items_in_memory: r.gauge(
                "seckill_consumer_items_in_memory",
                "Items whose state (stock left, buyers) the consumer holds in memory",
            )?,
            items_evicted: r.counter(
                "seckill_consumer_items_evicted_total",
                "Item states dropped from memory after being idle",
            )?,
            items_loaded: r.counter(
                "seckill_consumer_items_loaded_total",
                "Item states (stock left, buyers) loaded from the database",
            )?,
            partitions_active: r.gauge(
                "seckill_consumer_partitions_active",
                "Partitions this consumer is the active one on",
            )?,
            partitions_owned: r.gauge(
                "seckill_consumer_partitions_owned",
                "Partitions the balance over the live consumers assigns to this one",
            )?,
            partition_handovers: r.counter(
                "seckill_consumer_partition_handovers_total",
                "Partitions handed over to their owner after the last batch was committed and acked",
            )?,
        })
    }
}

/// `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_once_recorded() {
        let m = get();
        m.http_requests
            .with_label_values(&["POST", "/orders", "202"])
            .inc();
        m.consumer.batch_size.observe(3.0);
        m.consumer
            .decisions
            .with_label_values(&["purchased"])
            .inc_by(2);
        m.broker_reconnects.with_label_values(&["consumer"]).inc();
        let text = m.render();
        assert!(text.contains(
            "seckill_http_requests_total{method=\"POST\",route=\"/orders\",status=\"202\"}"
        ));
        assert!(text.contains("seckill_batch_size_bucket{le=\"5\"}"));
        assert!(text.contains("# TYPE seckill_batch_commit_seconds histogram"));
        assert!(text.contains("seckill_decisions_total{status=\"purchased\"}"));
        assert!(text.contains("seckill_broker_reconnects_total{component=\"consumer\"}"));
        assert!(text.contains("seckill_dead_lettered_total 0"));
        assert!(text.contains("# TYPE seckill_consumer_partitions_active gauge"));
    }
}
