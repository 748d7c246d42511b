DROP TABLE feature_users_trimmed;
ALTER TABLE feature_users DROP COLUMN last_active_ms;
