package reco

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"recsys/pkg/ranking"
)

func TestDegradedServingFallsBackAndRecovers(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.BreakerFailures = 2 })
	h.run()
	now := time.Now().UnixMilli()
	// The user's state is in both stores (PostgreSQL is the truth, Redis its copy).
	h.redis.apply(watchEv("d1", "a", now, "d1-a"))
	h.pg.apply(watchEv("d1", "a", now, "d1-a"))
	eventually(t, 2*time.Second, "global snapshot", func() bool { return h.r.serving.global.Load() != nil })

	get := func() response {
		t.Helper()
		r := h.get("/reco?user_id=d1&session_id=s&k=5&x_autolog_impressions=false")
		if r.code != 200 {
			t.Fatalf("code %d %v", r.code, r.body)
		}
		return r
	}
	if s := get().body["strategy"]; s != ranking.StrategyCovisHybrid {
		t.Fatalf("healthy strategy %v", s)
	}

	// Redis down: PostgreSQL features, still personalised.
	h.redis.fail.Store(true)
	h.redisUp.Store(false)
	r := get()
	if r.body["strategy"] != ranking.StrategyCovisHybrid+"_pg_fallback" || r.items()[0] != "b" {
		t.Fatalf("redis down: %v %v", r.body["strategy"], r.items())
	}
	eventually(t, 2*time.Second, "redis breaker open", h.r.serving.redisBrk.IsOpen)
	calls := h.redis.calls.Load()
	for i := 0; i < 20; i++ {
		get()
	}
	if c := h.redis.calls.Load() - calls; c != 0 {
		t.Fatalf("%d redis reads while its breaker was open", c)
	}

	// Both down: the in-process global lists.
	h.pg.fail.Store(true)
	h.pgUp.Store(false)
	r = get()
	if r.body["strategy"] != ranking.StrategyColdStart+"_global_snapshot" || len(r.items()) != 5 {
		t.Fatalf("both down: %v %v", r.body["strategy"], r.items())
	}
	eventually(t, 2*time.Second, "postgres breaker open", h.r.serving.pgBrk.IsOpen)
	health := h.r.HealthDetails(context.Background())["online_cache"].(map[string]any)
	if health["redis_breaker"] != "open" || health["postgres_breaker"] != "open" || health["serving_from"] != "global_snapshot" {
		t.Fatalf("health %v", health)
	}
	if err := h.r.Ready(context.Background()); err != nil {
		t.Fatalf("a global snapshot can still serve, Ready = %v", err)
	}

	// Redis back: normal strategy without a restart (the probe closes the breaker).
	h.redis.fail.Store(false)
	h.redisUp.Store(true)
	eventually(t, 2*time.Second, "redis strategy again", func() bool {
		return get().body["strategy"] == ranking.StrategyCovisHybrid
	})

	// Redis lost its data: the marker is missing, reads go to PostgreSQL (back as well).
	h.pg.fail.Store(false)
	h.pgUp.Store(true)
	h.marker.Store(false)
	eventually(t, 2*time.Second, "pg fallback while the marker is missing", func() bool {
		return get().body["strategy"] == ranking.StrategyCovisHybrid+"_pg_fallback"
	})
	if health := h.r.HealthDetails(context.Background())["online_cache"].(map[string]any); health["ready_marker"] != false {
		t.Fatalf("health %v", health)
	}
	h.marker.Store(true)
	eventually(t, 2*time.Second, "redis again once the marker is back", func() bool {
		return get().body["strategy"] == ranking.StrategyCovisHybrid
	})
	expo := exposition(h)
	for _, want := range []string{`recsys_reco_served_total{source="pg_fallback"}`, `recsys_reco_served_total{source="global_snapshot"}`,
		`recsys_reco_breaker_opened_total{store="redis"} 1`} {
		if !strings.Contains(expo, want) {
			t.Errorf("exposition lacks %s:\n%s", want, grep(expo, "recsys_reco_"))
		}
	}
}

func TestNoStoreEverReachableIs503(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.BreakerFailures = 1 })
	h.redis.fail.Store(true)
	h.pg.fail.Store(true)
	h.redisUp.Store(false)
	h.pgUp.Store(false)
	h.run()
	r := h.get("/reco?user_id=x&session_id=s")
	if r.code != 503 || !strings.Contains(r.body["detail"].(string), "no recommendations available") {
		t.Fatalf("%d %v", r.code, r.body)
	}
	eventually(t, 2*time.Second, "not ready", func() bool { return h.r.Ready(context.Background()) != nil })
	w := h.get("/metrics/reco").body
	if w["error_rate_pct"].(float64) != 100 {
		t.Fatalf("window %v", w)
	}
	// A store coming back makes it serve again.
	h.pg.fail.Store(false)
	h.pgUp.Store(true)
	eventually(t, 2*time.Second, "serving again", func() bool { return h.get("/reco?user_id=x&session_id=s").code == 200 })
}

func TestRedisTimeoutCostsOneBudgetThenBreakerSkips(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.BreakerFailures = 1
		c.RedisTimeout = 30 * time.Millisecond
		c.ProbeInterval = time.Hour // no probe closes it during the test
	})
	slow := &slowSource{delay: time.Second}
	h.r.serving.redis = slow
	start := time.Now()
	r := h.get("/reco?user_id=u&session_id=s&x_autolog_impressions=false")
	if d := time.Since(start); r.code != 200 || d > 500*time.Millisecond {
		t.Fatalf("first request: %d after %s", r.code, d)
	}
	for i := 0; i < 10; i++ {
		h.get("/reco?user_id=u&session_id=s&x_autolog_impressions=false")
	}
	if n := slow.calls.Load(); n != 1 {
		t.Fatalf("slow redis called %d times, want 1 (then the breaker skips it)", n)
	}
}

type slowSource struct {
	delay time.Duration
	calls atomic.Int64
}

func (s *slowSource) Snapshot(ctx context.Context, _ string, _ int64, _ ranking.SnapshotOptions) (ranking.Snapshot, error) {
	s.calls.Add(1)
	select {
	case <-time.After(s.delay):
		return ranking.Snapshot{}, nil
	case <-ctx.Done():
		return ranking.Snapshot{}, ctx.Err()
	}
}

func TestCachedGlobalListsMatchFullSnapshot(t *testing.T) {
	// The per-request read without global lists, completed from the in-process snapshot,
	// must rank exactly like a full read.
	cached := newHarness(t, nil)
	full := newHarness(t, func(c *Config) { c.CacheGlobalLists = false })
	now := time.Now().UnixMilli()
	for _, h := range []*harness{cached, full} {
		h.redis.apply(watchEv("g1", "a", now, "g1-a"))
		h.redis.apply(watchEv("g1", "p03", now+1, "g1-p03"))
	}
	if err := cached.r.serving.refreshGlobal(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"user_id=g1&session_id=s&k=30", "user_id=nobody&session_id=s&k=30"} {
		a := cached.get("/reco?" + q + "&x_autolog_impressions=false").items()
		b := full.get("/reco?" + q + "&x_autolog_impressions=false").items()
		if strings.Join(a, ",") != strings.Join(b, ",") {
			t.Fatalf("%s:\ncached %v\nfull   %v", q, a, b)
		}
	}
	if cached.redis.calls.Load() == 0 {
		t.Fatal("no reads")
	}
}

// The in-process global lists complete per-user snapshots only while younger than
// --reco.global-max-age: a snapshot the refresh stopped renewing (its loads failing) must not
// serve every request the trending lists of long ago; past the age requests read the lists
// from the store again.
func TestGlobalListsOlderThanMaxAgeAreReadFromTheStore(t *testing.T) {
	h := newHarness(t, nil)
	if err := h.r.serving.refreshGlobal(context.Background()); err != nil {
		t.Fatal(err)
	}
	// An item every user watches now tops the store's trending list, not the snapshot's.
	now := time.Now().UnixMilli()
	for u := range 60 {
		h.redis.apply(watchEv(fmt.Sprintf("hot-user-%d", u), "hot", now+int64(u), fmt.Sprintf("hot-%d", u)))
	}
	const q = "/reco?user_id=cold&session_id=s&k=10&x_autolog_impressions=false"
	if items := h.get(q).items(); indexOf(items, "hot") >= 0 {
		t.Fatalf("list %v holds the new item: the snapshot did not complete the request, the test proves nothing", items)
	}
	g := *h.r.serving.global.Load()
	g.loadedAt = time.Now().Add(-h.r.cfg.GlobalMaxAge - time.Second)
	h.r.serving.global.Store(&g)
	if items := h.get(q).items(); indexOf(items, "hot") < 0 {
		t.Fatalf("list %v: global lists older than --reco.global-max-age still completed the request", items)
	}
}

// heldSource holds the PostgreSQL read of user "blocker" until release is closed.
type heldSource struct {
	snapshotSource
	release chan struct{}
}

func (g *heldSource) Snapshot(ctx context.Context, u string, n int64, o ranking.SnapshotOptions) (ranking.Snapshot, error) {
	if u == "blocker" {
		<-g.release
	}
	return g.snapshotSource.Snapshot(ctx, u, n, o)
}

// Redis unusable and every PostgreSQL read slot busy: a request waits briefly for a slot, so
// a moment of congestion still gets a list without the items the user watched; only a longer
// one sheds it to the global lists (which exclude nothing), within the wait.
func TestPGSlotsBusyWaitBrieflyBeforeGlobalSnapshot(t *testing.T) {
	watched := map[string]bool{} // pop-user-0 watched p00..p04 and every third p
	for i := 0; i < 30; i++ {
		if i%3 == 0 || i < 5 {
			watched[fmt.Sprintf("p%02d", i)] = true
		}
	}
	for _, tc := range []struct {
		name     string
		hold     time.Duration // how long the blocker keeps the only slot
		strategy string
		shed     uint64
	}{
		{"slot freed within the wait", 30 * time.Millisecond, "_pg_fallback", 0},
		{"slot busy past the wait", time.Second, "_global_snapshot", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.BreakerFailures = 1; c.PGMaxConcurrent = 1; c.PGSlotWait = 200 * time.Millisecond })
			release := make(chan struct{})
			h.r.serving.pg = &heldSource{snapshotSource: h.pg, release: release}
			h.run()
			eventually(t, 2*time.Second, "global snapshot", func() bool { return h.r.serving.global.Load() != nil })
			h.redis.fail.Store(true)
			h.redisUp.Store(false)
			eventually(t, 2*time.Second, "redis breaker open", h.r.serving.redisBrk.IsOpen)
			blocked := make(chan struct{})
			go func() {
				defer close(blocked)
				h.get("/reco?user_id=blocker&session_id=s&k=5&x_autolog_impressions=false")
			}()
			defer func() { <-blocked }()
			eventually(t, 2*time.Second, "blocker holds the slot", func() bool { return len(h.r.serving.pgSlots) == 1 })
			timer := time.AfterFunc(tc.hold, func() { close(release) })
			defer func() {
				if timer.Stop() {
					close(release)
				}
			}()
			start := time.Now()
			r := h.get("/reco?user_id=pop-user-0&session_id=s&k=20&x_autolog_impressions=false")
			took := time.Since(start)
			strategy, _ := r.body["strategy"].(string)
			if r.code != 200 || !strings.HasSuffix(strategy, tc.strategy) {
				t.Fatalf("%d strategy %q, want suffix %q", r.code, strategy, tc.strategy)
			}
			if took > 150*time.Millisecond+tc.hold && took > 400*time.Millisecond {
				t.Fatalf("took %s: the wait is bounded by --reco.pg-slot-wait", took)
			}
			if got := h.r.m.pgShed.Get(); got != tc.shed {
				t.Fatalf("pg_shed %d, want %d", got, tc.shed)
			}
			if tc.strategy == "_pg_fallback" {
				for _, it := range r.items() {
					if watched[it] {
						t.Fatalf("served watched item %s: %v", it, r.items())
					}
				}
			}
		})
	}
}

// unreadUser is a Redis source whose read-through of one expired user fails (PostgreSQL
// down): Redis answered, the user's features are unknown.
type unreadUser struct {
	snapshotSource
	user string
}

func (u unreadUser) Snapshot(ctx context.Context, userID string, nowMs int64, opts ranking.SnapshotOptions) (ranking.Snapshot, error) {
	if userID == u.user {
		return ranking.Snapshot{}, fmt.Errorf("%w: %w", errUserUnread, errDown)
	}
	return u.snapshotSource.Snapshot(ctx, userID, nowMs, opts)
}

// A user whose read-through failed is never ranked as a plain cold start (their watched items
// would come back unlabelled): the next source serves them and the strategy names it, while
// Redis' breaker counts nothing and keeps serving everyone else.
func TestReadThroughFailureServesNextSourceLabelled(t *testing.T) {
	for _, tc := range []struct {
		name      string
		pgDown    bool
		strategy  string
		source    string
		excludesA bool
	}{
		{name: "postgres answers", strategy: ranking.StrategyCovisHybrid + "_pg_fallback", source: sourcePG, excludesA: true},
		{name: "postgres down", pgDown: true, strategy: ranking.StrategyColdStart + "_global_snapshot", source: sourceGlobal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.BreakerFailures = 2 })
			now := time.Now().UnixMilli()
			h.pg.apply(watchEv("gone", "a", now, "gone-a")) // expired from Redis, still in PostgreSQL
			h.r.serving.redis = unreadUser{snapshotSource: h.r.serving.redis, user: "gone"}
			h.pg.fail.Store(tc.pgDown)
			h.pgUp.Store(!tc.pgDown)
			h.run()
			eventually(t, 2*time.Second, "global snapshot", func() bool { return h.r.serving.global.Load() != nil })
			for i := range 10 {
				r := h.get("/reco?user_id=gone&session_id=s&k=10&x_autolog_impressions=false")
				if r.code != 200 || r.body["strategy"] != tc.strategy {
					t.Fatalf("request %d: %d %v, want strategy %s", i, r.code, r.body, tc.strategy)
				}
				if tc.excludesA && indexOf(r.items(), "a") >= 0 {
					t.Fatalf("request %d: watched a served: %v", i, r.items())
				}
				if r := h.get("/reco?user_id=other&session_id=s&k=10&x_autolog_impressions=false"); r.body["strategy"] != ranking.StrategyColdStart {
					t.Fatalf("request %d, user read from redis: %v", i, r.body)
				}
			}
			if h.r.serving.redisBrk.IsOpen() {
				t.Fatal("redis breaker opened by read-through failures")
			}
			expo := exposition(h)
			for _, want := range []string{`recsys_reco_served_total{source="` + tc.source + `"} 10`,
				`recsys_reco_served_total{source="redis"} 10`, `recsys_reco_source_errors_total{store="redis"} 0`} {
				if !strings.Contains(expo, want+"\n") {
					t.Errorf("exposition lacks %s:\n%s", want, grep(expo, "recsys_reco_"))
				}
			}
		})
	}
}
