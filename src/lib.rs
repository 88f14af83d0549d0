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
//! - [`app`]: the composition root. [`app::App::start`] runs what a process needs — API,
//!   consumer, shedding, metrics — from one [`app::Settings`], holds every task, stops them all.
//! - [`cli`]: the subcommands and their dispatch; `src/main.rs` only parses and maps the result.
//! - [`sale`]: the vocabulary of a sale, below everything that sells: an item's rules and state,
//!   [`sale::ItemRules::judge`] (the one purchase rule), a batch's decision, path names.
//! - [`domain`]: requests, outcomes, item specs and their validation, as clients send them.
//! - [`config`]: flags and environment variables of every command, and their checks.
//! - [`store`]: PostgreSQL: connect and migrate, items, accepted requests, outcomes, group
//!   commit, and which database errors are transient.
//! - [`broker`]: RabbitMQ: node list, topology, the message format, the confirming publisher.
//! - [`consumer`]: the daemon; [`consumer::sequencer`] is the pure decider,
//!   [`consumer::partition`] the decode → decide and commit → settle and ack → reply loop;
//!   [`consumer::lease`] and [`consumer::balance`] share the partitions among several daemons.
//! - [`api`]: the axum HTTP API (`seckill serve`); [`shedding`]: answering `sold_out` at the
//!   door once the consumer announced an item sold out; [`batcher`]: the handlers' group commit.
//! - [`paths`]: what the queue path is compared with — the lock-based purchase paths
//!   (`POST /orders?path=NAME`: pessimistic, optimistic, advisory, Redis locks and scripts, and
//!   the deliberately unsafe `naive`), one file each behind one trait, on the same schema; and
//!   `redis-mq` (Redis pre-deduct, then a RabbitMQ queue read by competing consumers), which
//!   answers `pending` as the queue path does.
//! - [`audit`]: the invariants, checked from the database alone, in one snapshot.
//! - `bench` (feature `bench`, on by default): `seckill bench`, every path on one scenario;
//!   `demo`: one queue-path sale end to end, the quickest look.
//! - [`backoff`]: capped, jittered retry delays; [`failpoint`]: crash switches for crash tests.
//! - [`metrics`]: the process's counters and histograms, served as `GET /metrics`.

pub mod api;
pub mod app;
pub mod audit;
pub mod backoff;
pub mod batcher;
#[cfg(feature = "bench")]
pub mod bench;
pub mod broker;
pub mod cli;
pub mod config;
pub mod consumer;
#[cfg(feature = "bench")]
pub mod demo;
pub mod domain;
pub mod failpoint;
pub mod metrics;
pub mod paths;
pub mod sale;
pub mod shedding;
pub mod store;
