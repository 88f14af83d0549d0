-- What the lock-based purchase paths (src/paths/) need from the shared schema.

-- `failed_retry`: an optimistic path (optimistic, redis-watch) lost its compare-and-set more
-- times than it may retry. Nothing was sold to that request; it is a decision, not an order.
ALTER TABLE outcomes DROP CONSTRAINT outcomes_status_check;
ALTER TABLE outcomes ADD CONSTRAINT outcomes_status_check
    CHECK (status IN ('purchased', 'sold_out', 'already_purchased', 'failed_retry'));

-- optimistic: bumped by the optimistic path's compare-and-set on every sale it makes, so a
-- writer whose read is stale matches no row. (Other paths do not bump it: an item is sold through
-- one path at a time.)
ALTER TABLE items ADD COLUMN version BIGINT NOT NULL DEFAULT 0;

-- redis-lock: the fencing token of the newest lock holder that has claimed this item. A holder
-- claims it (fence < token) before reading and may write only while it still holds it
-- (fence = token), so a holder whose Redis lock expired cannot commit once another took over.
ALTER TABLE items ADD COLUMN fence BIGINT NOT NULL DEFAULT 0;
