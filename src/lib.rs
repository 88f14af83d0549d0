//! seckill — a flash-sale order processor that decides without locks.
//!
//! Thousands of buyers hit one item at once. Instead of locking the item's row (or a Redis key),
//! seckill puts every purchase request on RabbitMQ; each item routes to one partition queue, and
//! exactly one consumer (single-active-consumer) reads that queue, so the requests for an item
//! are decided one after another, in memory, by a pure state machine. Decisions are committed in
//! batches — one transaction, one fsync for hundreds of requests — and only then acknowledged.
//!
//! ```text
//! client ─HTTP─► api ──publish (confirm)──► {prefix}.orders ─item_id mod P─► partition queue p
//!                 ▲                                                            │ (one active
//!                 └──── direct reply-to ◄── consumer: batch → decide → COMMIT → ack   consumer)
//! ```
//!
//! # Layout
//! - [`domain`]: items, requests, outcomes and their validation — the shared vocabulary.
//! - [`config`]: flags and environment variables of every command.
//! - [`store`]: PostgreSQL: connect and migrate, items, accepted requests, outcomes, group commit.
//! - [`broker`]: RabbitMQ topology, the message format, and the API's confirming publisher.
//! - [`consumer`]: the daemon; [`consumer::sequencer`] is the pure decider,
//!   [`consumer::partition`] the batch → decide → commit → ack loop around it;
//!   [`consumer::lease`] and [`consumer::balance`] share the partitions among several daemons.
//! - [`api`]: the axum HTTP API (`seckill serve`); [`shedding`]: answering `sold_out` at the
//!   door once the consumer announced an item sold out; [`batcher`]: the handlers' group commit.
//! - [`paths`]: what the queue path is compared with — the lock-based purchase paths
//!   (`POST /orders?path=NAME`: pessimistic, optimistic, advisory, Redis locks and scripts, and
//!   the deliberately unsafe `naive`), one file each behind one trait, on the same schema.
//! - [`audit`]: the invariants, checked from the database alone.
//! - [`bench`]: `seckill bench`, every path on one scenario: throughput, latency, audit.
//! - [`demo`]: one queue-path sale end to end, the quickest look.
//! - [`backoff`]: capped, jittered retry delays; [`failpoint`]: crash switches for crash tests.
//! - [`metrics`]: the process's counters and histograms, served as `GET /metrics`.
//!
//! The binary (`src/main.rs`) is a thin CLI over these modules.

pub mod api;
pub mod audit;
pub mod backoff;
pub mod batcher;
#[cfg(feature = "bench")]
pub mod bench;
pub mod broker;
pub mod config;
pub mod consumer;
#[cfg(feature = "bench")]
pub mod demo;
pub mod domain;
pub mod failpoint;
pub mod metrics;
pub mod paths;
pub mod shedding;
pub mod store;
