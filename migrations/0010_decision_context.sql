-- What the audit needs to judge each verdict against the state it was decided in, rather than
-- against the item's final state (which a restock, or a later purchase, changes):
--
-- * `seq`: the order in which decisions were stored, from one sequence without a cache (a
--   cached sequence hands each session its own block, and the order across sessions is lost).
--   Every deciding path stores its outcome after what it decided from, under the item's lock or
--   in the one decider's batch order, so an `already_purchased` must come after a purchase of
--   the same user.
-- * `stock_seen`, `held_seen`: the units left and the units the user held when the decider
--   decided, where the path knows them (the queue path's decider, and the paths that hold the
--   item's lock); NULL where it does not (an answer at the door, or a path that decides
--   elsewhere), and those are judged against the final state as before.
CREATE SEQUENCE decision_seq AS BIGINT CACHE 1;
ALTER TABLE outcomes ADD COLUMN seq BIGINT NOT NULL DEFAULT nextval('decision_seq');
ALTER TABLE outcomes ADD COLUMN stock_seen BIGINT CHECK (stock_seen >= 0);
ALTER TABLE outcomes ADD COLUMN held_seen BIGINT CHECK (held_seen >= 0);
CREATE INDEX outcomes_item_user_seq ON outcomes (item_id, user_id, seq);
