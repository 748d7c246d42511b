package featurestore_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"recsys/pkg/featurestore"
	"recsys/pkg/featurestore/fstest"
	"recsys/pkg/testutil"
)

// A repopulation of the served copy (same generation: here a restart changed the run_id)
// while Redis refuses writes must leave the copy served. Redis refusing every write (out of
// memory, a read-only replica) refuses the lock, so nothing starts; Redis at the edge of
// maxmemory (small writes pass, the copy's pages do not) took the lock and the marker's
// deletion, then refused the copy: /reco served everyone from PostgreSQL, at every heal pass,
// until memory freed up. Once Redis takes writes the copy is completed.
func TestRepopulationRefusedByRedisKeepsTheCopyServed(t *testing.T) {
	for _, tc := range []struct {
		name    string
		degrade func(used int64) []string
		restore []string
	}{
		{"out of memory", func(int64) []string { return []string{"CONFIG", "SET", "maxmemory", "1"} },
			[]string{"CONFIG", "SET", "maxmemory", "0"}},
		{"at the edge of maxmemory", func(used int64) []string {
			return []string{"CONFIG", "SET", "maxmemory", strconv.FormatInt(used+2<<20, 10)}
		}, []string{"CONFIG", "SET", "maxmemory", "0"}},
		{"read-only replica", func(int64) []string { return []string{"REPLICAOF", "127.0.0.1", "1"} },
			[]string{"REPLICAOF", "NO", "ONE"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			pool := testutil.Pool(t, testutil.MigratedDatabase(t))
			srv := testutil.StartPrivate(t, "redis")
			rd := redisClient(t, srv.URL)
			admin := testutil.RedisClient(t, srv.URL)
			prefix := testutil.Unique("rf") + ":"
			keys := featurestore.NewKeys(prefix)
			st := featurestore.New(pool, rd, prefix, testConfig(), nil)
			evs := toEvents(fstest.Generate(fstest.GenConfig{Seed: 5, Users: 20, Items: 30, Events: 600,
				StartMs: time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC).UnixMilli(), StepMs: 10_000, Prefix: "rf", ImpressionShare: 0.3}))
			if _, err := st.Apply(ctx, &featurestore.Batch{Events: evs}); err != nil {
				t.Fatal(err)
			}
			if err := st.Repopulate(ctx, false); err != nil {
				t.Fatal(err)
			}
			// Users whose writes Redis missed: megabytes the repopulation has to add.
			if _, err := pool.Exec(ctx, `INSERT INTO feature_users (user_id, watched, version)
SELECT 'big' || lpad(u::text, 5, '0'),
       (SELECT json_object_agg('item-' || lpad(i::text, 6, '0'), 1740787200000 + i) FROM generate_series(1, 500) i), 1
FROM generate_series(1, 3000) u`); err != nil {
				t.Fatal(err)
			}
			do := func(args ...string) {
				t.Helper()
				if err := admin.Do(ctx, admin.B().Arbitrary(args...).Build()).Error(); err != nil {
					t.Fatalf("redis %v: %v", args, err)
				}
			}
			exists := func(key string) bool {
				t.Helper()
				n, err := admin.Do(ctx, admin.B().Exists().Key(key).Build()).AsInt64()
				if err != nil {
					t.Fatal(err)
				}
				return n == 1
			}
			do("SET", keys.RunID, "a-redis-before-the-restart")
			do("CONFIG", "SET", "maxmemory-policy", "noeviction")
			info, err := admin.Do(ctx, admin.B().Info().Section("memory").Build()).ToString()
			if err != nil {
				t.Fatal(err)
			}
			var used int64
			for l := range strings.Lines(info) {
				if v, ok := strings.CutPrefix(l, "used_memory:"); ok {
					used, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				}
			}
			do(tc.degrade(used)...)

			for pass := range 3 { // as the heal loop, once per interval
				ready, err := st.RedisReady(ctx)
				if err != nil || ready {
					t.Fatalf("pass %d: copy ready %v (%v), want not ready: run_id changed", pass, ready, err)
				}
				if err := st.Repopulate(ctx, false); !featurestore.RefusesWrites(err) {
					t.Fatalf("pass %d: repopulate: %v, want redis refusing writes", pass, err)
				}
				if !exists(keys.Ready) {
					t.Fatalf("pass %d: ready marker gone: /reco serves everyone from postgres", pass)
				}
			}

			do(tc.restore...)
			if err := st.Repopulate(ctx, false); err != nil {
				t.Fatalf("repopulate once redis takes writes: %v", err)
			}
			if ready, err := st.RedisReady(ctx); err != nil || !ready {
				t.Fatalf("copy ready %v (%v) after the repopulation", ready, err)
			}
			if !exists(keys.User("big03000")) {
				t.Fatal("the users redis missed are not in the copy")
			}
		})
	}
}
