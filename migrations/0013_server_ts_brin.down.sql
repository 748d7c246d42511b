-- Back to the btrees of migrations 0005 and 0012 (SHARE lock for the build: writers wait).
CREATE INDEX IF NOT EXISTS watches_server_ts_idx ON watches (server_received_ts_ms);
CREATE INDEX IF NOT EXISTS impression_events_server_ts_idx ON impression_events (server_received_ts_ms);
DROP INDEX IF EXISTS watches_server_ts_brin;
DROP INDEX IF EXISTS impression_events_server_ts_brin;
