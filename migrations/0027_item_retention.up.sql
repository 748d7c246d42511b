-- Item retention (--consumer.item-retention, pkg/featurestore TrimItems). An item is trimmed
-- once no batch has written its row for the retention AND its long popularity is below what
-- one full watch that long ago weighs now. pop_long alone cannot tell: it counts watches
-- only, so an item that is shown but never watched has 0 there, however often it is shown.
--
-- last_active_ms is the PostgreSQL clock (ms) of the last batch that wrote the row: an
-- impression, a watch, or a change of its neighbour list's length. The server's clock, not
-- the events': a backfill of old events is not trimmed right after it is applied. The
-- default is evaluated per insert; ADD COLUMN evaluates it once for the existing rows (a
-- stable expression: no table rewrite), so after the upgrade every item counts as active at
-- the upgrade, and none is trimmed before a full retention has passed. A consumer of the
-- previous release, which does not write the column, still inserts rows active now.
ALTER TABLE feature_items ADD COLUMN last_active_ms bigint NOT NULL
    DEFAULT ((extract(epoch FROM now()) * 1000)::bigint);

-- Items trimmed whose Redis keys still need the second pass: deleted with the rows, in the
-- same transaction, and removed once the keys were deleted again after every writer that
-- read the row before the deletion has landed (see TrimItems). A crash between the commit
-- and the deletion of the keys leaves the row here, and the next pass of any consumer does it.
CREATE TABLE feature_items_trimmed (
    item_id    text        COLLATE "C" PRIMARY KEY,
    trimmed_at timestamptz NOT NULL DEFAULT now()
);
