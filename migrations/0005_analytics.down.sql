DROP TABLE IF EXISTS analytics_rollup_state;
DROP TABLE IF EXISTS analytics_request_activity;
DROP TABLE IF EXISTS analytics_item_activity;
DROP TABLE IF EXISTS analytics_kpi_buckets;
DROP INDEX IF EXISTS watches_user_item_server_ts_idx;
DROP INDEX IF EXISTS watches_server_ts_idx;
DROP INDEX IF EXISTS impressions_server_ts_idx;
