-- The overlay of a user's impression counters (pkg/featurestore/overlay.go): what the batches
-- since the base (column impressions) was last rewritten added to it. Written by consumers
-- with --consumer.impressions-overlay; every reader of the release that brings this column
-- adds it to the base. A constant default: a catalog change, no table rewrite. Overlays stay
-- small (a few lists' items), below the TOAST threshold.
ALTER TABLE feature_users ADD COLUMN impressions_recent text NOT NULL DEFAULT '';
