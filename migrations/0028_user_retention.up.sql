-- User retention (--consumer.user-retention, pkg/featurestore TrimUsers). A user is trimmed
-- (their feature_users row and Redis hash deleted; their events stay) once no batch has
-- written their row for the retention.
--
-- last_active_ms is the PostgreSQL clock (ms) of the last batch that wrote the row (any new
-- event of the user), as feature_items.last_active_ms is (0027): the server's clock, not the
-- events'. ADD COLUMN evaluates the default once for the existing rows (a stable expression:
-- no table rewrite), so after the upgrade every user counts as active at the upgrade and none
-- is trimmed before a full retention has passed. A consumer of the previous release sets it
-- only on the rows it inserts (docs/rollback.md).
--
-- No statistics (0018's rule): the trim reads it by user_id only, and a column at the default
-- target would have ANALYZE sample ten times the rows 0018 set for this table.
ALTER TABLE feature_users ADD COLUMN last_active_ms bigint NOT NULL
    DEFAULT ((extract(epoch FROM now()) * 1000)::bigint);
ALTER TABLE feature_users ALTER COLUMN last_active_ms SET STATISTICS 0;

-- Users trimmed whose Redis hashes still need the second pass, as feature_items_trimmed for
-- items (0027).
CREATE TABLE feature_users_trimmed (
    user_id    text        COLLATE "C" PRIMARY KEY,
    trimmed_at timestamptz NOT NULL DEFAULT now()
);
