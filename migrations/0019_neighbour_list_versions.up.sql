-- A co-visitation list's version counts its rewrites, like feature_users.version. The Redis
-- copy of a list takes a batch's changes (the raised neighbours and the cut ones) only onto
-- the version just before; a write that finds another version asks for the list whole, and
-- an older one changes nothing. Without it, two consumers (lists are per item, partitions per
-- user) whose writes of one list reached Redis in the opposite order of their commits could
-- bring back a neighbour the newer batch had cut, at its older, stronger value.
--
-- A constant default: PostgreSQL 11+ adds the column without rewriting the table. Existing
-- lists start at 0; their Redis copies have no version yet, which the copy reads as 0.
ALTER TABLE feature_neighbours ADD COLUMN version bigint NOT NULL DEFAULT 0;
-- Read with the list, never filtered on (0018).
ALTER TABLE feature_neighbours ALTER COLUMN version SET STATISTICS 0;
