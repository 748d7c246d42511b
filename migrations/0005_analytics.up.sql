-- KPI snapshot of GET /analytics/baseline (modules/analytics): incremental roll-ups plus the
-- indexes their raw-row edges need. Definitions (all times are the API's receive time,
-- server_received_ts_ms, never the client's clock):
--   * an impression row at position p is "watched" when the same user watched the same item
--     within the attribution window after it (request_id need not match) and before that item
--     was shown to that user again (last-touch: one watch makes at most one impression
--     watched);
--   * CTR@20 = watched impressions at positions < 20 / impressions at positions < 20;
--   * coverage@20 = items shown at a position < 20 / items active (shown at any position or
--     watched) in the window, so it never exceeds 100 %.
--
-- A roll-up worker folds the raw rows received before a watermark W into the tables below,
-- W staying (attribution window + commit margin) behind the clock, so every watch that can
-- still be attributed to a folded impression has been committed. The endpoint adds the
-- roll-ups to a raw scan of [W, now] and of the partial first bucket of the window: its cost
-- is bounded by the size of those edges, not by the days asked for.

-- Raw-row range scans by receive time (the edges of the window and each roll-up step).
CREATE INDEX impressions_server_ts_idx ON impressions (server_received_ts_ms);
CREATE INDEX watches_server_ts_idx ON watches (server_received_ts_ms);
-- Attribution probe: does this user watch this item in [t, t + window)?
CREATE INDEX watches_user_item_server_ts_idx ON watches (user_id, item_id, server_received_ts_ms);

-- Counters per 5-minute bucket of receive time (bucket_ms = start of the bucket). The first six
-- are additive. The last three count the keys whose LAST sighting falls in the bucket (the fold
-- moves a key's count from its old bucket to its new one): the distinct keys seen in [S, now]
-- are then a sum over the buckets from S's bucket on, minus the few keys last seen in that
-- bucket before S, whatever the length of the window.
CREATE TABLE analytics_kpi_buckets (
    bucket_ms                 bigint           PRIMARY KEY,
    impressions               bigint           NOT NULL DEFAULT 0,
    impressions_at_20         bigint           NOT NULL DEFAULT 0,
    watched_impressions       bigint           NOT NULL DEFAULT 0,
    watched_impressions_at_20 bigint           NOT NULL DEFAULT 0,
    watches                   bigint           NOT NULL DEFAULT 0,
    watch_time_sum_sec        double precision NOT NULL DEFAULT 0,
    requests_last_seen        bigint           NOT NULL DEFAULT 0,
    items_last_active         bigint           NOT NULL DEFAULT 0,
    items_last_shown_at_20    bigint           NOT NULL DEFAULT 0
);

-- "Last seen" times: a key was seen in [S, now] iff its last sighting is >= S. One row per item
-- and per request; they locate each key's bucket above and answer the partial first bucket.
CREATE TABLE analytics_item_activity (
    item_id             text   PRIMARY KEY,
    last_active_ms      bigint NOT NULL,  -- last impression (any position) or watch
    last_shown_at_20_ms bigint            -- last impression at a position < 20
);
CREATE INDEX analytics_item_activity_active_idx ON analytics_item_activity (last_active_ms);
CREATE INDEX analytics_item_activity_shown_idx ON analytics_item_activity (last_shown_at_20_ms);

CREATE TABLE analytics_request_activity (
    request_id   text   PRIMARY KEY,
    last_seen_ms bigint NOT NULL
);
CREATE INDEX analytics_request_activity_seen_idx ON analytics_request_activity (last_seen_ms);

-- One row: the watermark and the definitions the roll-ups were computed with. The worker
-- rebuilds them from the raw rows when a definition changes.
CREATE TABLE analytics_rollup_state (
    id                    smallint PRIMARY KEY CHECK (id = 1),
    watermark_ms          bigint,           -- every raw row received before it is folded in
    attribution_window_ms bigint   NOT NULL,
    bucket_ms             bigint   NOT NULL,
    top_n                 integer  NOT NULL,
    updated_at            timestamptz NOT NULL DEFAULT now()
);
INSERT INTO analytics_rollup_state (id, watermark_ms, attribution_window_ms, bucket_ms, top_n) VALUES (1, NULL, 0, 0, 0);

-- The fold updates the same activity and bucket rows again and again; vacuum them early so
-- the endpoint's counts stay index-only scans over few dead tuples.
ALTER TABLE analytics_item_activity SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.05);
ALTER TABLE analytics_request_activity SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.05);
ALTER TABLE analytics_kpi_buckets SET (autovacuum_vacuum_scale_factor = 0.05);
