package reco

import (
	"context"
	"fmt"
	"testing"
	"time"

	"recsys/pkg/featurestore"
	"recsys/pkg/infra"
	"recsys/pkg/ranking"
	"recsys/pkg/testutil"
)

// Redis that refuses writes but still serves reads: out of memory under noeviction, or a
// read-only replica after a failover. /reco keeps serving from Redis, and a user whose hash
// expired (--redis.user-ttl) is ranked with what the read-through found in PostgreSQL, though
// it cannot be written back. It used to count as a failed read-through, so each such request
// read PostgreSQL twice and was served as *_pg_fallback (or, with PostgreSQL's slots busy,
// the global snapshot, which ignores what the user watched). Once Redis takes writes again
// the user goes back into the copy.
func TestIntegrationRedisRefusingWritesStillServesExpiredUsers(t *testing.T) {
	for _, tc := range []struct {
		name             string
		degrade, restore []string
	}{
		{"oom", []string{"CONFIG", "SET", "maxmemory", "1"}, []string{"CONFIG", "SET", "maxmemory", "0"}},
		// A demoted master whose new master is unreachable keeps its data and refuses writes.
		{"readonly", []string{"REPLICAOF", "127.0.0.1", "1"}, []string{"REPLICAOF", "NO", "ONE"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			red := testutil.StartPrivate(t, "redis")
			s := newStackInfra(t, testutil.MigratedDatabase(t), red.URL, func(c *Config) { c.UserCacheTTL = 0 },
				func(c *infra.Config) { c.Redis.UserTTL = time.Hour })
			s.seed(userWatchedA(s))
			s.waitServing()
			ctx := context.Background()
			admin := testutil.RedisClient(t, red.URL)
			do := func(args ...string) {
				t.Helper()
				if err := admin.Do(ctx, admin.B().Arbitrary(args...).Build()).Error(); err != nil {
					t.Fatalf("redis %v: %v", args, err)
				}
			}
			q := func(user string, i int) string {
				return fmt.Sprintf("user_id=%s&session_id=s%d&k=5&x_autolog_impressions=false", user, i)
			}
			before := s.get(q("ab1", 0))
			if before.code != 200 || before.Strat != ranking.StrategyCovisHybrid {
				t.Fatalf("before: %+v", before)
			}
			userKey := featurestore.NewKeys(s.prefix).User("ab1")
			do("DEL", userKey) // expired
			do("CONFIG", "SET", "maxmemory-policy", "noeviction")
			do(tc.degrade...)
			if err := admin.Do(ctx, admin.B().Set().Key(s.prefix+"probe").Value("x").Build()).Error(); err == nil {
				t.Fatal("redis still takes writes")
			}
			for i := range 5 {
				if r := s.get(q("ab1", i)); r.code != 200 || r.Strat != before.Strat || fmt.Sprint(r.Items) != fmt.Sprint(before.Items) {
					t.Fatalf("expired user, redis refusing writes, request %d: %s %v, want %s %v", i, r.Strat, r.Items, before.Strat, before.Items)
				}
				if r := s.get(q(fmt.Sprintf("stranger%d", i), i)); r.code != 200 || r.Strat != ranking.StrategyColdStart {
					t.Fatalf("unknown user, redis refusing writes, request %d: %+v", i, r)
				}
				if r := s.get(q("me", i)); r.code != 200 || r.Strat != ranking.StrategyCovisHybrid {
					t.Fatalf("user in redis, redis refusing writes, request %d: %+v", i, r)
				}
			}
			if n := s.readThroughs("error"); n != "0" {
				t.Errorf("read-through errors = %s, want 0: PostgreSQL answered every one", n)
			}
			if n := s.readThroughs("found"); n != "5" {
				t.Errorf("read-throughs found = %s, want 5 (none written back)", n)
			}
			if s.mod.serving.redisBrk.IsOpen() {
				t.Error("redis breaker opened by refused writes")
			}

			do(tc.restore...)
			s.get(q("ab1", 9))
			if ms, err := admin.Do(ctx, admin.B().Pttl().Key(userKey).Build()).AsInt64(); err != nil || ms <= 0 {
				t.Fatalf("user back in redis with PTTL %d (%v) once it takes writes, want an expiry", ms, err)
			}
		})
	}
}

// Redis that stops answering for a while (CLIENT PAUSE, as a failover or a stalled server
// does): every /reco answers within its Redis and PostgreSQL budgets from PostgreSQL, with
// the fallback strategy, and goes back to Redis without a restart.
func TestIntegrationRedisPausedFallsBackWithinBudgetAndRecovers(t *testing.T) {
	red := testutil.StartPrivate(t, "redis")
	s := newStack(t, testutil.MigratedDatabase(t), red.URL, func(c *Config) { c.UserCacheTTL = 0 })
	s.seed(userWatchedA(s))
	s.waitServing()
	admin := testutil.RedisClient(t, red.URL)
	if err := admin.Do(context.Background(), admin.B().Arbitrary("CLIENT", "PAUSE", "3000", "ALL").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	// Slack for a loaded CI host; a request waiting the pause out would take seconds.
	budget := s.mod.cfg.RedisTimeout + s.mod.cfg.PGTimeout + 500*time.Millisecond
	for i := range 20 {
		t0 := time.Now()
		r := s.get(fmt.Sprintf("user_id=me&session_id=s%d&k=5&x_autolog_impressions=false", i))
		if d := time.Since(t0); d > budget {
			t.Errorf("request %d took %s with redis paused, budget %s", i, d, budget)
		}
		if r.code != 200 || r.Strat != ranking.StrategyCovisHybrid+"_pg_fallback" || r.Items[0] != "b" {
			t.Fatalf("redis paused, request %d: %+v", i, r)
		}
	}
	s.waitFor("redis again", 15*time.Second, func() bool {
		return s.get("user_id=me&session_id=x&k=5&x_autolog_impressions=false").Strat == ranking.StrategyCovisHybrid
	})
}
