package migrations_test

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"

	"recsys/pkg/testutil"
)

// TestImpressionStatisticsMigration: after 0018 ANALYZE of impression_events builds
// statistics only for the columns queries filter, join or group on, and the down migration
// gives every column the server's default target back.
func TestImpressionStatisticsMigration(t *testing.T) {
	m, dsn, since := before(t, 18)
	ctx := context.Background()
	pool := testutil.Pool(t, dsn)
	_, err := pool.Exec(ctx, `INSERT INTO impression_events (event_id, user_id, session_id, request_id, ts_ms, ts,
  server_received_ts_ms, context, positions, item_ids)
SELECT 'e' || g, 'u' || (g % 50), 's' || (g % 50), 'r' || g, 1764000000000 + g, now(), 1764000000000 + g, '{}',
  ARRAY[0, 1]::bigint[], ARRAY['i' || (g % 7), 'i' || (g % 11)]
FROM generate_series(1, 500) g`)
	if err != nil {
		t.Fatal(err)
	}
	// analyzed returns the columns ANALYZE built statistics for, and the targets set. (A
	// column whose target becomes 0 keeps the statistics it had, unused: before 0018 the
	// table is not analyzed.)
	analyzed := func(analyze bool) (cols []string, targets map[string]int) {
		t.Helper()
		if analyze {
			if _, err := pool.Exec(ctx, `ANALYZE impression_events`); err != nil {
				t.Fatal(err)
			}
		}
		cols = queryStrings(t, pool, `SELECT attname::text FROM pg_stats
WHERE schemaname = current_schema() AND tablename = 'impression_events' ORDER BY 1`)
		targets = map[string]int{}
		// PostgreSQL 17 stores the default target as NULL, earlier versions as -1.
		for _, kv := range queryStrings(t, pool, `SELECT attname::text || '=' || COALESCE(attstattarget, -1)::text
FROM pg_attribute WHERE attrelid = 'impression_events'::regclass AND attnum > 0 AND NOT attisdropped`) {
			k, v, _ := strings.Cut(kv, "=")
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("target %q: %v", kv, err)
			}
			targets[k] = n
		}
		return cols, targets
	}
	all := []string{"context", "created_at", "event_id", "feed_ids", "item_ids", "positions", "request_id", "server_received_ts_ms",
		"session_id", "slots", "ts", "ts_ms", "user_id"}
	kept := []string{"created_at", "event_id", "request_id", "server_received_ts_ms", "user_id"}
	check := func(stage string, wantCols []string, target func(col string) int) {
		t.Helper()
		cols, targets := analyzed(wantCols != nil)
		// Columns that are NULL in every row (feed_ids, slots) get a pg_stats row too. nil:
		// not analyzed, and not checked (autovacuum may have).
		if wantCols != nil && !slices.Equal(cols, wantCols) {
			t.Errorf("%s: statistics for %v, want %v", stage, cols, wantCols)
		}
		for _, c := range all {
			if targets[c] != target(c) {
				t.Errorf("%s: %s has target %d, want %d", stage, c, targets[c], target(c))
			}
		}
	}
	dflt := func(string) int { return -1 }
	check("before 0018", nil, dflt)
	if err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	check("after 0018", kept, func(c string) int {
		if slices.Contains(kept, c) {
			return 10
		}
		return 0
	})
	if err := m.Down(ctx, since); err != nil {
		t.Fatal(err)
	}
	check("after the down migration", all, dflt)
}
