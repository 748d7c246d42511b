-- The user documents (history, watched, impressions) are written by one codec
-- (pkg/featurestore/usercodec.go, fuzzed against encoding/json) and rewritten whole on every
-- batch that touches the user. As json, every write ran PostgreSQL's JSON validation over the
-- whole document: about 100 µs of backend CPU for a full 13 kB watched set or impression
-- memory, 3-4x the rest of the update (4,000 updates of 13 kB documents: 530-680 ms as json,
-- 140-195 ms as text, both lz4). Nothing queries inside them. As text they cost a copy.
--
-- This rewrites feature_users once (ACCESS EXCLUSIVE for the copy: run it with the consumers
-- stopped on a large table). A type change resets the column's compression, so lz4 (0007) is
-- set again, for the copy as well. Deploy order as always: migrate, then roll out. A consumer
-- from before 0015 cannot update users afterwards (its statement mixes json and text: "CASE
-- types json and text cannot be matched"); it retries the batch with backoff, commits no
-- offset and loses nothing, until the new binary replaces it. Readers of every version work.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        SET LOCAL default_toast_compression = lz4;
    END IF;
END $$;
ALTER TABLE feature_users
    ALTER COLUMN history DROP DEFAULT,
    ALTER COLUMN watched DROP DEFAULT,
    ALTER COLUMN impressions DROP DEFAULT;
ALTER TABLE feature_users
    ALTER COLUMN history TYPE text,
    ALTER COLUMN history SET DEFAULT '[]',
    ALTER COLUMN watched TYPE text,
    ALTER COLUMN watched SET DEFAULT '{}',
    ALTER COLUMN impressions TYPE text,
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
