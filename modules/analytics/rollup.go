package analytics

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Folding one step: the raw rows received in [W, b) are added to the roll-ups and W moves
// to b, in one transaction that holds the state row's lock, so concurrent workers (one per
// API process) never fold a range twice.

const (
	upsertBucketsSQL = `
INSERT INTO analytics_kpi_buckets AS k (bucket_ms, impressions, impressions_at_20, watched_impressions, watched_impressions_at_20, watches,
    watch_time_sum_sec, requests_last_seen, items_last_active, items_last_shown_at_20)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::double precision[],
    $8::bigint[], $9::bigint[], $10::bigint[])
ON CONFLICT (bucket_ms) DO UPDATE SET
    impressions = k.impressions + EXCLUDED.impressions,
    impressions_at_20 = k.impressions_at_20 + EXCLUDED.impressions_at_20,
    watched_impressions = k.watched_impressions + EXCLUDED.watched_impressions,
    watched_impressions_at_20 = k.watched_impressions_at_20 + EXCLUDED.watched_impressions_at_20,
    watches = k.watches + EXCLUDED.watches,
    watch_time_sum_sec = k.watch_time_sum_sec + EXCLUDED.watch_time_sum_sec,
    requests_last_seen = k.requests_last_seen + EXCLUDED.requests_last_seen,
    items_last_active = k.items_last_active + EXCLUDED.items_last_active,
    items_last_shown_at_20 = k.items_last_shown_at_20 + EXCLUDED.items_last_shown_at_20`
	// The upserts return how many keys move into and out of each bucket: the CTE "old" reads
	// the rows as they were before the statement (one snapshot), and no one else writes these
	// tables while the fold holds the state row.
	upsertItemsSQL = `
WITH src AS (
    SELECT item_id, max(last_active) AS last_active, max(last_shown) AS last_shown FROM (
        SELECT item_id, max(server_received_ts_ms) AS last_active,
               max(server_received_ts_ms) FILTER (WHERE position < $3::int) AS last_shown
        FROM impressions WHERE server_received_ts_ms >= $1::bigint AND server_received_ts_ms < $2::bigint GROUP BY item_id
        UNION ALL
        SELECT item_id, max(server_received_ts_ms), NULL
        FROM watches WHERE server_received_ts_ms >= $1::bigint AND server_received_ts_ms < $2::bigint GROUP BY item_id
    ) t GROUP BY item_id
), old AS (
    SELECT a.last_active_ms, a.last_shown_at_20_ms FROM analytics_item_activity a JOIN src USING (item_id)
), up AS (
    INSERT INTO analytics_item_activity AS a (item_id, last_active_ms, last_shown_at_20_ms)
    SELECT item_id, last_active, last_shown FROM src
    ON CONFLICT (item_id) DO UPDATE SET
        last_active_ms = GREATEST(a.last_active_ms, EXCLUDED.last_active_ms),
        last_shown_at_20_ms = GREATEST(a.last_shown_at_20_ms, EXCLUDED.last_shown_at_20_ms)
    RETURNING last_active_ms, last_shown_at_20_ms
)
SELECT bucket, sum(active)::bigint, sum(shown)::bigint FROM (
    SELECT (last_active_ms / $4::bigint) * $4::bigint AS bucket, 1 AS active, 0 AS shown FROM up
    UNION ALL SELECT (last_shown_at_20_ms / $4::bigint) * $4::bigint, 0, 1 FROM up WHERE last_shown_at_20_ms IS NOT NULL
    UNION ALL SELECT (last_active_ms / $4::bigint) * $4::bigint, -1, 0 FROM old
    UNION ALL SELECT (last_shown_at_20_ms / $4::bigint) * $4::bigint, 0, -1 FROM old WHERE last_shown_at_20_ms IS NOT NULL
) d GROUP BY bucket`
	upsertRequestsSQL = `
WITH src AS (
    SELECT request_id, max(server_received_ts_ms) AS seen
    FROM impressions WHERE server_received_ts_ms >= $1::bigint AND server_received_ts_ms < $2::bigint GROUP BY request_id
), old AS (
    SELECT a.last_seen_ms FROM analytics_request_activity a JOIN src USING (request_id)
), up AS (
    INSERT INTO analytics_request_activity AS a (request_id, last_seen_ms) SELECT request_id, seen FROM src
    ON CONFLICT (request_id) DO UPDATE SET last_seen_ms = GREATEST(a.last_seen_ms, EXCLUDED.last_seen_ms)
    RETURNING last_seen_ms
)
SELECT bucket, sum(n)::bigint FROM (
    SELECT (last_seen_ms / $3::bigint) * $3::bigint AS bucket, 1 AS n FROM up
    UNION ALL SELECT (last_seen_ms / $3::bigint) * $3::bigint, -1 FROM old
) d GROUP BY bucket`
	// anyRowSQL says whether a raw row was received in [$1, $2); nextRowSQL finds the first
	// one. The receive-time indexes are BRIN (migration 0013): min() reads every block range
	// that may hold a row of the range, so it is bounded (nextRow) instead of asking for the
	// first row after W, which would read every row received since W, the whole table on a
	// catch-up. The impressions side reads impression_events, not the view: over the view
	// each event's items would be unnested first. Every event has at least one item.
	anyRowSQL = `
SELECT EXISTS (SELECT 1 FROM impression_events WHERE server_received_ts_ms >= $1 AND server_received_ts_ms < $2)
    OR EXISTS (SELECT 1 FROM watches WHERE server_received_ts_ms >= $1 AND server_received_ts_ms < $2)`
	nextRowSQL = `
SELECT LEAST((SELECT min(server_received_ts_ms) FROM impression_events WHERE server_received_ts_ms >= $1 AND server_received_ts_ms < $2),
             (SELECT min(server_received_ts_ms) FROM watches WHERE server_received_ts_ms >= $1 AND server_received_ts_ms < $2))`
)

// nextRow returns the receive time of the first raw row in [from, to), or nil. It probes
// [from, from+step), then windows twice as long each time: an empty stretch costs a few
// reads of the BRIN summaries, and the window that has the row reads at most about as much
// as the stretch before it, never every row up to the clock.
func nextRow(ctx context.Context, tx pgx.Tx, from, to, step int64) (*int64, error) {
	for lo, width := from, max(step, 1); lo < to; lo, width = lo+width, width*2 {
		hi := to
		if width < to-lo {
			hi = lo + width
		}
		var next *int64
		if err := tx.QueryRow(ctx, nextRowSQL, lo, hi).Scan(&next); err != nil {
			return nil, err
		}
		if next != nil {
			return next, nil
		}
	}
	return nil, nil
}

// stepResult says what one fold did.
type stepResult struct {
	Busy      bool  // another process holds the state row, or folds with other definitions
	OtherDefs bool  // the roll-ups have other definitions, folded by another process within the grace
	Rebuilt   bool  // the definitions changed and the roll-ups were cleared (not on a first start)
	From, To  int64 // folded range [From, To)
	Rows      int64 // raw impression and watch rows folded
	CaughtUp  bool  // the watermark reached now - lag
	Watermark int64
}

// foldStep folds at most maxStep ms of raw rows, never past now - lag (lag = attribution
// window + commit margin; see the package doc). Roll-ups with other definitions are rebuilt
// only once no one has folded them for grace: during a rolling deploy that changes a
// definition, old and new processes run side by side, and rebuilding on sight would make each
// clear the other's roll-ups on every step. Until then the step is busy (OtherDefs).
func foldStep(ctx context.Context, pool *pgxpool.Pool, d Definitions, now, lag, maxStep int64, grace time.Duration) (stepResult, error) {
	var res stepResult
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := customPlans(ctx, tx); err != nil {
			return err
		}
		st, ok, err := readState(ctx, tx, true)
		if err != nil {
			return err
		}
		if !ok {
			res.Busy = true
			return nil
		}
		if st.Defs != d && st.Defs.BucketMs != 0 && st.Age < grace {
			res.Busy, res.OtherDefs = true, true
			return nil
		}
		if st.Defs != d {
			// New definitions: start over from the raw rows (they are kept as long as the
			// longest window, so nothing is lost).
			for _, t := range []string{"analytics_kpi_buckets", "analytics_item_activity", "analytics_request_activity"} {
				if _, err := tx.Exec(ctx, "DELETE FROM "+t); err != nil {
					return fmt.Errorf("clear %s: %w", t, err)
				}
			}
			// A zero bucket width is the row the migration inserted: a first start, not a change.
			res.Rebuilt = st.Defs.BucketMs != 0
			st.Watermark = nil
		}
		limit := now - lag
		w := int64(0)
		if st.Watermark != nil {
			w = *st.Watermark
		} else {
			// Start at the bucket of the oldest raw row, or at the limit when there is none.
			// One unbounded scan per (re)build, which folds every row anyway.
			var first *int64
			if err := tx.QueryRow(ctx, nextRowSQL, int64(0), int64(openEnd)).Scan(&first); err != nil {
				return fmt.Errorf("find the oldest raw row: %w", err)
			}
			w = limit
			if first != nil {
				w = min(floorDiv(*first, d.BucketMs)*d.BucketMs, limit)
			}
		}
		res.From, res.To, res.Watermark = w, w, w
		if w < limit {
			b := min(w+maxStep, limit)
			// Whether [w, b) has a row stops at the first one; only an empty step looks for
			// the next row, to skip the empty stretch. A row at or after limit + bucket moves
			// b to limit, like no row at all: the search stops there.
			var found bool
			if err := tx.QueryRow(ctx, anyRowSQL, w, b).Scan(&found); err != nil {
				return fmt.Errorf("find a raw row to fold: %w", err)
			}
			var next *int64
			if !found {
				if next, err = nextRow(ctx, tx, b, limit+d.BucketMs, b-w); err != nil {
					return fmt.Errorf("find the next raw row: %w", err)
				}
			}
			switch {
			case found:
				n, err := fold(ctx, tx, w, b, d)
				if err != nil {
					return err
				}
				res.Rows = n
			case next == nil:
				b = limit // nothing left to fold: jump to the limit
			default:
				// Skip the empty stretch, to the bucket of the next row if that lies beyond b:
				// [w, b) is known empty, and next >= b, so the watermark never passes it, and
				// it always moves (a watermark stuck mid-bucket made Run fold again at once).
				b = max(min(floorDiv(*next, d.BucketMs)*d.BucketMs, limit), b)
			}
			res.To, res.Watermark = b, b
		}
		res.CaughtUp = res.Watermark >= limit
		if _, err := tx.Exec(ctx, `UPDATE analytics_rollup_state SET watermark_ms = $1, attribution_window_ms = $2, bucket_ms = $3, top_n = $4, updated_at = now() WHERE id = 1`,
			res.Watermark, d.AttributionWindowMs, d.BucketMs, d.TopN); err != nil {
			return fmt.Errorf("advance the analytics watermark: %w", err)
		}
		return nil
	})
	if err != nil {
		return stepResult{}, fmt.Errorf("fold analytics roll-ups: %w", err)
	}
	return res, nil
}

// fold adds the raw rows of [a, b) to the roll-up tables.
func fold(ctx context.Context, tx pgx.Tx, a, b int64, d Definitions) (int64, error) {
	stats, err := rawStats(ctx, tx, a, b, d)
	if err != nil {
		return 0, err
	}
	var rows int64
	for _, c := range stats {
		rows += c.Impressions + c.Watches
	}
	// Key moves between buckets (last-seen counters), possibly into buckets before a.
	get := func(bucket int64) *counters {
		c := stats[bucket]
		if c == nil {
			c = &counters{}
			stats[bucket] = c
		}
		return c
	}
	if err := moves(ctx, tx, upsertItemsSQL, []any{a, b, d.TopN, d.BucketMs}, func(bucket int64, v []int64) {
		c := get(bucket)
		c.ItemsLastActive += v[0]
		c.ItemsLastShownAtN += v[1]
	}, 2); err != nil {
		return 0, fmt.Errorf("upsert item activity: %w", err)
	}
	if err := moves(ctx, tx, upsertRequestsSQL, []any{a, b, d.BucketMs}, func(bucket int64, v []int64) {
		get(bucket).RequestsLastSeen += v[0]
	}, 1); err != nil {
		return 0, fmt.Errorf("upsert request activity: %w", err)
	}
	var bucket, imp, impN, wat, watN, watches, reqs, itemsA, itemsS []int64
	var wsum []float64
	for k, c := range stats {
		bucket = append(bucket, k)
		imp, impN, wat, watN = append(imp, c.Impressions), append(impN, c.ImpressionsAtN), append(wat, c.WatchedImpressions), append(watN, c.WatchedImpressionsAtN)
		watches, wsum = append(watches, c.Watches), append(wsum, c.WatchTimeSumSec)
		reqs, itemsA, itemsS = append(reqs, c.RequestsLastSeen), append(itemsA, c.ItemsLastActive), append(itemsS, c.ItemsLastShownAtN)
	}
	if len(bucket) > 0 {
		if _, err := tx.Exec(ctx, upsertBucketsSQL, bucket, imp, impN, wat, watN, watches, wsum, reqs, itemsA, itemsS); err != nil {
			return 0, fmt.Errorf("upsert kpi buckets: %w", err)
		}
	}
	return rows, nil
}

// moves runs an activity upsert and hands each (bucket, n deltas) row to add.
func moves(ctx context.Context, tx pgx.Tx, sql string, args []any, add func(bucket int64, v []int64), n int) error {
	rows, err := tx.Query(ctx, sql, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var bucket int64
		v := make([]int64, n)
		dst := []any{&bucket}
		for i := range v {
			dst = append(dst, &v[i])
		}
		if err := rows.Scan(dst...); err != nil {
			return err
		}
		add(bucket, v)
	}
	return rows.Err()
}

// CatchUp folds until the watermark reaches now - lag (or ctx ends), rebuilding at once roll-ups
// with other definitions. Used by the tests and the benchmark.
func CatchUp(ctx context.Context, pool *pgxpool.Pool, d Definitions, now time.Time, lag, maxStep time.Duration) (steps int, rows int64, err error) {
	for ctx.Err() == nil {
		res, err := foldStep(ctx, pool, d, now.UnixMilli(), lag.Milliseconds(), maxStep.Milliseconds(), 0)
		if err != nil {
			return steps, rows, err
		}
		steps++
		rows += res.Rows
		if res.Busy {
			return steps, rows, errBusy
		}
		if res.CaughtUp {
			return steps, rows, nil
		}
	}
	return steps, rows, ctx.Err()
}

var errBusy = errors.New("another process holds the analytics roll-up lock")

// prune deletes roll-up rows older than the retention, in bounded batches.
// before is rounded down to a bucket boundary so a bucket and the keys it counts go together.
func prune(ctx context.Context, pool *pgxpool.Pool, before int64, batch int) (int64, error) {
	before = floorDiv(before, bucket.Milliseconds()) * bucket.Milliseconds()
	var total int64
	for _, q := range []string{
		`DELETE FROM analytics_kpi_buckets WHERE bucket_ms IN (SELECT bucket_ms FROM analytics_kpi_buckets WHERE bucket_ms < $1 LIMIT $2)`,
		`DELETE FROM analytics_item_activity WHERE item_id IN (SELECT item_id FROM analytics_item_activity WHERE last_active_ms < $1 LIMIT $2)`,
		`DELETE FROM analytics_request_activity WHERE request_id IN (SELECT request_id FROM analytics_request_activity WHERE last_seen_ms < $1 LIMIT $2)`,
	} {
		for {
			tag, err := pool.Exec(ctx, q, before, batch)
			if err != nil {
				return total, fmt.Errorf("prune analytics roll-ups: %w", err)
			}
			total += tag.RowsAffected()
			if tag.RowsAffected() < int64(batch) {
				break
			}
		}
	}
	return total, nil
}
