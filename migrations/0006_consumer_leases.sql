-- Membership of the consumer daemons, to balance the partitions among them (docs/ARCHITECTURE.md,
-- "Several daemons"). Each live `seckill consume` renews one row every heartbeat; a row whose
-- expires_at has passed belongs to a daemon that is gone (killed, paused, cut off). Every time
-- here is PostgreSQL's `now()`, never a daemon's clock, so clock skew between machines does not
-- matter. A daemon deletes its row when it stops or loses the broker.
CREATE TABLE consumer_leases (
    -- "host/pid/random": unique per consumer run, readable by operators.
    id           TEXT        PRIMARY KEY,
    -- The deployment (SECKILL_QUEUE_PREFIX): daemons of different deployments may share a
    -- database, and only balance among themselves.
    queue_prefix TEXT        NOT NULL,
    -- When this lease was first taken (again, after it had expired): partitions are handed over
    -- only to a daemon that has been alive for a while (SECKILL_LEASE_SETTLE_MS).
    joined_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    renewed_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL,
    CHECK (expires_at > renewed_at)
);
