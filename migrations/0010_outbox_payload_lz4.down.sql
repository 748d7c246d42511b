-- Back to the server's default_toast_compression; rows stored with lz4 stay readable.
ALTER TABLE event_outbox ALTER COLUMN payload SET COMPRESSION default;
