-- One outbox row may carry many events (payload_format 2): the ingest writer stores the events
-- of one group commit as one row per (topic, lane), where the lane is a hash of the user id
-- (msg_key = the lane's key). Per-key order still holds because a user always maps to the same
-- lane and the relay publishes a lane's rows one run at a time in id order; the per-event cost
-- of the outbox (a heap row and four index entries, most of ingestion's database work) becomes
-- a per-group cost. Rows written before this migration (payload_format 1: one event, its JSON
-- as payload, msg_key = user id) stay valid and are still published.
ALTER TABLE event_outbox
    ADD COLUMN payload_format smallint NOT NULL DEFAULT 1 CHECK (payload_format IN (1, 2)),
    ADD COLUMN event_count integer NOT NULL DEFAULT 1 CHECK (event_count >= 1);
