//! `redis-stream`'s writer: reads the decisions the API already answered off the stream, as a
//! consumer of one group, and records them in PostgreSQL (see [`super::record`]).
//!
//! The loop, as the original's background thread, with what it leaves out:
//! - `XREADGROUP GROUP writers <me> COUNT n BLOCK ms STREAMS key >`: new entries, delivered to
//!   this writer alone; they stay in its pending list until it acknowledges them.
//! - One transaction per batch; `XACK` only after the commit, then `XDEL` of the same entries.
//!   Trimming by acknowledgement, not by length: `XADD … MAXLEN` (the usual advice) would drop
//!   the oldest entries whether or not they were written, and a dropped entry is a buyer told
//!   `purchased` with no order. Deleting exactly what was committed keeps the stream as long as
//!   the writer's backlog and no longer.
//! - A writer that died with entries delivered and not acknowledged (killed before or after its
//!   commit) leaves them in its pending list; every writer claims entries idle longer than
//!   `SECKILL_STREAM_CLAIM_IDLE_MS` (`XAUTOCLAIM`), its own deferred ones included (the original
//!   only re-read its own list, `… STREAMS key 0`, so a dead thread's entries waited for it).
//!   A claimed entry that was committed is skipped by the transaction: never a second order. An
//!   idle time shorter than a slow batch lets two writers hold one entry at once: still one
//!   order (the item's lock and the outcome's key decide), only wasted work.
//! - An entry that cannot be read, or that the database refuses on its own (not for being
//!   down), is copied to `{stream}:dead` with the reason, logged and acknowledged: it is never
//!   retried forever. A batch the database refuses is retried entry by entry to find it.
//! - At the end of each sweep, writers that have nothing pending and have not read for a long
//!   while (dead ones: every start takes a new name) are taken out of the group, so that the
//!   group does not grow by one consumer per restart. One script checks and deletes, since
//!   `XGROUP DELCONSUMER` drops the entries a consumer holds: a writer that read in between
//!   would lose them.
//! - A stream or group that vanished (Redis restarted without persistence, or the key was
//!   deleted) is recreated from id 0, so the entries the API added since are read too, and the
//!   writer carries on. What the lost stream held is lost: that is the design's fragility.
//! - Redis or PostgreSQL down: the batch in hand is kept and retried with backoff; on shutdown
//!   the writer finishes the batch it holds (what it cannot finish stays pending for another).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use redis::{RedisError, Script, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::entry::{Entry, Unreadable, parse_entries, parse_read_reply};
use super::record::{Settlement, is_decided_meanwhile, write_batch};
use crate::backoff;
use crate::config::{RedisArgs, StreamWriterArgs};
use crate::paths::redis_store::RedisStore;

/// The consumer group every writer reads through.
pub const GROUP: &str = "writers";
/// Most entries kept in the dead-letter stream (older ones are trimmed; each was logged).
const DEAD_LETTERS_MAX: u64 = 10_000;
/// How long an `already_purchased` waits for its purchase to be committed, at least: past it, it
/// is recorded as told (its purchase was lost, and the audit shows it).
const REFUSAL_WAIT_MIN: Duration = Duration::from_secs(60);

/// Tries of a batch that met a request id decided meanwhile by another path (each try after
/// the first skips what it met, so a second one almost always succeeds).
const RACED_TRIES_MAX: u32 = 8;

/// A consumer of the group that is idle this many times the writers' block time (and at least
/// the claim time) with nothing pending is gone: a live writer reads every block time.
const GONE_AFTER_BLOCKS: u64 = 10;

/// Deletes the group's consumers other than `ARGV[2]` with nothing pending and idle longer than
/// `ARGV[3]` ms; returns how many. In one script, so that none reads between the check and the
/// delete (`DELCONSUMER` would drop what it read).
static FORGET_GONE_WRITERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local forgotten = 0
        for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
            local field = {}
            for i = 1, #consumer, 2 do
                field[consumer[i]] = consumer[i + 1]
            end
            if field['name'] ~= ARGV[2] and field['pending'] == 0
                and field['idle'] > tonumber(ARGV[3]) then
                redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], field['name'])
                forgotten = forgotten + 1
            end
        end
        return forgotten
        ",
    )
});

/// The writer of one process.
pub struct StreamWriter {
    pool: PgPool,
    /// Its own connection: a blocking read holds the connection it is sent on.
    redis: RedisStore,
    stream: String,
    /// This writer's name in the group: unique per process start, so a restarted writer claims
    /// its predecessor's entries rather than inheriting them unseen.
    consumer: String,
    args: StreamWriterArgs,
}

/// Where the writer is in its claims of idle entries.
struct Claims {
    /// `XAUTOCLAIM`'s cursor: `0-0` to start from the oldest pending entry.
    cursor: String,
    /// When the last sweep over the pending entries ended.
    swept_at: Option<Instant>,
}

impl StreamWriter {
    /// Does not connect: the first command does (and a Redis that is down is waited for).
    pub fn new(pool: PgPool, redis: &RedisArgs, args: StreamWriterArgs) -> anyhow::Result<Self> {
        let redis = RedisStore::new(redis)?;
        let stream = redis.orders_stream();
        let tag = uuid::Uuid::new_v4().simple().to_string();
        Ok(Self {
            pool,
            redis,
            stream,
            consumer: format!("writer-{}-{}", std::process::id(), &tag[..8]),
            args,
        })
    }

    /// Runs until `shutdown`, then returns once the batch in hand is written (or given up on).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(stream = %self.stream, consumer = %self.consumer, "redis-stream writer starting");
        let mut con = self.redis.connection();
        let mut claims = Claims {
            cursor: "0-0".into(),
            swept_at: None,
        };
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            match self.step(&mut con, &mut claims, &shutdown).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    tracing::warn!(error = %e, "redis-stream writer: Redis unavailable, retrying");
                    self.pause(failures, &shutdown).await;
                    failures += 1;
                }
            }
        }
        tracing::info!(consumer = %self.consumer, "redis-stream writer stopped");
        Ok(())
    }

    /// One batch: claimed idle entries when a sweep is due, else new ones; written, then
    /// acknowledged and deleted.
    async fn step(
        &self,
        con: &mut ConnectionManager,
        claims: &mut Claims,
        shutdown: &CancellationToken,
    ) -> Result<(), RedisError> {
        let sweep_due = claims
            .swept_at
            .is_none_or(|at| at.elapsed() >= self.args.claim_idle() / 2);
        let entries = if sweep_due {
            let entries = self.claim(con, claims).await?;
            if entries.is_empty() {
                self.read_new(con).await?
            } else {
                entries
            }
        } else {
            self.read_new(con).await?
        };
        if entries.is_empty() {
            return Ok(());
        }
        let (readable, unreadable): (Vec<_>, Vec<_>) = entries.into_iter().partition(Result::is_ok);
        let unreadable: Vec<Unreadable> = unreadable.into_iter().filter_map(Result::err).collect();
        for bad in &unreadable {
            tracing::error!(id = %bad.id, why = %bad.why, "redis-stream writer: an entry it cannot read; set aside");
        }
        let mut done: Vec<String> = Vec::new();
        self.set_aside(
            con,
            unreadable.iter().map(|u| (u.id.clone(), u.why.clone())),
        )
        .await?;
        done.extend(unreadable.into_iter().map(|u| u.id));
        let entries: Vec<Entry> = readable.into_iter().filter_map(Result::ok).collect();
        if !entries.is_empty() {
            let (written, refused) = self.write(entries, shutdown).await;
            self.set_aside(
                con,
                refused.iter().map(|(e, why)| (e.id.clone(), why.clone())),
            )
            .await?;
            done.extend(written);
            done.extend(refused.into_iter().map(|(e, _)| e.id));
        }
        self.acknowledge(con, &done).await
    }

    /// New entries, waiting at most the block time; creates the group if it is missing.
    async fn read_new(
        &self,
        con: &mut ConnectionManager,
    ) -> Result<Vec<Result<Entry, Unreadable>>, RedisError> {
        let reply: Result<Value, RedisError> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(self.args.stream_batch_max)
            .arg("BLOCK")
            .arg(self.args.stream_block_ms)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(con)
            .await;
        let reply = match reply {
            Err(e) if e.code() == Some("NOGROUP") => {
                self.create_group(con).await?;
                return Ok(Vec::new());
            }
            reply => reply?,
        };
        parse_read_reply(&reply).map_err(malformed)
    }

    /// Entries idle past the claim time in any writer's pending list, this one's included,
    /// from where the last claim stopped; a sweep ends when the cursor comes back to `0-0`.
    async fn claim(
        &self,
        con: &mut ConnectionManager,
        claims: &mut Claims,
    ) -> Result<Vec<Result<Entry, Unreadable>>, RedisError> {
        let reply: Result<Vec<Value>, RedisError> = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(self.args.stream_claim_idle_ms)
            .arg(&claims.cursor)
            .arg("COUNT")
            .arg(self.args.stream_batch_max)
            .query_async(con)
            .await;
        // [next cursor, entries] (Redis 6.2), and the ids deleted meanwhile (7.0).
        let (next, entries) = match reply {
            Err(e) if e.code() == Some("NOGROUP") => {
                self.create_group(con).await?;
                claims.cursor = "0-0".into();
                return Ok(Vec::new());
            }
            Ok(reply) if reply.len() >= 2 => {
                let next: String = redis::from_redis_value_ref(&reply[0])?;
                (next, reply.into_iter().nth(1).expect("two elements"))
            }
            Ok(reply) => return Err(malformed(format!("XAUTOCLAIM replied {reply:?}"))),
            Err(e) => return Err(e),
        };
        if next == "0-0" {
            claims.swept_at = Some(Instant::now());
            self.forget_gone_writers(con).await;
        }
        claims.cursor = next;
        let entries = parse_entries(&entries).map_err(malformed)?;
        if !entries.is_empty() {
            tracing::info!(
                entries = entries.len(),
                "redis-stream writer: claimed entries idle past the claim time"
            );
        }
        Ok(entries)
    }

    /// Takes the writers that are gone out of the group (best effort: they only take room).
    async fn forget_gone_writers(&self, con: &mut ConnectionManager) {
        let gone_after = self
            .args
            .stream_claim_idle_ms
            .max(GONE_AFTER_BLOCKS * self.args.stream_block_ms);
        let forgotten: Result<u64, RedisError> = FORGET_GONE_WRITERS
            .key(&self.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(gone_after)
            .invoke_async(con)
            .await;
        match forgotten {
            Ok(0) => {}
            Ok(count) => {
                tracing::info!(
                    count,
                    "redis-stream writer: took writers that are gone out of the group"
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "redis-stream writer: could not list the group's writers")
            }
        }
    }

    /// `XGROUP CREATE … 0 MKSTREAM`: from id 0, not `$`, because after Redis restarted empty the
    /// API's first script call recreates the stream (without a group) and its entries must be
    /// read; a group created meanwhile by another writer is fine.
    async fn create_group(&self, con: &mut ConnectionManager) -> Result<(), RedisError> {
        let created: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(con)
            .await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
            Ok(()) => {
                tracing::warn!(
                    stream = %self.stream,
                    "redis-stream writer: the stream's consumer group was missing (first start, \
                     or Redis lost its data); created it"
                );
                Ok(())
            }
        }
    }

    /// Writes a batch, retrying while the database is unavailable (until shutdown). Returns the
    /// ids settled (written, or skipped as written before) and the entries the database refused
    /// on their own; deferred entries are in neither and stay pending.
    async fn write(
        &self,
        entries: Vec<Entry>,
        shutdown: &CancellationToken,
    ) -> (Vec<String>, Vec<(Entry, String)>) {
        let mut attempt = 0;
        loop {
            match write_batch(
                &self.pool,
                entries.clone(),
                self.refusals_recorded_before_ms(),
            )
            .await
            {
                Ok(settlement) => return (self.committed(settlement), Vec::new()),
                Err(e) if is_decided_meanwhile(&e) && attempt < RACED_TRIES_MAX => {
                    tracing::info!(
                        "redis-stream writer: a request id was decided meanwhile; retrying"
                    );
                    attempt += 1;
                }
                Err(e) if crate::store::is_transient(&e) => {
                    tracing::warn!(error = %e, entries = entries.len(),
                        "redis-stream writer: database unavailable; the batch is kept and retried");
                    if shutdown.is_cancelled() {
                        // Left pending: another writer (or the next start) claims it.
                        return (Vec::new(), Vec::new());
                    }
                    self.pause(attempt, shutdown).await;
                    attempt += 1;
                }
                Err(e) if entries.len() > 1 => {
                    tracing::warn!(error = %e, entries = entries.len(),
                        "redis-stream writer: the database refused a batch; writing its entries one by one");
                    return Box::pin(self.write_one_by_one(entries, shutdown)).await;
                }
                Err(e) => {
                    let entry = entries.into_iter().next().expect("one entry");
                    tracing::error!(error = %e, id = %entry.id, request_id = %entry.request.request_id,
                        told = %entry.told.status().as_str(),
                        "redis-stream writer: the database refused an entry; set aside");
                    return (Vec::new(), vec![(entry, e.to_string())]);
                }
            }
        }
    }

    async fn write_one_by_one(
        &self,
        entries: Vec<Entry>,
        shutdown: &CancellationToken,
    ) -> (Vec<String>, Vec<(Entry, String)>) {
        let (mut written, mut refused) = (Vec::new(), Vec::new());
        for entry in entries {
            let (w, r) = self.write(vec![entry], shutdown).await;
            written.extend(w);
            refused.extend(r);
        }
        (written, refused)
    }

    /// Logs what the database decided differently from what the buyer was told, hits the
    /// crash tests' failpoint, and returns the ids to acknowledge.
    fn committed(&self, settlement: Settlement) -> Vec<String> {
        for w in &settlement.written {
            if w.status != w.entry.told.status() {
                tracing::error!(
                    request_id = %w.entry.request.request_id,
                    item_id = w.entry.request.item_id,
                    user_id = %w.entry.request.user_id,
                    told = %w.entry.told.status().as_str(),
                    recorded = %w.status.as_str(),
                    "redis-stream: a buyer was told `purchased` and the database refused it; \
                     recorded the database's verdict (Redis lost data, or the item was also sold \
                     another way)"
                );
            } else if w.unbacked {
                tracing::error!(
                    request_id = %w.entry.request.request_id,
                    item_id = w.entry.request.item_id,
                    user_id = %w.entry.request.user_id,
                    "redis-stream: a buyer told already_purchased holds no order (their purchase \
                     was lost before it was written); recorded as told"
                );
            }
        }
        for e in &settlement.deferred {
            tracing::debug!(request_id = %e.request.request_id,
                "already_purchased deferred until its purchase is committed");
        }
        crate::failpoint::hit("stream_after_commit");
        settlement
            .written
            .into_iter()
            .map(|w| w.entry.id)
            .chain(settlement.already_written.into_iter().map(|e| e.id))
            .collect()
    }

    /// An `already_purchased` added before this instant is recorded even without its purchase.
    fn refusals_recorded_before_ms(&self) -> u64 {
        let wait = REFUSAL_WAIT_MIN.max(3 * self.args.claim_idle());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        now.saturating_sub(wait).as_millis() as u64
    }

    /// Copies entries to the dead-letter stream with the reason (bounded, approximately).
    async fn set_aside(
        &self,
        con: &mut ConnectionManager,
        entries: impl Iterator<Item = (String, String)>,
    ) -> Result<(), RedisError> {
        let dead = format!("{}:dead", self.stream);
        let mut pipe = redis::pipe();
        let mut any = false;
        for (id, why) in entries {
            any = true;
            pipe.cmd("XADD")
                .arg(&dead)
                .arg("MAXLEN")
                .arg("~")
                .arg(DEAD_LETTERS_MAX)
                .arg("*")
                .arg("entry")
                .arg(&id)
                .arg("why")
                .arg(&why)
                .ignore();
        }
        if any {
            pipe.exec_async(con).await?;
        }
        Ok(())
    }

    /// `XACK` then `XDEL` of what was committed (or set aside), in one round trip.
    async fn acknowledge(
        &self,
        con: &mut ConnectionManager,
        ids: &[String],
    ) -> Result<(), RedisError> {
        if ids.is_empty() {
            return Ok(());
        }
        redis::pipe()
            .cmd("XACK")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(ids)
            .ignore()
            .cmd("XDEL")
            .arg(&self.stream)
            .arg(ids)
            .ignore()
            .exec_async(con)
            .await
    }

    /// A backoff pause, cut short by shutdown.
    async fn pause(&self, attempt: u32, shutdown: &CancellationToken) {
        let delay = backoff::delay(attempt, Duration::from_millis(50), Duration::from_secs(2));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

fn malformed(detail: String) -> RedisError {
    RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected stream reply",
        detail,
    ))
}
