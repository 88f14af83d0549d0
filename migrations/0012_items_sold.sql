-- Units sold, kept on the item's row, so that `GET /items/{id}` reads one row instead of summing
-- the item's orders on every call (~220 reads/s at 50,000 orders; now the same at one order as
-- at ten million).
--
-- Who keeps it:
-- * Every writer that sells adds the units it sold in the `UPDATE items` it already makes in the
--   same transaction (`sold = sold + n`, relative, under the row lock that update takes): the
--   queue consumer's group commit (one update per item per batch, as before), and each lock
--   path, `naive` included (its stock write is absolute and loses updates; its `sold` does not:
--   it counts every unit of its real orders). No statement and no lock is added on a hot path.
-- * Whatever takes orders away — the bench's clean-up, a test, an operator — is counted by the
--   statement-level triggers below, from the statement's transition table: one `UPDATE items`
--   per item per statement, never one per row.
--
-- Why not a trigger for inserts too: it would count every writer without their help, but it
-- takes the item's row lock at the order's INSERT. The conditional path (and the Redis paths,
-- which write through it) inserts the order before its conditional stock update, so the lock
-- would be held one round trip longer per sale, and a request refused for lack of stock (which
-- today locks nothing) would lock the row until its rollback. Measured here with pgbench, 32
-- clients on one item, the trigger on and off in turn on a busy machine: the conditional sale
-- fell from 116-129 to 50-101 transactions/s, its sold-out refusal from 1,822-2,674 to
-- 542-744/s (docs/BENCHMARKS.md, "Reads that do not grow with the sale").
--
-- A writer that forgets it is caught: `seckill audit` counts the orders themselves and reports an
-- item whose `sold` disagrees (every path's tests end with a clean audit). So does an order
-- inserted or grown by hand without adding to `sold`.

ALTER TABLE items ADD COLUMN sold BIGINT NOT NULL DEFAULT 0 CHECK (sold >= 0);

-- Existing items: their orders as they stand. The lock keeps a writer from slipping an order in
-- between this count and the moment the writers count (the migration is one transaction, and
-- every writer of this version updates `sold` itself).
LOCK TABLE orders IN SHARE MODE;
UPDATE items i SET sold = o.units
FROM (SELECT item_id, sum(quantity) AS units FROM orders GROUP BY item_id) o
WHERE i.id = o.item_id;

-- Takes the units of the deleted orders off their items: one update per item per statement.
CREATE FUNCTION items_uncount_deleted_orders() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE items i SET sold = i.sold - d.units
    FROM (SELECT item_id, sum(quantity) AS units FROM deleted_orders GROUP BY item_id) d
    WHERE i.id = d.item_id AND d.units <> 0;
    RETURN NULL;
END
$$;

CREATE TRIGGER orders_uncount_deleted AFTER DELETE ON orders
    REFERENCING OLD TABLE AS deleted_orders
    FOR EACH STATEMENT EXECUTE FUNCTION items_uncount_deleted_orders();

-- TRUNCATE has no transition table: every order is gone, so nothing is sold.
CREATE FUNCTION items_uncount_truncated_orders() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE items SET sold = 0 WHERE sold <> 0;
    RETURN NULL;
END
$$;

CREATE TRIGGER orders_uncount_truncated AFTER TRUNCATE ON orders
    FOR EACH STATEMENT EXECUTE FUNCTION items_uncount_truncated_orders();
