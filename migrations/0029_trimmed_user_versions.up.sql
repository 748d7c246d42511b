-- The version of each trimmed user's deleted row (TrimUsers), kept until the trim's second
-- pass: a batch that creates the user again before then starts their new row above it. A
-- writer that read the row before the trim and wrote the copy after the trim deleted the
-- hash (a read-through, a journal heal) brings back a hash at that version; the copy's merge
-- takes a user only to a higher version, so a new row starting at 1 stayed hidden behind it
-- until the second pass. 0: not known (a row the previous release recorded), the new row
-- starts at 1 as before. Expand-only: the previous release's trim and batches ignore it.
ALTER TABLE feature_users_trimmed ADD COLUMN version bigint NOT NULL DEFAULT 0;
