-- Fencing of the queue path's deciders. Single-active-consumer hands a partition to a standby
-- when the active consumer's connection dies, but a paused or partitioned old consumer may still
-- try to commit the batch it was deciding. Each partition queue has an epoch here: a consumer
-- takes a new one when it becomes active (before it loads any item state), and every batch commit
-- writes only while its epoch is still the current one. A zombie's commit is refused.
CREATE TABLE partition_epochs (
    queue    TEXT        PRIMARY KEY,
    epoch    BIGINT      NOT NULL CHECK (epoch > 0),
    -- Who holds it ("host/pid"), for operators.
    holder   TEXT        NOT NULL,
    taken_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
