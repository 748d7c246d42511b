DROP TRIGGER forgotten_users_xid ON forgotten_users;
DROP FUNCTION forgotten_users_set_xid();
DROP INDEX forgotten_users_xid_idx;
ALTER TABLE forgotten_users DROP COLUMN xid;
