-- Back to the server's default_toast_compression, as before 0007 (pglz named explicitly would
-- stay pglz on a server whose default is lz4); values stored with lz4 stay readable.
ALTER TABLE feature_users
    ALTER COLUMN history SET COMPRESSION default,
    ALTER COLUMN watched SET COMPRESSION default,
    ALTER COLUMN impressions SET COMPRESSION default;
CREATE INDEX IF NOT EXISTS feature_items_pop_short_idx ON feature_items (pop_short DESC, item_id) WHERE pop_short > 0;
CREATE INDEX IF NOT EXISTS feature_items_pop_long_idx ON feature_items (pop_long DESC, item_id) WHERE pop_long > 0;
CREATE INDEX IF NOT EXISTS feature_items_fresh_idx ON feature_items (first_seen_ms DESC, item_id);
