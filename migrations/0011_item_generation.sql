-- An item's generation: how many restocks it has had, bumped by each one in the same statement
-- that adds the units. Two uses: the queue consumer, whose in-memory state records the
-- generation it was loaded at, reloads an item it believes sold out once the stored generation
-- moved (so a restock whose announcement was lost is still sold); and item announcements carry
-- it, so an API instance can tell a `sold_out` decided before a restock from one after it.
ALTER TABLE items ADD COLUMN generation BIGINT NOT NULL DEFAULT 0 CHECK (generation >= 0);
