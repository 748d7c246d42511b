ALTER TABLE event_outbox RESET (autovacuum_vacuum_scale_factor, autovacuum_analyze_scale_factor,
    autovacuum_vacuum_cost_delay);
DROP INDEX IF EXISTS event_outbox_dead_idx;
DROP INDEX IF EXISTS event_outbox_published_idx;
DROP INDEX IF EXISTS event_outbox_publishing_idx;
DROP INDEX IF EXISTS event_outbox_unpublished_key_idx;
DROP INDEX IF EXISTS event_outbox_pending_idx;
DROP SEQUENCE IF EXISTS event_outbox_lease_token_seq;
ALTER TABLE event_outbox DROP COLUMN IF EXISTS lease_token;
