-- Restocks (`POST /items/{id}/restock`): the last one's time. The audit checks a `sold_out`
-- against the item's final state only when it was decided well after the last restock: one
-- decided before it was right when it was given, though the final state shows more units.
ALTER TABLE items ADD COLUMN restocked_at TIMESTAMPTZ;
