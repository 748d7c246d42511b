package analytics

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"recsys/pkg/migrate"
	"recsys/pkg/testutil"
)

// BenchmarkBaseline measures GET /analytics/baseline's computation (Compute in a repeatable-
// read transaction, as the handler runs it) on RECSYS_BENCH_IMPRESSIONS impression rows
// (default 10,000,000) spread over 30 days on the real PostgreSQL:
//
//	eval "$(scripts/services.sh env)"
//	go test ./modules/analytics -run '^$' -bench Baseline -benchtime 20x -count 5 -timeout 60m
//
// The data (20 items per /reco-like impression event, 100,000 users, a skewed catalogue of
// 50,000 items, a watch after 10 % of the events plus organic watches) is bulk-loaded with
// COPY into the scratch database recsys_bench_analytics_<rows>, which is kept so later runs
// skip the load (drop it with DROP DATABASE when done). The roll-ups are caught up before the
// timed loop, as the worker keeps them in production; "raw" times the same query with no
// roll-up, for comparison.
func BenchmarkBaseline(b *testing.B) {
	rows := 10_000_000
	if v := os.Getenv("RECSYS_BENCH_IMPRESSIONS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1000 {
			b.Fatalf("RECSYS_BENCH_IMPRESSIONS=%q: want an integer >= 1000", v)
		}
		rows = n
	}
	ctx := context.Background()
	dsn, nowMs := benchDatabase(b, rows)
	pool := testutil.Pool(b, dsn)
	d := NewConfig().definitions()
	lag := NewConfig().lag()
	start := time.Now()
	steps, folded, err := CatchUp(ctx, pool, d, time.UnixMilli(nowMs), lag, NewConfig().RollupStep)
	if err != nil {
		b.Fatal(err)
	}
	if folded > 0 {
		b.Logf("roll-up catch-up: %d raw rows folded in %d steps, %s", folded, steps, time.Since(start).Round(time.Millisecond))
		// What autovacuum does soon after in production (the tables are tuned for it in 0005).
		if _, err := pool.Exec(ctx, "VACUUM (ANALYZE) analytics_item_activity, analytics_request_activity, analytics_kpi_buckets"); err != nil {
			b.Fatal(err)
		}
	}
	run := func(b *testing.B, days int, defs Definitions) {
		var m Metrics
		for i := 0; i < b.N; i++ {
			err := pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
				var err error
				m, err = Compute(ctx, tx, nowMs-int64(days)*day, nowMs, defs)
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(m.Impressions), "impressions")
		b.ReportMetric(float64(m.RawImpressionRowsRead), "raw-rows")
	}
	for _, days := range []int{1, 7, 30} {
		b.Run(fmt.Sprintf("rollup/days=%d", days), func(b *testing.B) { run(b, days, d) })
	}
	// Definitions the roll-ups were not built with: everything is read raw.
	rawDefs := d
	rawDefs.AttributionWindowMs++
	b.Run("raw/days=1", func(b *testing.B) { run(b, 1, rawDefs) })
}

// benchDatabase returns the scratch database with rows impression rows, loading it when
// missing, and the "now" the data was generated for.
func benchDatabase(b *testing.B, rows int) (string, int64) {
	ctx := context.Background()
	base := testutil.PGDSN(b)
	name := fmt.Sprintf("recsys_bench_analytics_ev_%d", rows)
	u, _ := url.Parse(base)
	u.Path = "/" + name
	dsn := u.String()
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		b.Fatal(err)
	}
	defer admin.Close(ctx)
	var exists bool
	_ = admin.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists)
	if exists {
		c, err := pgx.Connect(ctx, dsn)
		if err == nil {
			var n, nowMs int64
			err = c.QueryRow(ctx, `SELECT (SELECT sum(cardinality(item_ids)) FROM impression_events), (SELECT max(server_received_ts_ms) + 1 FROM impression_events)`).Scan(&n, &nowMs)
			c.Close(ctx)
			if err == nil && n == int64(rows) {
				b.Logf("reusing %s (%d impression rows)", name, n)
				return dsn, nowMs
			}
		}
		if _, err := admin.Exec(ctx, "DROP DATABASE "+name+" WITH (FORCE)"); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		b.Fatal(err)
	}
	m, err := migrate.Open(dsn)
	if err != nil {
		b.Fatal(err)
	}
	if err := m.Up(ctx); err != nil {
		b.Fatal(err)
	}
	m.Close()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)

	nowMs := time.Now().UnixMilli()
	const perEvent, users, items = 20, 100_000, 50_000
	events := rows / perEvent
	span := int64(30 * day)
	rnd := rand.New(rand.NewPCG(1, 2))
	item := func() string { u := rnd.Float64(); return "item-" + strconv.Itoa(int(float64(items)*u*u)) }
	type ev struct {
		user, req string
		srv       int64
		items     []string
	}
	// Events in time order, so the rows are laid out as an append-only table would be. One
	// impression_events row per event (migration 0012), its items as arrays.
	var watches [][]any
	start := time.Now()
	positions := make([]int64, perEvent)
	for i := range positions {
		positions[i] = int64(i)
	}
	e := -1
	src := pgx.CopyFromFunc(func() ([]any, error) {
		e++
		if e == events {
			return nil, nil
		}
		cur := ev{user: "user-" + strconv.Itoa(rnd.IntN(users)), req: fmt.Sprintf("req-%d", e), srv: nowMs - span + int64(e)*span/int64(events)}
		seen := map[string]bool{}
		for len(cur.items) < perEvent {
			if it := item(); !seen[it] {
				seen[it] = true
				cur.items = append(cur.items, it)
			}
		}
		if rnd.IntN(10) == 0 { // a click on one of the shown items a few minutes later
			w := cur.srv + int64(rnd.IntN(20))*minute
			watches = append(watches, []any{fmt.Sprintf("w-%d", len(watches)), cur.user, "s", cur.req, cur.items[rnd.IntN(5)], 10 + rnd.Float64()*100, w, time.UnixMilli(w), w})
		}
		if rnd.IntN(20) == 0 { // organic watch
			w := cur.srv + 1
			watches = append(watches, []any{fmt.Sprintf("w-%d", len(watches)), cur.user, "s", "organic", item(), 10 + rnd.Float64()*100, w, time.UnixMilli(w), w})
		}
		return []any{fmt.Sprintf("e-%d", e), cur.user, "s", cur.req, cur.srv, time.UnixMilli(cur.srv), cur.srv, positions, cur.items}, nil
	})
	n, err := conn.CopyFrom(ctx, pgx.Identifier{"impression_events"}, []string{"event_id", "user_id", "session_id", "request_id", "ts_ms", "ts", "server_received_ts_ms", "positions", "item_ids"}, src)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := conn.CopyFrom(ctx, pgx.Identifier{"watches"}, []string{"event_id", "user_id", "session_id", "request_id", "item_id", "watch_time_sec", "ts_ms", "ts", "server_received_ts_ms"}, pgx.CopyFromRows(watches)); err != nil {
		b.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "ANALYZE impression_events; ANALYZE watches"); err != nil {
		b.Fatal(err)
	}
	b.Logf("loaded %d impression events (%d rows of the impressions view) and %d watches into %s with COPY in %s",
		n, n*perEvent, len(watches), name, time.Since(start).Round(time.Second))
	return dsn, nowMs
}
