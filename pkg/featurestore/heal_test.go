package featurestore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"recsys/pkg/features"
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

// A Redis that comes back from a restart (or a failover) without its last acknowledged
// writes but with the ready marker (here: the keys as they were before the last write,
// restored as a persistence file or a lagging replica would hold them). Users and lists carry
// a version, but an item's next write sends only the fields it changed, so the fields the
// lost write had raised would stay behind PostgreSQL for good: the changed run_id makes the
// copy not ready, and the heal loop's repopulation brings it back.
func TestLostWritesOfARestartedRedisAreHealed(t *testing.T) {
	ctx := context.Background()
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	srv := testutil.StartPrivate(t, "redis")
	rd := redisClient(t, srv.URL)
	prefix := testutil.Unique("lw") + ":"
	st := featurestore.New(pool, rd, prefix, testConfig(), nil)
	ts := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	pct := 80.0
	watch := func(id, user string) featurestore.Event {
		return featurestore.Event{Interaction: features.Interaction{Kind: features.KindWatch, EventID: id, UserID: user, TsMs: ts,
			ItemID: "X", WatchTimeSec: 30, PercentWatched: &pct}}
	}
	apply := func(evs ...featurestore.Event) {
		t.Helper()
		a, err := st.Apply(ctx, &featurestore.Batch{Events: evs})
		if err != nil {
			t.Fatal(err)
		}
		if err := st.WriteRedis(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	ready := func(want bool) {
		t.Helper()
		if got, err := st.RedisReady(ctx); err != nil || got != want {
			t.Fatalf("redis ready %v (%v), want %v", got, err, want)
		}
	}
	if _, err := st.Apply(ctx, &featurestore.Batch{Events: []featurestore.Event{watch("event-0001", "u1")}}); err != nil {
		t.Fatal(err)
	}
	if err := st.Repopulate(ctx, false); err != nil {
		t.Fatal(err)
	}
	ready(true)
	// A copy completed by an earlier release (a marker without a run_id) is taken over, not
	// repopulated; the marker itself stays "1", which the API and earlier releases read.
	key := featurestore.NewKeys(prefix)
	if err := rd.Do(ctx, rd.B().Del().Key(key.RunID).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	ready(true)
	ready(true)
	if v, err := rd.Do(ctx, rd.B().Get().Key(key.Ready).Build()).ToString(); err != nil || v != "1" {
		t.Fatalf("ready marker %q (%v), want \"1\"", v, err)
	}
	if n, err := rd.Do(ctx, rd.B().Exists().Key(key.RunID).Build()).AsInt64(); err != nil || n != 1 {
		t.Fatalf("run_id recorded: %d (%v), want 1", n, err)
	}

	persisted := map[string]string{} // key -> DUMP
	keys, err := rd.Do(ctx, rd.B().Keys().Pattern(prefix+"*").Build()).AsStrSlice()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if persisted[k], err = rd.Do(ctx, rd.B().Dump().Key(k).Build()).ToString(); err != nil {
			t.Fatal(err)
		}
	}
	apply(watch("event-0002", "u2")) // acknowledged by Redis, then lost:
	srv.Stop()
	srv.Start()
	for deadline := time.Now().Add(10 * time.Second); rd.Do(ctx, rd.B().Ping().Build()).Error() != nil; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the restarted redis does not answer")
		}
	}
	for k, v := range persisted {
		if err := rd.Do(ctx, rd.B().Restore().Key(k).Ttl(0).SerializedValue(v).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	// The stream goes on: impressions of X.
	for i := range 3 {
		apply(featurestore.Event{Interaction: features.Interaction{Kind: features.KindImpression, EventID: fmt.Sprintf("imp-%04d", i),
			UserID: "u3", TsMs: ts + 60000 + int64(i), Items: []string{"X"}}})
	}
	// The consumer's heal loop: not ready, repopulate.
	ready(false)
	if err := st.Repopulate(ctx, false); err != nil {
		t.Fatal(err)
	}
	ready(true)
	if got, _ := rd.Do(ctx, rd.B().Hget().Key(key.Item("X")).Field("wat").Build()).ToString(); got != "2" {
		t.Errorf("redis item X watches %q, want 2", got)
	}
	if rep, err := st.Verify(ctx, featurestore.VerifyOptions{Sample: 100, Grace: 100 * time.Millisecond}); err != nil || !rep.OK() {
		t.Errorf("verify after healing: %+v (%v)", rep.Mismatches, err)
	}
}
