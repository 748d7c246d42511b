package consumer_test

import (
	"context"
	"testing"
	"time"

	"recsys/pkg/testutil"
)

// Redis degraded rather than down: writes refused (out of memory under noeviction, a
// read-only replica after a failover) or stalled (CLIENT PAUSE). Valid events never go to the
// DLQ, PostgreSQL takes every event without waiting for Redis beyond its timeout, the journal
// keeps what Redis missed, and the copy heals once Redis takes writes again.
func TestRedisDegradedWritesGoToTheJournal(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name             string
		degrade, restore []string
		journal          bool // the second batch's writes surely fail (not merely wait)
	}{
		{"oom", []string{"CONFIG", "SET", "maxmemory", "1"}, []string{"CONFIG", "SET", "maxmemory", "0"}, true},
		// A demoted primary whose new primary is unreachable keeps its data and refuses writes.
		{"readonly", []string{"REPLICAOF", "127.0.0.1", "1"}, []string{"REPLICAOF", "NO", "ONE"}, true},
		// Longer than the batch may wait: the write times out (--redis.timeout) and the journal
		// takes it.
		{"paused", []string{"CLIENT", "PAUSE", "10000", "WRITE"}, []string{"CLIENT", "UNPAUSE"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.MaxBatch = 100
			ctx := context.Background()
			// Its own connection: the consumer's may be stuck behind paused writes.
			admin := testutil.RedisClient(t, e.RedisURL)
			do := func(args ...string) {
				t.Helper()
				if err := admin.Do(ctx, admin.B().Arbitrary(args...).Build()).Error(); err != nil {
					t.Fatalf("redis %v: %v", args, err)
				}
			}
			do("CONFIG", "SET", "maxmemory-policy", "noeviction")
			first, second := e.generate(21, 600), e.generate(22, 600)
			e.produce(t, first)
			c := e.startConsumer(t)
			e.waitApplied(t, len(first), 90*time.Second)
			users := usersOf(first)
			waitFor(t, "redis copy", 60*time.Second, func() bool { return e.redisMatchesPG(t, users, e.start, false) })

			do(tc.degrade...)
			t0 := time.Now()
			e.produce(t, second)
			e.waitApplied(t, len(first)+len(second), 60*time.Second)
			if d := time.Since(t0); d > 7*time.Second {
				t.Errorf("the batches took %s to reach postgresql while redis was %s", d, tc.name)
			}
			var pending, dlq int
			if err := e.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM feature_redis_pending), (SELECT count(*) FROM feature_dlq)`).Scan(&pending, &dlq); err != nil {
				t.Fatal(err)
			}
			if dlq != 0 {
				t.Errorf("%d valid events in the dlq", dlq)
			}
			if tc.journal && (pending == 0 || counter(c.set, "recsys_consumer_redis_write_failures_total") == 0) {
				t.Errorf("%d journal rows, %v write failures counted; want the refused writes in both", pending,
					counter(c.set, "recsys_consumer_redis_write_failures_total"))
			}

			do(tc.restore...)
			all := append(users, usersOf(second)...)
			waitFor(t, "redis copy healed", 60*time.Second, func() bool { return e.redisMatchesPG(t, all, e.start, false) })
			waitFor(t, "journal healed", 30*time.Second, func() bool {
				_ = e.pool.QueryRow(ctx, `SELECT count(*) FROM feature_redis_pending`).Scan(&pending)
				return pending <= 1
			})
			waitFor(t, "ready", 30*time.Second, func() bool { return c.mod.Ready(ctx) == nil })
		})
	}
}
