package featurestore_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"

	"recsys/pkg/features"
	"recsys/pkg/featurestore"
	"recsys/pkg/featurestore/fstest"
	"recsys/pkg/redis"
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
	if n := len(testutil.RedisKeys(t, rd, prefix+"u:*")); n != users {
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
			filler = append(filler, fmt.Sprintf("%snb:filler:%d", prefix, i), "x")
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

// repopulatedCopy is a store over a private Redis holding a complete copy (a forced rebuild)
// of a generated stream, with filler keys (neighbour lists of no item) that make the next
// deletion of the copy slow.
func repopulatedCopy(t *testing.T, name string, filler int) (*featurestore.Store, *pgxpool.Pool, rueidis.Client, featurestore.Keys) {
	t.Helper()
	ctx := context.Background()
	pool, rd := servers(t)
	prefix := testutil.Unique(name) + ":"
	st := featurestore.New(pool, rd, prefix, testConfig(), nil)
	evs := toEvents(fstest.Generate(fstest.GenConfig{Seed: 5, Users: 20, Items: 30, Events: 600,
		StartMs: time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC).UnixMilli(), StepMs: 10_000, Prefix: name, ImpressionShare: 0.3}))
	if _, err := st.Apply(ctx, &featurestore.Batch{Events: evs}); err != nil {
		t.Fatal(err)
	}
	if err := st.Repopulate(ctx, true); err != nil {
		t.Fatal(err)
	}
	for f := 0; f < filler; f += 2000 {
		cmd := rd.B().Mset().KeyValue()
		for i := f; i < min(f+2000, filler); i++ {
			cmd = cmd.KeyValue(fmt.Sprintf("%snb:filler:%d", prefix, i), "x")
		}
		if err := rd.Do(ctx, cmd.Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	return st, pool, rd, featurestore.NewKeys(prefix)
}

// TestRepopulationKeepsRateLimitCounts: a forced repopulation clears every feature key under
// the prefix, but not the API keys' shared rate counts kept there (pkg/httpx,
// --http.rate-limit-scope=cluster): a rebuild must not give every limited key a fresh burst.
func TestRepopulationKeepsRateLimitCounts(t *testing.T) {
	ctx := context.Background()
	st, _, rd, keys := repopulatedCopy(t, "rprl", 10)
	count := keys.Prefix + redis.RateLimitKeys + "app:5"
	if err := rd.Do(ctx, rd.B().Set().Key(count).Value("1733000000000000").Px(time.Minute).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := st.Repopulate(ctx, true); err != nil {
		t.Fatal(err)
	}
	if v, err := rd.Do(ctx, rd.B().Get().Key(count).Build()).ToString(); err != nil || v != "1733000000000000" {
		t.Errorf("the rate count after a forced repopulation: %q, %v; want it kept", v, err)
	}
	// The deletion did run: the copy's stray keys are gone.
	if n, err := rd.Do(ctx, rd.B().Exists().Key(keys.Prefix+"nb:filler:0").Build()).AsInt64(); err != nil || n != 0 {
		t.Errorf("a stray key under the prefix survived the repopulation: exists %d, %v", n, err)
	}
}

// waitClearing waits until a repopulation deletes the copy (meta ep "clearing").
func waitClearing(t *testing.T, rd rueidis.Client, keys featurestore.Keys) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !clearing(t, rd, keys); {
		if time.Now().After(deadline) {
			t.Fatal("the copy was never being deleted")
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func clearing(t *testing.T, rd rueidis.Client, keys featurestore.Keys) bool {
	t.Helper()
	ep, err := rd.Do(context.Background(), rd.B().Hget().Key(keys.Meta).Field("ep").Build()).ToString()
	if err != nil && !rueidis.IsRedisNil(err) {
		t.Fatal(err)
	}
	return ep == "clearing"
}

func pttl(t *testing.T, rd rueidis.Client, key string) time.Duration {
	t.Helper()
	ms, err := rd.Do(context.Background(), rd.B().Pttl().Key(key).Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	return time.Duration(ms) * time.Millisecond
}

// The deletion of the old copy (a SCAN of the whole database: over 15 s with millions of
// keys) renews the repopulation lock at every page. It used not to: the lock expired, and a
// consumer's heal loop started a second repopulation whose copy the first one's deletion
// then ate into. Here the lock must stay near its full TTL while the deletion runs, and a
// second repopulation is refused.
func TestRepopulationLockIsRenewedWhileDeleting(t *testing.T) {
	ctx := context.Background()
	st, _, rd, keys := repopulatedCopy(t, "rplk", 300_000)
	done := make(chan error, 1)
	go func() { done <- st.Repopulate(ctx, true) }()
	waitClearing(t, rd, keys)
	start := time.Now()
	var lowest time.Duration = time.Hour
	for clearing(t, rd, keys) {
		if d := pttl(t, rd, keys.Lock); d < lowest && time.Since(start) > 100*time.Millisecond {
			lowest = d
		}
		time.Sleep(20 * time.Millisecond)
	}
	deleting := time.Since(start)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Logf("deletion took %v; lowest lock TTL after 100 ms: %v", deleting, lowest)
	if deleting < 300*time.Millisecond {
		t.Fatalf("the deletion took %v: too fast to tell (more filler keys)", deleting)
	}
	if lowest < 15*time.Second-150*time.Millisecond {
		t.Errorf("the lock's TTL fell to %v during the deletion: it is not renewed", lowest)
	}
}

// A repopulation whose lock is no longer its own (it expired and another process took it)
// stops before its next change to the copy: its deletion goes no further, it does not mark
// the copy ready, and it does not release the other's lock.
func TestRepopulationStopsWhenItsLockIsTaken(t *testing.T) {
	ctx := context.Background()
	st, _, rd, keys := repopulatedCopy(t, "rpll", 200_000)
	done := make(chan error, 1)
	go func() { done <- st.Repopulate(ctx, true) }()
	waitClearing(t, rd, keys)
	if err := rd.Do(ctx, rd.B().Set().Key(keys.Lock).Value("process-B").Px(15*time.Second).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	err := <-done
	if !errors.Is(err, featurestore.ErrRepopulationLockLost) {
		t.Fatalf("repopulation whose lock was taken: %v, want ErrRepopulationLockLost", err)
	}
	holder, herr := rd.Do(ctx, rd.B().Get().Key(keys.Lock).Build()).ToString()
	left, ferr := rd.Do(ctx, rd.B().Keys().Pattern(keys.Prefix+"nb:filler:*").Build()).AsStrSlice()
	ready, rerr := rd.Do(ctx, rd.B().Exists().Key(keys.Ready).Build()).AsInt64()
	if herr != nil || ferr != nil || rerr != nil {
		t.Fatal(herr, ferr, rerr)
	}
	t.Logf("%v; lock %q, %d filler keys left, ready %d", err, holder, len(left), ready)
	if holder != "process-B" {
		t.Errorf("the lock of the other process became %q", holder)
	}
	if len(left) == 0 {
		t.Errorf("the deletion went on after the lock was taken")
	}
	if ready != 0 {
		t.Errorf("the copy was marked ready")
	}
}

// A repopulation that stalls while reading a page, long enough to lose its lock, must not
// write that page: what changed since its snapshot (a user erased by `users forget`, whose
// second pass waits only while the lock is held) would come back into the copy. The stall is
// a table lock held by the test while it takes the Redis lock away.
func TestRepopulationDoesNotWriteAPageReadAfterItsLockWasLost(t *testing.T) {
	ctx := context.Background()
	st, pool, rd, keys := repopulatedCopy(t, "rplp", 0)
	tx := otherTx(t, pool, `LOCK TABLE feature_users IN ACCESS EXCLUSIVE MODE`)
	done := make(chan error, 1)
	go func() { done <- st.Repopulate(ctx, true) }()
	waitForLockWait(t, pool, "feature_users")
	if err := rd.Do(ctx, rd.B().Set().Key(keys.Lock).Value("process-B").Px(15*time.Second).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, featurestore.ErrRepopulationLockLost) {
		t.Fatalf("repopulation whose lock was taken during a page read: %v, want ErrRepopulationLockLost", err)
	}
	users, err := rd.Do(ctx, rd.B().Keys().Pattern(keys.Prefix+"u:*").Build()).AsStrSlice()
	if err != nil {
		t.Fatal(err)
	}
	if len(users) > 0 {
		t.Errorf("the page read after the lock was lost was written: %d user hashes in the copy", len(users))
	}
}

// A forced rebuild waits for the exclusive meta lock (up to 30 s, behind long batches) while
// holding the repopulation lock: it renews it meanwhile, so no second repopulation starts.
func TestRepopulationLockIsRenewedWhileWaitingForMeta(t *testing.T) {
	ctx := context.Background()
	st, pool, rd, keys := repopulatedCopy(t, "rplm", 0)
	tx := otherTx(t, pool, `SELECT pg_advisory_xact_lock($1)`, featurestore.MetaLockKey)
	done := make(chan error, 1)
	go func() { done <- st.Repopulate(ctx, true) }()
	waitForLockWait(t, pool, "the meta lock")
	time.Sleep(2500 * time.Millisecond)
	left := pttl(t, rd, keys.Lock)
	second := st.Repopulate(ctx, false)
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Logf("lock TTL after 2.5 s of waiting: %v; a second repopulation: %v", left, second)
	if left < 13*time.Second {
		t.Errorf("the lock's TTL fell to %v while waiting for the meta lock: it is not renewed", left)
	}
	if !errors.Is(second, featurestore.ErrRepopulating) {
		t.Errorf("a second repopulation while the first waits: %v, want ErrRepopulating", second)
	}
}

// Two repopulations at once (a lock lost, or an operator's DEL) leave a copy that a deletion
// ran on after it was complete: lists and hashes gone while the item hashes keep their
// neighbour lists' versions and their popularity. The next repopulation at the same
// generation (it merges, it does not delete) must bring the copy back whole: neighbour lists
// whose version the item hash kept, and the top and fresh lists whose items kept their
// values.
func TestSameGenerationRepopulationRestoresDeletedLists(t *testing.T) {
	ctx := context.Background()
	st, _, rd, keys := repopulatedCopy(t, "rpsg", 0)
	want := dumpCopy(t, rd, keys.Prefix)
	var del []string
	for k := range want {
		if strings.HasPrefix(k, "nb:") || k == "pop:s" || k == "pop:l" || k == "fresh" {
			del = append(del, keys.Prefix+k)
		}
	}
	if len(del) < 10 {
		t.Fatalf("only %d lists in the copy", len(del))
	}
	del = append(del, keys.Ready)
	if err := rd.Do(ctx, rd.B().Unlink().Key(del...).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := st.Repopulate(ctx, false); err != nil {
		t.Fatal(err)
	}
	got := dumpCopy(t, rd, keys.Prefix)
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if got[k] != want[k] {
			t.Errorf("%s after the repopulation: %.80q, want %.80q", k, got[k], want[k])
		}
	}
	rep, err := st.Verify(ctx, featurestore.VerifyOptions{Sample: 1000, Grace: 10 * time.Millisecond})
	if err != nil || !rep.OK() {
		t.Errorf("verify: %+v %v", rep, err)
	}
}

// A failover to a replica that missed `users forget`'s deletions brings erased users' hashes
// back, and a repopulation of the same generation merges into what it finds: it must delete
// them again, but keep the hash of an erased user who came back (a row in PostgreSQL again).
func TestSameGenerationRepopulationDropsErasedUsers(t *testing.T) {
	ctx := context.Background()
	st, pool, rd, keys := repopulatedCopy(t, "rper", 0)
	rows, _ := pool.Query(ctx, `SELECT user_id FROM feature_users ORDER BY user_id LIMIT 3`)
	users, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(users) != 3 {
		t.Fatalf("users %v, %v", users, err)
	}
	gone, back, kept := users[0], users[1], users[2]
	saved, err := rd.Do(ctx, rd.B().Hgetall().Key(keys.User(gone)).Build()).AsStrMap()
	if err != nil || len(saved) == 0 {
		t.Fatalf("hash of %s: %v %v", gone, saved, err)
	}
	if _, err := st.Forget(ctx, []string{gone}, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	// back was erased long ago and has watched since: its row is there again.
	if _, err := pool.Exec(ctx, `INSERT INTO forgotten_users (user_id, forgotten_at_ms) VALUES ($1, 1)`, back); err != nil {
		t.Fatal(err)
	}
	// The failover: the replica never saw the deletion, and Redis lost its ready marker.
	cmd := rd.B().Hset().Key(keys.User(gone)).FieldValue()
	for f, v := range saved {
		cmd = cmd.FieldValue(f, v)
	}
	if err := rd.Do(ctx, cmd.Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := rd.Do(ctx, rd.B().Unlink().Key(keys.Ready).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := st.Repopulate(ctx, false); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		user string
		want int64
	}{{gone, 0}, {back, 1}, {kept, 1}} {
		if n, err := rd.Do(ctx, rd.B().Exists().Key(keys.User(c.user)).Build()).AsInt64(); err != nil || n != c.want {
			t.Errorf("hash of %s after the repopulation: exists %d (%v), want %d", c.user, n, err, c.want)
		}
	}
	rep, err := st.Verify(ctx, featurestore.VerifyOptions{Sample: 1000, Grace: 10 * time.Millisecond})
	if err != nil || !rep.OK() {
		t.Errorf("verify: %+v %v", rep, err)
	}
}

// A Redis may be shared by deployments whose prefixes nest ("recsys:" and "recsys:staging:")
// or by other applications (an empty --redis.key-prefix). A forced repopulation deleted every
// key under its prefix, the other deployment's copy and the other applications' keys
// included; it now deletes its own layout's keys only.
func TestRepopulationDeletesOnlyTheCopysKeys(t *testing.T) {
	ctx := context.Background()
	st, _, rd, keys := repopulatedCopy(t, "rpown", 0)
	own := []string{keys.User("filler"), keys.Item("filler"), keys.Neighbours("filler")}
	others := []string{keys.Prefix + "staging:u:someone", keys.Prefix + "staging:meta", keys.Prefix + "sessions:abc", keys.Prefix + "uploads"}
	for _, k := range append(own, others...) {
		if err := rd.Do(ctx, rd.B().Set().Key(k).Value("x").Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Repopulate(ctx, true); err != nil {
		t.Fatal(err)
	}
	for _, k := range own {
		if n, err := rd.Do(ctx, rd.B().Exists().Key(k).Build()).AsInt64(); err != nil || n != 0 {
			t.Errorf("the copy's stray key %s survived the repopulation (exists %d, %v)", k, n, err)
		}
	}
	for _, k := range others {
		if n, err := rd.Do(ctx, rd.B().Exists().Key(k).Build()).AsInt64(); err != nil || n != 1 {
			t.Errorf("the repopulation deleted %s, a key of another layout under its prefix (exists %d, %v)", k, n, err)
		}
	}
	// The copy itself is whole again.
	for _, k := range []string{keys.Ready, keys.PopShort, keys.Meta} {
		if n, err := rd.Do(ctx, rd.B().Exists().Key(k).Build()).AsInt64(); err != nil || n != 1 {
			t.Errorf("%s missing after the repopulation (exists %d, %v)", k, n, err)
		}
	}
}

// A fresh deployment: the consumer's first heal pass repopulates the copy of an empty store
// (no generation yet), and the first batch then creates the generation. Its write was refused
// as another generation's, the ready marker deleted and the copy repopulated: on every fresh
// database /reco fell back to PostgreSQL and warned that Redis had lost its data. The first
// batch's values must land in the copy (from the batch's own write, or from the journal when
// that write was lost) and the copy stay ready, with the landmarks readers decay by; while a
// repopulation runs, the copy is left to it.
func TestFirstBatchKeepsTheCopyOfAnEmptyStore(t *testing.T) {
	rd := redisClient(t, testutil.StartPrivate(t, "redis").URL)
	for _, c := range []struct {
		name               string
		heal, repopulating bool
	}{
		{name: "own write"},
		{name: "healed from the journal", heal: true},
		{name: "repopulation running", repopulating: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			pool := testutil.Pool(t, testutil.MigratedDatabase(t))
			prefix := testutil.Unique("fb") + ":"
			t.Cleanup(func() { deleteKeys(t, rd, prefix) })
			keys := featurestore.NewKeys(prefix)
			st := featurestore.New(pool, rd, prefix, testConfig(), nil)
			if err := st.Repopulate(ctx, false); err != nil {
				t.Fatal(err)
			}
			start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
			evs := toEvents(fstest.Generate(fstest.GenConfig{Seed: 3, Users: 8, Items: 20, Events: 200, StartMs: start, StepMs: 1000, Prefix: "f"}))
			a, err := st.Apply(ctx, &featurestore.Batch{Events: evs})
			if err != nil {
				t.Fatal(err)
			}
			if c.repopulating {
				if err := rd.Do(ctx, rd.B().Set().Key(keys.Lock).Value("process-B").Px(15*time.Second).Build()).Error(); err != nil {
					t.Fatal(err)
				}
				if err := st.WriteRedis(ctx, a); !errors.Is(err, featurestore.ErrRedisBehind) {
					t.Fatalf("write during a repopulation: %v, want ErrRedisBehind", err)
				}
				if ep, err := rd.Do(ctx, rd.B().Hget().Key(keys.Meta).Field("ep").Build()).ToString(); err != nil || ep != "0" {
					t.Fatalf("copy generation %q (%v), want the repopulation's to stay", ep, err)
				}
				return
			}
			if c.heal {
				// The batch's writer crashed: another process heals its journal row.
				other := featurestore.New(pool, rd, prefix, testConfig(), nil)
				if n, err := other.HealPending(ctx, 0, 10); err != nil || n != 1 {
					t.Fatalf("healed %d journal rows (%v), want 1", n, err)
				}
			} else if err := st.WriteRedis(ctx, a); err != nil {
				t.Fatalf("first batch's write: %v", err)
			}
			if ready, err := st.RedisReady(ctx); err != nil || !ready {
				t.Fatalf("copy ready after the first batch: %v (%v)", ready, err)
			}
			now := evs[len(evs)-1].TsMs + 60_000
			rl := featurestore.NewRedisLoader(rd, prefix, testConfig())
			pl := featurestore.NewPGLoader(pool, prefix, testConfig())
			for i := range 8 {
				u := fmt.Sprintf("fuser%03d", i)
				want, err := pl.Snapshot(ctx, u, now, testOpts())
				if err != nil {
					t.Fatal(err)
				}
				got, err := rl.Snapshot(ctx, u, now, testOpts())
				if err != nil {
					t.Fatalf("redis snapshot of %s: %v", u, err)
				}
				fstest.EqualSnapshots(t, "redis "+u, want, got)
				if i == 0 && (len(got.History) == 0 || len(got.Popular) == 0) {
					t.Fatalf("degenerate test data: %+v", got)
				}
			}
			rep, err := st.Verify(ctx, featurestore.VerifyOptions{Sample: 1000, Grace: 10 * time.Millisecond})
			if err != nil || !rep.OK() {
				t.Errorf("verify: %+v %v", rep, err)
			}
		})
	}
}

// A rebase of the decay landmarks that commits while a repopulation of the same generation
// copies its snapshot (here: the copy waits for a table lock the test holds; in production,
// a large copy) deletes the ready marker before the repopulation sets it. The copy used to
// end up marked ready at the old generation: the writes of the new one, among them the
// batch that needed the rebase, were refused as newer, and the copy served without them
// until a refused write's journal row was healed (2 heal intervals + 1 s later) or the next
// write came. A copy marked ready must be of PostgreSQL's generation; the next repopulation
// brings it there.
func TestRebaseDuringRepopulationLeavesTheCopyUnready(t *testing.T) {
	ctx := context.Background()
	st, pool, rd, keys := repopulatedCopy(t, "rprb", 0)
	if err := rd.Do(ctx, rd.B().Del().Key(keys.Ready).Build()).Error(); err != nil { // as a write found it behind
		t.Fatal(err)
	}
	before := pgGeneration(t, pool)
	tx := otherTx(t, pool, `LOCK TABLE feature_users IN ACCESS EXCLUSIVE MODE`)
	done := make(chan error, 1)
	go func() { done <- st.Repopulate(ctx, false) }()
	waitForLockWait(t, pool, "feature_users") // its snapshot is taken: it reads the users
	var lm int64
	var hl float64
	if err := pool.QueryRow(ctx, `SELECT lm_short_ms, hl_short_ms FROM feature_meta`).Scan(&lm, &hl); err != nil {
		t.Fatal(err)
	}
	// Rebase takes neither feature_users nor the repopulation lock.
	if err := st.Rebase(ctx, lm+int64((features.RebaseExponent+1)*hl)); err != nil {
		t.Fatal(err)
	}
	if g := pgGeneration(t, pool); g != before+1 {
		t.Fatalf("generation %d after the rebase, want %d", g, before+1)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	err := <-done
	ready, rerr := st.RedisReady(ctx)
	if rerr != nil {
		t.Fatal(rerr)
	}
	t.Logf("repopulation racing the rebase: %v; ready %v, copy generation %d, postgres %d", err, ready, copyGeneration(t, rd, keys.Prefix), pgGeneration(t, pool))
	if ready && copyGeneration(t, rd, keys.Prefix) != pgGeneration(t, pool) {
		t.Fatalf("the copy is marked ready at generation %d, postgres is at %d", copyGeneration(t, rd, keys.Prefix), pgGeneration(t, pool))
	}
	if ready {
		return // the repopulation saw the new generation
	}
	if err := st.Repopulate(ctx, false); err != nil { // the heal loop's next pass
		t.Fatal(err)
	}
	if got, want := copyGeneration(t, rd, keys.Prefix), pgGeneration(t, pool); got != want {
		t.Fatalf("copy generation %d after the next repopulation, postgres %d", got, want)
	}
	verifyCopy(t, st)
}

// A rebuild from events whose own repopulation finds another one running (a consumer's heal
// loop; here a lock another process holds) leaves the copy to it. The old copy used to stay
// marked ready: nothing told that repopulation, or the heal loop after it, that the copy it
// had found ready was of a generation the rebuild had replaced, and with an idle stream the
// copy of before the rebuild passed for the rebuilt one for good.
func TestRebuildFromEventsBesideARepopulationLeavesTheCopyUnready(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	prefix := testutil.Unique("rbrp") + ":"
	t.Cleanup(func() { deleteKeys(t, rd, prefix) })
	st := featurestore.New(pool, rd, prefix, testConfig(), nil)
	streamed(t, pool, st, 6)
	keys := featurestore.NewKeys(prefix)
	if err := rd.Do(ctx, rd.B().Set().Key(keys.Lock).Value("process-B").Px(15*time.Second).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.RebuildFromEvents(ctx, 2, nil); !errors.Is(err, featurestore.ErrRepopulating) {
		t.Fatalf("rebuild from events beside another repopulation: %v, want ErrRepopulating", err)
	}
	if ready, err := st.RedisReady(ctx); err != nil || ready {
		t.Fatalf("the copy of generation %d is ready after a rebuild to generation %d: %v (%v)",
			copyGeneration(t, rd, prefix), pgGeneration(t, pool), ready, err)
	}
}
