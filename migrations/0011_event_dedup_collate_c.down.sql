-- Back to the database's default collation (the primary key is rebuilt).
ALTER TABLE event_dedup ALTER COLUMN event_id TYPE text COLLATE "default";
