-- outcomes.order_id references orders(id). Without an index on the referencing side, deleting or
-- re-keying an order makes PostgreSQL scan all of outcomes once per order (the benchmark's
-- clean-up of a few thousand orders took minutes). Partial: only purchases carry an order id, so
-- the index stays small and sold-out decisions, the bulk of a flash sale, do not maintain it.
CREATE INDEX outcomes_order ON outcomes (order_id) WHERE order_id IS NOT NULL;
