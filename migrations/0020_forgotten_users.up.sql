-- Users whose data was erased (`recsys users forget`): the consumers skip every event of such
-- a user that the API received at or before forgotten_at_ms, so an event still in the outbox,
-- in Kafka or in the DLQ when the data was erased does not bring it back. Later events (the
-- user came back) apply as usual. The table holds ids only, one row per erased user; the
-- consumers read it whole every few seconds.
CREATE TABLE forgotten_users (
    user_id         text        COLLATE "C" PRIMARY KEY,
    forgotten_at_ms bigint      NOT NULL,
    forgotten_at    timestamptz NOT NULL DEFAULT now()
);
