package migrations_test

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"

	"recsys/pkg/testutil"
)

// TestStatisticsTargetsMigration: after 0018 ANALYZE builds statistics only for the columns
// queries filter, join or group on, and the down migration gives every column the server's
// default target back. Up runs to the latest version: columns later migrations add (later)
// keep statistics by 0018's rule.
func TestStatisticsTargetsMigration(t *testing.T) {
	m, dsn, since := before(t, 18)
	ctx := context.Background()
	pool := testutil.Pool(t, dsn)
	_, err := pool.Exec(ctx, `INSERT INTO impression_events (event_id, user_id, session_id, request_id, ts_ms, ts,
  server_received_ts_ms, context, positions, item_ids)
SELECT 'e' || g, 'u' || (g % 50), 's' || (g % 50), 'r' || g, 1764000000000 + g, now(), 1764000000000 + g, '{}',
  ARRAY[0, 1]::bigint[], ARRAY['i' || (g % 7), 'i' || (g % 11)]
FROM generate_series(1, 500) g;
INSERT INTO feature_users (user_id, history, impressions_recent) SELECT 'u' || g, '[]', 'r' || g FROM generate_series(1, 500) g;
INSERT INTO feature_applied (event_id) SELECT 'e' || g FROM generate_series(1, 500) g;
INSERT INTO event_dedup (event_id, event_type) SELECT 'e' || g, 'watch' FROM generate_series(1, 500) g`)
	if err != nil {
		t.Fatal(err)
	}
	tables := []struct {
		name string
		all  []string // every column, in name order
		kept []string // those with statistics after 0018, in name order
		// later are columns added by later migrations with statistics, after kept in name order
		later []string
	}{
		{"impression_events",
			[]string{"context", "created_at", "event_id", "feed_ids", "item_ids", "positions", "request_id",
				"server_received_ts_ms", "session_id", "slots", "ts", "ts_ms", "user_id"},
			[]string{"created_at", "event_id", "request_id", "server_received_ts_ms", "user_id"}, nil},
		{"feature_users",
			[]string{"history", "impressions", "impressions_recent", "user_id", "version", "watched"},
			[]string{"user_id"}, nil},
		{"feature_applied", []string{"applied_at", "event_id"}, []string{"applied_at", "event_id"}, []string{"user_id"}},           // 0022
		{"event_dedup", []string{"created_at", "event_id", "event_type"}, []string{"created_at", "event_id"}, []string{"user_id"}}, // 0022
	}
	// check analyzes each table (unless analyze is false: before 0018, where a column whose
	// target becomes 0 would keep, unused, the statistics it had, and autovacuum may have
	// analyzed already) and compares the columns with statistics and each column's target.
	check := func(stage string, analyze bool, want func(all, kept, later []string) []string, target func(kept, later []string, col string) int) {
		t.Helper()
		for _, tb := range tables {
			if analyze {
				if _, err := pool.Exec(ctx, `ANALYZE `+tb.name); err != nil {
					t.Fatal(err)
				}
				// Columns that are NULL in every row get a pg_stats row too.
				got := queryStrings(t, pool, `SELECT attname::text FROM pg_stats
WHERE schemaname = current_schema() AND tablename = '`+tb.name+`' ORDER BY 1`)
				if w := want(tb.all, tb.kept, tb.later); !slices.Equal(got, w) {
					t.Errorf("%s: %s has statistics for %v, want %v", stage, tb.name, got, w)
				}
			}
			// PostgreSQL 17 stores the default target as NULL, earlier versions as -1.
			for _, kv := range queryStrings(t, pool, `SELECT attname::text || '=' || COALESCE(attstattarget, -1)::text
FROM pg_attribute WHERE attrelid = '`+tb.name+`'::regclass AND attnum > 0 AND NOT attisdropped`) {
				col, v, _ := strings.Cut(kv, "=")
				n, err := strconv.Atoi(v)
				if err != nil {
					t.Fatalf("target %q: %v", kv, err)
				}
				if w := target(tb.kept, tb.later, col); n != w {
					t.Errorf("%s: %s.%s has target %d, want %d", stage, tb.name, col, n, w)
				}
			}
		}
	}
	every := func(all, _, _ []string) []string { return all }
	dflt := func([]string, []string, string) int { return -1 }
	check("before 0018", false, every, dflt)
	if err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	check("after 0018", true, func(_, kept, later []string) []string { return append(slices.Clone(kept), later...) }, func(kept, later []string, col string) int {
		if slices.Contains(kept, col) || slices.Contains(later, col) {
			return 10
		}
		return 0
	})
	if err := m.Down(ctx, since); err != nil {
		t.Fatal(err)
	}
	check("after the down migration", true, every, dflt)
}
