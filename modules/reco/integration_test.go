package reco

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"

	"recsys/pkg/features"
	"recsys/pkg/featurestore"
	"recsys/pkg/httpx"
	"recsys/pkg/infra"
	"recsys/pkg/kafka"
	"recsys/pkg/logging"
	"recsys/pkg/outbox"
	"recsys/pkg/postgres"
	"recsys/pkg/ranking"
	rds "recsys/pkg/redis"
	"recsys/pkg/testutil"
)

// stack is the reco module on real PostgreSQL and Redis, served over real HTTP.
type stack struct {
	t       testing.TB
	pg      *pgxpool.Pool
	rd      rueidis.Client
	prefix  string
	store   *featurestore.Store
	mod     *Reco
	srv     *httptest.Server
	stop    func()
	metrics *metrics.Set // the module's
}

func testLogger() *slog.Logger {
	if os.Getenv("RECO_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.DiscardHandler)
}

// accessLogger is the HTTP server's logger: testLogger, or with RECO_BENCH_ACCESS_LOG set the
// production one (JSON at info: one access log line per request) writing into a pipe that a
// goroutine drains, as a container runtime's log pipe is: what the access log costs a
// request.
func accessLogger(t testing.TB) *slog.Logger {
	if os.Getenv("RECO_BENCH_ACCESS_LOG") == "" {
		return testLogger()
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = io.Copy(io.Discard, r) }()
	t.Cleanup(func() { _ = w.Close() })
	log, err := logging.New(w, "json", slog.LevelInfo)
	if err != nil {
		t.Fatal(err)
	}
	return log
}

// newStack opens the clients the way pkg/infra does (short timeouts so outages show fast),
// seeds the features through pkg/featurestore (the consumer's write path) and starts the
// module.
func newStack(t testing.TB, pgURL, redisURL string, mut func(*Config)) *stack {
	t.Helper()
	return newStackInfra(t, pgURL, redisURL, mut, nil)
}

// newStackInfra is newStack with process settings (infra.Config) changed by imut.
func newStackInfra(t testing.TB, pgURL, redisURL string, mut func(*Config), imut func(*infra.Config)) *stack {
	t.Helper()
	ctx := context.Background()
	icfg := infra.DefaultConfig()
	if imut != nil {
		imut(&icfg)
	}
	pcfg := icfg.PG
	pcfg.DSN, pcfg.MaxConns, pcfg.ConnectTimeout, pcfg.AcquireTimeout = pgURL, 16, 500*time.Millisecond, 500*time.Millisecond
	pool, err := postgres.Open(ctx, pcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	rcfg := rds.DefaultConfig()
	rcfg.URL = redisURL
	rcfg.KeyPrefix = testutil.Unique("recotest") + ":"
	rd, err := rds.Open(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rd.Close)
	s := &stack{t: t, pg: pool, rd: rd, prefix: rcfg.KeyPrefix,
		store: featurestore.New(pool, rd, rcfg.KeyPrefix, features.DefaultConfig(), testLogger())}
	t.Cleanup(func() { s.deleteKeys() })

	cfg := NewConfig()
	cfg.ProbeInterval = 50 * time.Millisecond
	cfg.GlobalRefresh = 100 * time.Millisecond
	cfg.AutologRetryMax = 100 * time.Millisecond
	cfg.PGTimeout = 300 * time.Millisecond
	if mut != nil {
		mut(cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	icfg.Redis.URL, icfg.Redis.KeyPrefix, icfg.Kafka = rcfg.URL, rcfg.KeyPrefix, kafka.DefaultConfig()
	// The stack's writer (the consumer's code) gets the process settings too: a user TTL is
	// set where features are written, and /reco follows what the copy records.
	s.store.SetUserTTL(icfg.Redis.UserTTL)
	s.metrics = metrics.NewSet()
	mod, err := New(cfg, infra.Deps{Name: "reco", Log: testLogger(), Metrics: s.metrics, PG: pool, Redis: rd, Config: icfg})
	if err != nil {
		t.Fatal(err)
	}
	s.mod = mod.(*Reco)
	e := httpx.New(httpx.DefaultConfig(), accessLogger(t))
	s.mod.RegisterRoutes(e)
	s.srv = httptest.NewServer(e)
	t.Cleanup(s.srv.Close)
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.mod.Run(runCtx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	stopped := false
	s.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		<-done
	}
	t.Cleanup(s.stop)
	return s
}

func (s *stack) deleteKeys() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// The ready marker first, as Redis losing its data (at once) or a repopulation does: a
	// refresh of the process' global lists between the lists' deletion and the marker's
	// took the copy as ready and empty, and a PostgreSQL fallback served no item.
	if err := s.rd.Do(ctx, s.rd.B().Unlink().Key(featurestore.NewKeys(s.prefix).Ready).Build()).Error(); err != nil {
		s.t.Fatalf("delete the ready marker: %v", err)
	}
	var cursor uint64
	for {
		e, err := s.rd.Do(ctx, s.rd.B().Scan().Cursor(cursor).Match(s.prefix+"*").Count(1000).Build()).AsScanEntry()
		if err != nil {
			return
		}
		if len(e.Elements) > 0 {
			_ = s.rd.Do(ctx, s.rd.B().Unlink().Key(e.Elements...).Build()).Error()
		}
		if cursor = e.Cursor; cursor == 0 {
			return
		}
	}
}

// seed applies a small world through the feature store: many users watch a then b, fewer a
// then c; popular items pop00..pop19; then copies PostgreSQL into Redis and sets the marker.
func (s *stack) seed(extra ...features.Interaction) {
	s.t.Helper()
	ctx := context.Background()
	now := time.Now().UnixMilli()
	ts := now - 3600_000
	var evs []featurestore.Event
	n := 0
	watch := func(user, item string) {
		ts += 200
		n++
		pct := 90.0
		evs = append(evs, featurestore.Event{Interaction: features.Interaction{Kind: features.KindWatch,
			EventID: fmt.Sprintf("%sw%05d", s.prefix, n), UserID: user, TsMs: ts, ItemID: item, PercentWatched: &pct}})
	}
	for u := 0; u < 30; u++ {
		for i := 0; i < 20; i++ {
			if (u+i)%3 == 0 {
				watch(fmt.Sprintf("pu%d", u), fmt.Sprintf("pop%02d", i))
			}
		}
	}
	for u := 0; u < 10; u++ {
		watch(fmt.Sprintf("ab%d", u), "a")
		watch(fmt.Sprintf("ab%d", u), "b")
	}
	for u := 0; u < 6; u++ {
		watch(fmt.Sprintf("ac%d", u), "a")
		watch(fmt.Sprintf("ac%d", u), "c")
	}
	for _, x := range extra {
		evs = append(evs, featurestore.Event{Interaction: x})
	}
	if _, err := s.store.Apply(ctx, &featurestore.Batch{Events: evs}); err != nil {
		s.t.Fatalf("apply seed events: %v", err)
	}
	if err := s.store.Repopulate(ctx, false); err != nil {
		s.t.Fatalf("populate redis: %v", err)
	}
}

type recoReply struct {
	code   int
	Detail any      `json:"detail"`
	ReqID  string   `json:"request_id"`
	Items  []string `json:"items"`
	Model  string   `json:"model_version"`
	Strat  string   `json:"strategy"`
}

func (s *stack) get(query string) recoReply {
	s.t.Helper()
	resp, err := http.Get(s.srv.URL + "/reco?" + query)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var r recoReply
	if err := json.Unmarshal(b, &r); err != nil {
		s.t.Fatalf("/reco?%s: %d %q", query, resp.StatusCode, b)
	}
	r.code = resp.StatusCode
	return r
}

// waitServing waits until Redis is usable and the global snapshot holds the seeded lists.
func (s *stack) waitServing() {
	s.t.Helper()
	s.waitFor("redis usable and global lists loaded", 10*time.Second, func() bool {
		g := s.mod.serving.global.Load()
		return s.mod.serving.redisUsable() && g != nil && len(g.snap.Trending) > 0
	})
}

func (s *stack) waitFor(what string, timeout time.Duration, cond func() bool) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			s.t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func impressionRows(t testing.TB, pool *pgxpool.Pool, requestID string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM impressions WHERE request_id = $1`, requestID).Scan(&n); err != nil {
		t.Fatalf("count impressions: %v", err)
	}
	return n
}

func userWatchedA(s *stack) features.Interaction {
	pct := 100.0
	return features.Interaction{Kind: features.KindWatch, EventID: s.prefix + "me-a", UserID: "me", TsMs: time.Now().UnixMilli() - 1000,
		ItemID: "a", PercentWatched: &pct}
}

func TestIntegrationServesFromRedisAndPersistsAutolog(t *testing.T) {
	s := newStack(t, testutil.MigratedDatabase(t), testutil.RedisURL(t), nil)
	s.seed(userWatchedA(s))
	s.waitServing()
	r := s.get("user_id=me&session_id=sess-1&k=10")
	if r.code != 200 || r.Strat != ranking.StrategyCovisHybrid || len(r.Items) != 10 {
		t.Fatalf("%+v", r)
	}
	if r.Items[0] != "b" || r.Items[1] != "c" || indexOf(r.Items, "a") >= 0 {
		t.Fatalf("items %v: want b, c first and a excluded", r.Items)
	}
	s.waitFor("impression rows", 5*time.Second, func() bool { return impressionRows(t, s.pg, r.ReqID) == 10 })
	var pos []int64
	var items []string
	rows, _ := s.pg.Query(context.Background(), `SELECT position, item_id FROM impressions WHERE request_id = $1 ORDER BY position`, r.ReqID)
	for rows.Next() {
		var p int64
		var it string
		if err := rows.Scan(&p, &it); err != nil {
			t.Fatal(err)
		}
		pos, items = append(pos, p), append(items, it)
	}
	if fmt.Sprint(items) != fmt.Sprint(r.Items) || pos[0] != 0 || pos[9] != 9 {
		t.Fatalf("stored %v %v, served %v", pos, items, r.Items)
	}
	// The impression's frame in an outbox batch row (pkg/ingest writes one row per lane).
	var eventID string
	if err := s.pg.QueryRow(context.Background(), `SELECT event_id FROM impressions WHERE request_id = $1 AND position = 0`, r.ReqID).Scan(&eventID); err != nil {
		t.Fatal(err)
	}
	frames := 0
	obRows, err := s.pg.Query(context.Background(), `SELECT payload, event_count FROM event_outbox WHERE event_type = 'impression' AND payload_format = $1`, outbox.FormatBatch)
	if err != nil {
		t.Fatal(err)
	}
	for obRows.Next() {
		var payload []byte
		var n int
		if err := obRows.Scan(&payload, &n); err != nil {
			t.Fatal(err)
		}
		ms, err := outbox.DecodeBatch(payload, n)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			if m.EventID == eventID && m.EventType == "impression" {
				frames++
			}
		}
	}
	obRows.Close()
	if frames != 1 {
		t.Fatalf("outbox frames of %s = %d, want 1", eventID, frames)
	}
	// Cold user, the global lists.
	if c := s.get("user_id=stranger&session_id=s&k=5&x_autolog_impressions=false"); c.code != 200 || c.Strat != ranking.StrategyColdStart || len(c.Items) != 5 {
		t.Fatalf("cold: %+v", c)
	}
}

func TestIntegrationRedisOutageFallsBackToPostgresAndRecovers(t *testing.T) {
	red := testutil.StartPrivate(t, "redis")
	s := newStack(t, testutil.MigratedDatabase(t), red.URL, nil)
	s.seed(userWatchedA(s))
	s.waitServing()
	if r := s.get("user_id=me&session_id=s&k=5"); r.Strat != ranking.StrategyCovisHybrid {
		t.Fatalf("healthy: %+v", r)
	}

	red.Stop()
	start := time.Now()
	for i := 0; i < 50; i++ {
		r := s.get("user_id=me&session_id=s&k=5")
		if r.code != 200 || r.Strat != ranking.StrategyCovisHybrid+"_pg_fallback" || r.Items[0] != "b" || indexOf(r.Items, "a") >= 0 {
			t.Fatalf("redis down, request %d: %+v", i, r)
		}
	}
	// The breaker: 50 requests did not each wait for a Redis timeout.
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("50 requests took %s while Redis was down", d)
	}
	s.waitFor("breaker open", 5*time.Second, s.mod.serving.redisBrk.IsOpen)

	// Redis restarts EMPTY (no persistence): the marker is missing, reads stay on PostgreSQL.
	red.Start()
	s.waitFor("breaker closed", 10*time.Second, func() bool { return !s.mod.serving.redisBrk.IsOpen() })
	if r := s.get("user_id=me&session_id=s&k=5"); r.Strat != ranking.StrategyCovisHybrid+"_pg_fallback" {
		t.Fatalf("redis back but empty: %+v", r)
	}
	// The consumer repopulates; the API follows without a restart.
	if err := s.store.Repopulate(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	s.waitFor("normal strategy", 5*time.Second, func() bool {
		r := s.get("user_id=me&session_id=s&k=5")
		return r.code == 200 && r.Strat == ranking.StrategyCovisHybrid && r.Items[0] == "b"
	})
}

func TestIntegrationPostgresOutageServesFromRedisAndPersistsBufferedAutolog(t *testing.T) {
	pg := testutil.StartPrivate(t, "pg")
	testutil.MigrateUp(t, pg.URL)
	s := newStack(t, pg.URL, testutil.RedisURL(t), nil)
	s.seed(userWatchedA(s))
	s.waitServing()

	pg.Stop()
	var rids []string
	for i := 0; i < 30; i++ {
		r := s.get(fmt.Sprintf("user_id=me&session_id=s%d&k=6", i))
		if r.code != 200 || r.Strat != ranking.StrategyCovisHybrid || r.Items[0] != "b" {
			t.Fatalf("postgres down, request %d: %+v", i, r)
		}
		rids = append(rids, r.ReqID)
	}
	s.waitFor("postgres breaker open", 10*time.Second, s.mod.serving.pgBrk.IsOpen)
	if p := s.mod.autolog.Pending(); p != 30 {
		t.Fatalf("pending %d, want the 30 served lists buffered", p)
	}

	pg.Start()
	s.waitFor("buffer persisted", 30*time.Second, func() bool { return s.mod.autolog.Pending() == 0 })
	for _, rid := range rids {
		if n := impressionRows(t, s.pg, rid); n != 6 {
			t.Fatalf("request %s: %d impression rows after PostgreSQL came back, want 6", rid, n)
		}
	}
	if d := s.mod.m.droppedTotal(); d != 0 {
		t.Fatalf("dropped %d", d)
	}
}

func TestIntegrationBothStoresDownServesGlobalSnapshot(t *testing.T) {
	pg := testutil.StartPrivate(t, "pg")
	red := testutil.StartPrivate(t, "redis")
	testutil.MigrateUp(t, pg.URL)
	s := newStack(t, pg.URL, red.URL, func(c *Config) { c.AutologAsync = false })
	s.seed(userWatchedA(s))
	s.waitServing()
	red.Stop()
	pg.Stop()
	for i := 0; i < 20; i++ {
		r := s.get("user_id=me&session_id=s&k=8")
		if r.code != 200 || r.Strat != ranking.StrategyColdStart+"_global_snapshot" || len(r.Items) != 8 {
			t.Fatalf("both down, request %d: %+v", i, r)
		}
	}
	// Sync mode with PostgreSQL down still answers: the impressions wait in the buffer.
	if p := s.mod.autolog.Pending(); p != 20 {
		t.Fatalf("pending %d, want 20", p)
	}
	pg.Start()
	red.Start()
	s.waitFor("postgres features again", 20*time.Second, func() bool {
		return s.get("user_id=me&session_id=s&k=8&x_autolog_impressions=false").Strat == ranking.StrategyCovisHybrid+"_pg_fallback"
	})
	s.waitFor("buffer persisted", 30*time.Second, func() bool { return s.mod.autolog.Pending() == 0 })
}

// The per-request read (user live, per-item features cached, global lists from the global
// snapshot) must build the same Snapshot as the feature store's one-round-trip loader.
func TestIntegrationCachedReadEqualsLoaderSnapshot(t *testing.T) {
	s := newStack(t, testutil.MigratedDatabase(t), testutil.RedisURL(t), nil)
	s.seed(userWatchedA(s))
	pct := 40.0
	var extra []featurestore.Event
	for i := 0; i < 12; i++ {
		extra = append(extra, featurestore.Event{Interaction: features.Interaction{Kind: features.KindWatch, EventID: fmt.Sprintf("%sx%d", s.prefix, i),
			UserID: "multi", TsMs: time.Now().UnixMilli() - int64(60_000-i*1000), ItemID: fmt.Sprintf("pop%02d", i), PercentWatched: &pct}})
	}
	impression := func(n int, items ...string) featurestore.Event {
		return featurestore.Event{Interaction: features.Interaction{Kind: features.KindImpression, EventID: fmt.Sprintf("%simp%d", s.prefix, n),
			UserID: "multi", TsMs: time.Now().UnixMilli() - 1000 + int64(n), Items: items}}
	}
	extra = append(extra, impression(1, "pop15", "b"))
	if _, err := s.store.Apply(context.Background(), &featurestore.Batch{Events: extra}); err != nil {
		t.Fatal(err)
	}
	if err := s.store.Repopulate(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	// multi's next lists go to an overlay, as the consumer writes them: the cached read adds
	// it to the decoded base it keeps (Snapshot.ImpressionsAdded).
	s.store.SetImpressionsOverlay(true)
	raise := func(ev featurestore.Event) {
		t.Helper()
		a, err := s.store.Apply(context.Background(), &featurestore.Batch{Events: []featurestore.Event{ev}})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.store.WriteRedis(context.Background(), a); err != nil {
			t.Fatal(err)
		}
	}
	raise(impression(2, "pop14", "pop15"))
	cfg := NewConfig()
	loader := featurestore.NewRedisLoader(s.rd, s.prefix, features.DefaultConfig())
	keys := featurestore.NewKeys(s.prefix)
	user := &redisUser{rd: s.rd, keys: keys, decoded: newDecodeCache(1 << 20)}
	now := time.Now().UnixMilli()
	ctx := context.Background()
	var cached *cachedSource
	var g *globalSnap
	// reload starts the item cache and the global lists afresh, the user cache kept: the
	// raises below change items' statistics too, which those serve for a while.
	reload := func() {
		t.Helper()
		cached = &cachedSource{full: loader, user: user, items: newItemCache(&redisItems{rd: s.rd, keys: keys}, time.Minute, 10000)}
		global, err := loader.Snapshot(ctx, globalUserID, now, func() ranking.SnapshotOptions { o := cfg.snapshotOptions(true); o.HistoryItems = 0; return o }())
		if err != nil {
			t.Fatal(err)
		}
		g = &globalSnap{snap: global, loadedAt: time.Now()}
	}
	reload()
	same := func(user string, round int) {
		t.Helper()
		want, err := loader.Snapshot(ctx, user, now, cfg.snapshotOptions(true))
		if err != nil {
			t.Fatal(err)
		}
		got, err := cached.Snapshot(ctx, user, now, cfg.snapshotOptions(false))
		if err != nil {
			t.Fatal(err)
		}
		complete(&got, g)
		if err := sameSnapshot(want, got); err != nil {
			t.Fatalf("user %s round %d: %v", user, round, err)
		}
	}
	for _, user := range []string{"me", "multi", "ab3", "nobody"} {
		for round := 0; round < 2; round++ { // the second round is served from the cache
			same(user, round)
		}
	}
	// A raise of the overlay alone keeps the decoded base; a fold (more new items than an
	// overlay holds) brings a new one.
	raise(impression(3, "a", "pop15"))
	reload()
	same("multi", 2)
	var many []string
	for i := range 100 {
		many = append(many, fmt.Sprintf("new%03d", i))
	}
	raise(impression(4, many...))
	reload()
	same("multi", 3)
	same("multi", 4)
}

// neighbourMap returns a snapshot's neighbour lists by history item, whichever of the two
// forms its source filled.
func neighbourMap(s *ranking.Snapshot) map[string][]ranking.Scored {
	if s.HistoryNeighbours == nil {
		return s.Neighbours
	}
	m := map[string][]ranking.Scored{}
	for i, l := range s.HistoryNeighbours {
		if len(l) > 0 {
			m[s.History[i].ItemID] = l
		}
	}
	return m
}

func sameSnapshot(a, b ranking.Snapshot) error {
	// Cached item features are decayed when loaded, not at the request's instant: within a
	// TTL of seconds against half-lives of hours the difference is below 1e-4 relative.
	close := func(x, y float64) bool { return x == y || (x-y)*(x-y) <= 1e-10*(x*x+y*y) }
	// The counters as ranking sees them: a source may keep an overlay's raises apart.
	counters := func(s *ranking.Snapshot) map[string]ranking.ImpressionStat {
		m := map[string]ranking.ImpressionStat{}
		for _, l := range []map[string]ranking.ImpressionStat{s.Impressions, s.ImpressionsAdded} {
			for id := range l {
				m[id], _ = s.Impression(id)
			}
		}
		return m
	}
	ac, bc := counters(&a), counters(&b)
	if fmt.Sprint(a.History) != fmt.Sprint(b.History) || fmt.Sprint(a.Watched) != fmt.Sprint(b.Watched) || fmt.Sprint(ac) != fmt.Sprint(bc) {
		return fmt.Errorf("user state differs:\n%v %v %v\n%v %v %v", a.History, a.Watched, ac, b.History, b.Watched, bc)
	}
	lists := func(name string, x, y []ranking.Scored) error {
		if len(x) != len(y) {
			return fmt.Errorf("%s: %d vs %d entries", name, len(x), len(y))
		}
		for i := range x {
			if x[i].ItemID != y[i].ItemID || !close(x[i].Score, y[i].Score) {
				return fmt.Errorf("%s[%d]: %v vs %v", name, i, x[i], y[i])
			}
		}
		return nil
	}
	an, bn := neighbourMap(&a), neighbourMap(&b)
	if len(an) != len(bn) {
		return fmt.Errorf("neighbour lists: %d vs %d", len(an), len(bn))
	}
	for k, v := range an {
		if err := lists("neighbours of "+k, v, bn[k]); err != nil {
			return err
		}
	}
	for _, l := range []struct {
		n    string
		x, y []ranking.Scored
	}{{"trending", a.Trending, b.Trending}, {"popular", a.Popular, b.Popular}, {"fresh", a.Fresh, b.Fresh}} {
		if err := lists(l.n, l.x, l.y); err != nil {
			return err
		}
	}
	ai, bi := resolvedItems(&a), resolvedItems(&b)
	if len(ai) != len(bi) {
		return fmt.Errorf("items: %d vs %d", len(ai), len(bi))
	}
	for id, x := range ai {
		y, ok := bi[id]
		if !ok || x.Impressions != y.Impressions || x.Watches != y.Watches || x.FirstSeenMs != y.FirstSeenMs || x.Ended != y.Ended ||
			!close(x.SumPercent, y.SumPercent) || !close(x.PopShort, y.PopShort) || !close(x.PopLong, y.PopLong) || !close(x.WatchTimeSec, y.WatchTimeSec) {
			return fmt.Errorf("item %s: %+v vs %+v", id, x, y)
		}
	}
	return nil
}

// resolvedItems are the statistics the ranker sees for each item of a Snapshot: Items, then
// SharedItems, with a list entry's own Stats pointer first.
func resolvedItems(s *ranking.Snapshot) map[string]ranking.ItemStats {
	out := map[string]ranking.ItemStats{}
	for id, st := range s.SharedItems {
		out[id] = st
	}
	for id, st := range s.Items {
		out[id] = st
	}
	lists := [][]ranking.Scored{s.Trending, s.Popular, s.Fresh}
	for _, l := range s.Neighbours {
		lists = append(lists, l)
	}
	for _, l := range lists {
		for _, x := range l {
			if x.Stats != nil {
				out[x.ItemID] = *x.Stats
			}
		}
	}
	return out
}

// With --reco.user-cache-ttl a user's state comes from rueidis' client-side cache while it
// is unchanged, and a new event of the user is seen on the next request all the same: Redis
// invalidates the tracked key when the feature store writes it.
func TestIntegrationUserCacheInvalidatedByWatch(t *testing.T) {
	for _, ttl := range []time.Duration{0, time.Minute} {
		t.Run("ttl="+ttl.String(), func(t *testing.T) { testUserCacheInvalidatedByWatch(t, ttl) })
	}
}

func testUserCacheInvalidatedByWatch(t *testing.T, ttl time.Duration) {
	s := newStack(t, testutil.MigratedDatabase(t), testutil.RedisURL(t), func(c *Config) { c.UserCacheTTL = ttl })
	s.seed(userWatchedA(s))
	s.waitServing()
	const q = "user_id=me&session_id=sess-1&k=10&x_autolog_impressions=false"
	first := s.get(q)
	if first.code != 200 || len(first.Items) == 0 || first.Items[0] != "b" {
		t.Fatalf("%+v: want b first", first)
	}
	hits := s.mod.serving.redis.(*cachedSource).user.(*redisUser).hits
	before := hits.Get()
	if again := s.get(q); fmt.Sprint(again.Items) != fmt.Sprint(first.Items) {
		t.Fatalf("unchanged user, different list: %v then %v", first.Items, again.Items)
	}
	if got := hits.Get() - before; (ttl > 0) != (got > 0) {
		t.Fatalf("cache ttl %s: %d cache hits on the second read", ttl, got)
	}
	pct := 100.0
	// The consumer's path: commit to PostgreSQL, then write the result to Redis.
	a, err := s.store.Apply(context.Background(), &featurestore.Batch{Events: []featurestore.Event{{Interaction: features.Interaction{
		Kind: features.KindWatch, EventID: s.prefix + "me-b", UserID: "me", TsMs: time.Now().UnixMilli(), ItemID: "b", PercentWatched: &pct}}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.store.WriteRedis(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	var last recoReply
	s.waitFor("b excluded after the user watched it", time.Second, func() bool {
		last = s.get(q)
		return last.code == 200 && len(last.Items) > 0 && indexOf(last.Items, "b") < 0
	})
}

// Redis loses its data (restart without persistence, flush) between two probes: the per-user
// read sees the ready marker gone in the same round trip and serves from PostgreSQL, with the
// user's watched items excluded, instead of a cold-start list until the next probe.
func TestIntegrationRedisDataLossFallsBackBeforeTheProbe(t *testing.T) {
	for _, ttl := range []time.Duration{0, time.Minute} {
		t.Run("user-cache-ttl="+ttl.String(), func(t *testing.T) {
			s := newStack(t, testutil.MigratedDatabase(t), testutil.RedisURL(t), func(c *Config) {
				c.UserCacheTTL = ttl
				c.ProbeInterval = time.Hour // the next probe is far off
			})
			s.seed(userWatchedA(s))
			s.mod.serving.readyMarker.Store(true) // what the probe saw before the loss
			s.waitServing()
			const q = "user_id=me&session_id=s&k=5&x_autolog_impressions=false"
			if r := s.get(q); r.Strat != ranking.StrategyCovisHybrid || r.Items[0] != "b" {
				t.Fatalf("healthy: %+v", r)
			}
			s.deleteKeys() // this test's keys only: the server is shared
			var r recoReply
			s.waitFor("postgres fallback", time.Second, func() bool {
				r = s.get(q)
				return r.Strat != ranking.StrategyCovisHybrid
			})
			if r.code != 200 || r.Strat != ranking.StrategyCovisHybrid+"_pg_fallback" || r.Items[0] != "b" || indexOf(r.Items, "a") >= 0 {
				t.Fatalf("redis lost its data: %+v, want b first from the postgres fallback, a excluded", r)
			}
		})
	}
}

// With --redis.user-ttl on the writers, a user whose hash expired is read back from
// PostgreSQL: /reco ranks them as before and puts them back into the copy; a user without
// events costs one lookup. Without it nothing is read through.
func TestIntegrationExpiredUserReadThrough(t *testing.T) {
	// Both Redis read paths: the user hash alone with cached item features, and the loader's
	// one-script read (no item cache).
	for _, itemCache := range []time.Duration{NewConfig().ItemCacheTTL, 0} {
		t.Run(fmt.Sprintf("item-cache-ttl=%s", itemCache), func(t *testing.T) { testExpiredUserReadThrough(t, itemCache) })
	}
}

func testExpiredUserReadThrough(t *testing.T, itemCache time.Duration) {
	s := newStackInfra(t, testutil.MigratedDatabase(t), testutil.RedisURL(t), func(c *Config) {
		c.UserCacheTTL = 0 // each request reads Redis
		c.ItemCacheTTL = itemCache
	}, func(c *infra.Config) { c.Redis.UserTTL = time.Hour })
	s.seed(userWatchedA(s))
	s.waitServing()
	ctx := context.Background()
	q := "user_id=me&session_id=s&k=5&x_autolog_impressions=false"
	before := s.get(q)
	if before.Strat != ranking.StrategyCovisHybrid {
		t.Fatalf("before: %+v", before)
	}
	readThroughs := s.readThroughs
	userKey := featurestore.NewKeys(s.prefix).User("me")
	if err := s.rd.Do(ctx, s.rd.B().Del().Key(userKey).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	after := s.get(q)
	if after.Strat != before.Strat || fmt.Sprint(after.Items) != fmt.Sprint(before.Items) {
		t.Fatalf("after expiry: %s %v, before: %s %v", after.Strat, after.Items, before.Strat, before.Items)
	}
	if n := readThroughs("found"); n != "1" {
		t.Fatalf("read-throughs found = %s, want 1", n)
	}
	if ms, err := s.rd.Do(ctx, s.rd.B().Pttl().Key(userKey).Build()).AsInt64(); err != nil || ms <= 0 || ms > time.Hour.Milliseconds() {
		t.Fatalf("user back in redis with PTTL %d (%v), want an expiry of at most 1h", ms, err)
	}
	if again := s.get(q); fmt.Sprint(again.Items) != fmt.Sprint(before.Items) || readThroughs("found") != "1" {
		t.Fatalf("second read: %v, read-throughs %s; want the same list and no new lookup", again.Items, readThroughs("found"))
	}
	for range 2 {
		if c := s.get("user_id=stranger&session_id=s&k=5&x_autolog_impressions=false"); c.code != 200 || c.Strat != ranking.StrategyColdStart {
			t.Fatalf("cold: %+v", c)
		}
	}
	if n, hits := readThroughs("absent"), s.absentHits(); n != "1" || hits != "1" {
		t.Fatalf("read-throughs absent = %s, absent-user cache hits %s; want 1 and 1 (the second request is remembered)", n, hits)
	}
}

// With a user TTL, user ids PostgreSQL does not know (bots, a request id sent as user_id)
// leave no key in Redis, whatever their number; a repeated one is looked up once per
// --reco.absent-user-cache-ttl; and one whose first watch is then applied is served it on
// the next request: Redis is read before the process' memory of unknown users.
func TestIntegrationUnknownUsersLeaveNoRedisKeys(t *testing.T) {
	for _, itemCache := range []time.Duration{NewConfig().ItemCacheTTL, 0} {
		for _, userCache := range []time.Duration{0, time.Minute} {
			t.Run(fmt.Sprintf("item-cache-ttl=%s/user-cache-ttl=%s", itemCache, userCache), func(t *testing.T) {
				testUnknownUsersLeaveNoRedisKeys(t, itemCache, userCache)
			})
		}
	}
}

func testUnknownUsersLeaveNoRedisKeys(t *testing.T, itemCache, userCache time.Duration) {
	s := newStackInfra(t, testutil.MigratedDatabase(t), testutil.RedisURL(t), func(c *Config) {
		c.UserCacheTTL = userCache
		c.ItemCacheTTL = itemCache
	}, func(c *infra.Config) { c.Redis.UserTTL = time.Hour })
	s.seed()
	s.waitServing()
	ctx := context.Background()
	userKeys := func() int {
		t.Helper()
		return len(testutil.RedisKeys(t, s.rd, featurestore.NewKeys(s.prefix).User("")+"*"))
	}
	before := userKeys()
	const n = 50
	for i := range n {
		if r := s.get(fmt.Sprintf("user_id=req-%04d&session_id=s&k=5&x_autolog_impressions=false", i)); r.code != 200 || r.Strat != ranking.StrategyColdStart {
			t.Fatalf("unknown user %d: %+v", i, r)
		}
	}
	if after := userKeys(); after != before {
		t.Fatalf("%d user hashes after %d unknown users, %d before: want no new key", after, n, before)
	}
	if got := s.readThroughs("absent"); got != fmt.Sprint(n) {
		t.Fatalf("read-throughs absent = %s, want %d", got, n)
	}

	// Again: remembered, PostgreSQL is not asked.
	const q = "user_id=req-0000&session_id=s&k=5&x_autolog_impressions=false"
	for range 3 {
		if r := s.get(q); r.code != 200 || r.Strat != ranking.StrategyColdStart {
			t.Fatalf("unknown user again: %+v", r)
		}
	}
	if got, hits := s.readThroughs("absent"), s.absentHits(); got != fmt.Sprint(n) || hits != "3" {
		t.Fatalf("read-throughs absent = %s, absent-user cache hits %s; want still %d, and 3", got, hits, n)
	}

	// The user's first watch, the consumer's way (PostgreSQL, then Redis): the next request
	// ranks with it.
	pct := 100.0
	a, err := s.store.Apply(ctx, &featurestore.Batch{Events: []featurestore.Event{{Interaction: features.Interaction{
		Kind: features.KindWatch, EventID: s.prefix + "req-0000-a", UserID: "req-0000", TsMs: time.Now().UnixMilli() - 1000, ItemID: "a", PercentWatched: &pct}}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.store.WriteRedis(ctx, a); err != nil {
		t.Fatal(err)
	}
	// Within a second, as the issue asks: with --reco.user-cache-ttl the API's copy of the
	// absent user goes when Redis's invalidation message arrives, which on a busy machine can
	// come a moment after the write's reply (it failed once in CI when asked "at once").
	for deadline := time.Now().Add(time.Second); ; time.Sleep(20 * time.Millisecond) {
		r := s.get(q)
		if r.Strat == ranking.StrategyCovisHybrid && r.Items[0] == "b" && indexOf(r.Items, "a") < 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the first watch: %+v, want b first and a excluded within 1 s", r)
		}
	}

	// Its hash lost (evicted under maxmemory, or expired): read through, not taken for the
	// unknown user it was.
	if err := s.rd.Do(ctx, s.rd.B().Del().Key(featurestore.NewKeys(s.prefix).User("req-0000")).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	// Every answer ranks with the watch; the read-through comes once the client cache has
	// heard of the deletion (within 1 s, as above).
	for deadline := time.Now().Add(time.Second); ; time.Sleep(20 * time.Millisecond) {
		if r := s.get(q); r.Strat != ranking.StrategyCovisHybrid || r.Items[0] != "b" || indexOf(r.Items, "a") >= 0 {
			t.Fatalf("after the user's hash was lost: %+v, want b first and a excluded", r)
		}
		got := s.readThroughs("found")
		if got == "1" {
			break
		}
		if got != "0" || time.Now().After(deadline) {
			t.Fatalf("read-throughs found = %s, want 1", got)
		}
	}
}

// Writers without a user TTL: users never expire, so an absent hash is a user without
// events and /reco does not ask PostgreSQL.
func TestIntegrationNoUserTTLNoReadThrough(t *testing.T) {
	s := newStack(t, testutil.MigratedDatabase(t), testutil.RedisURL(t), func(c *Config) { c.UserCacheTTL = 0 })
	s.seed(userWatchedA(s))
	s.waitServing()
	if err := s.rd.Do(context.Background(), s.rd.B().Del().Key(featurestore.NewKeys(s.prefix).User("me")).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if r := s.get("user_id=me&session_id=s&k=5&x_autolog_impressions=false"); r.code != 200 || r.Strat != ranking.StrategyColdStart {
		t.Fatalf("deleted user without a TTL: %+v, want a cold start", r)
	}
	for _, r := range []string{"found", "absent", "error"} {
		if n := s.readThroughs(r); n != "0" {
			t.Fatalf("read-throughs %s = %s without a user TTL, want 0", r, n)
		}
	}
}

// PostgreSQL down: a user whose hash expired cannot be read through, so they are served the
// global snapshot, labelled as such ("_global_snapshot", served_total{source=global_snapshot})
// rather than passed off as a plain cold start whose list may hold what they watched; the
// failures never count against Redis, which keeps serving everyone it holds.
func TestIntegrationReadThroughFailureServesLabelledGlobalSnapshot(t *testing.T) {
	// Both Redis read paths: the user hash alone with cached item features, and the loader's
	// one-script read (no item cache).
	for _, itemCache := range []time.Duration{NewConfig().ItemCacheTTL, 0} {
		t.Run(fmt.Sprintf("item-cache-ttl=%s", itemCache), func(t *testing.T) {
			testReadThroughFailureServesLabelledGlobalSnapshot(t, itemCache)
		})
	}
}

func testReadThroughFailureServesLabelledGlobalSnapshot(t *testing.T, itemCache time.Duration) {
	pg := testutil.StartPrivate(t, "pg")
	testutil.MigrateUp(t, pg.URL)
	s := newStackInfra(t, pg.URL, testutil.RedisURL(t), func(c *Config) {
		c.UserCacheTTL = 0
		c.ItemCacheTTL = itemCache
	}, func(c *infra.Config) { c.Redis.UserTTL = time.Hour })
	s.seed(userWatchedA(s))
	s.waitServing()
	ctx := context.Background()
	if err := s.rd.Do(ctx, s.rd.B().Del().Key(featurestore.NewKeys(s.prefix).User("me")).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	pg.Stop()
	for i := range 20 {
		if r := s.get(fmt.Sprintf("user_id=me&session_id=s%d&k=40&x_autolog_impressions=false", i)); r.code != 200 ||
			r.Strat != ranking.StrategyColdStart+"_global_snapshot" || len(r.Items) == 0 {
			t.Fatalf("expired user, postgres down, request %d: %+v, want the labelled global snapshot", i, r)
		}
		if r := s.get(fmt.Sprintf("user_id=ab1&session_id=s%d&k=5&x_autolog_impressions=false", i)); r.code != 200 || r.Strat != ranking.StrategyCovisHybrid {
			t.Fatalf("user in redis, postgres down, request %d: %+v", i, r)
		}
	}
	if s.mod.serving.redisBrk.IsOpen() {
		t.Fatal("redis breaker opened by read-through failures")
	}
	if n := s.readThroughs("error"); n != "20" {
		t.Fatalf("read-through errors = %s, want 20", n)
	}
	var b bytes.Buffer
	s.metrics.WritePrometheus(&b)
	for _, want := range []string{`recsys_reco_served_total{source="global_snapshot"} 20`, `recsys_reco_served_total{source="redis"} 20`,
		`recsys_reco_source_errors_total{store="redis"} 0`} {
		if !strings.Contains(b.String(), want+"\n") {
			t.Errorf("exposition lacks %s:\n%s", want, grep(b.String(), "recsys_reco_"))
		}
	}
}

// absentHits is recsys_reco_absent_user_cache_hits_total of the module.
func (s *stack) absentHits() string {
	var b bytes.Buffer
	s.metrics.WritePrometheus(&b)
	for _, l := range strings.Split(b.String(), "\n") {
		if strings.HasPrefix(l, "recsys_reco_absent_user_cache_hits_total ") {
			return strings.Fields(l)[1]
		}
	}
	return "missing"
}

// readThroughs is recsys_reco_user_read_through_total{result} of the module.
func (s *stack) readThroughs(result string) string {
	var b bytes.Buffer
	s.metrics.WritePrometheus(&b)
	for _, l := range strings.Split(b.String(), "\n") {
		if strings.HasPrefix(l, `recsys_reco_user_read_through_total{result="`+result+`"} `) {
			return strings.Fields(l)[1]
		}
	}
	return "missing"
}

// A user whose Redis hash does not decode (written by a newer release, edited by hand) is
// served from PostgreSQL, labelled so; Redis' breaker does not count it, so one such user
// requested again and again never sends everyone else to PostgreSQL. On every read path: the
// item cache's (the default), the loader's script that also reads the global lists
// (--reco.cache-global-lists=false, or no global snapshot yet) and the script alone
// (--reco.item-cache-ttl=0), where a history the script could not parse was a script error.
// A document PostgreSQL cannot decode either (both written by a newer release) gets the
// global lists, labelled so, and opens neither breaker (PostgreSQL's also holds back every
// auto-logged impression).
func TestIntegrationUndecodableUserIsServedFromPostgres(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mut    func(*Config)
		pgBad  bool
		suffix string
	}{
		{"item cache", nil, false, "_pg_fallback"},
		{"loader with global lists", func(c *Config) { c.CacheGlobalLists = false }, false, "_pg_fallback"},
		{"loader alone", func(c *Config) { c.ItemCacheTTL = 0 }, false, "_pg_fallback"},
		{"item cache, postgresql too", nil, true, "_global_snapshot"},
		{"loader with global lists, postgresql too", func(c *Config) { c.CacheGlobalLists = false }, true, "_global_snapshot"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStack(t, testutil.MigratedDatabase(t), testutil.RedisURL(t), func(c *Config) {
				c.UserCacheTTL = 0 // each request reads Redis
				c.BreakerFailures = 2
				if tc.mut != nil {
					tc.mut(c)
				}
			})
			s.seed(userWatchedA(s))
			s.waitServing()
			ctx := context.Background()
			if err := s.rd.Do(ctx, s.rd.B().Hset().Key(featurestore.NewKeys(s.prefix).User("me")).FieldValue().FieldValue("h", "not a history").Build()).Error(); err != nil {
				t.Fatal(err)
			}
			if tc.pgBad {
				if _, err := s.pg.Exec(ctx, `UPDATE feature_users SET history = 'not a history' WHERE user_id = 'me'`); err != nil {
					t.Fatal(err)
				}
			}
			// In a row, as in a quiet moment: nothing in between resets the breakers' count.
			for i := range 10 {
				r := s.get(fmt.Sprintf("user_id=me&session_id=s%d&k=10&x_autolog_impressions=false", i))
				if r.code != 200 || !strings.HasSuffix(r.Strat, tc.suffix) || (!tc.pgBad && slices.Contains(r.Items, "a")) {
					t.Fatalf("undecodable user, request %d: %+v, want a %s list (without the watched a from postgresql)", i, r, tc.suffix)
				}
			}
			if s.mod.serving.redisBrk.IsOpen() || s.mod.serving.pgBrk.IsOpen() {
				t.Fatalf("breakers opened by one user's undecodable features: redis %v, postgres %v",
					s.mod.serving.redisBrk.State(), s.mod.serving.pgBrk.State())
			}
			if c := s.get("user_id=stranger&session_id=s&k=5&x_autolog_impressions=false"); c.code != 200 || c.Strat != ranking.StrategyColdStart {
				t.Fatalf("another user: %+v, want served from redis", c)
			}
			var b bytes.Buffer
			s.metrics.WritePrometheus(&b)
			for _, want := range []string{`recsys_reco_user_undecodable_total 10`, `recsys_reco_source_errors_total{store="redis"} 0`,
				`recsys_reco_source_errors_total{store="postgres"} 0`} {
				if !strings.Contains(b.String(), want+"\n") {
					t.Errorf("exposition lacks %s:\n%s", want, grep(b.String(), "recsys_reco_"))
				}
			}
		})
	}
}

// TestIntegrationLargeKIsFilled: a catalog of hundreds of items whose trending and popular
// lists overlap; a cold user asking for k=200 gets 200 items from the real stores, served from
// Redis and from PostgreSQL (Redis lost its data). Only the first 100 entries of each list
// were read before, ~130 distinct items.
func TestIntegrationLargeKIsFilled(t *testing.T) {
	s := newStack(t, testutil.MigratedDatabase(t), testutil.RedisURL(t), func(c *Config) { c.ProbeInterval = time.Hour })
	ts := time.Now().UnixMilli() - 7200_000
	var extra []features.Interaction
	for i := 0; i < 300; i++ {
		for u := 0; u <= i%5; u++ {
			ts += 10
			pct := 80.0
			extra = append(extra, features.Interaction{Kind: features.KindWatch, EventID: fmt.Sprintf("%scat%d-%d", s.prefix, i, u),
				UserID: fmt.Sprintf("cat-user-%d", u), TsMs: ts, ItemID: fmt.Sprintf("cat%03d", i), PercentWatched: &pct})
		}
	}
	s.seed(extra...)
	s.mod.serving.readyMarker.Store(true)
	s.waitServing()
	const q = "user_id=stranger&session_id=s&k=200&x_autolog_impressions=false"
	check := func(r recoReply, strategy string) {
		t.Helper()
		if r.code != 200 || r.Strat != strategy || len(r.Items) != 200 {
			t.Fatalf("%s: code %d strategy %s, %d items, want 200 of a catalog of 323", strategy, r.code, r.Strat, len(r.Items))
		}
		seen := map[string]bool{}
		for _, it := range r.Items {
			if seen[it] {
				t.Fatalf("%s: duplicate %s", strategy, it)
			}
			seen[it] = true
		}
	}
	check(s.get(q), ranking.StrategyColdStart)
	s.deleteKeys() // this test's keys only: the server is shared
	var r recoReply
	s.waitFor("postgres fallback", 2*time.Second, func() bool {
		r = s.get(q)
		return r.Strat != ranking.StrategyColdStart
	})
	check(r, ranking.StrategyColdStart+"_pg_fallback")
}

// Every refresh of the blocked items mirrors them into Redis, for a process that starts
// while PostgreSQL is unreachable (TestBlockedItemsFromTheMirrorWhilePostgresIsDown).
func TestIntegrationBlockedItemsAreMirroredToRedis(t *testing.T) {
	s := newStack(t, testutil.MigratedDatabase(t), testutil.RedisURL(t), func(c *Config) { c.BlockedRefresh = 100 * time.Millisecond })
	if _, err := s.pg.Exec(context.Background(), `INSERT INTO blocked_items (item_id, reason) VALUES ('gone-1', 'test'), ('gone-2', 'test')`); err != nil {
		t.Fatal(err)
	}
	m := redisMirror{rd: s.rd, key: featurestore.NewKeys(s.prefix).Blocked}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ids, found, err := m.read(context.Background())
		if err == nil && found && slices.Equal(ids, []string{"gone-1", "gone-2"}) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the mirror holds %v (found %v, %v), want [gone-1 gone-2]", ids, found, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
