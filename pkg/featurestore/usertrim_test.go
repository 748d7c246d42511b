package featurestore_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"

	"recsys/pkg/featurestore"
	"recsys/pkg/testutil"
)

const userRetention = 365 * day

var userKind = trimKind{table: "feature_users", column: "user_id", retention: userRetention, stale: 400 * day,
	trimFunc: (*featurestore.Store).TrimUsers}

// ageUsers makes the users' rows look last written at ms (the batches write now()).
func ageUsers(t *testing.T, pool *pgxpool.Pool, ms int64, ids ...string) {
	t.Helper()
	userKind.age(t, pool, ms, ids...)
}

func userRows(t *testing.T, pool *pgxpool.Pool, table string) []string {
	t.Helper()
	return userKind.rows(t, pool, table)
}

// userCopyIsPG fails unless the copy's hash of user is PostgreSQL's row: same version and
// documents.
func userCopyIsPG(t *testing.T, pool *pgxpool.Pool, rd rueidis.Client, keys featurestore.Keys, user string) {
	t.Helper()
	ctx := context.Background()
	var v int64
	var h, w, i, r string
	if err := pool.QueryRow(ctx, `SELECT version, history, watched, impressions, impressions_recent FROM feature_users WHERE user_id = $1`,
		user).Scan(&v, &h, &w, &i, &r); err != nil {
		t.Fatalf("%s in PostgreSQL: %v", user, err)
	}
	got, err := rd.Do(ctx, rd.B().Hgetall().Key(keys.User(user)).Build()).AsStrMap()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"v": fmt.Sprint(v), "h": h, "w": w, "i": i, "r": r}
	for f, x := range want {
		if got[f] != x {
			t.Errorf("copy of %s: %s = %q, want PostgreSQL's %q (version %d)", user, f, got[f], x, v)
		}
	}
}

// userTrimFixture applies, 400 days ago: a watch and an impression of "gone-w" (two batches:
// version 2), an impression of "gone-m" (impressions only), a watch of "kept"; and now: a
// watch of "hot". gone-w, gone-m
// and kept are then made to look last written 400 days ago, and kept's row written again
// (an event now). Each user's hash is in the copy.
func userTrimFixture(t *testing.T) (*featurestore.Store, *pgxpool.Pool, rueidis.Client, featurestore.Keys, int64) {
	t.Helper()
	pool, rd := servers(t)
	prefix := testutil.Unique("utrim") + ":"
	st := featurestore.New(pool, rd, prefix, testConfig(), nil)
	now := time.Now().UnixMilli()
	past := now - (400 * day).Milliseconds()
	applyMirrored(t, st, []featurestore.Event{
		trimWatch("w1", "gone-w", "a", past),
		trimImpression("m2", "gone-m", past, "a", "b"),
		trimWatch("w2", "kept", "a", past),
	})
	applyMirrored(t, st, []featurestore.Event{trimImpression("m1", "gone-w", past+1000, "b", "c"), trimWatch("w3", "hot", "b", now)})
	ageUsers(t, pool, past, "gone-w", "gone-m", "kept")
	applyMirrored(t, st, []featurestore.Event{trimImpression("m3", "kept", now, "c")})
	keys := featurestore.NewKeys(prefix)
	for _, u := range []string{"gone-w", "gone-m", "kept", "hot"} {
		if !exists(t, rd, keys.User(u)) {
			t.Fatalf("fixture: %s not in the copy", u)
		}
	}
	return st, pool, rd, keys, now
}

// TrimUsers deletes the users no batch wrote for the retention: their rows and their hashes.
// A user with an event within it stays. It is no erasure: the events, their dedup records and
// the items' statistics stay, and nothing is recorded in forgotten_users.
func TestTrimUsersDeletesInactiveUsersOnly(t *testing.T) {
	ctx := context.Background()
	st, pool, rd, keys, _ := userTrimFixture(t)
	var applied, items int
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM feature_applied), (SELECT count(*) FROM feature_items)`).Scan(&applied, &items); err != nil {
		t.Fatal(err)
	}
	n, err := st.TrimUsers(ctx, userRetention, 1000)
	if err != nil {
		t.Fatal(err)
	}
	gone := []string{"gone-m", "gone-w"}
	if n != len(gone) {
		t.Errorf("trimmed %d users, want %d (%v)", n, len(gone), gone)
	}
	if got, want := userRows(t, pool, "feature_users"), []string{"hot", "kept"}; !slices.Equal(got, want) {
		t.Errorf("feature_users holds %v, want %v", got, want)
	}
	if got := userRows(t, pool, "feature_users_trimmed"); !slices.Equal(got, gone) {
		t.Errorf("feature_users_trimmed holds %v, want %v (for the second pass)", got, gone)
	}
	if got := userRows(t, pool, "forgotten_users"); len(got) != 0 {
		t.Errorf("forgotten_users holds %v: a trim is not an erasure", got)
	}
	var applied2, items2 int
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM feature_applied), (SELECT count(*) FROM feature_items)`).Scan(&applied2, &items2); err != nil {
		t.Fatal(err)
	}
	if applied2 != applied || items2 != items {
		t.Errorf("dedup records %d -> %d, items %d -> %d: a user trim touches neither", applied, applied2, items, items2)
	}
	for _, u := range gone {
		if exists(t, rd, keys.User(u)) {
			t.Errorf("%s still in the copy", u)
		}
	}
	for _, u := range []string{"hot", "kept"} {
		userCopyIsPG(t, pool, rd, keys, u)
	}
	verifyCopy(t, st)
	// A read-through finds nothing to put back.
	if _, found, err := st.ReadThroughUser(ctx, "gone-w", time.Hour); err != nil || found {
		t.Errorf("read-through of a trimmed user: found %v (%v), want not found", found, err)
	}
	if exists(t, rd, keys.User("gone-w")) {
		t.Error("the read-through of a trimmed user wrote a hash")
	}
	if n, err := st.TrimUsers(ctx, userRetention, 1000); err != nil || n != 0 {
		t.Errorf("second call trimmed %d (%v), want 0", n, err)
	}
}

// A trimmed user with a new event comes back as a new user, whole, in PostgreSQL and in the
// copy: their history and counters that event's alone, at the version after the trimmed
// row's while the second pass is due (then at 1). A redelivered event of
// theirs applied before the trim is still a duplicate (the dedup records stay) and brings
// nothing back.
func TestTrimmedUserComesBackWhole(t *testing.T) {
	ctx := context.Background()
	st, pool, rd, keys, now := userTrimFixture(t)
	if _, err := st.TrimUsers(ctx, userRetention, 1000); err != nil {
		t.Fatal(err)
	}
	a, err := st.Apply(ctx, &featurestore.Batch{Events: []featurestore.Event{trimWatch("w1", "gone-w", "a", now)}})
	if err != nil {
		t.Fatal(err)
	}
	if a.NewCount() != 0 {
		t.Errorf("a redelivered event of a trimmed user applied again")
	}
	if got := userRows(t, pool, "feature_users"); slices.Contains(got, "gone-w") {
		t.Errorf("a duplicate brought gone-w back: %v", got)
	}
	applyMirrored(t, st, []featurestore.Event{trimWatch("back-w", "gone-w", "z", now), trimImpression("back-m", "gone-m", now, "y")})
	var v int64
	var h string
	if err := pool.QueryRow(ctx, `SELECT version, history FROM feature_users WHERE user_id = 'gone-w'`).Scan(&v, &h); err != nil {
		t.Fatal(err)
	}
	hist, err := featurestore.DecodeHistory(h)
	if err != nil {
		t.Fatal(err)
	}
	if v != 3 || len(hist) != 1 || hist[0].ItemID != "z" {
		t.Errorf("gone-w back at version %d with history %+v, want version 3 (the trimmed row's 2, plus one) and only z", v, hist)
	}
	for _, u := range []string{"gone-w", "gone-m"} {
		userCopyIsPG(t, pool, rd, keys, u)
	}
	verifyCopy(t, st)
}

// A batch that writes a user while a trim deletes them waits for the trim's lock, finds no
// row and creates the user anew, above the trimmed row's version. The copy's hash of the
// trimmed user is at a version the merge would keep over a row starting at 1: whatever order the batch's Redis write and
// the trim's deletion land in, the copy ends up with PostgreSQL's new row. Each case has the
// batch's write land at another step of the trim: before the hashes are deleted, between
// their deletion and the trim's read of what came back, and after the trim is done.
func TestTrimUsersRacingABatchLeavesTheCopyWhole(t *testing.T) {
	for _, at := range trimRaceSteps {
		t.Run(at, func(t *testing.T) {
			ctx := context.Background()
			st, pool, rd, keys, now := userTrimFixture(t)
			if got := hget(t, rd, keys.User("gone-w"), "v"); got < 2 {
				t.Fatalf("fixture: gone-w's hash at version %d, want 2 or more (above a row starting at 1)", got)
			}
			raceTrim(t, st, pool, userKind, at, "gone-w", "the trimmed users",
				trimWatch("race-w", "gone-w", "z", now), trimImpression("race-m", "gone-m", now, "y"))
			var v int64
			if err := pool.QueryRow(ctx, `SELECT version FROM feature_users WHERE user_id = 'gone-w'`).Scan(&v); err != nil || v != 3 {
				t.Fatalf("gone-w in PostgreSQL at version %d (%v), want 3 (created anew by the batch, above the trimmed row's 2)", v, err)
			}
			for _, u := range []string{"gone-w", "gone-m"} {
				userCopyIsPG(t, pool, rd, keys, u)
			}
			verifyCopy(t, st)
			userKind.runSecondPass(t, st, pool)
			for _, u := range []string{"gone-w", "gone-m"} {
				userCopyIsPG(t, pool, rd, keys, u)
			}
			verifyCopy(t, st)
		})
	}
}

// A writer that read a user's row before the trim and wrote the copy after its deletion of
// the hash (a read-through, a journal heal) brings back the old hash, at a version above the
// row the user's return creates: the copy would keep it over the new row's writes. The second
// pass, TrimSecondPass later and once no repopulation runs, deletes it and writes PostgreSQL's
// row whole.
func TestTrimUsersSecondPassReplacesLateWrites(t *testing.T) {
	ctx := context.Background()
	st, pool, rd, keys, now := userTrimFixture(t)
	if _, err := st.TrimUsers(ctx, userRetention, 1000); err != nil {
		t.Fatal(err)
	}
	late := map[string]string{"v": "9", "h": "[]", "w": "{}", "i": "{}", "r": ""}
	for _, u := range []string{"gone-w", "gone-m"} {
		cmd := rd.B().Hset().Key(keys.User(u)).FieldValue()
		for f, v := range late {
			cmd = cmd.FieldValue(f, v)
		}
		if err := rd.Do(ctx, cmd.Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	// gone-w comes back: the copy keeps the late hash at version 9 over the new row's 3.
	applyMirrored(t, st, []featurestore.Event{trimWatch("back", "gone-w", "z", now)})
	if got := hget(t, rd, keys.User("gone-w"), "v"); got != 9 {
		t.Fatalf("fixture: the copy's gone-w at version %d, want the late write's 9", got)
	}
	secondPassWaits(t, st, pool, rd, keys, userKind, 2, func() bool {
		return hget(t, rd, keys.User("gone-w"), "v") == 9 && exists(t, rd, keys.User("gone-m"))
	})
	userKind.runSecondPass(t, st, pool)
	if exists(t, rd, keys.User("gone-m")) {
		t.Error("the second pass left the late write of gone-m")
	}
	userCopyIsPG(t, pool, rd, keys, "gone-w")
	verifyCopy(t, st)
}

// Users trimmed before --consumer.user-retention is turned off (0) still get their second
// pass: a late write of gone-m's hash would otherwise stay in the copy, at a version above
// the row gone-m gets on coming back.
func TestTrimUsersSecondPassRunsWithTheRetentionOff(t *testing.T) {
	ctx := context.Background()
	st, pool, rd, keys, _ := userTrimFixture(t)
	testRetentionOffFinishesSecondPass(t, st, pool, userKind, func() bool {
		if err := rd.Do(ctx, rd.B().Hset().Key(keys.User("gone-m")).FieldValue().FieldValue("v", "9").FieldValue("h", "[]").
			FieldValue("w", "{}").FieldValue("i", "{}").FieldValue("r", "").Build()).Error(); err != nil {
			t.Fatal(err)
		}
		return exists(t, rd, keys.User("gone-m"))
	})
	if exists(t, rd, keys.User("gone-m")) {
		t.Error("the second pass left the late write of gone-m")
	}
}

// A batch that commits between the trim's scan and its locks keeps the user: the criterion is
// checked again under the locks.
func TestTrimUsersRechecksUnderTheLocks(t *testing.T) {
	ctx := context.Background()
	st, pool, rd, keys, now := userTrimFixture(t)
	st.SetTrimScanned(func(ids []string) {
		if !slices.Contains(ids, "gone-w") {
			t.Errorf("candidates %v, want gone-w among them", ids)
		}
		applyMirrored(t, st, []featurestore.Event{trimImpression("late-m", "gone-w", now, "x")})
	})
	if n, err := st.TrimUsers(ctx, userRetention, 1000); err != nil || n != 1 {
		t.Fatalf("trimmed %d (%v), want 1 (gone-m)", n, err)
	}
	if got, want := userRows(t, pool, "feature_users"), []string{"gone-w", "hot", "kept"}; !slices.Equal(got, want) {
		t.Errorf("feature_users holds %v, want %v", got, want)
	}
	userCopyIsPG(t, pool, rd, keys, "gone-w")
	verifyCopy(t, st)
}

// A row a batch holds (it is applying an event of the user) is passed by, not waited for: the
// trim never holds up a batch, nor deletes a user whose event is being applied. The next
// cycle takes it if it is still inactive.
func TestTrimUsersPassesByARowABatchHolds(t *testing.T) {
	ctx := context.Background()
	st, pool, _, _, _ := userTrimFixture(t)
	tx := otherTx(t, pool, `SELECT 1 FROM feature_users WHERE user_id = 'gone-w' FOR UPDATE`)
	start := time.Now()
	n, err := st.TrimUsers(ctx, userRetention, 1000)
	if err != nil || n != 1 {
		t.Fatalf("trimmed %d (%v), want 1 (gone-m; gone-w is held)", n, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("the trim took %s: it waited for the held row", d)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := st.TrimUsers(ctx, userRetention, 1000); err != nil || n != 1 {
		t.Errorf("the next pass trimmed %d (%v), want 1 (gone-w, released)", n, err)
	}
	if got, want := userRows(t, pool, "feature_users"), []string{"hot", "kept"}; !slices.Equal(got, want) {
		t.Errorf("feature_users holds %v, want %v", got, want)
	}
}

// Each call deletes at most a page of users (see testTrimInPages).
func TestTrimUsersInPages(t *testing.T) {
	testTrimInPages(t, userKind, "utrimp", "user%02d", func(i int, id string, now, _ int64) featurestore.Event {
		return trimImpression(fmt.Sprintf("m%d", i), id, now, "x")
	})
}

// Several consumers run the pass: one at a time trims users, the others' calls return at
// once; the item trim has its own lock and its own cursor.
func TestTrimUsersOneConsumerAtATime(t *testing.T) {
	st, pool, _, _, _ := userTrimFixture(t)
	testTrimOneConsumerAtATime(t, st, pool, userKind, 2, func(other *featurestore.Store) {
		if _, err := other.TrimItems(context.Background(), retention, 1000); err != nil {
			t.Errorf("the item trim, while the user trim holds its lock: %v", err)
		}
	})
}

// `users forget` erasing a user the trim is deleting waits for the trim's commit (the trim
// never waits for it), finds the row gone, and still records and completes the erasure; the
// trim's rewrite of the copy brings nothing back.
func TestTrimUsersRacingForget(t *testing.T) {
	ctx := context.Background()
	st, pool, rd, keys, _ := userTrimFixture(t)
	type result struct {
		rep featurestore.ForgetReport
		err error
	}
	forgot := make(chan result, 1)
	st.SetTrimHooks(func(ids []string) {
		if !slices.Contains(ids, "gone-w") {
			t.Errorf("trim deleting %v, want gone-w among them", ids)
		}
		go func() {
			rep, err := st.Forget(ctx, []string{"gone-w"}, 0)
			forgot <- result{rep, err}
		}()
		waitForLockWait(t, pool, "the trimmed user's row")
	}, nil, nil)
	if n, err := st.TrimUsers(ctx, userRetention, 1000); err != nil || n != 2 {
		t.Fatalf("trimmed %d (%v), want 2", n, err)
	}
	r := <-forgot
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.rep.Deleted["feature_users"] != 0 {
		t.Errorf("forget deleted %d feature rows, want 0 (the trim's)", r.rep.Deleted["feature_users"])
	}
	if got := userRows(t, pool, "forgotten_users"); !slices.Equal(got, []string{"gone-w"}) {
		t.Errorf("forgotten_users holds %v, want [gone-w]", got)
	}
	if got := userRows(t, pool, "feature_users"); slices.Contains(got, "gone-w") || exists(t, rd, keys.User("gone-w")) {
		t.Errorf("gone-w back after the trim and the erasure (rows %v)", got)
	}
	verifyCopy(t, st)
}

// A writer that read a user's row before the trim and wrote the copy after the trim deleted
// the hash (a read-through, a journal heal) brings the old hash back, at the old row's
// version. A user who comes back before the second pass gets a row at a higher version than
// that (the trim keeps the deleted row's version until then), so their first write replaces
// the late hash instead of hiding behind it until the second pass.
func TestTrimmedUserComingBackOutranksALateWrite(t *testing.T) {
	ctx := context.Background()
	st, pool, rd, keys, now := userTrimFixture(t)
	gone := []string{"gone-w", "gone-m"}
	saved := map[string]map[string]string{}
	for _, u := range gone {
		h, err := rd.Do(ctx, rd.B().Hgetall().Key(keys.User(u)).Build()).AsStrMap()
		if err != nil || len(h) == 0 {
			t.Fatalf("hash of %s: %v %v", u, h, err)
		}
		saved[u] = h
	}
	if _, err := st.TrimUsers(ctx, userRetention, 1000); err != nil {
		t.Fatal(err)
	}
	for _, u := range gone {
		cmd := rd.B().Hset().Key(keys.User(u)).FieldValue()
		for f, v := range saved[u] {
			cmd = cmd.FieldValue(f, v)
		}
		if err := rd.Do(ctx, cmd.Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	applyMirrored(t, st, []featurestore.Event{trimWatch("back-w", "gone-w", "z", now), trimImpression("back-m", "gone-m", now, "y")})
	for _, u := range gone {
		userCopyIsPG(t, pool, rd, keys, u)
	}
	// The next write of each, impressions only, is partial: it completes the new hash.
	applyMirrored(t, st, []featurestore.Event{trimImpression("again-w", "gone-w", now+1000, "x"), trimImpression("again-m", "gone-m", now+1000, "x")})
	for _, u := range gone {
		userCopyIsPG(t, pool, rd, keys, u)
	}
	verifyCopy(t, st)
	// After the second pass a trimmed user's version starts over: nothing of the old hash is left.
	userKind.runSecondPass(t, st, pool)
	verifyCopy(t, st)
}
