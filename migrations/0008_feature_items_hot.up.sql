-- Feature apply throughput (pkg/featurestore). Every batch adds to pop_short, pop_long (and
-- may lower first_seen_ms) of the items it touches, and these three indexes were on exactly
-- those columns: no item update could be HOT, so every increment also inserted three index
-- entries (and left dead ones to vacuum). The top lists they served are only read by the
-- degraded PostgreSQL loader and by Redis rebuilds, which now scan feature_items and keep the
-- top N (a bounded top-N sort): far cheaper overall than the index churn on every event.
DROP INDEX IF EXISTS feature_items_pop_short_idx;
DROP INDEX IF EXISTS feature_items_pop_long_idx;
DROP INDEX IF EXISTS feature_items_fresh_idx;
