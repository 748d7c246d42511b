-- Back to one row per shown item (the table of migrations 0002, 0005 and 0006). Writers wait
-- on the lock, so no event row is left behind by the copy.
LOCK TABLE impression_events IN EXCLUSIVE MODE;

DROP VIEW impressions;
DROP FUNCTION impressions_insert_row();

CREATE TABLE impressions (
    event_id              text        NOT NULL,
    position              bigint      NOT NULL,
    item_id               text        NOT NULL,
    feed_id               text,
    slot                  text,
    user_id               text        NOT NULL,
    session_id            text        NOT NULL,
    request_id            text        NOT NULL,
    ts_ms                 bigint      NOT NULL,
    ts                    timestamptz NOT NULL,
    server_received_ts_ms bigint      NOT NULL,
    context               jsonb,
    created_at            timestamptz NOT NULL DEFAULT now()
);

INSERT INTO impressions (event_id, position, item_id, feed_id, slot, user_id, session_id, request_id, ts_ms, ts,
                         server_received_ts_ms, context, created_at)
SELECT e.event_id, u.position, u.item_id, u.feed_id, u.slot, e.user_id, e.session_id, e.request_id, e.ts_ms, e.ts,
       e.server_received_ts_ms, e.context, e.created_at
FROM impression_events e
CROSS JOIN LATERAL unnest(e.positions, e.item_ids, e.feed_ids, e.slots) AS u(position, item_id, feed_id, slot)
ORDER BY e.created_at;

CREATE INDEX impressions_created_at_brin ON impressions USING brin (created_at);
CREATE INDEX impressions_server_ts_idx ON impressions (server_received_ts_ms);

DROP TABLE impression_events;
