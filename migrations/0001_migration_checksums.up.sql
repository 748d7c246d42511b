-- Checksums of applied migrations, so `recsys migrate check` can detect a file that was
-- edited after it ran (golang-migrate itself only stores the version).
CREATE TABLE schema_migration_checksums (
    version    bigint PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
