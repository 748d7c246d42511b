-- Dropping the overlays loses the impression counters they hold since each base was last
-- rewritten (fatigue only; `recsys features rebuild --from-events` recomputes them).
ALTER TABLE feature_users DROP COLUMN impressions_recent;
