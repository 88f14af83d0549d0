-- lock-table: seed 002's lock, as written. A lock is a row naming the item it locks: taking the
-- lock is inserting the row (the primary key refuses a second one: busy, wait and try again);
-- releasing it is deleting the row; a row older than the path's expiry
-- (SECKILL_LOCK_TABLE_TTL_MS, judged by the database's clock, `taken_at`) is taken for a dead
-- holder's, deleted and taken over. That take-over is the pattern's flaw: a holder slower than
-- the expiry loses its lock while it still works, and then only the constraints of 0001 and 0007
-- (stock never negative, one order per user, within the limit) stand between two holders and an
-- oversell. `owner` lets a holder delete its own row only.
--
-- No foreign key to items: a lock names what it locks, and a row left behind by a crashed holder
-- must never stop an item from being deleted (nor take a key-share lock on the item's row).
CREATE TABLE item_locks (
    item_id  BIGINT      PRIMARY KEY,
    owner    UUID        NOT NULL,
    taken_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
