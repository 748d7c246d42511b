ALTER TABLE feature_neighbours DROP COLUMN version;
