ALTER TABLE feature_users_trimmed DROP COLUMN version;
