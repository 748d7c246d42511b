CREATE INDEX IF NOT EXISTS impressions_ts_idx ON impressions (ts);
CREATE INDEX IF NOT EXISTS watches_ts_idx ON watches (ts);
CREATE INDEX IF NOT EXISTS watches_attribution_idx ON watches (user_id, request_id, item_id, ts_ms);
