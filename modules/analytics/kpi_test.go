package analytics

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/labstack/echo/v4"

	"recsys/pkg/features"
	"recsys/pkg/httpx"
	"recsys/pkg/infra"
	"recsys/pkg/testutil"
)

const (
	minute = int64(60_000)
	hour   = 60 * minute
	day    = 24 * hour
	// now is deliberately not on a bucket boundary, so the window's first bucket is partial.
	now = int64(1_700_000_123_456)
	win = now - day // days=1
)

type imp struct {
	event, user, request string
	srv                  int64
	items                map[string]int64 // item -> position
}

type wat struct {
	user, item, request string
	srv                 int64
	sec                 float64
}

// dataset is hand-built so every KPI has a known answer; each case says what it tests.
func dataset() ([]imp, []wat) {
	t1, t2, t4, t6 := win+hour, win+3*hour, now-2*hour, win+5*hour
	imps := []imp{
		// Before the window but in its first (partial) bucket: excluded.
		{"e0", "u1", "r0", win - 20_000, map[string]int64{"old": 0}},
		// A at 0 watched after 10 min; C at 25 watched after 5 min (counts as watched, not at 20);
		// B watched after 40 min: outside the 30-min attribution window.
		{"e1", "u1", "r1", t1, map[string]int64{"A": 0, "B": 1, "C": 25}},
		// A shown to u2 twice (e2, then e3 5 min later), watched 10 min after e2: last touch
		// is e3, so e2/A is not watched.
		{"e2", "u2", "r2", t2, map[string]int64{"A": 0, "D": 1}},
		{"e3", "u2", "r3", t2 + 5*minute, map[string]int64{"A": 3}},
		// Watched with another request_id: still attributed.
		{"e4", "u3", "r4", t4, map[string]int64{"E": 0}},
		// In the unfolded tail (newer than the roll-up lag).
		{"e5", "u5", "r5", now - minute, map[string]int64{"F": 0}},
		// Watched before it was shown: not attributed.
		{"e6", "u6", "r6", t6, map[string]int64{"G": 0}},
		// Two impression events with one request_id (in the window's first partial bucket):
		// one request.
		{"e7", "u7", "r7", win + 30_000, map[string]int64{"H": 0}},
		{"e8", "u7", "r7", win + 40_000, map[string]int64{"I": 1}},
	}
	wats := []wat{
		{"u1", "old", "r0", win - 10_000, 1000}, // before the window: excluded from watches and the mean
		{"u1", "A", "r1", t1 + 10*minute, 10},
		{"u1", "C", "r1", t1 + 5*minute, 20},
		{"u1", "B", "r1", t1 + 40*minute, 30},
		{"u2", "A", "r2", t2 + 10*minute, 40},
		{"u3", "E", "other-request", t4 + minute, 50},
		{"u4", "A", "r9", t1 + minute, 60}, // another user's watch of A: not u1's click
		{"u5", "F", "r5", now - 30_000, 70},
		{"u6", "G", "r6", t6 - minute, 80},
	}
	return imps, wats
}

// want is the answer for days=1 with a 30-minute attribution window.
var want = Metrics{
	Requests: 7, Impressions: 11, ImpressionsAt20: 10, WatchedImpressions: 5, WatchedImpressionsAt20: 4, Watches: 8,
	CTRAt20Pct: 40, AvgWatchTimeSec: 45, ActiveItems: 9, ItemsShownAt20: 8, CatalogCoverageAt20Pct: 88.889,
}

func load(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	imps, wats := dataset()
	for _, i := range imps {
		// One row per impression event (migration 0012); the queries read the impressions view.
		var items []string
		var positions []int64
		for item, pos := range i.items {
			items, positions = append(items, item), append(positions, pos)
		}
		if _, err := pool.Exec(ctx, `INSERT INTO impression_events (event_id, positions, item_ids, user_id, session_id, request_id, ts_ms, ts, server_received_ts_ms)
			VALUES ($1, $2, $3, $4, 's', $5, $6::bigint, to_timestamp($6::bigint / 1000.0), $6::bigint)`, i.event, positions, items, i.user, i.request, i.srv); err != nil {
			t.Fatal(err)
		}
	}
	for n, w := range wats {
		if _, err := pool.Exec(ctx, `INSERT INTO watches (event_id, user_id, session_id, request_id, item_id, watch_time_sec, ts_ms, ts, server_received_ts_ms)
			VALUES ($1, $2, 's', $3, $4, $5, $6::bigint, to_timestamp($6::bigint / 1000.0), $6::bigint)`, "w"+string(rune('a'+n)), w.user, w.request, w.item, w.sec, w.srv); err != nil {
			t.Fatal(err)
		}
	}
}

func compute(t *testing.T, pool *pgxpool.Pool, start, at int64, d Definitions) Metrics {
	t.Helper()
	var m Metrics
	err := pgx.BeginTxFunc(context.Background(), pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var err error
		m, err = Compute(context.Background(), tx, start, at, d)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func kpis(m Metrics) Metrics {
	return Metrics{Requests: m.Requests, Impressions: m.Impressions, ImpressionsAt20: m.ImpressionsAt20, WatchedImpressions: m.WatchedImpressions,
		WatchedImpressionsAt20: m.WatchedImpressionsAt20, Watches: m.Watches, CTRAt20Pct: m.CTRAt20Pct, AvgWatchTimeSec: m.AvgWatchTimeSec,
		ActiveItems: m.ActiveItems, ItemsShownAt20: m.ItemsShownAt20, CatalogCoverageAt20Pct: m.CatalogCoverageAt20Pct}
}

func defs(window time.Duration) Definitions {
	c := NewConfig()
	c.AttributionWindow = window
	return c.definitions()
}

func TestKPIsOnAHandBuiltDataSet(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	load(t, pool)
	d := defs(30 * time.Minute)
	ctx := context.Background()

	// 1. No roll-up yet: everything is read raw.
	raw := compute(t, pool, win, now, d)
	if kpis(raw) != want || raw.RollupWatermarkMs != nil {
		t.Fatalf("raw:\n got %+v\nwant %+v", kpis(raw), want)
	}

	// 2. Roll-ups caught up (small steps, so many folds): same answers, few raw rows read.
	lag := 31 * time.Minute
	steps, rows, err := CatchUp(ctx, pool, d, time.UnixMilli(now), lag, 20*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if steps < 3 || rows != 11+8 {
		t.Errorf("catch-up: %d steps, %d rows folded (want the 11 impression and 8 watch rows before the watermark)", steps, rows)
	}
	// Invariant of the last-seen counters: every key is counted in exactly one bucket.
	var sumR, sumA, sumS, nR, nA, nS int64
	if err := pool.QueryRow(ctx, `SELECT (SELECT sum(requests_last_seen) FROM analytics_kpi_buckets), (SELECT sum(items_last_active) FROM analytics_kpi_buckets),
		(SELECT sum(items_last_shown_at_20) FROM analytics_kpi_buckets), (SELECT count(*) FROM analytics_request_activity),
		(SELECT count(*) FROM analytics_item_activity), (SELECT count(last_shown_at_20_ms) FROM analytics_item_activity)`).Scan(&sumR, &sumA, &sumS, &nR, &nA, &nS); err != nil {
		t.Fatal(err)
	}
	if sumR != nR || sumA != nA || sumS != nS || nA == 0 {
		t.Fatalf("bucket counters %d/%d/%d, activity rows %d/%d/%d", sumR, sumA, sumS, nR, nA, nS)
	}
	rolled := compute(t, pool, win, now, d)
	if kpis(rolled) != want {
		t.Fatalf("with roll-ups:\n got %+v\nwant %+v", kpis(rolled), want)
	}
	if rolled.RollupWatermarkMs == nil || *rolled.RollupWatermarkMs != now-lag.Milliseconds() || rolled.RollupBucketsRead == 0 {
		t.Fatalf("roll-up not used: watermark %v, buckets %d", rolled.RollupWatermarkMs, rolled.RollupBucketsRead)
	}
	// Raw reads: the head bucket (e0, e7, e8 and the old watch) and the tail (e5 and its watch).
	if rolled.RawImpressionRowsRead != 3 || rolled.RawWatchRowsRead != 1 {
		t.Errorf("raw rows read with roll-ups: %d impressions, %d watches; want 3 and 1 (head and tail only)", rolled.RawImpressionRowsRead, rolled.RawWatchRowsRead)
	}

	// 3. Folding again changes nothing (the watermark moved past every row).
	if _, _, err := CatchUp(ctx, pool, d, time.UnixMilli(now), lag, time.Hour); err != nil {
		t.Fatal(err)
	}
	if again := compute(t, pool, win, now, d); kpis(again) != want {
		t.Fatalf("second catch-up changed the answer: %+v", kpis(again))
	}

	// 4. A shorter window: the 10-minute watch of A by u1 is no longer attributed.
	short := defs(8 * time.Minute)
	w8 := want
	w8.WatchedImpressions, w8.WatchedImpressionsAt20, w8.CTRAt20Pct = 4, 3, 30
	if got := compute(t, pool, win, now, short); kpis(got) != w8 || got.RollupWatermarkMs != nil {
		t.Fatalf("new definitions read raw:\n got %+v\nwant %+v", kpis(got), w8)
	}
	if _, _, err := CatchUp(ctx, pool, short, time.UnixMilli(now), 9*time.Minute, time.Hour); err != nil {
		t.Fatal(err)
	}
	if got := compute(t, pool, win, now, short); kpis(got) != w8 || got.RollupWatermarkMs == nil {
		t.Fatalf("rebuilt roll-ups:\n got %+v\nwant %+v", kpis(got), w8)
	}

	// 5. A window that starts after e1..e3: only e4..e6 plus the tail remain.
	got := compute(t, pool, win+4*hour, now, short)
	if got.Impressions != 3 || got.Requests != 3 || got.Watches != 3 || got.ActiveItems != 3 || got.CatalogCoverageAt20Pct != 100 {
		t.Fatalf("late window: %+v", kpis(got))
	}
}

func TestEmptyDatabase(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	d := defs(30 * time.Minute)
	if _, _, err := CatchUp(context.Background(), pool, d, time.UnixMilli(now), 31*time.Minute, time.Hour); err != nil {
		t.Fatal(err)
	}
	m := compute(t, pool, win, now, d)
	if kpis(m) != (Metrics{}) {
		t.Fatalf("empty database: %+v", kpis(m))
	}
}

func TestBaselineEndpoint(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	load(t, pool)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	mod, err := New(NewConfig(), infra.Deps{PG: pool, Log: log, Metrics: metrics.NewSet()})
	if err != nil {
		t.Fatal(err)
	}
	a := mod.(*Analytics)
	a.now = func() time.Time { return time.UnixMilli(now) }
	e := httpx.New(httpx.DefaultConfig(), log)
	a.RegisterRoutes(e)
	get := func(q string) (int, map[string]any) {
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/analytics/baseline"+q, nil))
		var body map[string]any
		_ = json.Unmarshal(rec.Body.Bytes(), &body)
		return rec.Code, body
	}
	for _, q := range []string{"?days=0", "?days=31", "?days=abc", "?days=1.5"} {
		code, body := get(q)
		if code != 422 || !strings.Contains(toJSON(body), `"loc":["query","days"]`) {
			t.Errorf("%s: %d %v", q, code, body)
		}
	}
	code, body := get("?days=1")
	if code != 200 {
		t.Fatalf("days=1: %d %v", code, body)
	}
	m := body["metrics"].(map[string]any)
	for k, v := range map[string]float64{"window_days": 1, "requests": 7, "impressions": 11, "watches": 8, "watched_impressions": 5,
		"ctr_at_20_pct": 40, "avg_watch_time_sec": 45, "catalog_coverage_at_20_pct": 88.889, "attribution_window_sec": 1800} {
		if m[k] != v {
			t.Errorf("metrics.%s = %v, want %v", k, m[k], v)
		}
	}
	if m["time_basis"] != "server_received_ts_ms" || !strings.Contains(m["attribution"].(string), "within 1800s") {
		t.Errorf("definitions missing: %v", m)
	}
	targets := body["kpi_targets"].(map[string]any)
	if targets["ctr_at_20"] != ">= 8%" || targets["catalog_coverage_at_20"] != ">= 60%" || targets["avg_watch_time_sec"] != ">= 35" {
		t.Errorf("kpi_targets %v", targets)
	}
	if code, body := get(""); code != 200 || body["metrics"].(map[string]any)["window_days"] != 7.0 {
		t.Errorf("default days: %d %v", code, body)
	}
}

func toJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// Several API processes fold at once: the state row's lock makes each range fold once.
func TestConcurrentFoldersCountOnce(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	load(t, pool)
	d := defs(30 * time.Minute)
	errs := make(chan error, 4)
	for i := 0; i < 4; i++ {
		go func() {
			for {
				_, _, err := CatchUp(context.Background(), pool, d, time.UnixMilli(now), 31*time.Minute, 10*time.Minute)
				if err == errBusy {
					continue // the other folder holds the row: try again, as the worker does next interval
				}
				errs <- err
				return
			}
		}()
	}
	for i := 0; i < 4; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := compute(t, pool, win, now, d); kpis(got) != want || got.RollupWatermarkMs == nil {
		t.Fatalf("after concurrent folds:\n got %+v\nwant %+v", kpis(got), want)
	}
}

func TestConfigValidation(t *testing.T) {
	c := NewConfig()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	c.AttributionWindow, c.Retention, c.RollupStep, c.MaxConcurrent = 0, 24*time.Hour, time.Second, 0
	err := c.Validate()
	for _, want := range []string{"--analytics.attribution-window must be between", "--analytics.retention must be at least", "--analytics.rollup-step must be between",
		"--analytics.max-concurrent must be between"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not contain %q", err, want)
		}
	}
}

// watch_time_sec has no upper bound on the wire, and float8 sums refuse to overflow: two
// watches of 1e308 s made every GET /analytics/baseline over them a 503, and the roll-up fold
// over them fail forever. Each watch counts at most features.MaxWatchTimeSec, as in the item
// statistics.
func TestHugeWatchTimesCountCapped(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	ctx := context.Background()
	for i, sec := range []float64{1e308, 1e308, 1.7976931348623157e308} {
		srv := now - 2*hour + int64(i)
		if _, err := pool.Exec(ctx, `INSERT INTO watches (event_id, user_id, session_id, request_id, item_id, watch_time_sec, ts_ms, ts, server_received_ts_ms)
			VALUES ($1, 'u', 's', 'r', 'i', $2, $3::bigint, to_timestamp($3::bigint / 1000.0), $3::bigint)`, fmt.Sprintf("huge-%d", i), sec, srv); err != nil {
			t.Fatal(err)
		}
	}
	d := defs(30 * time.Minute)
	for _, step := range []string{"raw rows", "roll-ups"} {
		if step == "roll-ups" {
			if _, _, err := CatchUp(ctx, pool, d, time.UnixMilli(now), 31*time.Minute, time.Hour); err != nil {
				t.Fatalf("fold: %v", err)
			}
		}
		m := compute(t, pool, win, now, d)
		if m.Watches != 3 || m.AvgWatchTimeSec != features.MaxWatchTimeSec {
			t.Fatalf("%s: watches %d, avg_watch_time_sec %v; want 3, %v", step, m.Watches, m.AvgWatchTimeSec, features.MaxWatchTimeSec)
		}
	}
}

// TestSharedEventIDsCountPerUser: two users whose clients number events alike send the same
// impression and watch ids (api-contract §16.10). Each user's impression and watch count, and
// each watch is attributed to its own user's impression, whether read raw or from roll-ups.
func TestSharedEventIDsCountPerUser(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	ctx := context.Background()
	at := now - 2*hour
	for _, u := range []string{"u1", "u2"} {
		if _, err := pool.Exec(ctx, `INSERT INTO impression_events (event_id, positions, item_ids, user_id, session_id, request_id, ts_ms, ts, server_received_ts_ms)
			VALUES ('evt-00000001', '{0}', '{A}', $1, 's', 'r-' || $1, $2::bigint, to_timestamp($2::bigint / 1000.0), $2::bigint)`, u, at); err != nil {
			t.Fatal(err)
		}
		if _, err := pool.Exec(ctx, `INSERT INTO watches (event_id, user_id, session_id, request_id, item_id, watch_time_sec, ts_ms, ts, server_received_ts_ms)
			VALUES ('evt-00000002', $1, 's', 'r-' || $1, 'A', 10, $2::bigint, to_timestamp($2::bigint / 1000.0), $2::bigint)`, u, at+minute); err != nil {
			t.Fatal(err)
		}
	}
	d := defs(30 * time.Minute)
	check := func(stage string, m Metrics) {
		t.Helper()
		if m.Impressions != 2 || m.Watches != 2 || m.WatchedImpressions != 2 || m.WatchedImpressionsAt20 != 2 || m.CTRAt20Pct != 100 {
			t.Errorf("%s: %+v, want 2 impressions, 2 watches, both impressions watched", stage, kpis(m))
		}
	}
	check("raw", compute(t, pool, win, now, d))
	if _, _, err := CatchUp(ctx, pool, d, time.UnixMilli(now), 31*time.Minute, time.Hour); err != nil {
		t.Fatal(err)
	}
	rolled := compute(t, pool, win, now, d)
	if rolled.RollupWatermarkMs == nil {
		t.Fatal("roll-up not used")
	}
	check("rolled up", rolled)
}

// A baseline holds a connection of the pool the event writers share while it computes: the
// requests beyond --analytics.max-concurrent wait for a turn instead of taking the pool, and
// one that gets none within --analytics.query-timeout answers 503 with Retry-After.
func TestBaselineConcurrencyIsBounded(t *testing.T) {
	dsn := testutil.MigratedDatabase(t)
	pc, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	pc.MaxConns = 12
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	log := slog.New(slog.DiscardHandler)
	serve := func(cfg *Config) (*echo.Echo, *Analytics) {
		mod, err := New(cfg, infra.Deps{PG: pool, Log: log, Metrics: metrics.NewSet()})
		if err != nil {
			t.Fatal(err)
		}
		e := httpx.New(httpx.DefaultConfig(), log)
		mod.(*Analytics).RegisterRoutes(e)
		return e, mod.(*Analytics)
	}
	// Every baseline reads the roll-up state first: a lock on it holds each one there, with its
	// connection.
	blockBaselines := func() (release func()) {
		return testutil.HoldLock(t, dsn, "LOCK TABLE analytics_rollup_state IN ACCESS EXCLUSIVE MODE")
	}
	type answer struct {
		code       int
		retryAfter string
	}
	burst := func(e *echo.Echo, n int) chan answer {
		out := make(chan answer, n)
		for range n {
			go func() {
				rec := httptest.NewRecorder()
				e.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/analytics/baseline?days=1", nil))
				out <- answer{rec.Code, rec.Header().Get("Retry-After")}
			}()
		}
		return out
	}

	cfg := NewConfig()
	cfg.MaxConcurrent, cfg.QueryTimeout = 2, 10*time.Second
	e, _ := serve(cfg)
	release := blockBaselines()
	answers := burst(e, 8)
	deadline := time.Now().Add(5 * time.Second)
	for pool.Stat().AcquiredConns() < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // the others, unbounded, would be taking connections now
	if n := pool.Stat().AcquiredConns(); n != 2 {
		t.Errorf("8 baselines at once hold %d connections, want --analytics.max-concurrent 2", n)
	}
	release()
	for range 8 {
		if a := <-answers; a.code != http.StatusOK {
			t.Errorf("a baseline that waited for its turn: %d, want 200", a.code)
		}
	}

	cfg = NewConfig()
	cfg.MaxConcurrent, cfg.QueryTimeout = 1, 300*time.Millisecond
	e, a := serve(cfg)
	a.slots <- struct{}{} // a baseline computing for longer than the timeout
	answers = burst(e, 2)
	for range 2 {
		if ans := <-answers; ans.code != http.StatusServiceUnavailable || ans.retryAfter != "1" {
			t.Errorf("a baseline without a turn within the timeout: %d, Retry-After %q, want 503 with Retry-After 1", ans.code, ans.retryAfter)
		}
	}
}
