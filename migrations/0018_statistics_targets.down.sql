-- Every column of the four tables back to default_statistics_target (all of them were before
-- 0018); the next ANALYZE rebuilds their statistics.
DO $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT attrelid::regclass AS tbl, attname FROM pg_attribute
             WHERE attrelid IN ('impression_events'::regclass, 'feature_users'::regclass,
                                'feature_applied'::regclass, 'event_dedup'::regclass)
               AND attnum > 0 AND NOT attisdropped
    LOOP
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET STATISTICS -1', c.tbl, c.attname);
    END LOOP;
END $$;
