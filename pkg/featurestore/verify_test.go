package featurestore_test

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"recsys/pkg/featurestore"
	"recsys/pkg/featurestore/fstest"
	"recsys/pkg/testutil"
)

// Verify finds a copy built by the stream equal to PostgreSQL, then every kind of damage done
// to it behind the writers' back: a neighbour added to a list, a list's version moved, an item
// statistic changed, an item hash gone, a user document changed, a user hash gone. A copy
// being repopulated is reported as such.
func TestVerify(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig()
	cfg.CovisWindow, cfg.NeighboursPerItem = 6, 3
	pool, rd := servers(t)
	st := featurestore.New(pool, rd, "ver:", cfg, nil)
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	streamGenerated(t, st, fstest.GenConfig{Seed: 9, Users: 10, Items: 30, Events: 1500, StartMs: start, StepMs: 20_000,
		Prefix: "v", ImpressionShare: 0.5})
	opts := featurestore.VerifyOptions{Sample: 1000, Grace: 10 * time.Millisecond}
	rep, err := st.Verify(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.Users != 10 || rep.Items != 30 || rep.Lists < 20 {
		t.Fatalf("the streamed copy: %+v", rep)
	}

	var user, item, other string
	if err := pool.QueryRow(ctx, `SELECT min(user_id) FROM feature_users`).Scan(&user); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `SELECT min(item_id), max(item_id) FROM feature_neighbours WHERE length(neighbours) > 0`).Scan(&item, &other); err != nil {
		t.Fatal(err)
	}
	var gone string
	if err := pool.QueryRow(ctx, `SELECT max(user_id) FROM feature_users`).Scan(&gone); err != nil {
		t.Fatal(err)
	}
	keys := featurestore.NewKeys("ver:")
	for _, c := range rd.DoMulti(ctx,
		rd.B().Zadd().Key(keys.Neighbours(item)).ScoreMember().ScoreMember(0.001, "intruder").Build(),
		rd.B().Hincrby().Key(keys.Item(other)).Field("nv").Increment(1).Build(),
		rd.B().Hset().Key(keys.User(user)).FieldValue().FieldValue("h", "[]").Build(),
		rd.B().Del().Key(keys.User(gone)).Build(),
	) {
		if err := c.Error(); err != nil {
			t.Fatal(err)
		}
	}
	rep, err = st.Verify(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, m := range rep.Mismatches {
		got[m.Key] = m.Detail
	}
	want := map[string]string{
		keys.Neighbours(item):  "only in redis: intruder",
		keys.Neighbours(other): "version: redis",
		keys.User(user):        "h: redis \"[]\"",
		keys.User(gone):        "absent",
	}
	for k, frag := range want {
		if !strings.Contains(got[k], frag) {
			t.Errorf("%s: %q, want it to say %q", k, got[k], frag)
		}
	}
	if rep.OK() || rep.MismatchCount != len(want) {
		t.Errorf("%d mismatches %v, want %d", rep.MismatchCount, slices.Sorted(maps.Keys(got)), len(want))
	}

	// An item statistic lowered (a value the max merge would never write) and an item hash gone.
	var a, b string
	if err := pool.QueryRow(ctx, `SELECT min(item_id), max(item_id) FROM feature_items i
WHERE impressions > 0 AND EXISTS (SELECT FROM feature_neighbours n WHERE n.item_id = i.item_id AND length(n.neighbours) > 0)`).Scan(&a, &b); err != nil {
		t.Fatal(err)
	}
	if err := st.Repopulate(ctx, true); err != nil { // repairs the damage above
		t.Fatal(err)
	}
	for _, c := range rd.DoMulti(ctx,
		rd.B().Hset().Key(keys.Item(a)).FieldValue().FieldValue("imp", "0").Build(),
		rd.B().Del().Key(keys.Item(b)).Build(),
	) {
		if err := c.Error(); err != nil {
			t.Fatal(err)
		}
	}
	if rep, err = st.Verify(ctx, opts); err != nil {
		t.Fatal(err)
	}
	// The gone hash held its list's version too.
	got = map[string]string{}
	for _, m := range rep.Mismatches {
		got[m.Key] = m.Detail
	}
	want = map[string]string{keys.Item(a): `imp: redis "0", postgres`, keys.Item(b): `fs: redis "", postgres`, keys.Neighbours(b): "version: redis 0"}
	for k, frag := range want {
		if !strings.Contains(got[k], frag) {
			t.Errorf("%s: %q, want it to say %q", k, got[k], frag)
		}
	}
	if rep.MismatchCount != len(want) {
		t.Errorf("%d mismatches %v, want %d", rep.MismatchCount, slices.Sorted(maps.Keys(got)), len(want))
	}

	if err := rd.Do(ctx, rd.B().Del().Key(keys.Ready).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if rep, err = st.Verify(ctx, opts); err != nil {
		t.Fatal(err)
	}
	if rep.Ready || rep.OK() || rep.Users != 0 {
		t.Errorf("a copy being repopulated: %+v", rep)
	}
}

// While batches keep committing, and each batch's Redis write lags its commit, Verify finds no
// difference: a key read before its write landed is read again after the grace period and
// only has to be at least as new as PostgreSQL was at the first read.
func TestVerifyWhileWriting(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig()
	pool, rd := servers(t)
	st := featurestore.New(pool, rd, "verw:", cfg, nil)
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	evs := toEvents(fstest.Generate(fstest.GenConfig{Seed: 11, Users: 5, Items: 10, Events: 6000, StartMs: start, StepMs: 1_000,
		Prefix: "w", ImpressionShare: 0.5}))
	apply := func(b []featurestore.Event) *featurestore.Applied {
		a, err := st.Apply(ctx, &featurestore.Batch{Events: b})
		if err != nil {
			t.Error(err)
		}
		return a
	}
	writeCopy(t, st, apply(evs[:100]))
	done, stop := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() { close(stop); <-done }) // before the servers' cleanups
	go func() {
		defer close(done)
		for i := 100; i < len(evs); i += 20 {
			select {
			case <-stop:
				return
			default:
			}
			a := apply(evs[i:min(i+20, len(evs))])
			time.Sleep(15 * time.Millisecond) // the write lags the commit
			if err := st.WriteRedis(ctx, a); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	checks, retried := 0, 0
	for {
		select {
		case <-done:
			if checks < 3 || retried == 0 {
				t.Fatalf("%d checks while writing, %d of them with a second read: the test did not race the writes", checks, retried)
			}
			t.Logf("%d checks while writing, %d of them with a second read", checks, retried)
			return
		default:
		}
		t0 := time.Now()
		rep, err := st.Verify(ctx, featurestore.VerifyOptions{Sample: 100, Grace: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if !rep.OK() {
			t.Fatalf("check %d while writing: %+v", checks, rep)
		}
		if time.Since(t0) > 50*time.Millisecond {
			retried++ // some key was read before its write landed
		}
		checks++
	}
}

// Verify compares what every /reco reads besides users, items and neighbour lists: the decay
// landmarks and half-lives in meta, and the global lists (trending, popular, fresh) against
// PostgreSQL's top of each (all but the last of the top, which ties may replace). A list
// emptied, a member's value changed, a landmark moved, then a member cut that belongs and an
// intruder below the cut are each reported.
func TestVerifyComparesGlobalListsAndMeta(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig()
	cfg.TopListSize, cfg.FreshSize = 10, 8 // fewer than the items: the lists are cut
	pool, rd := servers(t)
	st := featurestore.New(pool, rd, "vgl:", cfg, nil)
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	streamGenerated(t, st, fstest.GenConfig{Seed: 13, Users: 10, Items: 30, Events: 800, StartMs: start, StepMs: 20_000,
		Prefix: "g", ImpressionShare: 0.3})
	opts := featurestore.VerifyOptions{Sample: 1000, Grace: 10 * time.Millisecond}
	if rep, err := st.Verify(ctx, opts); err != nil || !rep.OK() {
		t.Fatalf("the streamed copy: %+v %v", rep, err)
	}
	keys := featurestore.NewKeys("vgl:")
	top := func(key string) []string {
		t.Helper()
		ids, err := rd.Do(ctx, rd.B().Zrange().Key(key).Min("+inf").Max("-inf").Byscore().Rev().Build()).AsStrSlice()
		if err != nil || len(ids) < 3 {
			t.Fatalf("%s: %v %v", key, ids, err)
		}
		return ids
	}
	long := top(keys.PopLong)
	damage := []struct {
		name string
		cmd  rueidis.Completed
		key  string
		says string
	}{
		{"trending emptied", rd.B().Del().Key(keys.PopShort).Build(), keys.PopShort, "only in postgres (9)"},
		{"fresh emptied", rd.B().Del().Key(keys.Fresh).Build(), keys.Fresh, "only in postgres (7)"},
		{"popular member changed", rd.B().Zadd().Key(keys.PopLong).ScoreMember().ScoreMember(1e9, long[2]).Build(), keys.PopLong, "value (1): " + long[2]},
		{"landmark moved", rd.B().Hset().Key(keys.Meta).FieldValue().FieldValue("lm:l", "1").Build(), keys.Meta, `lm:l: redis "1"`},
	}
	for _, d := range damage {
		if err := rd.Do(ctx, d.cmd).Error(); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := st.Verify(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, m := range rep.Mismatches {
		got[m.Key] = m.Detail
	}
	for _, d := range damage {
		if !strings.Contains(got[d.key], d.says) {
			t.Errorf("%s: %s reported as %q, want it to say %q", d.name, d.key, got[d.key], d.says)
		}
	}
	if rep.OK() || rep.MismatchCount != len(damage) {
		t.Errorf("%d mismatches %v, want %d", rep.MismatchCount, slices.Sorted(maps.Keys(got)), len(damage))
	}

	// A member cut that belongs, and an intruder below the cut.
	if err := st.Repopulate(ctx, true); err != nil {
		t.Fatal(err)
	}
	if rep, err := st.Verify(ctx, opts); err != nil || !rep.OK() {
		t.Fatalf("after a rebuild: %+v %v", rep, err)
	}
	long = top(keys.PopLong)
	var outside string
	if err := pool.QueryRow(ctx, `SELECT item_id FROM feature_items WHERE pop_long > 0 ORDER BY pop_long, item_id LIMIT 1`).Scan(&outside); err != nil {
		t.Fatal(err)
	}
	var v float64
	if err := pool.QueryRow(ctx, `SELECT pop_long FROM feature_items WHERE item_id = $1`, outside).Scan(&v); err != nil {
		t.Fatal(err)
	}
	for _, c := range rd.DoMulti(ctx,
		rd.B().Zrem().Key(keys.PopLong).Member(long[0]).Build(),
		rd.B().Zadd().Key(keys.PopLong).ScoreMember().ScoreMember(v, outside).Build()) {
		if err := c.Error(); err != nil {
			t.Fatal(err)
		}
	}
	if rep, err = st.Verify(ctx, opts); err != nil {
		t.Fatal(err)
	}
	if rep.MismatchCount != 1 || !strings.Contains(rep.Mismatches[0].Detail, "only in redis (1): "+outside) ||
		!strings.Contains(rep.Mismatches[0].Detail, "only in postgres (1): "+long[0]) {
		t.Errorf("a member cut and an intruder: %+v", rep.Mismatches)
	}
}

// streamGenerated applies the generated events in batches of 50, writing each batch's Redis
// copy as the consumer does.
func streamGenerated(t *testing.T, st *featurestore.Store, g fstest.GenConfig) {
	t.Helper()
	evs := toEvents(fstest.Generate(g))
	for i := 0; i < len(evs); i += 50 {
		a, err := st.Apply(context.Background(), &featurestore.Batch{Events: evs[i:min(i+50, len(evs))]})
		if err != nil {
			t.Fatal(err)
		}
		writeCopy(t, st, a)
	}
}

// A user hash in the copy whose user PostgreSQL does not hold (an erased user's hash that a
// Redis failover brought back after both of the erasure's deletions) is a mismatch: the
// sample drawn from PostgreSQL cannot see it, so the copy's own user hashes are looked at.
func TestVerifyFindsUsersOnlyTheCopyHolds(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	st := featurestore.New(pool, rd, "vs:", testConfig(), nil)
	streamGenerated(t, st, fstest.GenConfig{Seed: 3, Users: 5, Items: 10, Events: 200,
		StartMs: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli(), StepMs: 20_000, Prefix: "s"})
	opts := featurestore.VerifyOptions{Sample: 1000, Grace: 10 * time.Millisecond}
	if rep, err := st.Verify(ctx, opts); err != nil || !rep.OK() {
		t.Fatalf("the streamed copy: %+v, %v", rep, err)
	}
	ghost := featurestore.NewKeys("vs:").User("erased-user")
	if err := rd.Do(ctx, rd.B().Hset().Key(ghost).FieldValue().FieldValue("v", "3").FieldValue("h", "[]").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	rep, err := st.Verify(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() || rep.MismatchCount != 1 || rep.Mismatches[0].Key != ghost || !strings.Contains(rep.Mismatches[0].Detail, "PostgreSQL does not") {
		t.Errorf("verify with a user only the copy holds: %+v, want that one mismatch", rep)
	}
}

// Drawing the sample reads the whole of feature_users and feature_items (ORDER BY random()):
// on a real deployment's millions of users that outlasts the sessions' statement_timeout
// (--pg.statement-timeout, 5 s), and verify failed on the copies it is for. A slow random()
// (the session's search_path puts public first) stands for the long scan.
func TestVerifySampleOutlastsTheStatementTimeout(t *testing.T) {
	ctx := context.Background()
	dsn := testutil.MigratedDatabase(t)
	pool := testutil.Pool(t, dsn+"&statement_timeout=300&search_path=public,pg_catalog")
	rd := redisClient(t, testutil.StartPrivate(t, "redis").URL)
	st := featurestore.New(pool, rd, testutil.Unique("vs")+":", testConfig(), nil)
	streamGenerated(t, st, fstest.GenConfig{Seed: 3, Users: 3, Items: 5, Events: 40, StartMs: time.Now().Add(-time.Hour).UnixMilli(),
		StepMs: 1000, Prefix: "vs"})
	if _, err := pool.Exec(ctx, `CREATE FUNCTION public.random() RETURNS double precision LANGUAGE sql VOLATILE
AS 'SELECT 0.5 FROM pg_sleep(0.2)'`); err != nil {
		t.Fatal(err)
	}
	rep, err := st.Verify(ctx, featurestore.VerifyOptions{Sample: 10, Grace: 10 * time.Millisecond})
	if err != nil {
		t.Fatalf("verify with a sample longer than the statement timeout: %v", err)
	}
	if !rep.OK() || rep.Users != 3 || rep.Items != 5 {
		t.Errorf("report %+v, want 3 users and 5 items compared, all equal", rep)
	}
}
