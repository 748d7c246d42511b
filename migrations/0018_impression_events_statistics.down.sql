-- Every column back to default_statistics_target; the next ANALYZE rebuilds them all.
ALTER TABLE impression_events
    ALTER COLUMN session_id SET STATISTICS -1,
    ALTER COLUMN ts_ms SET STATISTICS -1,
    ALTER COLUMN ts SET STATISTICS -1,
    ALTER COLUMN context SET STATISTICS -1,
    ALTER COLUMN positions SET STATISTICS -1,
    ALTER COLUMN item_ids SET STATISTICS -1,
    ALTER COLUMN feed_ids SET STATISTICS -1,
    ALTER COLUMN slots SET STATISTICS -1,
    ALTER COLUMN event_id SET STATISTICS -1,
    ALTER COLUMN user_id SET STATISTICS -1,
    ALTER COLUMN request_id SET STATISTICS -1,
    ALTER COLUMN server_received_ts_ms SET STATISTICS -1,
    ALTER COLUMN created_at SET STATISTICS -1;
