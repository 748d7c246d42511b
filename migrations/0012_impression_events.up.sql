-- Impressions are stored as one row per impression EVENT instead of one row per shown item.
-- PostgreSQL spent ~12 µs per row of the per-item table (tuple, two index entries, WAL),
-- twenty rows for every /reco k=20 list it auto-logs; with the items as arrays an event costs
-- one row. Everything per event (ids, times, context) is stored once; the per-item
-- fields of the contract (item_id, position, feed_id, slot) are parallel arrays, in the order
-- the client sent them. feed_ids / slots are NULL when no item of the event has one (the usual
-- case), else arrays with NULL elements for the items without.
--
-- `impressions` becomes a view with the old table's columns, one row per item, so every
-- reader (analytics KPIs and roll-ups, the feature rebuild, tests, operators' queries) keeps
-- its SQL; filters on the per-event columns (server_received_ts_ms, created_at, user_id, ...)
-- are pushed down to impression_events and its indexes.
--
-- Expand/contract (docs/rollback.md): a binary from before this migration still writes
-- `impressions` rows (INSERT or COPY); the INSTEAD OF trigger stores each as a one-item
-- event row, which the view shows unchanged. Its retention fails on the view (no ctid) and
-- retries every interval until the new binary runs; nothing else of it changes.
--
-- The existing rows are regrouped in this migration's transaction, under a lock that makes
-- concurrent writers wait (none of their rows can be missed by the copy and then dropped
-- with the table). It reads the old table once and sorts it by event_id: on a large
-- deployed table run it when ingest can pause (about a minute per ten million rows here).
LOCK TABLE impressions IN EXCLUSIVE MODE;

CREATE TABLE impression_events (
    event_id              text        NOT NULL,
    user_id               text        NOT NULL,
    session_id            text        NOT NULL,
    request_id            text        NOT NULL,
    ts_ms                 bigint      NOT NULL,
    ts                    timestamptz NOT NULL,  -- ts_ms as a timestamp, as in the old table
    server_received_ts_ms bigint      NOT NULL,
    context               jsonb,                 -- null fields omitted; {} when all null; NULL when absent
    created_at            timestamptz NOT NULL DEFAULT now(),
    positions             bigint[]    NOT NULL,
    item_ids              text[]      NOT NULL,
    feed_ids              text[],
    slots                 text[],
    CONSTRAINT impression_events_items_parallel CHECK (
        cardinality(item_ids) = cardinality(positions)
        AND (feed_ids IS NULL OR cardinality(feed_ids) = cardinality(positions))
        AND (slots IS NULL OR cardinality(slots) = cardinality(positions)))
);

INSERT INTO impression_events (event_id, user_id, session_id, request_id, ts_ms, ts, server_received_ts_ms, context,
                               created_at, positions, item_ids, feed_ids, slots)
SELECT event_id, min(user_id), min(session_id), min(request_id), min(ts_ms), min(ts), min(server_received_ts_ms),
       (array_agg(context))[1]::jsonb, min(created_at),
       array_agg(position ORDER BY position), array_agg(item_id ORDER BY position),
       CASE WHEN count(feed_id) > 0 THEN array_agg(feed_id ORDER BY position) END,
       CASE WHEN count(slot) > 0 THEN array_agg(slot ORDER BY position) END
FROM impressions
GROUP BY event_id
ORDER BY min(created_at);

DROP TABLE impressions;

-- Retention deletes by insert time (modules/ingest/retention.go), the KPI queries and the
-- roll-up range-scan by receive time (modules/analytics, migration 0005).
CREATE INDEX impression_events_created_at_brin ON impression_events USING brin (created_at);
CREATE INDEX impression_events_server_ts_idx ON impression_events (server_received_ts_ms);

-- Column names, types and order of the old table. unnest of several arrays pads the shorter
-- ones with NULL, so a NULL feed_ids / slots yields NULL per item.
CREATE VIEW impressions AS
SELECT e.event_id, u.position, u.item_id, u.feed_id, u.slot, e.user_id, e.session_id, e.request_id,
       e.ts_ms, e.ts, e.server_received_ts_ms, e.context, e.created_at
FROM impression_events e
CROSS JOIN LATERAL unnest(e.positions, e.item_ids, e.feed_ids, e.slots) AS u(position, item_id, feed_id, slot);

CREATE FUNCTION impressions_insert_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO impression_events (event_id, user_id, session_id, request_id, ts_ms, ts, server_received_ts_ms, context,
                                   created_at, positions, item_ids, feed_ids, slots)
    VALUES (NEW.event_id, NEW.user_id, NEW.session_id, NEW.request_id, NEW.ts_ms, NEW.ts, NEW.server_received_ts_ms,
            NEW.context, COALESCE(NEW.created_at, now()), ARRAY[NEW.position], ARRAY[NEW.item_id],
            CASE WHEN NEW.feed_id IS NOT NULL THEN ARRAY[NEW.feed_id] END,
            CASE WHEN NEW.slot IS NOT NULL THEN ARRAY[NEW.slot] END);
    RETURN NEW;
END $$;
CREATE TRIGGER impressions_insert INSTEAD OF INSERT ON impressions
    FOR EACH ROW EXECUTE FUNCTION impressions_insert_row();
