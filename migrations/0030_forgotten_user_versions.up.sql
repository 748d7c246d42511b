-- The version of each erased user's deleted feature row (`recsys users forget`, the highest
-- of their erasures). It is the floor of the Redis copy's erasure marker (featurestore's
-- writeScript refuses to create the user's hash at or below it): a writer that read the row
-- before the erasure and writes the copy after it (a journal heal after a Redis outage, a
-- read-through, a repopulation's page) carries a version at or below it, at any delay. A
-- user who comes back gets a new row starting at it, above every write of the erased data.
-- 0: not known (an erasure the previous release recorded, or a user without features).
-- Expand-only: the previous release's erasure and batches ignore it.
ALTER TABLE forgotten_users ADD COLUMN version bigint NOT NULL DEFAULT 0;
