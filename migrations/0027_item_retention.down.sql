DROP TABLE feature_items_trimmed;
ALTER TABLE feature_items DROP COLUMN last_active_ms;
