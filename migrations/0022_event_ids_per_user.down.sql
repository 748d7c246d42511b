-- Back to global event ids (docs/rollback.md, migration 0022). Where two users share an id,
-- the dedup records keep one row for it (the oldest): the id is then a duplicate for every
-- user, which is what the old key means, and nothing is applied or stored twice. The outbox
-- cannot do the same (its rows hold unpublished events), so the migration refuses while two
-- of its rows share (event_id, event_type): two users' dead letters of one id.
LOCK TABLE event_dedup, feature_applied, event_outbox IN ACCESS EXCLUSIVE MODE;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM event_outbox GROUP BY event_id, event_type HAVING count(*) > 1) THEN
        RAISE EXCEPTION 'event_outbox holds rows of two users with one event_id (dead letters): replay them (recsys relay replay --status dead) and let the relay drain them, or delete them, first';
    END IF;
END $$;
ALTER TABLE event_outbox DROP CONSTRAINT event_outbox_event_id_event_type_msg_key_key,
    ADD CONSTRAINT event_outbox_event_id_event_type_key UNIQUE (event_id, event_type);

DELETE FROM event_dedup d USING event_dedup o
WHERE o.event_id = d.event_id AND (o.created_at, o.user_id) < (d.created_at, d.user_id);
ALTER TABLE event_dedup DROP CONSTRAINT event_dedup_pkey, DROP COLUMN user_id, ADD PRIMARY KEY (event_id);

DELETE FROM feature_applied d USING feature_applied o
WHERE o.event_id = d.event_id AND (o.applied_at, o.user_id) < (d.applied_at, d.user_id);
ALTER TABLE feature_applied DROP CONSTRAINT feature_applied_pkey, DROP COLUMN user_id, ADD PRIMARY KEY (event_id);
