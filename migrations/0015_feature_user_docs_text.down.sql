-- Back to json (validating every stored document once); lz4 as 0007 set it.
ALTER TABLE feature_users
    ALTER COLUMN history DROP DEFAULT,
    ALTER COLUMN watched DROP DEFAULT,
    ALTER COLUMN impressions DROP DEFAULT;
ALTER TABLE feature_users
    ALTER COLUMN history TYPE json USING history::json,
    ALTER COLUMN history SET DEFAULT '[]',
    ALTER COLUMN watched TYPE json USING watched::json,
    ALTER COLUMN watched SET DEFAULT '{}',
    ALTER COLUMN impressions TYPE json USING impressions::json,
    ALTER COLUMN impressions SET DEFAULT '{}';
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        ALTER TABLE feature_users
            ALTER COLUMN history SET COMPRESSION lz4,
            ALTER COLUMN watched SET COMPRESSION lz4,
            ALTER COLUMN impressions SET COMPRESSION lz4;
    END IF;
END $$;
