//! The daemons' membership: each live consumer renews a lease row in `consumer_leases` every
//! heartbeat and reads back who else is alive; [`super::balance`] turns that into who owns which
//! partition. Expiry is judged by PostgreSQL's `now()` in every statement, never by a daemon's
//! clock, so skewed clocks on different machines cannot disagree about who is alive.
//!
//! A lease is advisory: it decides who *should* be active on a partition, never who may write.
//! Writing is guarded by the partition's epoch (`store::commit_batch`), so a daemon that is
//! paused past its lease, or disagrees for a heartbeat about the membership, can waste work but
//! never commit a stale decision.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ConsumerArgs;

/// Longest a daemon spends deleting its lease on the way out; past it the lease just expires.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// Leases expired longer than this are deleted (by any daemon, when it takes its lease): they
/// only matter to an operator looking at a recent crash.
const EXPIRED_KEPT_SECS: f64 = 24.0 * 3600.0;

/// One live daemon, as the lease table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    /// Its last renewal, by the database's clock.
    pub renewed_at: DateTime<Utc>,
    /// It has held its lease for the settle time: partitions may be handed over to it.
    pub settled: bool,
}

/// Who was alive when this daemon last read the lease table.
#[derive(Debug, Clone)]
pub struct View {
    /// When the read started, by this process's monotonic clock: everything this process saw
    /// before that instant happened before `db_now`.
    pub read_started: Instant,
    /// The database's clock during the read.
    pub db_now: DateTime<Utc>,
    /// Every live daemon (lease not expired), sorted by id.
    pub members: Vec<Member>,
}

impl View {
    /// The daemons partitions are balanced over: alive and settled.
    pub fn settled(&self) -> Vec<&str> {
        self.members
            .iter()
            .filter(|m| m.settled)
            .map(|m| m.id.as_str())
            .collect()
    }

    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }
}

/// A name unique to this consumer run: `host/pid/random`. The random part tells apart the
/// consumers of one process (tests run several) and a pid reused after a restart.
pub fn member_id() -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{}/{}", super::partition::holder_name(), &random[..8])
}

/// Takes or renews `id`'s lease until `ttl` from now (the database's now). A lease renewed after
/// it expired counts as a new join: it must settle again before partitions move to it.
pub async fn renew(pool: &PgPool, id: &str, queue_prefix: &str, ttl: Duration) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO consumer_leases (id, queue_prefix, joined_at, renewed_at, expires_at)
         VALUES ($1, $3, now(), now(), now() + make_interval(secs => $2))
         ON CONFLICT (id) DO UPDATE SET
             joined_at = CASE WHEN consumer_leases.expires_at <= now() THEN now()
                              ELSE consumer_leases.joined_at END,
             renewed_at = now(),
             expires_at = EXCLUDED.expires_at",
    )
    .bind(id)
    .bind(ttl.as_secs_f64())
    .bind(queue_prefix)
    .execute(pool)
    .await?;
    Ok(())
}

/// Reads the live daemons of the deployment; `settle` is how long one must have held its lease
/// to be settled.
pub async fn read(pool: &PgPool, queue_prefix: &str, settle: Duration) -> sqlx::Result<View> {
    let read_started = Instant::now();
    let rows = sqlx::query(
        "SELECT id, renewed_at, joined_at <= now() - make_interval(secs => $1) AS settled,
                now() AS db_now
         FROM consumer_leases WHERE queue_prefix = $2 AND expires_at > now() ORDER BY id",
    )
    .bind(settle.as_secs_f64())
    .bind(queue_prefix)
    .fetch_all(pool)
    .await?;
    let db_now = match rows.first() {
        Some(row) => row.try_get("db_now")?,
        None => sqlx::query_scalar("SELECT now()").fetch_one(pool).await?,
    };
    let members = rows
        .iter()
        .map(|row| {
            Ok(Member {
                id: row.try_get("id")?,
                renewed_at: row.try_get("renewed_at")?,
                settled: row.try_get("settled")?,
            })
        })
        .collect::<sqlx::Result<Vec<_>>>()?;
    Ok(View {
        read_started,
        db_now,
        members,
    })
}

/// Deletes `id`'s lease: the others stop counting this daemon at their next heartbeat.
pub async fn release(pool: &PgPool, id: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM consumer_leases WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

async fn delete_long_expired(pool: &PgPool) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM consumer_leases WHERE expires_at < now() - make_interval(secs => $1)")
        .bind(EXPIRED_KEPT_SECS)
        .execute(pool)
        .await?;
    Ok(())
}

/// Renews the lease and publishes a fresh [`View`] every heartbeat until `stop`, then deletes
/// the lease. A heartbeat that fails publishes nothing: the daemon keeps acting on nothing new
/// (it hands nothing over) until the database answers again.
pub async fn run(
    pool: PgPool,
    id: String,
    queue_prefix: String,
    args: ConsumerArgs,
    views: watch::Sender<Option<Arc<View>>>,
    stop: CancellationToken,
) {
    if let Err(e) = delete_long_expired(&pool).await {
        tracing::debug!(error = %e, "could not delete long-expired leases");
    }
    let mut failing_since: Option<Instant> = None;
    loop {
        let started = Instant::now();
        let beat = async {
            renew(&pool, &id, &queue_prefix, args.lease_ttl()).await?;
            read(&pool, &queue_prefix, args.lease_settle()).await
        };
        let outcome = tokio::select! {
            _ = stop.cancelled() => break,
            outcome = beat => outcome,
        };
        match outcome {
            Ok(view) => {
                if let Some(since) = failing_since.take() {
                    tracing::info!(
                        after_ms = since.elapsed().as_millis() as u64,
                        "lease renewed again"
                    );
                }
                views.send_replace(Some(Arc::new(view)));
            }
            Err(e) => {
                if failing_since.is_none() {
                    failing_since = Some(started);
                    tracing::warn!(error = %e, %id,
                        "cannot renew the consumer lease; keeping the partitions this daemon has, \
                         handing none over, until the database answers");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(started + args.lease_heartbeat()) => {}
        }
    }
    match tokio::time::timeout(RELEASE_TIMEOUT, release(&pool, &id)).await {
        Ok(Ok(())) => tracing::info!(%id, "lease released"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, %id, "could not release the lease; it will expire")
        }
        Err(_) => tracing::warn!(%id, "releasing the lease timed out; it will expire"),
    }
}
