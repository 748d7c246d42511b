-- The overlay of a user's impression counters (0016) grows to a few kilobytes between folds
-- (about 100 entries, ~2.3 kB at 5,000 lists/s), and with the history and the watched set
-- inline it takes the row past the TOAST threshold: every batch that raises it compressed
-- it again, with the default pglz. lz4 like the other documents (0007): the users' UPDATE
-- took 23-24 µs per row against 37-39 (pg_stat_statements, the whole pipeline with autolog
-- at the cap, 2 alternated pairs), and reading it back 8.5-9 against 10-11.5. lz4 is used
-- when the server was built with it (the Debian, Ubuntu and official Docker packages are);
-- otherwise pglz stays. Values already stored keep their method (no rewrite).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        ALTER TABLE feature_users ALTER COLUMN impressions_recent SET COMPRESSION lz4;
    END IF;
END $$;
