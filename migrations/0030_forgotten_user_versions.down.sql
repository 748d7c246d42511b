ALTER TABLE forgotten_users DROP COLUMN version;
