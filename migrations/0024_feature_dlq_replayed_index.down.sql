DROP INDEX feature_dlq_replayed_idx;
