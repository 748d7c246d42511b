-- Replayed DLQ entries are kept for audit for --consumer.dedup-retention, and every consumer
-- counts them (DLQStats) and purges the expired ones (PurgeReplayedDLQ) every 30 s. Only the
-- pending ones had an index: after a mass replay (millions of entries) both statements read
-- the whole table, in every consumer, for the whole retention.
CREATE INDEX feature_dlq_replayed_idx ON feature_dlq (replayed_at) WHERE status = 'replayed';
