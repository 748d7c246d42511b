package analytics

import (
	"bytes"
	"context"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

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

func insertImpression(t *testing.T, pool *pgxpool.Pool, id, item string, srv int64) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), `INSERT INTO impression_events (event_id, positions, item_ids, user_id, session_id, request_id, ts_ms, ts, server_received_ts_ms)
		VALUES ($1, '{0}', ARRAY[$2::text], 'u', 's', $1, $3::bigint, to_timestamp($3::bigint / 1000.0), $3::bigint)`, id, item, srv); err != nil {
		t.Fatal(err)
	}
}

// An empty step skips to the next row's bucket, but never back before the range it found
// empty: with the watermark mid-bucket and the next row in the same bucket after the limit,
// the watermark used to stay put, and Run folded again at once, hundreds of times a second.
func TestEmptyStepAlwaysMovesTheWatermarkAndNeverPassesARow(t *testing.T) {
	const b0 = int64(1_700_000_100_000) // a bucket boundary
	tests := []struct {
		name      string
		watermark int64 // after folding the first row, b0+10s
		limit     int64
		next      int64 // the next row
		want      int64 // the watermark after one step
	}{
		{"next row after the limit, in the watermark's bucket", b0 + 30_000, b0 + 45_000, b0 + 60_000, b0 + 45_000},
		{"next row after the limit, in a later bucket", b0 + 30_000, b0 + 45_000, b0 + 7*minute, b0 + 45_000},
		{"next row before the limit, in a later bucket: to its bucket", b0 + 30_000, b0 + 20*minute, b0 + 12*minute, b0 + 10*minute},
	}
	cfg := NewConfig()
	d := cfg.definitions()
	lag := cfg.lag().Milliseconds()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool := testutil.Pool(t, testutil.MigratedDatabase(t))
			// A watermark that stops moving makes CatchUp loop: fail, not hang.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			insertImpression(t, pool, "first", "A", b0+10_000)
			if _, _, err := CatchUp(ctx, pool, d, time.UnixMilli(tc.watermark+lag), cfg.lag(), time.Minute); err != nil {
				t.Fatal(err)
			}
			insertImpression(t, pool, "next", "B", tc.next)
			res, err := foldStep(ctx, pool, d, tc.limit+lag, lag, time.Minute.Milliseconds(), 0)
			if err != nil {
				t.Fatal(err)
			}
			if res.From != tc.watermark || res.Watermark != tc.want || res.CaughtUp != (tc.want == tc.limit) {
				t.Fatalf("step from %d: watermark %d, caught up %v; want %d", res.From-b0, res.Watermark-b0, res.CaughtUp, tc.want-b0)
			}
			// The row is counted once the roll-up passes it.
			later := tc.next + hour
			if _, _, err := CatchUp(ctx, pool, d, time.UnixMilli(later), cfg.lag(), time.Minute); err != nil {
				t.Fatal(err)
			}
			if m := compute(t, pool, later-day, later, d); m.Impressions != 2 || m.RollupWatermarkMs == nil || *m.RollupWatermarkMs <= tc.next {
				t.Fatalf("after catching up: %d impressions (want 2), watermark %v", m.Impressions, m.RollupWatermarkMs)
			}
		})
	}
}

// A caught-up worker pauses between folds even when the next row lies in the watermark's bucket.
func TestCaughtUpWorkerDoesNotSpin(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	ctx := context.Background()
	cfg := NewConfig()
	d := cfg.definitions()
	lag := cfg.lag().Milliseconds()
	const b0 = int64(1_700_000_100_000)
	insertImpression(t, pool, "first", "A", b0+10_000)
	if _, _, err := CatchUp(ctx, pool, d, time.UnixMilli(b0+30_000+lag), cfg.lag(), cfg.RollupStep); err != nil {
		t.Fatal(err)
	}
	insertImpression(t, pool, "next", "B", b0+60_000)
	nowMs := b0 + 45_000 + lag
	set := metrics.NewSet()
	a := &Analytics{cfg: cfg, pool: pool, log: slog.New(slog.DiscardHandler), m: newMetrics(set),
		now: func() time.Time { return time.UnixMilli(nowMs) }}
	rctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if err := a.Run(rctx); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	set.WritePrometheus(&buf)
	if !strings.Contains(buf.String(), "\nrecsys_analytics_rollup_fold_duration_seconds_count 1\n") { // RollupInterval is 15 s
		t.Fatalf("want 1 fold in 500 ms:\n%s", buf.String())
	}
	if w := a.watermark.Load(); w != nowMs-lag {
		t.Fatalf("watermark %d ms into the bucket, want the limit %d", w-b0, nowMs-lag-b0)
	}
}

// During a rolling deploy that changes a definition, processes with the old and the new
// definitions fold side by side: the roll-ups are rebuilt once, when the old ones have stopped
// folding for the grace, not on every step; until then the new processes read raw rows.
func TestOtherDefinitionsAreRebuiltOnlyOnceIdle(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	ctx := context.Background()
	const b0 = int64(1_700_000_100_000)
	for i := int64(0); i < 48; i++ {
		insertImpression(t, pool, "e"+strconv.FormatInt(i, 10), "A", b0+i*hour)
	}
	oldDefs, newDefs := defs(30*time.Minute), defs(20*time.Minute)
	nowMs := b0 + 50*hour
	const grace = time.Minute
	step := func(d Definitions) stepResult {
		t.Helper()
		res, err := foldStep(ctx, pool, d, nowMs, 31*minute, 6*hour, grace)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	var last stepResult
	for i := 0; i < 20; i++ {
		d := oldDefs
		if i%2 == 1 {
			d = newDefs
		}
		res := step(d)
		if res.Rebuilt {
			t.Fatalf("step %d rebuilt the roll-ups while the other definitions are folded", i)
		}
		if d == newDefs && (!res.Busy || !res.OtherDefs) {
			t.Fatalf("step %d with the new definitions: %+v, want busy with other definitions", i, res)
		}
		if d == oldDefs {
			last = res
		}
	}
	if !last.CaughtUp {
		t.Fatalf("the old definitions' roll-ups never caught up: %+v", last)
	}
	if m := compute(t, pool, nowMs-day, nowMs, newDefs); m.RollupWatermarkMs != nil || m.Impressions != 22 {
		t.Fatalf("new definitions meanwhile: %d impressions, watermark %v; want 22 read raw", m.Impressions, m.RollupWatermarkMs)
	}
	// The old processes are gone.
	if _, err := pool.Exec(ctx, `UPDATE analytics_rollup_state SET updated_at = now() - interval '2 minutes'`); err != nil {
		t.Fatal(err)
	}
	if res := step(newDefs); !res.Rebuilt || res.Busy {
		t.Fatalf("after the grace: %+v, want a rebuild", res)
	}
	for res := step(newDefs); !res.CaughtUp; res = step(newDefs) {
		if res.Busy || res.Rebuilt {
			t.Fatalf("catching up with the new definitions: %+v", res)
		}
	}
	if m := compute(t, pool, nowMs-day, nowMs, newDefs); m.RollupWatermarkMs == nil || m.Impressions != 22 {
		t.Fatalf("rebuilt: %d impressions, watermark %v", m.Impressions, m.RollupWatermarkMs)
	}
}
