-- Event ids are idempotency keys per user (api-contract §16.10: "ids are global rather than
-- per tenant/user"). Clients may number their events per user or per device (an event_id is
-- any 8-64 characters, §2.2), so two users send the same ids; with one global key the second
-- user's event was answered "duplicate" and never stored nor applied. The API's dedup record
-- (event_dedup), the consumer's exactly-once record (feature_applied) and the outbox's unique
-- key now include the user: the same id from two users is two events, a resend by the same
-- user is still a duplicate.
--
-- The keys are (event_id, user_id): event_id first, so every lookup still descends by the id,
-- which nearly always has a single user, and the old key's selectivity and order (time-ordered
-- generated ids append at the right edge) are kept. user_id is COLLATE "C" like event_id (0011):
-- only equality is asked of it, and bytewise comparison is the cheapest. The key replaces the
-- old one: there is no second unique index to maintain.
--
-- Backfill. Before this migration an id was accepted once, whatever the user and kind, so each
-- stored id names one raw event, and its user is that event's: event_dedup takes it from the
-- raw table its event_type names (impression_events, one row per event; watches;
-- legacy_events). The raw row is the one with the dedup row's created_at: the API wrote both
-- in one transaction (now() is its start), while the id alone may also match an older event
-- of another user, stored before the id's first key expired (--ingest.raw-retention longer
-- than --ingest.dedup-retention, or 0), which UPDATE ... FROM would pick as likely as the
-- right one. feature_applied takes it from event_dedup once that is filled: the consumer
-- applies only events the API accepted, and keeps their ids --consumer.dedup-retention (14
-- days by default), within the raw tables' 30 days and the dedup keys' 31.
--
-- Rows whose raw event is gone get user_id '' (no user has an empty id: ids are 1-128
-- characters). In event_dedup it matches no user; the consumer takes a feature_applied row
-- with it as applied for every user (pkg/featurestore, lockUsers). They are events past raw
-- retention, which the API already refuses as too old (--ingest.max-event-age equals
-- --ingest.raw-retention by default) unless the client clock ran ahead of the server by up to
-- --ingest.max-event-future, and the events of users erased by `recsys users forget` (their
-- raw rows deleted, their dedup keys kept). A resend of such an event is stored again instead
-- of being answered "duplicate"; having them match every user in event_dedup instead would
-- cost every accepted event a second probe on the hot path, for rows that retention removes
-- within 31 days (event_dedup) and 14 days (feature_applied). (The consumer skips an erased
-- user's events received before the erasure anyway, dedup record or not.)
--
-- Outbox. A dead letter is a single-event row named by its event_id with the user id as
-- msg_key (pkg/outbox); two users' dead events with one id are two rows, so the unique key
-- becomes (event_id, event_type, msg_key). A batch row (0008) is named after its first event
-- and that event's user; its msg_key is its lane.
--
-- Compatibility (docs/rollback.md): a binary from before this migration cannot ingest on it
-- (its ON CONFLICT (event_id) names a key that no longer exists: its API answers 503 until
-- the new image replaces it), and its relay cannot store dead letters (ON CONFLICT (event_id,
-- event_type)). Its consumer keeps working: feature_applied.user_id defaults to '' for its
-- inserts, which name event_id alone; without the default they would fail NOT NULL, which it
-- takes for events PostgreSQL refuses, and it would dead-letter every event.
--
-- Locks: the three tables are locked ACCESS EXCLUSIVE for the whole migration (ingest, the
-- consumers and the relays wait), since a row written meanwhile would have no user. The
-- migration reads each raw table once (hash joins: the raw tables have no index on event_id)
-- and rewrites event_dedup and feature_applied once, then builds their keys; on large
-- deployed tables run it when ingest can pause.
LOCK TABLE event_dedup, feature_applied, event_outbox IN ACCESS EXCLUSIVE MODE;

-- Dropping the old keys first spares the backfill an index entry per rewritten row.
ALTER TABLE event_dedup DROP CONSTRAINT event_dedup_pkey, ADD COLUMN user_id text COLLATE "C";
UPDATE event_dedup d SET user_id = e.user_id FROM impression_events e
WHERE d.event_type = 'impression' AND e.event_id = d.event_id AND e.created_at = d.created_at;
UPDATE event_dedup d SET user_id = w.user_id FROM watches w
WHERE d.event_type = 'watch' AND w.event_id = d.event_id AND w.created_at = d.created_at;
UPDATE event_dedup d SET user_id = l.user_id FROM legacy_events l
WHERE d.event_type = 'legacy' AND l.event_id = d.event_id AND l.created_at = d.created_at;
UPDATE event_dedup SET user_id = '' WHERE user_id IS NULL;
ALTER TABLE event_dedup ALTER COLUMN user_id SET NOT NULL, ADD PRIMARY KEY (event_id, user_id);

ALTER TABLE feature_applied DROP CONSTRAINT feature_applied_pkey, ADD COLUMN user_id text COLLATE "C";
UPDATE feature_applied a SET user_id = d.user_id FROM event_dedup d WHERE d.event_id = a.event_id;
UPDATE feature_applied SET user_id = '' WHERE user_id IS NULL;
ALTER TABLE feature_applied ALTER COLUMN user_id SET NOT NULL, ALTER COLUMN user_id SET DEFAULT '',
    ADD PRIMARY KEY (event_id, user_id);

ALTER TABLE event_outbox DROP CONSTRAINT event_outbox_event_id_event_type_key,
    ADD CONSTRAINT event_outbox_event_id_event_type_msg_key_key UNIQUE (event_id, event_type, msg_key);

-- Key columns keep statistics (0018's rule); ANALYZE sizes them as the other key columns.
ALTER TABLE event_dedup ALTER COLUMN user_id SET STATISTICS 10;
ALTER TABLE feature_applied ALTER COLUMN user_id SET STATISTICS 10;
