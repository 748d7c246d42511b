-- Feature apply throughput (pkg/featurestore). Every batch adds to pop_short, pop_long (and
-- may lower first_seen_ms) of the items it touches, and these three indexes were on exactly
-- those columns: no item update could be HOT, so every increment also inserted three index
-- entries (and left dead ones to vacuum). The top lists they served are only read by the
-- degraded PostgreSQL loader, which now scans feature_items and keeps the top N (a bounded
-- top-N sort; Redis rebuilds copy every item by primary key anyway): far cheaper overall
-- than the index churn on every event.
DROP INDEX IF EXISTS feature_items_pop_short_idx;
DROP INDEX IF EXISTS feature_items_pop_long_idx;
DROP INDEX IF EXISTS feature_items_fresh_idx;

-- The user documents are rewritten whole on every batch that touches the user, and past ~2 kB
-- (a few dozen watched items) they are TOASTed: pglz compression was most of the cost of the
-- user update. lz4 compresses several times faster (measured: the update of 4,000 users with
-- 4 kB documents 30-40% cheaper). Only values written from now on use it; old ones stay
-- readable.
ALTER TABLE feature_users
    ALTER COLUMN history SET COMPRESSION lz4,
    ALTER COLUMN watched SET COMPRESSION lz4,
    ALTER COLUMN impressions SET COMPRESSION lz4;
