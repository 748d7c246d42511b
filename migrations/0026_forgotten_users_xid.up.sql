-- The consumers read forgotten_users every 5 s (featurestore.Forgotten). Read whole, that is
-- every erasure ever made, per consumer, every 5 s: a deployment erasing thousands of users a
-- day reads millions of rows. xid lets them read only what changed since their last read.
--
-- xid is the writing transaction's id, set by the trigger on every insert and update (an
-- older binary's `users forget`, or a hand-made UPDATE of forgotten_at_ms, included). A
-- sequence would not do: values are taken in one order and committed in another, so a reader
-- that had seen 7 could miss a 6 committed later. A transaction id does: a reader remembers
-- its snapshot's xmin (pg_snapshot_xmin: every transaction below it had ended, so each of
-- their rows was in that read) and next reads the rows at or above it, among them every row
-- that read could not see yet.
--
-- The rows already there keep xid 0 (a catalog change, no rewrite): a consumer reads the whole
-- table once when it starts, and those rows then.
ALTER TABLE forgotten_users ADD COLUMN xid xid8 NOT NULL DEFAULT '0';

CREATE INDEX forgotten_users_xid_idx ON forgotten_users (xid);

CREATE FUNCTION forgotten_users_set_xid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.xid := pg_current_xact_id();
    RETURN NEW;
END $$;
CREATE TRIGGER forgotten_users_xid BEFORE INSERT OR UPDATE ON forgotten_users
    FOR EACH ROW EXECUTE FUNCTION forgotten_users_set_xid();
