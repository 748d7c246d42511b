package reco

import (
	"context"
	"errors"
	"testing"
	"time"

	"recsys/pkg/featurestore"
	"recsys/pkg/infra"
	"recsys/pkg/ranking"
	"recsys/pkg/testutil"
)

// slowListsStack is a stack whose Redis copy is not usable (reads go to PostgreSQL), whose
// PostgreSQL loader has read no global lists yet, with one PostgreSQL failure opening the
// breaker and no probe or refresh of its own after the first (the test drives them).
// slowLists makes the lists' read wait (as the scans of a large catalog do) until release.
func slowListsStack(t *testing.T) (s *stack, slowLists func() (release func())) {
	t.Helper()
	dsn := testutil.MigratedDatabase(t)
	s = newStackInfra(t, dsn, testutil.RedisURL(t), func(c *Config) {
		c.BreakerFailures = 1
		c.ProbeInterval, c.GlobalRefresh, c.GlobalMaxAge = time.Hour, time.Hour, time.Hour
		c.PGTimeout = 100 * time.Millisecond
		c.CacheGlobalLists = false // requests read the lists too
	}, func(c *infra.Config) {
		// The lists' read waits for the lock below like a long scan, not a lock_timeout.
		c.PG.LockTimeout, c.PG.StatementTimeout = time.Minute, time.Minute
	})
	// The first refresh reads an empty store (no lists), before the seed.
	s.waitFor("first global refresh", 10*time.Second, func() bool { return s.mod.serving.global.Load() != nil })
	s.seed(userWatchedA(s))
	if err := s.rd.Do(context.Background(), s.rd.B().Unlink().Key(featurestore.NewKeys(s.prefix).Ready).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	s.mod.serving.readyMarker.Store(false)
	return s, func() func() {
		// The lists' queries scan feature_items; the user's own reads do not touch it.
		return testutil.HoldLock(t, dsn, "LOCK TABLE feature_items IN ACCESS EXCLUSIVE MODE")
	}
}

// A read of the global lists outlasting --reco.pg-timeout (the scans of a large catalog) is
// not a PostgreSQL failure: PostgreSQL answered the rest and the read goes on for the next
// refresh. Counted, it opened the breaker early in a Redis outage, and degraded requests
// skipped a healthy PostgreSQL.
func TestIntegrationSlowGlobalListsDoNotOpenThePostgresBreaker(t *testing.T) {
	s, slowLists := slowListsStack(t)
	release := slowLists()
	for i := range 2 {
		err := s.mod.serving.refreshGlobal(context.Background())
		if !errors.Is(err, featurestore.ErrListsPending) {
			t.Fatalf("refresh %d while the lists are read = %v, want ErrListsPending", i, err)
		}
		r := s.get("user_id=me&session_id=s&k=5&x_autolog_impressions=false")
		if r.code != 200 || r.Strat != ranking.StrategyColdStart+"_global_snapshot" {
			t.Fatalf("request %d while the lists are read: %+v, want the global snapshot", i, r)
		}
		if s.mod.serving.pgBrk.IsOpen() {
			t.Fatalf("postgres breaker open after %d refreshes and requests waiting for a read of the lists in progress", i+1)
		}
	}
	release()
	s.waitFor("global lists read", 10*time.Second, func() bool {
		return s.mod.serving.refreshGlobal(context.Background()) == nil && len(s.mod.serving.global.Load().snap.Trending) > 0
	})
	if r := s.get("user_id=me&session_id=s&k=5&x_autolog_impressions=false"); r.Strat != ranking.StrategyCovisHybrid+"_pg_fallback" || r.Items[0] != "b" {
		t.Fatalf("lists read: %+v", r)
	}
	if s.mod.serving.pgBrk.IsOpen() {
		t.Fatal("postgres breaker open")
	}
}

// The shutdown ends a read of the global lists in flight: it holds a pool connection for up to
// 15 s, and closing the pool waits for every connection.
func TestIntegrationShutdownEndsAReadOfTheGlobalLists(t *testing.T) {
	s, slowLists := slowListsStack(t)
	slowLists()
	if err := s.mod.serving.refreshGlobal(context.Background()); !errors.Is(err, featurestore.ErrListsPending) {
		t.Fatalf("refresh = %v, want ErrListsPending", err)
	}
	start := time.Now()
	s.stop()
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		s.pg.Close()
	}()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("pool still closing 5s after the module stopped: the read of the global lists holds its connection")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("module stop and pool close took %s with a read of the global lists in flight", d)
	}
}
