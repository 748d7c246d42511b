-- ANALYZE samples 300 rows per unit of a table's largest statistics target (30,000 at the
-- default 100) and builds statistics for every column. On the tables autovacuum analyzes
-- most often under load, most columns are never filtered, joined or grouped on: keep
-- statistics (at target 10: a 3,000-row sample, ndistinct and an 11-bound histogram, enough
-- for key look-ups and range scans on a time column) only for those that are, none for the
-- rest.
--
-- impression_events: the analytics range-scan server_received_ts_ms, retention created_at,
-- the roll-up groups request_id, the rebuild event_id, the KPIs join on user_id. Element
-- statistics of the per-item arrays and the context documents were most of its ANALYZE: 0.3-
-- 0.5 s of a core per autovacuum pass under /reco autolog, and on a host shared with the API
-- the open loop's worst seconds (docs/performance-log.md, session 31). 300,000 rows: ~500 ms
-- -> ~30 ms.
--
-- feature_users (by user_id), feature_applied (event_id; retention applied_at) and
-- event_dedup (event_id; retention created_at): 100,000 users and a million ids each,
-- 89-135 ms -> 12-38 ms.
--
-- SET STATISTICS takes a SHARE UPDATE EXCLUSIVE lock: readers and writers go on.
ALTER TABLE impression_events
    ALTER COLUMN session_id SET STATISTICS 0,
    ALTER COLUMN ts_ms SET STATISTICS 0,
    ALTER COLUMN ts SET STATISTICS 0,
    ALTER COLUMN context SET STATISTICS 0,
    ALTER COLUMN positions SET STATISTICS 0,
    ALTER COLUMN item_ids SET STATISTICS 0,
    ALTER COLUMN feed_ids SET STATISTICS 0,
    ALTER COLUMN slots SET STATISTICS 0,
    ALTER COLUMN event_id SET STATISTICS 10,
    ALTER COLUMN user_id SET STATISTICS 10,
    ALTER COLUMN request_id SET STATISTICS 10,
    ALTER COLUMN server_received_ts_ms SET STATISTICS 10,
    ALTER COLUMN created_at SET STATISTICS 10;

ALTER TABLE feature_users
    ALTER COLUMN history SET STATISTICS 0,
    ALTER COLUMN watched SET STATISTICS 0,
    ALTER COLUMN impressions SET STATISTICS 0,
    ALTER COLUMN impressions_recent SET STATISTICS 0,
    ALTER COLUMN version SET STATISTICS 0,
    ALTER COLUMN user_id SET STATISTICS 10;

ALTER TABLE feature_applied
    ALTER COLUMN event_id SET STATISTICS 10,
    ALTER COLUMN applied_at SET STATISTICS 10;

ALTER TABLE event_dedup
    ALTER COLUMN event_type SET STATISTICS 0,
    ALTER COLUMN event_id SET STATISTICS 10,
    ALTER COLUMN created_at SET STATISTICS 10;
