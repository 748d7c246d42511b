package analytics

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"recsys/pkg/testutil"
)

// nextRow probes growing bounded windows (the receive-time indexes are BRIN): it must still
// find the first row of [from, to) wherever it lies, in either table, and nothing outside.
func TestNextRowFindsTheFirstRowInBoundedWindows(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	ctx := context.Background()
	const base = int64(1_700_000_000_000)
	if _, err := pool.Exec(ctx, `INSERT INTO impression_events (event_id, positions, item_ids, user_id, session_id, request_id, ts_ms, ts, server_received_ts_ms)
		SELECT 'e' || s, '{0}', '{A}', 'u', 's', 'r', s, to_timestamp(s / 1000.0), s FROM unnest($1::bigint[]) s`, []int64{base + 100, base + 5*day}); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO watches (event_id, user_id, session_id, request_id, item_id, watch_time_sec, ts_ms, ts, server_received_ts_ms)
		SELECT 'w' || s, 'u', 's', 'r', 'A', 1, s, to_timestamp(s / 1000.0), s FROM unnest($1::bigint[]) s`, []int64{base + 3*hour, base + 40*day}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name           string
		from, to, step int64
		want           int64 // -1: none
	}{
		{"first row in the first window", base, base + 50*day, hour, base + 100},
		{"watch after a gap of several steps", base + 101, base + 50*day, 10 * minute, base + 3*hour},
		{"impression after days of gap", base + 3*hour + 1, base + 50*day, minute, base + 5*day},
		{"a row at the bound is outside", base + 5*day + 1, base + 40*day, hour, -1},
		{"last row, window wider than the rest", base + 5*day + 1, base + 40*day + 1, 30 * day, base + 40*day},
		{"nothing after the last row", base + 40*day + 1, base + 400*day, minute, -1},
		{"empty range", base, base, hour, -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got *int64
			err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				var err error
				got, err = nextRow(ctx, tx, tc.from, tc.to, tc.step)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tc.want < 0 && got != nil:
				t.Fatalf("got %d, want none", *got)
			case tc.want >= 0 && (got == nil || *got != tc.want):
				t.Fatalf("got %v, want %d", got, tc.want)
			}
		})
	}
}
