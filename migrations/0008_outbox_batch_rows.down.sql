-- Batch rows cannot be expressed as single-event rows by a migration; a down migration with
-- unpublished batch rows would strand their events, so it refuses.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM event_outbox WHERE payload_format = 2 AND status IN ('pending', 'publishing', 'dead')) THEN
        RAISE EXCEPTION 'event_outbox holds unpublished batch rows (payload_format 2): let the relay drain them first';
    END IF;
END $$;
DELETE FROM event_outbox WHERE payload_format = 2;
ALTER TABLE event_outbox DROP COLUMN event_count, DROP COLUMN payload_format;
