-- Back to the server's default_toast_compression; overlays stored with lz4 stay readable.
ALTER TABLE feature_users ALTER COLUMN impressions_recent SET COMPRESSION default;
