-- The index of migration 0005 again (its build takes a SHARE lock on watches: writers wait).
CREATE INDEX IF NOT EXISTS watches_user_item_server_ts_idx ON watches (user_id, item_id, server_received_ts_ms);
