-- Back to one row per (item, neighbour) pair: the blobs are walked entry by entry (int4 id
-- length, id, float8 bits) and the IEEE 754 bits turned back into a double exactly.
CREATE TABLE feature_covis (
    item_id      text             COLLATE "C" NOT NULL,
    neighbour_id text             COLLATE "C" NOT NULL,
    weight       double precision NOT NULL,
    PRIMARY KEY (item_id, neighbour_id)
) WITH (fillfactor = 80);

CREATE OR REPLACE FUNCTION pg_temp.float8_from_bits(b bytea) RETURNS double precision
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    bits bigint := ('x' || encode(b, 'hex'))::bit(64)::bigint;
    e    integer := ((bits >> 52) & 2047)::integer;
    m    bigint := bits & 4503599627370495; -- 2^52 - 1
    v    double precision;
BEGIN
    IF e = 2047 THEN
        RAISE EXCEPTION 'non-finite co-visitation strength';
    ELSIF e = 0 THEN
        v := (m::double precision / 4503599627370496.0) * power(2::double precision, -1022);
    ELSE
        v := (1 + m::double precision / 4503599627370496.0) * power(2::double precision, e - 1023);
    END IF;
    IF bits < 0 THEN
        v := -v;
    END IF;
    RETURN v;
END $$;

CREATE OR REPLACE FUNCTION pg_temp.neighbour_entries(b bytea)
RETURNS TABLE (neighbour_id text, weight double precision)
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    off integer := 0;
    n   integer;
BEGIN
    WHILE off < length(b) LOOP
        n := (get_byte(b, off) << 24) | (get_byte(b, off + 1) << 16) | (get_byte(b, off + 2) << 8) | get_byte(b, off + 3);
        neighbour_id := convert_from(substring(b FROM off + 5 FOR n), 'UTF8');
        weight := pg_temp.float8_from_bits(substring(b FROM off + 5 + n FOR 8));
        RETURN NEXT;
        off := off + 12 + n;
    END LOOP;
END $$;

INSERT INTO feature_covis (item_id, neighbour_id, weight)
SELECT f.item_id, x.neighbour_id, x.weight
FROM feature_neighbours f, pg_temp.neighbour_entries(f.neighbours) AS x;

DROP TABLE feature_neighbours;
