package featurestore_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"recsys/pkg/features"
	"recsys/pkg/featurestore"
	"recsys/pkg/featurestore/fstest"
	"recsys/pkg/testutil"
)

// With a user TTL every user hash written gets that expiry; an expired user is read back from
// PostgreSQL (and put back into the copy) and ranks as before; a user PostgreSQL does not
// know leaves no key in the copy, and their first event shows on their next read.
func TestUserTTLAndReadThrough(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	prefix := testutil.Unique("ttl") + ":"
	cfg := testConfig()
	const ttl = 24 * time.Hour
	st := featurestore.New(pool, rd, prefix, cfg, nil)
	st.SetUserTTL(ttl)
	keys := featurestore.NewKeys(prefix)
	pttl := func(user string) int64 {
		t.Helper()
		n, err := rd.Do(ctx, rd.B().Pttl().Key(keys.User(user)).Build()).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	evs := toEvents(fstest.Generate(fstest.GenConfig{Seed: 3, Users: 5, Items: 40, Events: 400, StartMs: start, StepMs: 60_000, Prefix: "r", NoLegacy: true}))
	apply := func(st *featurestore.Store, evs []featurestore.Event) { applyMirrored(t, st, evs) }
	apply(st, evs[:300])
	const user = "ruser001"
	if ms := pttl(user); ms <= 0 || ms > ttl.Milliseconds() {
		t.Fatalf("user hash expires in %d ms, want (0, %d]", ms, ttl.Milliseconds())
	}

	// Writers without a TTL remove it (the setting was turned off).
	noTTL := featurestore.New(pool, rd, prefix, cfg, nil)
	apply(noTTL, evs[300:350])
	if ms := pttl(user); ms != -1 {
		t.Fatalf("after a write without TTL: PTTL %d, want -1 (no expiry)", ms)
	}
	apply(st, evs[350:])

	now := evs[len(evs)-1].TsMs + 60_000
	opts := testOpts()
	loader := featurestore.NewRedisLoader(rd, prefix, cfg)
	before, err := loader.Snapshot(ctx, user, now, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(before.History) == 0 || len(before.Neighbours) == 0 {
		t.Fatalf("degenerate test data: %+v", before)
	}
	var reads int
	held := map[string]int{}
	loader.SetReadThrough(func(ctx context.Context, id string, ttl time.Duration) (bool, error) {
		reads++
		_, found, err := st.ReadThroughUser(ctx, id, ttl)
		return found, err
	}, func(id string) { held[id]++ })
	// The writers' TTL is what readers follow.
	if got, err := featurestore.RecordedUserTTL(ctx, rd, keys); err != nil || got != ttl {
		t.Fatalf("recorded user TTL %s (%v), want %s", got, err, ttl)
	}

	// The hash expires: the snapshot is read through and equals the one before.
	if err := rd.Do(ctx, rd.B().Del().Key(keys.User(user)).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	after, err := loader.Snapshot(ctx, user, now, opts)
	if err != nil {
		t.Fatal(err)
	}
	fstest.EqualSnapshots(t, "read through", before, after)
	if reads != 1 {
		t.Fatalf("%d read-throughs, want 1", reads)
	}
	var version int64
	if err := pool.QueryRow(ctx, `SELECT version FROM feature_users WHERE user_id = $1`, user).Scan(&version); err != nil {
		t.Fatal(err)
	}
	if v := hget(t, rd, keys.User(user), "v"); v != version {
		t.Fatalf("user hash back at version %d, PostgreSQL has %d", v, version)
	}
	if ms := pttl(user); ms <= time.Hour.Milliseconds() || ms > ttl.Milliseconds() {
		t.Fatalf("user hash back with PTTL %d, want the user TTL (%d)", ms, ttl.Milliseconds())
	}
	if _, err := loader.Snapshot(ctx, user, now, opts); err != nil || reads != 1 || held[user] != 1 {
		t.Fatalf("second read: %v, %d read-throughs, held %d; want still 1, and the user reported held", err, reads, held[user])
	}

	// A user without events: a lookup (readers remember the answer, modules/reco absentUsers),
	// no key, and their first event shows on their next read.
	const nobody = "rnobody"
	for i := range 2 {
		s, err := loader.Snapshot(ctx, nobody, now, opts)
		if err != nil || len(s.History) != 0 || len(s.Trending) == 0 || reads != 2+i {
			t.Fatalf("unknown user, read %d: %+v, %v, %d read-throughs; want the lists, no history, after %d", i, s, err, reads, 2+i)
		}
		if ms := pttl(nobody); ms != -2 {
			t.Fatalf("unknown user's hash: PTTL %d, want -2 (no key)", ms)
		}
	}
	if got, err := featurestore.RecordedUserTTL(ctx, rd, keys); err != nil || got != ttl {
		t.Fatalf("after read-throughs the recorded user TTL is %s (%v), want the writers' %s", got, err, ttl)
	}
	apply(st, []featurestore.Event{{Interaction: features.Interaction{Kind: features.KindWatch, EventID: "rnobody-first",
		UserID: nobody, TsMs: now - 1000, ItemID: before.History[0].ItemID}}})
	if s, err := loader.Snapshot(ctx, nobody, now, opts); err != nil || len(s.History) != 1 || reads != 3 || held[nobody] != 1 {
		t.Fatalf("after the first event: %+v, %v, %d read-throughs, held %d; want one history entry, still 3, held once",
			s.History, err, reads, held[nobody])
	}

	// A writer without a TTL (another consumer's setting, or the setting being turned off)
	// leaves the longest TTL recorded: hashes other writers gave an expiry still expire, and
	// such a user, absent, must be read through, not ranked as one without events. A writer
	// with a shorter TTL does not lower it either.
	shorter := featurestore.New(pool, rd, prefix, cfg, nil)
	shorter.SetUserTTL(time.Hour)
	for i, w := range []*featurestore.Store{noTTL, shorter} {
		apply(w, []featurestore.Event{{Interaction: features.Interaction{Kind: features.KindWatch, EventID: fmt.Sprintf("rnobody-other-%d", i),
			UserID: nobody, TsMs: now - 500 + int64(i), ItemID: before.History[1].ItemID}}})
		if err := rd.Do(ctx, rd.B().Del().Key(keys.User(user)).Build()).Error(); err != nil {
			t.Fatal(err)
		}
		s, err := loader.Snapshot(ctx, user, now, opts)
		if err != nil || reads != 4+i || len(s.History) != len(before.History) || len(s.Watched) != len(before.Watched) {
			t.Fatalf("expired user after writer %d: %d history entries, %d watched, %v, %d read-throughs; want %d, %d and a read-through (%d)",
				i, len(s.History), len(s.Watched), err, reads, len(before.History), len(before.Watched), 4+i)
		}
		if got, err := featurestore.RecordedUserTTL(ctx, rd, keys); err != nil || got != ttl {
			t.Fatalf("recorded user TTL %s (%v) after writer %d, want the longest, %s", got, err, i, ttl)
		}
	}

	// A rebuild without a TTL (the setting turned off) copies every user without expiry:
	// absent now means without events, and nobody asks PostgreSQL.
	if err := noTTL.Repopulate(ctx, true); err != nil {
		t.Fatal(err)
	}
	if got, err := featurestore.RecordedUserTTL(ctx, rd, keys); err != nil || got != 0 {
		t.Fatalf("recorded user TTL %s (%v) after a rebuild without one, want 0", got, err)
	}
	if ms := pttl(user); ms != -1 {
		t.Fatalf("after a rebuild without a TTL: PTTL %d, want -1 (no expiry)", ms)
	}
	if s, err := loader.Snapshot(ctx, "rnobody2", now, opts); err != nil || len(s.History) != 0 || reads != 5 {
		t.Fatalf("absent user without a TTL: %d history entries, %v, %d read-throughs; want none, still 5", len(s.History), err, reads)
	}
}

func hget(t *testing.T, rd rueidis.Client, key, field string) int64 {
	t.Helper()
	n, err := rd.Do(context.Background(), rd.B().Hget().Key(key).Field(field).Build()).AsInt64()
	if err != nil {
		t.Fatalf("hget %s %s: %v", key, field, err)
	}
	return n
}

// Distinct user ids PostgreSQL does not know (bots, a request id sent as user_id) leave
// nothing in the copy: an empty hash each grew Redis with their request rate, and each was a
// user the copy held and PostgreSQL did not (a Verify mismatch).
func TestReadThroughUnknownUsersLeaveNoKeys(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	const prefix = "rtu:"
	st := featurestore.New(pool, rd, prefix, testConfig(), nil)
	st.SetUserTTL(time.Hour)
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	applyMirrored(t, st, toEvents(fstest.Generate(fstest.GenConfig{Seed: 5, Users: 3, Items: 10, Events: 60, StartMs: start, StepMs: 60_000, Prefix: "k", NoLegacy: true})))
	keys := featurestore.NewKeys(prefix)
	countUsers := func() int { t.Helper(); return len(testutil.RedisKeys(t, rd, keys.User("")+"*")) }
	before := countUsers()
	loader := featurestore.NewRedisLoader(rd, prefix, testConfig())
	var reads int
	loader.SetReadThrough(func(ctx context.Context, id string, ttl time.Duration) (bool, error) {
		reads++
		_, found, err := st.ReadThroughUser(ctx, id, ttl)
		return found, err
	}, nil)
	const n = 200
	for i := range n {
		s, err := loader.Snapshot(ctx, fmt.Sprintf("req-%08x", i), start+time.Hour.Milliseconds(), testOpts())
		if err != nil || len(s.History) != 0 || len(s.Trending) == 0 {
			t.Fatalf("unknown user %d: %+v, %v; want the lists and no history", i, s, err)
		}
	}
	if reads != n {
		t.Fatalf("%d read-throughs for %d unknown users", reads, n)
	}
	if after := countUsers(); after != before {
		t.Fatalf("%d user hashes after %d unknown users were read, %d before: want no new key", after, n, before)
	}
	if rep, err := st.Verify(ctx, featurestore.VerifyOptions{Sample: 1000, Grace: 10 * time.Millisecond}); err != nil || !rep.OK() {
		t.Fatalf("verify after unknown users were read: %+v, %v", rep, err)
	}
}

// Nothing applied yet: there is no copy to complete, and nothing is written.
func TestReadThroughBeforeAnyEvent(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	st := featurestore.New(pool, rd, "rt0:", testConfig(), nil)
	st.SetUserTTL(time.Hour)
	f, found, err := st.ReadThroughUser(ctx, "u", time.Hour)
	if err != nil || found || f != (featurestore.UserFields{}) {
		t.Fatalf("ReadThroughUser = %q %v %v, want nothing", f, found, err)
	}
	if n, err := rd.Do(ctx, rd.B().Exists().Key("rt0:u:u").Build()).AsInt64(); err != nil || n != 0 {
		t.Fatalf("user key written before any event (%d, %v)", n, err)
	}
}

// Redis out of memory (noeviction) refuses the write back: the user's documents still come
// back, with ErrNotWrittenBack, so a reader ranks them without reading PostgreSQL again.
func TestReadThroughRedisRefusingWrites(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	st := featurestore.New(pool, rd, "rtoom:", testConfig(), nil)
	st.SetUserTTL(time.Hour)
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	evs := toEvents(fstest.Generate(fstest.GenConfig{Seed: 4, Users: 2, Items: 10, Events: 40, StartMs: start, StepMs: 60_000, Prefix: "o", NoLegacy: true}))
	applyMirrored(t, st, evs)
	want, found, err := st.ReadThroughUser(ctx, evs[0].UserID, time.Hour)
	if err != nil || !found || want[0] == "" {
		t.Fatalf("ReadThroughUser = %q %v %v", want, found, err)
	}
	for _, c := range [][]string{{"DEL", "rtoom:u:" + evs[0].UserID}, // expired
		{"CONFIG", "SET", "maxmemory-policy", "noeviction"}, {"CONFIG", "SET", "maxmemory", "1"}} {
		if err := rd.Do(ctx, rd.B().Arbitrary(c...).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	f, found, err := st.ReadThroughUser(ctx, evs[0].UserID, time.Hour)
	if !errors.Is(err, featurestore.ErrNotWrittenBack) {
		t.Fatalf("err = %v, want ErrNotWrittenBack", err)
	}
	if !found || f != want {
		t.Fatalf("out of memory: %q %v, want %q", f, found, want)
	}
	// An unknown user is written nothing, so nothing is refused.
	if f, found, err := st.ReadThroughUser(ctx, "nobody", time.Hour); err != nil || found || f != (featurestore.UserFields{}) {
		t.Fatalf("unknown user: %q %v %v, want nothing", f, found, err)
	}
}

// applyMirrored applies evs and writes them to the Redis copy, repopulating it when the write
// finds no copy (the first one).
func applyMirrored(t *testing.T, st *featurestore.Store, evs []featurestore.Event) {
	t.Helper()
	ctx := context.Background()
	a, err := st.Apply(ctx, &featurestore.Batch{Events: evs})
	if err != nil {
		t.Fatal(err)
	}
	err = st.WriteRedis(ctx, a)
	if errors.Is(err, featurestore.ErrRedisBehind) {
		err = st.Repopulate(ctx, false)
	}
	if err != nil {
		t.Fatal(err)
	}
}
