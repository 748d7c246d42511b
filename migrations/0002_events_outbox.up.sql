-- Transactional outbox: the API writes one row per accepted event in the same transaction as
-- the raw event rows; the relay publishes rows to Kafka. Published rows are deleted by the
-- relay's retention loop in bounded batches (see modules/relay), so the table stays small.
CREATE TABLE event_outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         text        NOT NULL,
    event_type       text        NOT NULL,           -- impression | watch
    topic            text        NOT NULL,
    msg_key          text        NOT NULL,           -- user_id: Kafka partition key, per-key order
    payload          bytea       NOT NULL,           -- the event as JSON (null fields omitted)
    schema_version   smallint    NOT NULL DEFAULT 1,
    correlation_id   text,
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'publishing', 'published', 'dead')),
    attempts         integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_expires_at timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    published_at     timestamptz,
    UNIQUE (event_id, event_type)
);
