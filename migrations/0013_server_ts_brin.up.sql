-- The receive-time indexes of the raw event tables become BRIN instead of btree. Every batched
-- watch paid one btree insertion into watches_server_ts_idx (~3 µs of backend CPU per row on
-- /log/batch, about a sixth of the database's work per event), and every impression event one
-- into impression_events_server_ts_idx. server_received_ts_ms is the API's receive clock, so
-- rows reach the heap nearly in its order (out of order only by the group-commit wait, some
-- milliseconds): a block range's min/max spans a few seconds of traffic, and a BRIN entry is
-- only written per range, not per row.
--
-- Readers are the analytics range scans by receive time (modules/analytics: KPI edges and the
-- roll-up's fold step), which become bitmap heap scans of the matching ranges. 32 pages per
-- range (about 1,500 watch rows) keeps a short edge (the KPI endpoint's last half hour) from
-- reading much beyond its rows. autosummarize has autovacuum summarize each range as soon as
-- inserts move past it; until then the newest range(s) are unsummarized and read by every
-- range scan. They hold the newest rows, which the KPI edge [watermark, now] reads anyway;
-- the roll-up (folding 31 minutes behind the clock) reads them in vain: about one autovacuum
-- naptime of inserts at most. The roll-up's "next row after W" probe, a one-row btree
-- descent before, is bounded by the fold step in the same change (modules/analytics).
--
-- Rows that arrive late for their range only widen its min/max. Space freed by retention and
-- reused by new rows widens the old ranges too (the created_at BRINs of migration 0002 share
-- this): the retention loop desummarizes the ranges it empties so vacuum summarizes them again
-- from their new rows (modules/ingest/retention.go).
--
-- Locks: CREATE INDEX takes a SHARE lock on the table (reads go on, writers wait) for one
-- sequential scan of the heap, about a second per million rows here; DROP INDEX takes a brief
-- ACCESS EXCLUSIVE lock (no scan). Golang-migrate runs the file as one transaction, so
-- CONCURRENTLY is not available: on a large deployed table, run it when ingest can pause for
-- the scan, or create the BRIN indexes CONCURRENTLY by hand first (the IF NOT EXISTS below
-- then skips them).
CREATE INDEX IF NOT EXISTS watches_server_ts_brin ON watches USING brin (server_received_ts_ms)
    WITH (pages_per_range = 32, autosummarize = on);
CREATE INDEX IF NOT EXISTS impression_events_server_ts_brin ON impression_events USING brin (server_received_ts_ms)
    WITH (pages_per_range = 32, autosummarize = on);
DROP INDEX IF EXISTS watches_server_ts_idx;
DROP INDEX IF EXISTS impression_events_server_ts_idx;
