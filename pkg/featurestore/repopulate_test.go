package featurestore_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"recsys/pkg/featurestore"
	"recsys/pkg/featurestore/fstest"
	"recsys/pkg/testutil"
)

// Repopulating thousands of users with large documents (500 watched items each) used to send
// them in round trips of megabytes and hit the 1 s Redis timeout; it must complete and copy
// every user.
func TestRepopulateLargeUsers(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	prefix := testutil.Unique("rp") + ":"
	t.Cleanup(func() { deleteKeys(t, rd, prefix) })
	const users = 5000
	now := time.Now().UnixMilli()
	if _, err := pool.Exec(ctx, `INSERT INTO feature_meta (lm_short_ms, lm_long_ms, lm_covis_ms, hl_short_ms, hl_long_ms, hl_covis_ms)
VALUES ($1, $1, $1, 1e7, 1e8, 1e9)`, now); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO feature_users (user_id, watched, version)
SELECT 'u' || lpad(u::text, 5, '0'),
       (SELECT json_object_agg('item-' || lpad(i::text, 6, '0'), $1::bigint + i) FROM generate_series(1, 500) i),
       u
FROM generate_series(1, $2) u`, now, users); err != nil {
		t.Fatal(err)
	}
	st := featurestore.New(pool, rd, prefix, testConfig(), nil)
	if err := st.Repopulate(ctx, false); err != nil {
		t.Fatalf("repopulate: %v", err)
	}
	ready, err := st.RedisReady(ctx)
	if err != nil || !ready {
		t.Fatalf("ready after repopulation: %v, %v", ready, err)
	}
	var want string
	if err := pool.QueryRow(ctx, `SELECT watched FROM feature_users WHERE user_id = 'u04321'`).Scan(&want); err != nil {
		t.Fatal(err)
	}
	got, err := rd.Do(ctx, rd.B().Hget().Key(prefix+"u:u04321").Field("w").Build()).ToString()
	if err != nil || got != want {
		t.Fatalf("user u04321 watched in redis: %d bytes (%v), want %d bytes", len(got), err, len(want))
	}
	n := 0
	var cursor uint64
	for {
		e, err := rd.Do(ctx, rd.B().Scan().Cursor(cursor).Match(prefix+"u:*").Count(1000).Build()).AsScanEntry()
		if err != nil {
			t.Fatal(err)
		}
		n += len(e.Elements)
		if cursor = e.Cursor; cursor == 0 {
			break
		}
	}
	if n != users {
		t.Fatalf("%d user hashes in redis, want %d", n, users)
	}
}

// A repopulation that replaces the copy (`features rebuild`, or the first events creating the
// generation of a fresh deployment) deletes the old keys while consumers keep writing. A
// neighbour list and its version live in two keys (the sorted set, and "nv" in the item's
// hash): when the deletion took the list but not yet its version, the next batch's change
// applied onto a list that had lost its members, and the copy kept that list short of
// PostgreSQL's at the same version (the stack check's `features verify` found it in 3 of 4
// runs). Batches write all along here, while filler keys make the deletion slow; the copy
// must then equal PostgreSQL, list for list.
func TestRepopulationWhileWritingKeepsListsExact(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig()
	cfg.CovisWindow, cfg.NeighboursPerItem = 6, 3
	pool, rd := servers(t)
	prefix := testutil.Unique("rpw") + ":"
	t.Cleanup(func() { deleteKeys(t, rd, prefix) })
	st := featurestore.New(pool, rd, prefix, cfg, nil)
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	evs := toEvents(fstest.Generate(fstest.GenConfig{Seed: 21, Users: 40, Items: 25, Events: 12000, StartMs: start, StepMs: 5_000,
		Prefix: "rw", ImpressionShare: 0.2}))
	next := 0
	apply := func(n int) error {
		a, err := st.Apply(ctx, &featurestore.Batch{Events: evs[next:min(next+n, len(evs))]})
		if err != nil {
			return err
		}
		next += n
		// As the consumer: a write the copy refuses stays in the journal for the healer.
		if err := st.WriteRedis(ctx, a); err != nil && !errors.Is(err, featurestore.ErrRedisBehind) {
			return err
		}
		return nil
	}
	if err := apply(500); err != nil {
		t.Fatal(err)
	}
	if err := st.Repopulate(ctx, false); err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 4 && next < len(evs); round++ {
		filler := make([]string, 0, 2*20000)
		for i := range 20000 {
			filler = append(filler, fmt.Sprintf("%sfiller:%d", prefix, i), "x")
		}
		for i := 0; i < len(filler); i += 2000 {
			cmd := rd.B().Mset().KeyValue().KeyValue(filler[i], filler[i+1])
			for j := i + 2; j < min(i+2000, len(filler)); j += 2 {
				cmd = cmd.KeyValue(filler[j], filler[j+1])
			}
			if err := rd.Do(ctx, cmd.Build()).Error(); err != nil {
				t.Fatal(err)
			}
		}
		done := make(chan error, 1)
		go func() { done <- st.Repopulate(ctx, true) }()
		writes := 0
		for repopulating := true; repopulating && next < len(evs); writes++ {
			if err := apply(20); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
				repopulating = false
			default:
			}
		}
		if next >= len(evs) {
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		}
		if _, err := st.HealPending(ctx, 0, 1000); err != nil {
			t.Fatal(err)
		}
		rep, err := st.Verify(ctx, featurestore.VerifyOptions{Sample: 1000, Grace: 10 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: %d batches written during the repopulation; %d lists checked, %d differ", round, writes, rep.Lists, rep.MismatchCount)
		if !rep.OK() {
			t.Fatalf("round %d: the copy differs from postgres: %+v", round, rep.Mismatches)
		}
	}
}
