//! PostgreSQL access shared by every path: connecting (creating and migrating the database),
//! items, the accepted-request log, outcomes, and the queue consumer's group commit.
//! Every statement is parameterised; batch writes pass one array per column through `UNNEST`
//! so a batch of any size is one fixed statement.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Row};
use uuid::Uuid;

use crate::config::{DatabaseArgs, redact_url};
use crate::domain::{ItemId, ItemKind, ItemSpec, OrderRequest, Outcome, Status};
use crate::sale::{BatchDecision, Holding, ItemRules, ItemState, ItemStock, PathName};

/// The schema, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Longest any one statement may run; past it PostgreSQL cancels it (the API answers 503). A
/// real statement here takes milliseconds: this only stops a stuck one from holding a request,
/// a connection and its locks forever.
pub const STATEMENT_TIMEOUT: &str = "30s";
/// A session idle inside a transaction this long (a client that hung mid-transaction) is ended,
/// releasing its locks.
pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "60s";
/// Longest wait for a pooled connection; then the caller gets `PoolTimedOut` (503).
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a pool, creating the database if it is missing and applying pending migrations.
/// Every pooled connection carries the timeouts above and the lock timeout of `args`
/// ([`DatabaseArgs::db_lock_timeout_ms`]), so nothing waits on PostgreSQL forever.
pub async fn connect(args: &DatabaseArgs) -> anyhow::Result<PgPool> {
    let shown = redact_url(&args.database_url);
    if !Postgres::database_exists(&args.database_url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach PostgreSQL at {shown}: {e}"))?
    {
        tracing::info!(database = %shown, "creating database");
        Postgres::create_database(&args.database_url).await?;
    }
    // Migrations run on a connection of their own, without the statement timeout: a migration
    // of a large table may rightly take longer than any request should.
    let mut migrating = PgConnection::connect(&args.database_url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL at {shown}: {e}"))?;
    MIGRATOR.run(&mut migrating).await?;
    migrating.close().await?;

    let lock_timeout = format!("{}ms", args.db_lock_timeout_ms);
    let options = PgConnectOptions::from_str(&args.database_url)
        .map_err(|e| anyhow::anyhow!("bad database URL {shown}: {e}"))?
        .options([
            ("statement_timeout", STATEMENT_TIMEOUT),
            ("lock_timeout", lock_timeout.as_str()),
            (
                "idle_in_transaction_session_timeout",
                IDLE_IN_TRANSACTION_TIMEOUT,
            ),
        ]);
    let pool = PgPoolOptions::new()
        .max_connections(args.db_pool_max)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL at {shown}: {e}"))?;
    Ok(pool)
}

/// Whether a database error says "not now" rather than "never": the database is unreachable or
/// restarting, the connection was killed, the pool is exhausted, or a statement ran into the
/// statement or lock timeout that [`connect`] sets. The request had no effect (its transaction
/// rolled back), so it may be retried. The one rule for every path and the API.
pub fn is_transient(e: &sqlx::Error) -> bool {
    use sqlx::Error as E;
    match e {
        E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::WorkerCrashed => true,
        E::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 53: insufficient resources (too many connections);
            // 57P: the server is shutting down or starting, or ended the session;
            // 57014: statement_timeout; 55P03: lock_timeout; 40001/40P01: serialization
            // failure, deadlock.
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || matches!(code.as_ref(), "57014" | "55P03" | "40001" | "40P01")
        }),
        _ => false,
    }
}

/// An item as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Item {
    pub id: ItemId,
    pub name: String,
    pub stock_initial: i64,
    pub stock_remaining: i64,
    /// Units sold: the units of its orders, kept on the item's row (migration 0012) so that
    /// reading it costs one row however many orders there are. Each writer adds what it sells
    /// in the stock update it makes anyway (the group commit, every lock path); triggers take
    /// off what a delete removes; `seckill audit` checks it against the orders. For a red
    /// packet: shares taken.
    pub sold: i64,
    pub kind: ItemKind,
    /// Units one user may hold in total.
    pub per_user_limit: i64,
    /// Red packets only: the total, in minor units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_amount: Option<i64>,
    /// Red packets only: what is not paid out yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount_remaining: Option<i64>,
}

/// Creates ordinary goods, one unit per user.
pub async fn create_item(pool: &PgPool, name: &str, stock: i64) -> sqlx::Result<Item> {
    let spec = ItemSpec::Goods {
        stock,
        per_user_limit: 1,
    };
    create_item_spec(pool, name, &spec).await
}

/// Creates an item of any kind.
pub async fn create_item_spec(pool: &PgPool, name: &str, spec: &ItemSpec) -> sqlx::Result<Item> {
    let rules = ItemRules::from(*spec);
    let total = match *spec {
        ItemSpec::Goods { .. } => None,
        ItemSpec::RedPacket { total, .. } => Some(total),
    };
    sqlx::query_as(
        "INSERT INTO items (name, stock_initial, stock_remaining, kind, per_user_limit,
                            packet_total, packet_remaining)
         VALUES ($1, $2, $2, $3, $4, $5, $5)
         RETURNING id, name, stock_initial, stock_remaining, sold, kind,
                   per_user_limit, packet_total AS total_amount,
                   packet_remaining AS amount_remaining",
    )
    .bind(name)
    .bind(spec.stock())
    .bind(rules.kind)
    .bind(rules.per_user_limit)
    .bind(total)
    .fetch_one(pool)
    .await
}

/// The item as the API shows it: one primary-key read of its row (`sold` is stored there), the
/// same cost at one order as at ten million.
pub async fn get_item(pool: &PgPool, id: ItemId) -> sqlx::Result<Option<Item>> {
    sqlx::query_as(
        "SELECT id, name, stock_initial, stock_remaining, sold, kind, per_user_limit,
                packet_total AS total_amount, packet_remaining AS amount_remaining
         FROM items WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// The rules a request for the item must respect; `None` when the item does not exist.
pub async fn item_rules(pool: &PgPool, id: ItemId) -> sqlx::Result<Option<ItemRules>> {
    let row: Option<(ItemKind, i64)> =
        sqlx::query_as("SELECT kind, per_user_limit FROM items WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(kind, per_user_limit)| ItemRules {
        kind,
        per_user_limit,
    }))
}

/// Where a request stands, as `GET /orders/{id}` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestState {
    Decided(Outcome),
    /// Accepted by the API, not decided yet.
    Pending,
    Unknown,
}

pub async fn request_state(pool: &PgPool, request_id: Uuid) -> sqlx::Result<RequestState> {
    if let Some(outcome) = stored_outcomes(pool, &[request_id])
        .await?
        .remove(&request_id)
    {
        return Ok(RequestState::Decided(outcome));
    }
    let accepted: Option<i32> = sqlx::query_scalar("SELECT 1 FROM requests WHERE request_id = $1")
        .bind(request_id)
        .fetch_optional(pool)
        .await?;
    Ok(match accepted {
        Some(_) => RequestState::Pending,
        None => RequestState::Unknown,
    })
}

/// Records requests the API is about to publish, and tells for each whether it is new (`true`)
/// or its id was recorded before (a client's retry: the first row is kept).
pub async fn record_accepted(pool: &PgPool, requests: &[OrderRequest]) -> sqlx::Result<Vec<bool>> {
    let ids: Vec<Uuid> = requests.iter().map(|r| r.request_id).collect();
    let items: Vec<ItemId> = requests.iter().map(|r| r.item_id).collect();
    let users: Vec<&str> = requests.iter().map(|r| r.user_id.as_str()).collect();
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO requests (request_id, item_id, user_id)
         SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::text[])
         ON CONFLICT (request_id) DO NOTHING
         RETURNING request_id",
    )
    .bind(&ids)
    .bind(&items)
    .bind(&users)
    .fetch_all(pool)
    .await?;
    // The same id twice in one insert is new only the first time.
    let mut inserted: HashSet<Uuid> = inserted.into_iter().collect();
    Ok(ids.iter().map(|id| inserted.remove(id)).collect())
}

/// Takes back a request recorded by [`record_accepted`] that the broker certainly does not hold
/// (it refused it, or never got it), unless it was decided meanwhile.
pub async fn withdraw_accepted(pool: &PgPool, request_id: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "DELETE FROM requests WHERE request_id = $1
         AND NOT EXISTS (SELECT 1 FROM outcomes WHERE request_id = $1)",
    )
    .bind(request_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// The outcomes already stored for any of these request ids (a red packet grab's with its share).
pub async fn stored_outcomes(
    pool: &PgPool,
    request_ids: &[Uuid],
) -> sqlx::Result<HashMap<Uuid, Outcome>> {
    let rows = sqlx::query(
        "SELECT c.request_id, c.status, c.order_id, o.amount
         FROM outcomes c LEFT JOIN orders o ON o.id = c.order_id
         WHERE c.request_id = ANY($1::uuid[])",
    )
    .bind(request_ids)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| outcome_from_row(row).map(|o| (o.request_id, o)))
        .collect()
}

fn outcome_from_row(row: &sqlx::postgres::PgRow) -> sqlx::Result<Outcome> {
    let status: String = row.try_get("status")?;
    let status = Status::parse(&status)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown outcome status {status:?}").into()))?;
    Ok(Outcome {
        request_id: row.try_get("request_id")?,
        status,
        order_id: row.try_get("order_id")?,
        amount: row.try_get("amount")?,
    })
}

/// Records `sold_out` for requests answered at the door (see [`crate::shedding`]), as decisions
/// of the queue path, in one statement. Returns one outcome per request, in order: `sold_out`,
/// or for a request id decided before, its stored outcome (a retry never gets a different answer).
pub async fn record_sold_out_at_the_door(
    pool: &PgPool,
    requests: &[OrderRequest],
) -> sqlx::Result<Vec<Outcome>> {
    let ids: Vec<Uuid> = requests.iter().map(|r| r.request_id).collect();
    let items: Vec<ItemId> = requests.iter().map(|r| r.item_id).collect();
    let users: Vec<&str> = requests.iter().map(|r| r.user_id.as_str()).collect();
    let quantities: Vec<i64> = requests.iter().map(|r| r.quantity).collect();
    // The outer SELECT sees the table as it was when the statement began: the outcomes stored
    // before, for exactly the ids whose insert was skipped.
    let rows = sqlx::query(
        "WITH new AS (
             INSERT INTO outcomes (request_id, item_id, user_id, status, path, quantity)
             SELECT r, i, u, $4::text, $5::text, q
             FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $6::bigint[]) AS t(r, i, u, q)
             ON CONFLICT (request_id) DO NOTHING
             RETURNING request_id
         )
         SELECT c.request_id, c.status, c.order_id, o.amount, false AS inserted
         FROM outcomes c LEFT JOIN orders o ON o.id = c.order_id
         WHERE c.request_id = ANY($1::uuid[])
         UNION ALL
         SELECT request_id, $4::text, NULL::uuid, NULL::bigint, true FROM new",
    )
    .bind(&ids)
    .bind(&items)
    .bind(&users)
    .bind(Status::SoldOut.as_str())
    .bind(PathName::Queue.as_str())
    .bind(&quantities)
    .fetch_all(pool)
    .await?;
    let mut known: HashMap<Uuid, Outcome> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let outcome = outcome_from_row(row)?;
        let inserted: bool = row.try_get("inserted")?;
        if inserted {
            known.entry(outcome.request_id).or_insert(outcome);
        } else {
            known.insert(outcome.request_id, outcome);
        }
    }
    // An id skipped because another transaction was storing it at that moment is in neither
    // part: read it again, now that it is committed.
    let missing: Vec<Uuid> = ids
        .iter()
        .filter(|id| !known.contains_key(id))
        .copied()
        .collect();
    if !missing.is_empty() {
        known.extend(stored_outcomes(pool, &missing).await?);
    }
    ids.iter()
        .map(|id| {
            known
                .get(id)
                .copied()
                .ok_or_else(|| sqlx::Error::Protocol(format!("no outcome stored for request {id}")))
        })
        .collect()
}

/// Adds `units` to an item's stock (initial and remaining), unless that would take it past
/// [`crate::domain::STOCK_MAX`]. `Ok(None)`: no such item. Red packets cannot be restocked
/// (their total is fixed). The queue consumer and most lock paths update stock relative to what
/// is stored; `optimistic` and `redis-lock` write an absolute `read − 1` guarded by `version`,
/// so the restock bumps `version` too: their write then matches no row and they read again. A
/// restock racing a sale loses no unit on any path but `naive`. The `redis-*` paths sell from
/// their own copy in Redis, which this does not reach (`seckill redis-load` reloads it).
///
/// The same statement bumps the item's `generation` (migration 0011) and returns it: the
/// queue consumer compares it with the generation its in-memory state was loaded at before it
/// answers `sold_out` (see [`item_generations`]), so it learns of every committed restock
/// whether or not the announcement reaches it; and the `restocked` announcement carries it,
/// so an API instance can tell a `sold_out` decided before this restock from one after it.
pub async fn restock(
    pool: &PgPool,
    item_id: ItemId,
    units: i64,
) -> Result<Option<Restocked>, RestockError> {
    let generation: Option<i64> = sqlx::query_scalar(
        "UPDATE items
         SET stock_initial = stock_initial + $2, stock_remaining = stock_remaining + $2,
             restocked_at = now(), version = version + 1, generation = generation + 1
         WHERE id = $1 AND kind = 'goods' AND stock_initial + $2 <= $3
         RETURNING generation",
    )
    .bind(item_id)
    .bind(units)
    .bind(crate::domain::STOCK_MAX)
    .fetch_optional(pool)
    .await?;
    match (get_item(pool, item_id).await?, generation) {
        (Some(item), Some(generation)) => Ok(Some(Restocked { item, generation })),
        (Some(item), None) if item.kind == ItemKind::RedPacket => Err(RestockError::RedPacket),
        (Some(_), None) => Err(RestockError::TooMuch),
        (None, _) => Ok(None),
    }
}

/// What [`restock`] did.
#[derive(Debug, Clone)]
pub struct Restocked {
    /// The item as it stands after the restock (a sale may already have taken some units).
    pub item: Item,
    /// The item's generation this restock gave it: how many restocks it has had.
    pub generation: i64,
}

/// The stored generation of each of `item_ids` that exists (see [`restock`]): one indexed
/// read, cheap enough for every batch that would answer `sold_out`.
pub async fn item_generations(
    pool: &PgPool,
    item_ids: &[ItemId],
) -> sqlx::Result<HashMap<ItemId, i64>> {
    let rows: Vec<(ItemId, i64)> =
        sqlx::query_as("SELECT id, generation FROM items WHERE id = ANY($1)")
            .bind(item_ids)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

#[derive(Debug, thiserror::Error)]
pub enum RestockError {
    #[error("the item would hold more than {} units", crate::domain::STOCK_MAX)]
    TooMuch,
    #[error("a red packet cannot be restocked: its total and shares are fixed")]
    RedPacket,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Rebuilds what the queue consumer knows of an item: stock left, its limit, who bought how many
/// units, a red packet's amount left, and the generation all this was read at (the stock and
/// the generation come from one row, so they agree). `None` when the item does not exist.
/// Reads every order of the item — what the consumer needs in memory to decide — so it is
/// called once per item, when its state is not in memory; a restock re-reads only the row
/// ([`load_item_stocks`]).
pub async fn load_item_state(pool: &PgPool, item_id: ItemId) -> sqlx::Result<Option<ItemState>> {
    let Some(stock) = load_item_stocks(pool, &[item_id]).await?.remove(&item_id) else {
        return Ok(None);
    };
    let buyers: Vec<(String, Uuid, i64)> =
        sqlx::query_as("SELECT user_id, id, quantity FROM orders WHERE item_id = $1")
            .bind(item_id)
            .fetch_all(pool)
            .await?;
    let buyers = buyers
        .into_iter()
        .map(|(user, order_id, units)| (user, Holding { order_id, units }))
        .collect();
    Ok(Some(ItemState::from_parts(stock, buyers)))
}

/// The row of each of `item_ids` that exists, as the consumer's state holds it: everything but
/// the buyers ([`ItemStock`]). One indexed read for any number of items, none for no item; what
/// a consumer re-reads of an item that was restocked, whose orders did not change.
pub async fn load_item_stocks(
    pool: &PgPool,
    item_ids: &[ItemId],
) -> sqlx::Result<HashMap<ItemId, ItemStock>> {
    if item_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(ItemId, i64, ItemKind, i64, Option<i64>, i64)> = sqlx::query_as(
        "SELECT id, stock_remaining, kind, per_user_limit, packet_remaining, generation
         FROM items WHERE id = ANY($1)",
    )
    .bind(item_ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, stock_remaining, kind, per_user_limit, packet_remaining, generation)| {
                let stock = ItemStock {
                    stock_remaining,
                    rules: ItemRules {
                        kind,
                        per_user_limit,
                    },
                    packet_remaining,
                    generation,
                };
                (id, stock)
            },
        )
        .collect())
}

/// The right of one consumer to commit a partition's decisions: the partition queue's name and
/// the epoch this consumer took when it became active. See `migrations/0004_partition_epochs.sql`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub queue: String,
    pub epoch: i64,
}

/// Takes the next epoch of `queue`, fencing out whoever held it. Waits for a commit the previous
/// holder has in flight (it holds the epoch row `FOR SHARE`), so state loaded after this returns
/// includes every commit the previous holder made, and it can make no more.
pub async fn take_epoch(pool: &PgPool, queue: &str, holder: &str) -> sqlx::Result<Fence> {
    let epoch: i64 = sqlx::query_scalar(
        "INSERT INTO partition_epochs (queue, epoch, holder) VALUES ($1, 1, $2)
         ON CONFLICT (queue) DO UPDATE
             SET epoch = partition_epochs.epoch + 1, holder = EXCLUDED.holder, taken_at = now()
         RETURNING epoch",
    )
    .bind(queue)
    .bind(holder)
    .fetch_one(pool)
    .await?;
    Ok(Fence {
        queue: queue.to_owned(),
        epoch,
    })
}

/// Why a group commit did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Another consumer took the partition: this one must step down without committing.
    #[error("fenced out of {queue}: epoch {epoch} is no longer current")]
    Fenced { queue: String, epoch: i64 },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The group commit: every order, every outcome and one stock update per item of a batch (which
/// also adds the units to the item's `sold`), in
/// ONE statement — one round trip, one transaction, one fsync for hundreds of decisions. This is
/// where the queue path's speed comes from. The table constraints make a wrong in-memory state
/// fail the whole batch rather than write it: `stock_remaining >= 0` refuses an oversell, the
/// unique keys refuse a second order per user or a second outcome per request, an order's
/// quantity may not pass its item's limit, and a red packet may not pay out more than its total
/// (nor leave a share without its minor unit). Every part writes only if `fence` is still the
/// partition's current epoch (read `FOR SHARE`, so a new holder waits for this commit to finish
/// before it takes over).
pub async fn commit_batch(
    pool: &PgPool,
    path: PathName,
    batch: &BatchDecision,
    fence: &Fence,
) -> Result<(), CommitError> {
    if batch.new_outcomes.is_empty() {
        return Ok(());
    }
    let columns = BatchColumns::of(batch);
    let written = columns
        .bind(sqlx::query(GROUP_COMMIT))
        .bind(path.as_str())
        .bind(&fence.queue)
        .bind(fence.epoch)
        .bind(&columns.stocks_seen)
        .bind(&columns.held_seen)
        .execute(pool)
        .await?;
    if written.rows_affected() == 0 {
        return Err(CommitError::Fenced {
            queue: fence.queue.clone(),
            epoch: fence.epoch,
        });
    }
    Ok(())
}

/// The statement of [`commit_batch`]: `$1`–`$18` are [`BatchColumns`], `$19` the path, `$20` and
/// `$21` the fence, `$22`–`$23` what the decider saw (also [`BatchColumns`]). The outcomes are
/// inserted in the order decided, so their `seq` (a column default) follows the decisions. Data-modifying CTEs run as one statement; the foreign keys are checked at its
/// end, when the new orders exist. An order grown here was committed by an earlier batch (one
/// created in this batch is inserted with all its units), so the two never touch the same row.
const GROUP_COMMIT: &str = "WITH fence AS (
         SELECT 1 FROM partition_epochs WHERE queue = $20 AND epoch = $21 FOR SHARE
     ), new_orders AS (
         INSERT INTO orders (id, item_id, user_id, request_id, quantity, per_user_limit, amount)
         SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::uuid[],
                              $5::bigint[], $6::bigint[], $7::bigint[])
         WHERE EXISTS (SELECT 1 FROM fence)
     ), grown AS (
         UPDATE orders SET quantity = orders.quantity + g.units
         FROM UNNEST($8::uuid[], $9::bigint[]) AS g(id, units)
         WHERE orders.id = g.id AND EXISTS (SELECT 1 FROM fence)
     ), stock AS (
         UPDATE items SET stock_remaining = items.stock_remaining - d.sold,
                          sold = items.sold + d.sold,
                          packet_remaining = items.packet_remaining - d.spent
         FROM UNNEST($10::bigint[], $11::bigint[], $12::bigint[]) AS d(id, sold, spent)
         WHERE items.id = d.id AND EXISTS (SELECT 1 FROM fence)
     )
     INSERT INTO outcomes (request_id, item_id, user_id, status, order_id, path, quantity,
                           stock_seen, held_seen)
     SELECT r, i, u, s, o, $19, q, ss, hs
     FROM UNNEST($13::uuid[], $14::bigint[], $15::text[], $16::text[], $17::uuid[],
                 $18::bigint[], $22::bigint[], $23::bigint[]) AS t(r, i, u, s, o, q, ss, hs)
     WHERE EXISTS (SELECT 1 FROM fence)";

/// A batch's writes as one array per column, the form `UNNEST` takes them in: any batch size is
/// the same statement.
struct BatchColumns<'a> {
    order_ids: Vec<Uuid>,
    order_items: Vec<ItemId>,
    order_users: Vec<&'a str>,
    order_requests: Vec<Uuid>,
    order_quantities: Vec<i64>,
    order_limits: Vec<i64>,
    order_amounts: Vec<Option<i64>>,
    grown_orders: Vec<Uuid>,
    grown_units: Vec<i64>,
    sold_items: Vec<ItemId>,
    sold_counts: Vec<i64>,
    sold_spent: Vec<i64>,
    request_ids: Vec<Uuid>,
    items: Vec<ItemId>,
    users: Vec<&'a str>,
    statuses: Vec<&'static str>,
    outcome_orders: Vec<Option<Uuid>>,
    quantities: Vec<i64>,
    stocks_seen: Vec<i64>,
    held_seen: Vec<i64>,
}

impl<'a> BatchColumns<'a> {
    fn of(batch: &'a BatchDecision) -> Self {
        let orders = &batch.new_orders;
        let (grown_orders, grown_units) = batch.more_units.iter().map(|(id, n)| (*id, *n)).unzip();
        let (sold_items, sold_counts): (Vec<ItemId>, Vec<i64>) =
            batch.sold.iter().map(|(id, n)| (*id, *n)).unzip();
        let sold_spent = sold_items
            .iter()
            .map(|id| batch.spent.get(id).copied().unwrap_or(0))
            .collect();
        let outs = &batch.new_outcomes;
        Self {
            order_ids: orders.iter().map(|o| o.order_id).collect(),
            order_items: orders.iter().map(|o| o.item_id).collect(),
            order_users: orders.iter().map(|o| o.user_id.as_str()).collect(),
            order_requests: orders.iter().map(|o| o.request_id).collect(),
            order_quantities: orders.iter().map(|o| o.quantity).collect(),
            order_limits: orders.iter().map(|o| o.per_user_limit).collect(),
            order_amounts: orders.iter().map(|o| o.amount).collect(),
            grown_orders,
            grown_units,
            sold_items,
            sold_counts,
            sold_spent,
            request_ids: outs.iter().map(|o| o.outcome.request_id).collect(),
            items: outs.iter().map(|o| o.item_id).collect(),
            users: outs.iter().map(|o| o.user_id.as_str()).collect(),
            statuses: outs.iter().map(|o| o.outcome.status.as_str()).collect(),
            outcome_orders: outs.iter().map(|o| o.outcome.order_id).collect(),
            quantities: outs.iter().map(|o| o.quantity).collect(),
            stocks_seen: outs.iter().map(|o| o.seen.stock).collect(),
            held_seen: outs.iter().map(|o| o.seen.held).collect(),
        }
    }

    /// Binds `$1`–`$18` of [`GROUP_COMMIT`], in order.
    fn bind<'q>(&'q self, query: PgQuery<'q>) -> PgQuery<'q> {
        query
            .bind(&self.order_ids)
            .bind(&self.order_items)
            .bind(&self.order_users)
            .bind(&self.order_requests)
            .bind(&self.order_quantities)
            .bind(&self.order_limits)
            .bind(&self.order_amounts)
            .bind(&self.grown_orders)
            .bind(&self.grown_units)
            .bind(&self.sold_items)
            .bind(&self.sold_counts)
            .bind(&self.sold_spent)
            .bind(&self.request_ids)
            .bind(&self.items)
            .bind(&self.users)
            .bind(&self.statuses)
            .bind(&self.outcome_orders)
            .bind(&self.quantities)
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;
