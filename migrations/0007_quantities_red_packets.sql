-- Quantities, per-user limits and red packets. The constraints stay the backstop: whatever a path
-- gets wrong, the database refuses an oversell (stock_remaining >= 0, as before), a user holding
-- more units than the item's limit, a red packet paid out beyond its total, and a zero share.
--
-- An order is a user's holding of an item: still one row per (item, user) (orders_one_per_user),
-- created by the user's first purchase and grown (quantity) by later ones, up to the limit. Each
-- request keeps its own outcome (with its quantity); a later purchase's outcome names the same
-- order. A red packet is an item whose stock counts its shares (one per user, quantity 1), with
-- the amount still to be paid out beside it.

ALTER TABLE items
    -- Units one user may hold of this item, in total over all their orders.
    ADD COLUMN per_user_limit BIGINT NOT NULL DEFAULT 1 CHECK (per_user_limit >= 1),
    ADD COLUMN kind TEXT NOT NULL DEFAULT 'goods' CHECK (kind IN ('goods', 'red_packet')),
    -- Red packets only, in integer minor units (cents): the total, and what is not paid out yet.
    ADD COLUMN packet_total BIGINT,
    ADD COLUMN packet_remaining BIGINT,
    ADD COLUMN is_packet BOOLEAN GENERATED ALWAYS AS (kind = 'red_packet') STORED,
    ADD CONSTRAINT items_kind_fields CHECK (
        (kind = 'goods' AND packet_total IS NULL AND packet_remaining IS NULL)
        OR (kind = 'red_packet' AND per_user_limit = 1
            -- at least one minor unit per share
            AND packet_total >= stock_initial
            AND packet_remaining <= packet_total
            -- never overspent: at least one minor unit left for every share not yet taken
            AND packet_remaining >= stock_remaining
            -- every share taken: the total is paid out exactly
            AND (stock_remaining > 0 OR packet_remaining = 0))),
    -- The target of the orders' foreign key below.
    ADD CONSTRAINT items_order_rules UNIQUE (id, per_user_limit, is_packet);

ALTER TABLE orders
    -- Units the user holds; grows with each further purchase of the same user.
    ADD COLUMN quantity BIGINT NOT NULL DEFAULT 1,
    -- The item's limit, copied so that a CHECK can hold the quantity to it; the foreign key below
    -- makes the copy equal the item's.
    ADD COLUMN per_user_limit BIGINT NOT NULL DEFAULT 1,
    -- A red packet share's amount, in minor units; NULL for goods.
    ADD COLUMN amount BIGINT CHECK (amount > 0),
    ADD COLUMN is_share BOOLEAN GENERATED ALWAYS AS (amount IS NOT NULL) STORED,
    ADD CONSTRAINT orders_within_limit CHECK (quantity BETWEEN 1 AND per_user_limit),
    -- A red packet share is one unit.
    ADD CONSTRAINT orders_one_share CHECK (amount IS NULL OR quantity = 1);

-- Replaces the plain key to items (same name: a missing item is still reported as such): the
-- order's limit must be its item's, and an order carries an amount exactly when its item is a red
-- packet. Checked per row like the key it replaces, so the group commit costs the same.
ALTER TABLE orders DROP CONSTRAINT orders_item_id_fkey;
ALTER TABLE orders ADD CONSTRAINT orders_item_id_fkey
    FOREIGN KEY (item_id, per_user_limit, is_share) REFERENCES items (id, per_user_limit, is_packet);

-- The units each request asked for: lets the audit check a `sold_out` (fewer units left than
-- asked) and an `already_purchased` (the limit would be passed) against what was sold.
ALTER TABLE outcomes ADD COLUMN quantity BIGINT NOT NULL DEFAULT 1 CHECK (quantity >= 1);
