-- Feature store (pkg/featurestore, written by the consumer role). PostgreSQL is the durable
-- truth; Redis is a serving copy rebuilt from these tables.
--
-- Decay: popularity and co-visitation strengths are stored FORWARD-DECAYED relative to the
-- landmarks of feature_meta (value(now) = stored * 2^(-(now - landmark)/half_life)), so rows
-- are only ever incremented and never swept. A landmark moves (rebase) only when a new
-- event's exponent would exceed 500, which multiplies every stored value of that half-life
-- once and bumps generation; the Redis copy is then rebuilt (see pkg/featurestore).

-- Single row: landmarks and half-lives the stored values are relative to, and the
-- generation of the Redis copy (bumped by a rebase or a forced rebuild, so Redis writes of an
-- older generation are refused).
CREATE TABLE feature_meta (
    id          boolean          PRIMARY KEY DEFAULT true CHECK (id),
    generation  bigint           NOT NULL DEFAULT 1,
    lm_short_ms bigint           NOT NULL,
    lm_long_ms  bigint           NOT NULL,
    lm_covis_ms bigint           NOT NULL,
    hl_short_ms double precision NOT NULL,
    hl_long_ms  double precision NOT NULL,
    hl_covis_ms double precision NOT NULL,
    updated_at  timestamptz      NOT NULL DEFAULT now()
);

-- Ids use the "C" collation: byte order is the order Go, Redis (ZSET ties) and
-- features.MemoryStore sort by, so tie-breaks agree across stores and every consumer takes
-- row locks in the same order.

-- Per-user state (features.UserState) as JSON documents: history (most recent first),
-- watched {item: ts_ms}, impressions {item: {count, last_ts_ms}}. version grows on every
-- update; Redis keeps it so an older write never overwrites a newer one.
CREATE TABLE feature_users (
    user_id     text   COLLATE "C" PRIMARY KEY,
    history     json   NOT NULL DEFAULT '[]',
    watched     json   NOT NULL DEFAULT '{}',
    impressions json   NOT NULL DEFAULT '{}',
    version     bigint NOT NULL DEFAULT 0
) WITH (fillfactor = 80);

-- Per-item statistics. Counters only grow; pop_short/pop_long are forward-decayed sums;
-- nb_count is the number of feature_covis rows of the item (trimmed back to the top M when it
-- passes 2M).
CREATE TABLE feature_items (
    item_id        text             COLLATE "C" PRIMARY KEY,
    impressions    bigint           NOT NULL DEFAULT 0,
    watches        bigint           NOT NULL DEFAULT 0,
    sum_percent    double precision NOT NULL DEFAULT 0,
    percent_count  bigint           NOT NULL DEFAULT 0,
    ended          bigint           NOT NULL DEFAULT 0,
    watch_time_sec double precision NOT NULL DEFAULT 0,
    first_seen_ms  bigint           NOT NULL,
    pop_short      double precision NOT NULL DEFAULT 0,
    pop_long       double precision NOT NULL DEFAULT 0,
    nb_count       integer          NOT NULL DEFAULT 0
) WITH (fillfactor = 80);
-- Trending / popular / fresh top lists (degraded PostgreSQL reads and Redis rebuilds).
CREATE INDEX feature_items_pop_short_idx ON feature_items (pop_short DESC, item_id) WHERE pop_short > 0;
CREATE INDEX feature_items_pop_long_idx ON feature_items (pop_long DESC, item_id) WHERE pop_long > 0;
CREATE INDEX feature_items_fresh_idx ON feature_items (first_seen_ms DESC, item_id);

-- Item -> neighbour co-visitation strength (forward-decayed), at most 2M rows per item.
CREATE TABLE feature_covis (
    item_id      text             COLLATE "C" NOT NULL,
    neighbour_id text             COLLATE "C" NOT NULL,
    weight       double precision NOT NULL,
    PRIMARY KEY (item_id, neighbour_id)
) WITH (fillfactor = 80);

-- Exactly-once: the event_ids whose effects are in the tables above, written in the SAME
-- transaction as those effects. A redelivery, a rebalance or a crash between the PostgreSQL
-- commit and the Kafka offset commit finds the id here and changes nothing. Rows older than
-- --consumer.dedup-retention are deleted in bounded batches.
CREATE TABLE feature_applied (
    event_id   text        COLLATE "C" PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX feature_applied_applied_at_brin ON feature_applied USING brin (applied_at);

-- Dead letters: messages that cannot be decoded or are invalid, kept with their raw bytes and
-- Kafka coordinates; `recsys consume replay-dlq` re-applies them.
CREATE TABLE feature_dlq (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic           text        NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    msg_key         bytea,
    headers         jsonb       NOT NULL DEFAULT '{}',
    payload         bytea       NOT NULL,
    error           text        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'replayed')),
    replay_attempts integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    replayed_at     timestamptz,
    UNIQUE (topic, kafka_partition, kafka_offset)
);
CREATE INDEX feature_dlq_pending_idx ON feature_dlq (id) WHERE status = 'pending';

-- Redis write-behind journal: one row per applied batch naming the users and items it
-- changed, written in the batch's transaction and deleted once Redis has the new values. Rows
-- left behind (Redis down, crash after commit) are rewritten from PostgreSQL by the healer.
CREATE TABLE feature_redis_pending (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_ids   text[]      NOT NULL,
    item_ids   text[]      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
