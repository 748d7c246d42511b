package featurestore_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/features"
	"recsys/pkg/featurestore"
	"recsys/pkg/featurestore/fstest"
	"recsys/pkg/postgres"
	"recsys/pkg/ranking"
	"recsys/pkg/testutil"
)

// topScans counts the scans of feature_items for the trending list a pool's connections run.
type topScans struct{ n atomic.Int64 }

func (c *topScans) count(sql string) {
	if strings.Contains(sql, "ORDER BY pop_short DESC") {
		c.n.Add(1)
	}
}

func (c *topScans) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	c.count(d.SQL)
	return ctx
}
func (c *topScans) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
func (c *topScans) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return ctx
}
func (c *topScans) TraceBatchQuery(_ context.Context, _ *pgx.Conn, d pgx.TraceBatchQueryData) {
	c.count(d.SQL)
}
func (c *topScans) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

// The degraded path (Redis down or being repopulated) read the trending, popular and fresh
// lists with every request: three scans of feature_items no index serves, seconds of
// PostgreSQL CPU per request on a catalog of millions, so a Redis outage became a PostgreSQL
// overload. The lists are now read once per interval per process and shared; they are read
// again after the interval and as soon as the store rebases (a request never ranks a user's
// documents with lists relative to other landmarks), while the user's own documents are read
// with every request.
func TestPGLoaderSharesTheGlobalLists(t *testing.T) {
	ctx := context.Background()
	dsn := testutil.MigratedDatabase(t)
	pool := testutil.Pool(t, dsn)
	cfg := testConfig()
	st := featurestore.New(pool, nil, testutil.Unique("pgtops")+":", cfg, nil)
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	ts := start
	seq := 0
	watch := func(user string, items ...string) {
		t.Helper()
		var evs []featurestore.Event
		for _, it := range items {
			seq++
			ts += 1000
			evs = append(evs, featurestore.Event{Interaction: features.Interaction{Kind: features.KindWatch,
				EventID: fmt.Sprintf("w%d", seq), UserID: user, TsMs: ts, ItemID: it, WatchTimeSec: 30}})
		}
		if _, err := st.Apply(ctx, &featurestore.Batch{Events: evs}); err != nil {
			t.Fatalf("apply: %v", err)
		}
	}
	for u := range 12 {
		var items []string
		for i := range 3 + u%5 {
			items = append(items, fmt.Sprintf("item%02d", (u*7+i*3)%40))
		}
		watch(fmt.Sprintf("u%02d", u), items...)
	}

	pcfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	scans := &topScans{}
	pcfg.ConnConfig.Tracer = scans
	// Fewer connections than requests: one waiting for the lists in its transaction would hold
	// the connection their read needs.
	pcfg.MaxConns = 2
	traced, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(traced.Close)
	loader := featurestore.NewPGLoader(traced, "", cfg)
	uncached := featurestore.NewPGLoader(pool, "", cfg)
	uncached.SetGlobalListsTTL(0)

	stored := testOpts()
	stored.Stored = true
	// same checks l's snapshot of user against an uncached load, as stored and decayed.
	same := func(stage, user string, nowMs int64) ranking.Snapshot {
		t.Helper()
		var first ranking.Snapshot
		for _, opts := range []ranking.SnapshotOptions{stored, testOpts()} {
			want, err := uncached.Snapshot(ctx, user, nowMs, opts)
			if err != nil {
				t.Fatal(err)
			}
			got, err := loader.Snapshot(ctx, user, nowMs, opts)
			if err != nil {
				t.Fatalf("%s: %v", stage, err)
			}
			fstest.EqualSnapshots(t, fmt.Sprintf("%s %s stored=%v", stage, user, opts.Stored), want, got)
			if got.Landmarks != want.Landmarks {
				t.Fatalf("%s: landmarks %+v, want %+v", stage, got.Landmarks, want.Landmarks)
			}
			if opts.Stored {
				first = got
			}
		}
		return first
	}
	now := ts + 60_000

	t.Run("concurrent requests share one read", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 24)
		for i := range 24 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s, err := loader.Snapshot(ctx, fmt.Sprintf("u%02d", i%12), now, stored)
				if err == nil && len(s.Trending) == 0 {
					err = fmt.Errorf("no trending list")
				}
				if err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		for u := range 12 {
			same("shared", fmt.Sprintf("u%02d", u), now)
		}
		if n := scans.n.Load(); n != 1 {
			t.Fatalf("%d scans for the trending list over 48 requests, want 1", n)
		}
	})

	t.Run("a user's own documents are read with every request", func(t *testing.T) {
		before := scans.n.Load()
		watch("u03", "item-new")
		s, err := loader.Snapshot(ctx, "u03", now, stored)
		if err != nil {
			t.Fatal(err)
		}
		if len(s.History) == 0 || s.History[0].ItemID != "item-new" || !s.Watched["item-new"] {
			t.Fatalf("history %v watched %v: the watch just applied is missing", s.History, s.Watched)
		}
		if n := scans.n.Load(); n != before {
			t.Fatalf("%d scans for the trending list, want the shared lists (%d)", n, before)
		}
	})

	t.Run("a rebase reads the lists again at once", func(t *testing.T) {
		before := scans.n.Load()
		prev, err := loader.Snapshot(ctx, "u05", now, stored)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Rebase(ctx, ts+501*cfg.PopShortHalfLife.Milliseconds()); err != nil {
			t.Fatalf("rebase: %v", err)
		}
		s := same("rebased", "u05", now)
		if len(s.Trending) == 0 || s.Landmarks == prev.Landmarks {
			t.Fatalf("trending %v, landmarks %+v: want a list, relative to new landmarks", s.Trending, s.Landmarks)
		}
		if n := scans.n.Load(); n != before+1 {
			t.Fatalf("%d scans for the trending list after the rebase, want %d", n, before+1)
		}
	})

	t.Run("the lists are read again after the interval", func(t *testing.T) {
		loader.SetGlobalListsTTL(200 * time.Millisecond)
		// A new item, the most watched of the catalog.
		for u := range 12 {
			watch(fmt.Sprintf("u%02d", u), "item-hot")
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			s, err := loader.Snapshot(ctx, "u00", now, stored)
			if err != nil {
				t.Fatal(err)
			}
			if len(s.Trending) > 0 && s.Trending[0].ItemID == "item-hot" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("trending %v: item-hot never came to the top", s.Trending)
			}
			time.Sleep(20 * time.Millisecond)
		}
		same("refreshed", "u07", now)
	})
}

// A read of the global lists runs apart from the request that started it, for up to 15 s, so
// that a catalog whose scans outlast a request's budget (or a PostgreSQL slowed by a Redis
// outage's requests) still gets its lists. The session's statement_timeout
// (--pg.statement-timeout, 5 s by default) cut each of its scans first: past it, the degraded
// path never had lists. A lock the read waits for stands in for a long scan here, under a
// session statement_timeout of 300 ms.
func TestPGLoaderListsOutlastTheSessionStatementTimeout(t *testing.T) {
	ctx := context.Background()
	dsn := testutil.MigratedDatabase(t)
	cfg := testConfig()
	st := featurestore.New(testutil.Pool(t, dsn), nil, testutil.Unique("pgslow")+":", cfg, nil)
	ts := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	if _, err := st.Apply(ctx, &featurestore.Batch{Events: []featurestore.Event{{Interaction: features.Interaction{
		Kind: features.KindWatch, EventID: "w1", UserID: "u1", TsMs: ts, ItemID: "item1", WatchTimeSec: 30}}}}); err != nil {
		t.Fatalf("apply: %v", err)
	}
	pc := postgres.DefaultConfig()
	pc.DSN, pc.StatementTimeout, pc.LockTimeout = dsn, 300*time.Millisecond, time.Minute
	pool, err := postgres.Open(ctx, pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	loader := featurestore.NewPGLoader(pool, "", cfg)
	t.Cleanup(loader.Close)

	release := testutil.HoldLock(t, dsn, "LOCK TABLE feature_items IN ACCESS EXCLUSIVE MODE")
	type result struct {
		s   ranking.Snapshot
		err error
	}
	done := make(chan result, 1)
	go func() {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		s, err := loader.Snapshot(rctx, "u2", ts+60_000, testOpts())
		done <- result{s, err}
	}()
	time.Sleep(time.Second)
	release()
	r := <-done
	if r.err != nil {
		t.Fatalf("snapshot while the lists' read waited 1 s: %v", r.err)
	}
	if len(r.s.Trending) == 0 || r.s.Trending[0].ItemID != "item1" {
		t.Fatalf("trending %v, want item1", r.s.Trending)
	}
}
