-- Transactional outbox: the API writes one row per accepted event in the same transaction as
-- the raw event rows; the relay publishes rows to Kafka. Published rows are deleted by the
-- relay's retention loop in bounded batches (see modules/relay), so the table stays small.
CREATE TABLE event_outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         text        NOT NULL,
    event_type       text        NOT NULL,           -- impression | watch | legacy
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

-- Raw events written by the api's ingest module (pkg/ingest), in the same transaction as
-- their outbox rows.
--
-- Idempotency: event_dedup holds one row per accepted event_id, global across kinds
-- (impression, watch, legacy). The writer inserts it with ON CONFLICT DO NOTHING first and
-- writes the raw rows and the outbox row only for ids that were new, so N concurrent requests
-- with one event_id give exactly one "ok" and a resend changes nothing. The raw tables carry
-- no unique index of their own: event_dedup is the guard, and skipping a second btree per row
-- keeps the bulk inserts fast.
--
-- Size: rows are removed by the ingest module's retention loop in bounded batches
-- (DELETE ... WHERE ctid = ANY(ARRAY(SELECT ctid ... WHERE created_at < cutoff LIMIT n)),
-- repeated until a batch comes back short), using the BRIN indexes on created_at, which cost
-- almost nothing to maintain on append-only tables. Raw rows are kept --ingest.raw-retention
-- (30 days by default); dedup rows --ingest.dedup-retention (31 days), which must exceed the
-- API's accepted event age plus future skew so that a resend the API would still accept always
-- finds its dedup row. If volumes outgrow batch deletes, these tables can move to daily
-- range partitions on created_at with the same columns (drop a partition instead of
-- deleting).
CREATE TABLE event_dedup (
    event_id   text        NOT NULL PRIMARY KEY,
    event_type text        NOT NULL,  -- impression | watch | legacy
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX event_dedup_created_at_brin ON event_dedup USING brin (created_at);

-- One row per shown item. ts is the client time (ts_ms) as a timestamp, so KPI windows
-- (`ts >= now() - interval`) use the btree on ts instead of an expression over ts_ms.
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
    context               jsonb,      -- null fields omitted; {} when all null; NULL when absent
    created_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX impressions_ts_idx ON impressions (ts);
CREATE INDEX impressions_created_at_brin ON impressions USING brin (created_at);

CREATE TABLE watches (
    event_id              text             NOT NULL,
    user_id               text             NOT NULL,
    session_id            text             NOT NULL,
    request_id            text             NOT NULL,
    item_id               text             NOT NULL,
    watch_time_sec        double precision NOT NULL,
    percent_watched       double precision,
    ended                 boolean,
    playback_speed        double precision,
    rebuffer_count        bigint,
    ts_ms                 bigint           NOT NULL,
    ts                    timestamptz      NOT NULL,
    server_received_ts_ms bigint           NOT NULL,
    context               jsonb,
    created_at            timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX watches_ts_idx ON watches (ts);
-- Watch attribution of §9.4: a watch counts for an impression with the same user, request
-- and item (and a later ts); the KPI query probes this index per recent impression.
CREATE INDEX watches_attribution_idx ON watches (user_id, request_id, item_id, ts_ms);
CREATE INDEX watches_created_at_brin ON watches USING brin (created_at);

-- POST /event (view | click | purchase). ts is the client value as sent (seconds or
-- milliseconds); ts_ms is its normalised value.
CREATE TABLE legacy_events (
    event_id   text        NOT NULL,
    user_id    text        NOT NULL,
    item_id    text        NOT NULL,
    event_type text        NOT NULL CHECK (event_type IN ('view', 'click', 'purchase')),
    ts         bigint      NOT NULL,
    ts_ms      bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX legacy_events_ts_ms_idx ON legacy_events (ts_ms);
CREATE INDEX legacy_events_created_at_brin ON legacy_events USING brin (created_at);
