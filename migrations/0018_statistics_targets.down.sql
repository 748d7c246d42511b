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

ALTER TABLE feature_users
    ALTER COLUMN history SET STATISTICS -1,
    ALTER COLUMN watched SET STATISTICS -1,
    ALTER COLUMN impressions SET STATISTICS -1,
    ALTER COLUMN impressions_recent SET STATISTICS -1,
    ALTER COLUMN version SET STATISTICS -1,
    ALTER COLUMN user_id SET STATISTICS -1;

ALTER TABLE feature_applied
    ALTER COLUMN event_id SET STATISTICS -1,
    ALTER COLUMN applied_at SET STATISTICS -1;

ALTER TABLE event_dedup
    ALTER COLUMN event_type SET STATISTICS -1,
    ALTER COLUMN event_id SET STATISTICS -1,
    ALTER COLUMN created_at SET STATISTICS -1;
