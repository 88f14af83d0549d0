//! The writer's transaction: a batch of stream entries (decisions the buyers were already told)
//! written to PostgreSQL at once — orders, the stock and `sold` of each item, the outcomes.
//!
//! PostgreSQL has the last word, as on every path. Under the item rows' locks (taken in id order,
//! so writers never deadlock one another) [`settle`] checks each entry against what the database
//! holds: an entry whose request id already has an outcome is skipped (a redelivery, or another
//! writer that claimed the same entry: writing it again would be a second order); a purchase the
//! database cannot take — the user already holds an order, or no unit is left — is recorded as
//! the database decides it, and logged as an error, because that buyer was told `purchased`. It
//! happens only when Redis lost data or the item was also sold another way.
//!
//! An `already_purchased` is recorded once the user's order is in the database: with several
//! writers, the batch holding the purchase may commit after the one holding the refusal, and an
//! `already_purchased` decided before any purchase is what the audit rightly flags. Such an entry
//! is left pending, claimed again later, and recorded as told only once it is older than
//! [`Settlement::deferred`]'s bound (its purchase was lost: the audit will say so).
//!
//! Only orders actually inserted are counted into the stock: the order insert returns what it
//! inserted, and a conflict it met (an order a concurrent `conditional` request slipped in) is
//! recorded as `already_purchased`.

use std::collections::{HashMap, HashSet};

use sqlx::PgPool;
use uuid::Uuid;

use super::entry::{Entry, Verdict};
use crate::domain::{ItemId, Status};
use crate::sale::PathName;

/// What one entry is written as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub entry: Entry,
    /// The database's verdict; differs from the entry's only where the database refused a grant.
    pub status: Status,
    pub order_id: Option<Uuid>,
    /// An `already_purchased` recorded with no order of the user's behind it (its purchase was
    /// lost or refused): the buyer was told something the database cannot back.
    pub unbacked: bool,
}

/// What [`settle`] made of a batch.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settlement {
    /// Entries to write, in stream order.
    pub written: Vec<Written>,
    /// Entries whose request id already has an outcome: nothing to write, acknowledge them.
    pub already_written: Vec<Entry>,
    /// `already_purchased` entries whose purchase is not in the database yet: left pending.
    pub deferred: Vec<Entry>,
}

/// What the database holds that a batch is judged against, read under the items' locks.
#[derive(Debug, Default)]
pub struct Held {
    /// Units left, per item of the batch that exists.
    pub stock: HashMap<ItemId, i64>,
    /// (item, user) pairs of the batch that hold an order.
    pub buyers: HashSet<(ItemId, String)>,
    /// Request ids of the batch that have an outcome, and its status.
    pub decided: HashMap<Uuid, Status>,
}

/// Judges a batch, in stream order, against what the database holds. Pure: the transaction
/// around it reads [`Held`] and writes what this returns. `refusals_recorded_before_ms`: an
/// `already_purchased` added before this time (ms since the epoch) is recorded even though no
/// order backs it; a later one is deferred.
pub fn settle(entries: Vec<Entry>, mut held: Held, refusals_recorded_before_ms: u64) -> Settlement {
    let mut settlement = Settlement::default();
    let mut in_batch = HashSet::new();
    for entry in entries {
        if held.decided.contains_key(&entry.request.request_id)
            || !in_batch.insert(entry.request.request_id)
        {
            settlement.already_written.push(entry);
            continue;
        }
        let buyer = (entry.request.item_id, entry.request.user_id.clone());
        let unbacked = entry.told == Verdict::AlreadyPurchased && !held.buyers.contains(&buyer);
        let (status, order_id) = match entry.told {
            Verdict::SoldOut => (Status::SoldOut, None),
            Verdict::AlreadyPurchased => {
                if unbacked && entry.added_at_ms() >= refusals_recorded_before_ms {
                    in_batch.remove(&entry.request.request_id);
                    settlement.deferred.push(entry);
                    continue;
                }
                (Status::AlreadyPurchased, None)
            }
            Verdict::Purchased(order_id) => {
                let stock = held.stock.entry(entry.request.item_id).or_insert(0);
                if held.buyers.contains(&buyer) {
                    (Status::AlreadyPurchased, None)
                } else if *stock <= 0 {
                    (Status::SoldOut, None)
                } else {
                    *stock -= 1;
                    held.buyers.insert(buyer);
                    (Status::Purchased, Some(order_id))
                }
            }
        };
        settlement.written.push(Written {
            entry,
            status,
            order_id,
            unbacked,
        });
    }
    settlement
}

/// Locks the batch's items, reads what they hold, [`settle`]s the batch and writes it, in one
/// transaction. Returns the settlement once committed.
pub async fn write_batch(
    pool: &PgPool,
    entries: Vec<Entry>,
    refusals_recorded_before_ms: u64,
) -> sqlx::Result<Settlement> {
    let mut tx = pool.begin().await?;
    let held = read_held(&mut tx, &entries).await?;
    let mut settlement = settle(entries, held, refusals_recorded_before_ms);
    let inserted = insert_orders(&mut tx, &settlement.written).await?;
    let mut units: HashMap<ItemId, i64> = HashMap::new();
    for written in &mut settlement.written {
        if written.status != Status::Purchased {
            continue;
        }
        if inserted.contains(&written.entry.request.request_id) {
            *units.entry(written.entry.request.item_id).or_default() += 1;
        } else {
            // The unique (item, user) met an order committed after `read_held` looked.
            written.status = Status::AlreadyPurchased;
            written.order_id = None;
        }
    }
    update_items(&mut tx, &units).await?;
    insert_outcomes(&mut tx, &settlement.written).await?;
    tx.commit().await?;
    Ok(settlement)
}

/// The batch's items' stock (their rows locked, in id order), its buyers' orders and its
/// request ids' outcomes, read after the locks were granted: another writer's commit on the
/// same items is seen.
async fn read_held(tx: &mut sqlx::PgConnection, entries: &[Entry]) -> sqlx::Result<Held> {
    let mut items: Vec<ItemId> = entries.iter().map(|e| e.request.item_id).collect();
    items.sort_unstable();
    items.dedup();
    let stock: HashMap<ItemId, i64> = sqlx::query_as(
        "SELECT id, stock_remaining FROM items WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE",
    )
    .bind(&items)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let request_ids: Vec<Uuid> = entries.iter().map(|e| e.request.request_id).collect();
    let decided: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT request_id, status FROM outcomes WHERE request_id = ANY($1::uuid[])",
    )
    .bind(&request_ids)
    .fetch_all(&mut *tx)
    .await?;
    let item_ids: Vec<ItemId> = entries.iter().map(|e| e.request.item_id).collect();
    let user_ids: Vec<&str> = entries.iter().map(|e| e.request.user_id.as_str()).collect();
    let buyers: HashSet<(ItemId, String)> = sqlx::query_as(
        "SELECT DISTINCT o.item_id, o.user_id
         FROM orders o
         JOIN UNNEST($1::bigint[], $2::text[]) AS b(item_id, user_id)
           ON o.item_id = b.item_id AND o.user_id = b.user_id",
    )
    .bind(&item_ids)
    .bind(&user_ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    Ok(Held {
        stock,
        buyers,
        decided: decided
            .into_iter()
            .map(|(id, status)| (id, Status::parse(&status).unwrap_or(Status::SoldOut)))
            .collect(),
    })
}

/// Inserts the orders of the batch's purchases (one unit each, with the item's own limit, which
/// the orders' foreign key requires); returns the request ids of those inserted.
async fn insert_orders(
    tx: &mut sqlx::PgConnection,
    written: &[Written],
) -> sqlx::Result<HashSet<Uuid>> {
    let purchases: Vec<&Written> = written
        .iter()
        .filter(|w| w.status == Status::Purchased)
        .collect();
    if purchases.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<Uuid> = purchases.iter().filter_map(|w| w.order_id).collect();
    let items: Vec<ItemId> = purchases.iter().map(|w| w.entry.request.item_id).collect();
    let users: Vec<&str> = purchases
        .iter()
        .map(|w| w.entry.request.user_id.as_str())
        .collect();
    let requests: Vec<Uuid> = purchases
        .iter()
        .map(|w| w.entry.request.request_id)
        .collect();
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO orders (id, item_id, user_id, request_id, quantity, per_user_limit)
         SELECT p.id, p.item_id, p.user_id, p.request_id, 1, i.per_user_limit
         FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::uuid[])
              AS p(id, item_id, user_id, request_id)
         JOIN items i ON i.id = p.item_id
         ON CONFLICT DO NOTHING
         RETURNING request_id",
    )
    .bind(&ids)
    .bind(&items)
    .bind(&users)
    .bind(&requests)
    .fetch_all(&mut *tx)
    .await?;
    Ok(inserted.into_iter().collect())
}

/// Takes the units sold off each item's stock and adds them to its `sold`, relatively (what
/// another writer sold meanwhile is kept, and the stock constraint stays the backstop).
async fn update_items(
    tx: &mut sqlx::PgConnection,
    units: &HashMap<ItemId, i64>,
) -> sqlx::Result<()> {
    if units.is_empty() {
        return Ok(());
    }
    let (items, counts): (Vec<ItemId>, Vec<i64>) = units.iter().map(|(k, v)| (*k, *v)).unzip();
    sqlx::query(
        "UPDATE items SET stock_remaining = stock_remaining - s.units, sold = sold + s.units
         FROM UNNEST($1::bigint[], $2::bigint[]) AS s(id, units)
         WHERE items.id = s.id",
    )
    .bind(&items)
    .bind(&counts)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The error [`write_batch`] returns when another path stored an outcome for one of its request
/// ids while it ran: nothing was written, and the batch is to be tried again (it then skips it).
pub const DECIDED_MEANWHILE: &str = "a request id of the batch was decided meanwhile";

/// Whether `e` is [`DECIDED_MEANWHILE`].
pub fn is_decided_meanwhile(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Protocol(m) if m == DECIDED_MEANWHILE)
}

/// The batch's outcomes, in stream order (their `seq` follows it: a user's purchase comes before
/// their `already_purchased`, as the audit checks). A conflict means another path decided a
/// request id between `read_held` and here: [`DECIDED_MEANWHILE`], the batch is rolled back.
async fn insert_outcomes(tx: &mut sqlx::PgConnection, written: &[Written]) -> sqlx::Result<()> {
    if written.is_empty() {
        return Ok(());
    }
    let requests: Vec<Uuid> = written.iter().map(|w| w.entry.request.request_id).collect();
    let items: Vec<ItemId> = written.iter().map(|w| w.entry.request.item_id).collect();
    let users: Vec<&str> = written
        .iter()
        .map(|w| w.entry.request.user_id.as_str())
        .collect();
    let statuses: Vec<&str> = written.iter().map(|w| w.status.as_str()).collect();
    let orders: Vec<Option<Uuid>> = written.iter().map(|w| w.order_id).collect();
    let inserted = sqlx::query(
        "INSERT INTO outcomes (request_id, item_id, user_id, status, order_id, path)
         SELECT w.request_id, w.item_id, w.user_id, w.status, w.order_id, $6
         FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::uuid[])
              WITH ORDINALITY AS w(request_id, item_id, user_id, status, order_id, n)
         ORDER BY w.n
         ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(&requests)
    .bind(&items)
    .bind(&users)
    .bind(&statuses)
    .bind(&orders)
    .bind(PathName::RedisStream.as_str())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted != written.len() as u64 {
        return Err(sqlx::Error::Protocol(DECIDED_MEANWHILE.into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OrderRequest;

    fn entry(seq: u64, user: &str, told: Verdict) -> Entry {
        Entry {
            id: format!("1000-{seq}"),
            request: OrderRequest {
                request_id: Uuid::new_v4(),
                item_id: 1,
                user_id: user.into(),
                quantity: 1,
            },
            told,
        }
    }

    fn statuses(s: &Settlement) -> Vec<Status> {
        s.written.iter().map(|w| w.status).collect()
    }

    #[test]
    fn grants_are_written_while_the_database_has_units_and_refused_after() {
        let held = Held {
            stock: HashMap::from([(1, 2)]),
            ..Held::default()
        };
        let entries = vec![
            entry(0, "a", Verdict::Purchased(Uuid::new_v4())),
            entry(1, "a", Verdict::AlreadyPurchased),
            entry(2, "b", Verdict::Purchased(Uuid::new_v4())),
            // Redis granted a third unit the database does not have (Redis lost data).
            entry(3, "c", Verdict::Purchased(Uuid::new_v4())),
            entry(4, "d", Verdict::SoldOut),
        ];
        let s = settle(entries, held, 0);
        assert_eq!(
            statuses(&s),
            [
                Status::Purchased,
                Status::AlreadyPurchased,
                Status::Purchased,
                Status::SoldOut,
                Status::SoldOut
            ]
        );
        assert_eq!(s.written[3].order_id, None);
        assert!(s.deferred.is_empty() && s.already_written.is_empty());
    }

    #[test]
    fn a_redelivered_entry_is_never_written_twice_and_a_known_buyer_is_refused() {
        let first = entry(0, "a", Verdict::Purchased(Uuid::new_v4()));
        let again = first.clone();
        let held = Held {
            stock: HashMap::from([(1, 5)]),
            buyers: HashSet::from([(1, "z".to_string())]),
            decided: HashMap::from([(first.request.request_id, Status::Purchased)]),
        };
        let z = entry(1, "z", Verdict::Purchased(Uuid::new_v4()));
        let s = settle(vec![first, again, z], held, 0);
        assert_eq!(s.already_written.len(), 2);
        assert_eq!(statuses(&s), [Status::AlreadyPurchased]);
    }

    #[test]
    fn a_refusal_waits_for_its_purchase_until_it_is_old() {
        let held = || Held {
            stock: HashMap::from([(1, 5)]),
            ..Held::default()
        };
        let refusal = entry(0, "a", Verdict::AlreadyPurchased);
        let s = settle(vec![refusal.clone()], held(), 1000);
        assert_eq!(s.deferred, std::slice::from_ref(&refusal));
        assert!(s.written.is_empty());
        let s = settle(vec![refusal], held(), 1001);
        assert_eq!(statuses(&s), [Status::AlreadyPurchased]);
        assert!(s.written[0].unbacked);
    }
}
