-- Co-visitation as ONE row per item (pkg/featurestore). feature_covis held a row per
-- (item, neighbour) pair: every pair increment of a batch was an upsert of its own heap tuple
-- and btree entry, ~2.4 per event and most of the feature apply's PostgreSQL work. A batch now
-- reads the lists of the items it touches (FOR UPDATE, in item order), merges its increments
-- in Go in event order (trimming to the top M whenever a list passes 2M, as
-- features.MemoryStore does) and writes each touched list back once.
--
-- neighbours is a blob (format in pkg/featurestore/neighbours.go: per entry the id's length
-- as int4send, the id, the strength as float8send), sorted by strength descending, then
-- neighbour id ascending (the order readers and Redis ZSET ties use), so a reader's top n is
-- a prefix. Strengths are forward-decayed relative to feature_meta.lm_covis_ms, as before.
-- A blob rather than text[]/float8[]: PostgreSQL stores it without parsing an element, and a
-- batch of lists is one bytea[] parameter.
--
-- toast_tuple_target: a full list (2M = 200 neighbours with ids of ~20 bytes) is ~6 kB; the
-- default target (2 kB) would compress and move most lists out of line on every rewrite,
-- which costs more than the page space it saves. Larger lists still go to TOAST (lz4).
CREATE TABLE feature_neighbours (
    item_id    text  COLLATE "C" PRIMARY KEY,
    neighbours bytea NOT NULL
) WITH (toast_tuple_target = 8160);
ALTER TABLE feature_neighbours ALTER COLUMN neighbours SET COMPRESSION lz4;

INSERT INTO feature_neighbours (item_id, neighbours)
SELECT item_id,
       string_agg(int4send(octet_length(neighbour_id)) || convert_to(neighbour_id, 'UTF8') || float8send(weight),
                  ''::bytea ORDER BY weight DESC, neighbour_id)
FROM feature_covis
GROUP BY item_id;

-- nb_count stays the length of the item's list (it already was the number of pair rows).
DROP TABLE feature_covis;
