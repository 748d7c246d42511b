package featurestore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"recsys/pkg/featurestore"
	"recsys/pkg/testutil"
)

// snapshotCopy saves every key of the copy (DUMP) and returns what puts the copy back as it
// was then, as a Redis that restarts from an older RDB snapshot (or fails over to a replica
// that missed writes) has it: the keys written since gone, those deleted since back, and the
// run_id key naming the process before the restart.
func snapshotCopy(t *testing.T, rd rueidis.Client, keys featurestore.Keys) (restore func()) {
	t.Helper()
	ctx := context.Background()
	dump := func() map[string]string {
		out := map[string]string{}
		for _, k := range testutil.RedisKeys(t, rd, keys.Prefix+"*") {
			v, err := rd.Do(ctx, rd.B().Dump().Key(k).Build()).ToString()
			if err != nil {
				t.Fatalf("dump %s: %v", k, err)
			}
			out[k] = v
		}
		return out
	}
	saved := dump()
	return func() {
		t.Helper()
		for k := range dump() {
			if err := rd.Do(ctx, rd.B().Unlink().Key(k).Build()).Error(); err != nil {
				t.Fatal(err)
			}
		}
		for k, v := range saved {
			if err := rd.Do(ctx, rd.B().Restore().Key(k).Ttl(0).SerializedValue(v).Replace().Build()).Error(); err != nil {
				t.Fatalf("restore %s: %v", k, err)
			}
		}
		if err := rd.Do(ctx, rd.B().Set().Key(keys.RunID).Value("the-process-before-the-restart").Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
}

// restartFromSnapshot restores the copy (snapshotCopy) and runs what a consumer does then:
// RedisReady sees the run_id changed, and the copy, of the same generation, is repopulated
// by a merge into what Redis holds.
func restartFromSnapshot(t *testing.T, st *featurestore.Store, restore func()) {
	t.Helper()
	ctx := context.Background()
	restore()
	if ready, err := st.RedisReady(ctx); err != nil || ready {
		t.Fatalf("copy restored from a snapshot taken ready (%v), want a repopulation", err)
	}
	if err := st.Repopulate(ctx, false); err != nil {
		t.Fatal(err)
	}
}

// A Redis restarted from a snapshot taken before a trim (an RDB without AOF: the snapshot is
// up to the save interval old; or a replica that missed the deletions) brings the trimmed
// users' hashes back, after their second pass. RedisReady sees the restart (run_id), but
// the repopulation of the same generation merges into what it finds: it kept the hash of a
// user PostgreSQL no longer has, and that of a trimmed user who has come back since, whose
// older, higher version hid the new row (the merge takes a user only to a higher version,
// and once the new row passed it a partial write completed the old documents).
func TestSameGenerationRepopulationDropsTrimmedUsers(t *testing.T) {
	ctx := context.Background()
	st, pool, rd, keys, now := userTrimFixture(t)
	restore := snapshotCopy(t, rd, keys)
	if _, err := st.TrimUsers(ctx, userRetention, 1000); err != nil {
		t.Fatal(err)
	}
	userKind.runSecondPass(t, st, pool)
	applyMirrored(t, st, []featurestore.Event{trimWatch("back", "gone-w", "z", now)})
	restartFromSnapshot(t, st, restore)
	if exists(t, rd, keys.User("gone-m")) {
		t.Error("the repopulation kept the restored hash of gone-m, trimmed")
	}
	userCopyIsPG(t, pool, rd, keys, "gone-w")
	for _, u := range []string{"kept", "hot"} {
		userCopyIsPG(t, pool, rd, keys, u)
	}
	verifyCopy(t, st)
	// gone-w's next event (version 2, impressions only: a partial write) lands on the new row.
	applyMirrored(t, st, []featurestore.Event{trimImpression("back-m", "gone-w", now+1000, "y")})
	userCopyIsPG(t, pool, rd, keys, "gone-w")
}

// The same for items: the restored hashes, neighbour lists and places in the global lists of
// items trimmed since the snapshot go, and an item that came back since has PostgreSQL's new
// values in the copy, not the trimmed ones the merge (values only grow) kept.
func TestSameGenerationRepopulationDropsTrimmedItems(t *testing.T) {
	ctx := context.Background()
	st, pool, rd, keys, now := trimFixture(t)
	// A place in a global list whose item's hash is gone too: no key of the item to meet.
	if err := rd.Do(ctx, rd.B().Zadd().Key(keys.PopLong).ScoreMember().ScoreMember(0.5, "ghost").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	restore := snapshotCopy(t, rd, keys)
	if _, err := st.TrimItems(ctx, retention, 1000); err != nil {
		t.Fatal(err)
	}
	itemKind.runSecondPass(t, st, pool)
	applyMirrored(t, st, []featurestore.Event{trimImpression("m3", "u5", now, "old-a")})
	restartFromSnapshot(t, st, restore)
	for _, id := range []string{"old-b", "quiet"} {
		for _, key := range []string{keys.Item(id), keys.Neighbours(id)} {
			if exists(t, rd, key) {
				t.Errorf("the repopulation kept the restored %s, trimmed", key)
			}
		}
	}
	for _, id := range []string{"old-a", "old-b", "quiet"} {
		for _, key := range []string{keys.PopShort, keys.PopLong} {
			if inList(t, rd, key, id) {
				t.Errorf("the repopulation kept trimmed %s's restored place in %s", id, key)
			}
		}
	}
	for _, id := range []string{"old-b", "quiet"} {
		if inList(t, rd, keys.Fresh, id) {
			t.Errorf("the repopulation kept trimmed %s's restored place in %s", id, keys.Fresh)
		}
	}
	if inList(t, rd, keys.PopLong, "ghost") {
		t.Error("the repopulation kept a place in pop:l of an item with neither a row nor a hash")
	}
	if exists(t, rd, keys.Neighbours("old-a")) {
		t.Error("old-a came back without a neighbour list, but the copy has the trimmed one")
	}
	for f, want := range map[string]int64{"imp": 1, "wat": 0, "fs": now, "nv": 0} {
		got, err := rd.Do(ctx, rd.B().Hget().Key(keys.Item("old-a")).Field(f).Build()).AsInt64()
		if rueidis.IsRedisNil(err) && f == "nv" {
			got, err = 0, nil
		}
		if err != nil || got != want {
			t.Errorf("copy of old-a (back): %s = %d (%v), want PostgreSQL's %d", f, got, err, want)
		}
	}
	for _, id := range []string{"hot", "popular-old", "shown"} {
		if !exists(t, rd, keys.Item(id)) {
			t.Errorf("%s, in PostgreSQL, gone from the copy", id)
		}
	}
	verifyCopy(t, st)
}

// The scan of a same-generation repopulation for stale keys covers the whole database (over
// 15 s with millions of keys) and renews the repopulation lock at every page, as the
// deletion of a new generation's copy does (TestRepopulationLockIsRenewedWhileDeleting): an
// expired lock failed the repopulation at its end, every attempt.
func TestSameGenerationRepopulationRenewsItsLockWhileScanning(t *testing.T) {
	ctx := context.Background()
	st, _, rd, keys := repopulatedCopy(t, "rpsl", 0)
	const filler = 300_000
	for f := 0; f < filler; f += 2000 {
		cmd := rd.B().Mset().KeyValue()
		for i := f; i < min(f+2000, filler); i++ {
			cmd = cmd.KeyValue(fmt.Sprintf("%sother:%d", keys.Prefix, i), "x")
		}
		if err := rd.Do(ctx, cmd.Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	if err := rd.Do(ctx, rd.B().Unlink().Key(keys.Ready).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- st.Repopulate(ctx, false) }()
	lowest := time.Hour
	for {
		select {
		case err := <-done:
			took := time.Since(start)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("repopulation took %v; lowest lock TTL after 100 ms: %v", took, lowest)
			if took < 300*time.Millisecond {
				t.Fatalf("the repopulation took %v: too fast to tell (more filler keys)", took)
			}
			if lowest < 15*time.Second-150*time.Millisecond {
				t.Errorf("the lock's TTL fell to %v during the repopulation: it is not renewed", lowest)
			}
			return
		default:
		}
		if d := pttl(t, rd, keys.Lock); d > 0 && d < lowest && time.Since(start) > 100*time.Millisecond {
			lowest = d
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The refill of the global lists that trims of a large catalog owe (a scan of every item per
// list: tens of seconds on tens of millions of rows) runs at the end of a same-generation
// repopulation's resync of stale keys, under its lock. Without renewing it there, the lock
// expired during a refill longer than its TTL: another consumer's heal pass took it and
// copied everything again, and this repopulation failed at its ready marker
// (ErrRepopulationLockLost). Here the refill waits on a lock of feature_items.
func TestResyncStaleRenewsTheLockDuringTheListsRefill(t *testing.T) {
	ctx := context.Background()
	st, pool, rd, keys, _ := trimFixture(t)
	// A copy without item keys: the resync's scan reads nothing of feature_items, only the
	// refill does.
	for _, k := range testutil.RedisKeys(t, rd, keys.Prefix+"*") {
		if k != keys.Meta {
			if err := rd.Do(ctx, rd.B().Unlink().Key(k).Build()).Error(); err != nil {
				t.Fatal(err)
			}
		}
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // released below
	if _, err := tx.Exec(ctx, `LOCK TABLE feature_items IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- st.ResyncStaleOwingLists(ctx) }()
	const held = 3 * time.Second
	time.Sleep(held)
	ttl, err := rd.Do(ctx, rd.B().Pttl().Key(keys.Lock).Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Renewed every second: at least the TTL less two seconds left, where a lock taken
	// before the wait has the TTL less the wait.
	if want := (featurestore.RepopulationLockTTL - 2*time.Second).Milliseconds(); ttl < want {
		t.Errorf("repopulation lock has %d ms left after the refill waited %v, want at least %d: not renewed", ttl, held, want)
	}
	if !inList(t, rd, keys.PopLong, "hot") {
		t.Error("the owed refill did not put hot back into the long popularity list")
	}
}

// A Redis shared with another application under an empty --redis.key-prefix may hold keys of
// the copy's layout that are not the copy's (u:…, i:… of another type, or a hash whose "v" is
// no number). The same-generation repopulation's resync of stale keys read each as the copy's
// and failed on its reply (WRONGTYPE), at every heal pass: the copy stayed unready, /reco
// served from PostgreSQL, after every restart of Redis. It passes them by, and the copy's
// stale keys still go. (A prefix stands in for the empty one here: the test Redis is shared.)
func TestSameGenerationRepopulationPassesForeignKeysBy(t *testing.T) {
	ctx := context.Background()
	st, pool, rd, keys, _ := userTrimFixture(t)
	foreign := map[string]rueidis.Completed{
		keys.User("session:1"):    rd.B().Set().Key(keys.User("session:1")).Value("token").Build(),
		keys.User("queue"):        rd.B().Rpush().Key(keys.User("queue")).Element("job").Build(),
		keys.User("profile:1"):    rd.B().Hset().Key(keys.User("profile:1")).FieldValue().FieldValue("v", "beta").Build(),
		keys.Item("cache:1"):      rd.B().Set().Key(keys.Item("cache:1")).Value("x").Build(),
		keys.Neighbours("tags:1"): rd.B().Sadd().Key(keys.Neighbours("tags:1")).Member("a").Build(),
	}
	for _, cmd := range foreign {
		if err := rd.Do(ctx, cmd).Error(); err != nil {
			t.Fatal(err)
		}
	}
	restore := snapshotCopy(t, rd, keys)
	if _, err := st.TrimUsers(ctx, userRetention, 1000); err != nil {
		t.Fatal(err)
	}
	userKind.runSecondPass(t, st, pool)
	restartFromSnapshot(t, st, restore)
	if exists(t, rd, keys.User("gone-m")) {
		t.Error("the repopulation kept the restored hash of gone-m, trimmed")
	}
	for _, k := range []string{keys.User("session:1"), keys.User("queue"), keys.User("profile:1"), keys.Item("cache:1")} {
		if !exists(t, rd, k) {
			t.Errorf("the repopulation deleted %s, not a key of the copy", k)
		}
	}
}
