package featurestore_test

import (
	"context"
	"testing"
	"time"

	"recsys/pkg/featurestore"
	"recsys/pkg/featurestore/fstest"
	"recsys/pkg/testutil"
)

// The heal loop must not rewrite the batches whose Redis write its own store has in flight
// (it did, on a loaded machine, for every batch), must delete the rows of completed writes
// when no further batch comes to do it, and must still heal rows another process left.
func TestHealPendingSkipsOwnWrites(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	prefix := testutil.Unique("hp") + ":"
	t.Cleanup(func() { deleteKeys(t, rd, prefix) })
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	evs := toEvents(fstest.Generate(fstest.GenConfig{Seed: 5, Users: 10, Items: 20, Events: 60, StartMs: start, StepMs: 1000, Prefix: "h"}))
	st := featurestore.New(pool, rd, prefix, testConfig(), nil)
	other := featurestore.New(pool, rd, prefix, testConfig(), nil) // another consumer process
	journal := func() int {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM feature_redis_pending`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if _, err := st.Apply(ctx, &featurestore.Batch{Events: evs[:20]}); err != nil {
		t.Fatal(err)
	}
	if err := st.Repopulate(ctx, false); err != nil {
		t.Fatal(err)
	}

	a, err := st.Apply(ctx, &featurestore.Batch{Events: evs[20:40]})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := st.HealPending(ctx, 0, 10); err != nil || n != 0 || journal() != 1 {
		t.Fatalf("heal with the write in flight: healed %d (%v), %d journal rows; want 0, 1", n, err, journal())
	}
	if err := st.WriteRedis(ctx, a); err != nil {
		t.Fatal(err)
	}
	if n, err := st.HealPending(ctx, 0, 10); err != nil || n != 0 || journal() != 0 {
		t.Fatalf("heal after the write: healed %d (%v), %d journal rows; want 0, 0", n, err, journal())
	}

	// A batch whose writer never writes Redis (a crash): another process heals it.
	if _, err := st.Apply(ctx, &featurestore.Batch{Events: evs[40:]}); err != nil {
		t.Fatal(err)
	}
	if n, err := other.HealPending(ctx, 0, 10); err != nil || n != 1 || journal() != 0 {
		t.Fatalf("heal by another process: healed %d (%v), %d journal rows; want 1, 0", n, err, journal())
	}
}
