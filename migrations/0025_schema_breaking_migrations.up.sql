-- The migrations that older binaries cannot run on (docs/rollback.md, "Marking a breaking
-- migration"). Most migrations are expand-only and the previous release's binary runs on
-- them; a contract step breaks it: it writes rows the new schema or the new consumers misread,
-- or fails with SQL errors at request time. Nothing stopped such a binary from serving (an
-- image rolled back without the schema, a pod left from an old ReplicaSet), since a schema
-- ahead of the binary is what every rollout passes through.
--
-- A migration that breaks older binaries inserts its row here in its up file and deletes it
-- in its down file (in the same transaction as its schema change): min_binary is the lowest
-- "newest migration" a binary must embed to run on it, usually the migration itself. Every
-- binary from this one on reads max(min_binary) whenever the schema is ahead of it (pkg/migrate
-- CheckSchema): below it, the relay and consumer refuse to start, the API stays unready and
-- the operator tools refuse, each naming the versions and the way out. min_binary <= version:
-- a binary that embeds the migration itself is never refused by it, so a schema at or behind
-- the binary needs no read.
--
-- The rows below are the history, as docs/rollback.md describes each migration; binaries
-- older than this one never read them. The floor is 22: every binary that embeds 0022 runs on
-- this schema (0023 to 0025 are expand-only).
CREATE TABLE schema_breaking_migrations (
    version    integer PRIMARY KEY,
    min_binary integer NOT NULL CHECK (min_binary > 0 AND min_binary <= version),
    reason     text    NOT NULL
);
INSERT INTO schema_breaking_migrations (version, min_binary, reason) VALUES
    (9, 9, 'co-visitation moved to feature_neighbours and feature_covis was dropped: an older consumer cannot apply events'),
    (12, 12, 'impressions became a view over impression_events: an older binary''s retention pass fails'),
    (15, 15, 'user documents became text: an older consumer cannot update users'),
    (22, 22, 'event ids are keyed per user: an older API cannot write events (ON CONFLICT (event_id) has no matching key) and an older relay cannot store dead letters');
