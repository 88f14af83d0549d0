-- The schema every purchase path shares. The constraints are the backstop: whatever a path
-- gets wrong in its own logic, the database refuses an oversell or a second order per user.

CREATE TABLE items (
    id              BIGSERIAL PRIMARY KEY,
    name            TEXT        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    stock_initial   BIGINT      NOT NULL CHECK (stock_initial >= 0),
    -- Kept by the deciders (the queue consumer decrements it once per batch). Never below zero.
    stock_remaining BIGINT      NOT NULL CHECK (stock_remaining >= 0),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (stock_remaining <= stock_initial)
);

CREATE TABLE orders (
    id         UUID        PRIMARY KEY,
    item_id    BIGINT      NOT NULL REFERENCES items (id),
    user_id    TEXT        NOT NULL CHECK (length(user_id) BETWEEN 1 AND 64),
    -- The request that created this order: a retried request never makes a second one.
    request_id UUID        NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- One order per user per item.
    CONSTRAINT orders_one_per_user UNIQUE (item_id, user_id)
);

-- Requests the API has accepted (published to the broker). Lets `GET /orders/{id}` tell
-- "pending" from "never seen", and lets the audit find accepted requests that were never decided.
CREATE TABLE requests (
    request_id  UUID        PRIMARY KEY,
    item_id     BIGINT      NOT NULL,
    user_id     TEXT        NOT NULL,
    accepted_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One decision per request, whichever path made it.
CREATE TABLE outcomes (
    request_id UUID        PRIMARY KEY,
    item_id    BIGINT      NOT NULL REFERENCES items (id),
    user_id    TEXT        NOT NULL,
    status     TEXT        NOT NULL
        CHECK (status IN ('purchased', 'sold_out', 'already_purchased')),
    order_id   UUID        REFERENCES orders (id),
    -- Which purchase path decided it ('queue', 'pessimistic', ...).
    path       TEXT        NOT NULL,
    decided_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((status = 'purchased') = (order_id IS NOT NULL))
);

CREATE INDEX outcomes_item ON outcomes (item_id);
CREATE INDEX requests_item ON requests (item_id);
