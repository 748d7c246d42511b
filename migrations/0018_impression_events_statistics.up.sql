-- ANALYZE of impression_events samples 300 rows per unit of the largest statistics target
-- (30,000 at the default 100) and builds statistics for every column, most of it element
-- statistics of the per-item arrays and the context documents. No query filters, joins or
-- groups on those: the analytics range-scan server_received_ts_ms, retention created_at,
-- the roll-up groups request_id, the rebuild event_id, KPIs join on user_id. Those keep
-- statistics at target 10 (a 3,000-row sample: ndistinct and an 11-bound histogram, enough
-- for range scans on a time column and key lookups); the others have none.
--
-- An autovacuum ANALYZE of this table took 0.3-0.5 s of a core (25,000-300,000 rows) and
-- was most of autovacuum's CPU under /reco autolog: on a host shared with the API it took
-- a core for that long, and the open loop's p99 with it (docs/performance-log.md, session
-- 31). With these targets 300,000 rows analyze in ~30 ms against ~500.
--
-- SET STATISTICS takes a SHARE UPDATE EXCLUSIVE lock: writers and readers go on.
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
