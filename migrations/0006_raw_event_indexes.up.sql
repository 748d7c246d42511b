-- Cheaper ingest: drop the raw-table indexes that no query uses. Every raw row pays one
-- btree insertion per index, and on /log/batch these were two of the four btrees of a watch.
-- The KPI queries of the analytics module (modules/analytics, migration 0005) filter on
-- server_received_ts_ms (impressions_server_ts_idx, watches_server_ts_idx) and attribute by
-- (user_id, item_id, server_received_ts_ms); the feature rebuild reads whole tables; nothing
-- filters on the client time ts or on (user_id, request_id, item_id, ts_ms) any more.
-- Retention keeps its BRIN indexes on created_at. Old binaries do not need these indexes
-- either, so an image rollback stays valid (docs/rollback.md).
--
-- DROP INDEX takes a brief ACCESS EXCLUSIVE lock on the table (no scan); it does not wait
-- for a rebuild.
DROP INDEX IF EXISTS impressions_ts_idx;
DROP INDEX IF EXISTS watches_ts_idx;
DROP INDEX IF EXISTS watches_attribution_idx;
