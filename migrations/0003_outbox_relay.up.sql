-- Relay bookkeeping on top of event_outbox (the claim protocol is described in pkg/outbox).
-- Every index is partial on one status so that each hot query (claim, per-key checks, lease
-- reaping, retention, replay, snapshot counts) reads only the rows in that state, never the
-- whole table.

-- Fencing token of the claim that holds a row's lease: a relay marks a row only while the row
-- still carries the token of its own claim, so a relay whose lease expired (and was taken over)
-- cannot overwrite the new owner's outcome.
ALTER TABLE event_outbox ADD COLUMN lease_token bigint;
CREATE SEQUENCE event_outbox_lease_token_seq AS bigint;

-- Claim scan: due pending rows in id order.
CREATE INDEX event_outbox_pending_idx ON event_outbox (id) WHERE status = 'pending';
-- Per-key order: the unpublished rows of one (msg_key, topic) in id order (its head, and the
-- count of rows up to the end of a claimed run).
CREATE INDEX event_outbox_unpublished_key_idx ON event_outbox (msg_key, topic, id)
    WHERE status IN ('pending', 'publishing');
-- Rows in flight: "is this key being published by someone?" and lease reaping.
CREATE INDEX event_outbox_publishing_idx ON event_outbox (msg_key, topic) INCLUDE (lease_expires_at)
    WHERE status = 'publishing';
-- Retention deletes published rows by age.
CREATE INDEX event_outbox_published_idx ON event_outbox (published_at) WHERE status = 'published';
-- Replay and the dead count.
CREATE INDEX event_outbox_dead_idx ON event_outbox (id) WHERE status = 'dead';

-- A queue table churns: every row is updated twice and deleted soon after, so vacuum must run
-- long before the default 20% of dead tuples.
ALTER TABLE event_outbox SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0);
