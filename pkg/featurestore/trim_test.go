package featurestore_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"

	"recsys/pkg/features"
	"recsys/pkg/featurestore"
	"recsys/pkg/ranking"
	"recsys/pkg/testutil"
)

const (
	day       = 24 * time.Hour
	retention = 90 * day
)

func trimWatch(id, user, item string, ts int64) featurestore.Event {
	pct, ended := 100.0, true
	return featurestore.Event{Interaction: features.Interaction{Kind: features.KindWatch, EventID: id, UserID: user, TsMs: ts,
		ItemID: item, WatchTimeSec: 30, PercentWatched: &pct, Ended: &ended}}
}

func trimImpression(id, user string, ts int64, items ...string) featurestore.Event {
	return featurestore.Event{Interaction: features.Interaction{Kind: features.KindImpression, EventID: id, UserID: user, TsMs: ts, Items: items}}
}

// ageItems makes the items' rows look last written at ms (the batches write now()).
func ageItems(t *testing.T, pool *pgxpool.Pool, ms int64, ids ...string) {
	t.Helper()
	itemKind.age(t, pool, ms, ids...)
}

func itemRows(t *testing.T, pool *pgxpool.Pool, table string) []string {
	t.Helper()
	return itemKind.rows(t, pool, table)
}

// trimKind is what the item and user retention tests differ by; the scenarios they share
// (racing a batch, the second pass, paging, one consumer at a time) take it.
type trimKind struct {
	table, column string // feature_items, item_id
	retention     time.Duration
	stale         time.Duration // longer ago than retention
	trimFunc      func(*featurestore.Store, context.Context, time.Duration, int) (int, error)
}

var itemKind = trimKind{table: "feature_items", column: "item_id", retention: retention, stale: 100 * day,
	trimFunc: (*featurestore.Store).TrimItems}

// trim runs one pass of a page and fails the test on an error.
func (k trimKind) trim(t *testing.T, st *featurestore.Store, page int) int {
	t.Helper()
	n, err := k.trimFunc(st, context.Background(), k.retention, page)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// age makes the rows look last written at ms (the batches write now()).
func (k trimKind) age(t *testing.T, pool *pgxpool.Pool, ms int64, ids ...string) {
	t.Helper()
	tag, err := pool.Exec(context.Background(), `UPDATE `+k.table+` SET last_active_ms = $2 WHERE `+k.column+` = ANY($1)`, ids, ms)
	if err != nil || tag.RowsAffected() != int64(len(ids)) {
		t.Fatalf("age %s %v: %d rows, %v", k.table, ids, tag.RowsAffected(), err)
	}
}

// rows returns the ids in table, which has k's id column.
func (k trimKind) rows(t *testing.T, pool *pgxpool.Pool, table string) []string {
	t.Helper()
	rows, _ := pool.Query(context.Background(), `SELECT `+k.column+` FROM `+table+` ORDER BY `+k.column)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// makeSecondPassDue moves the trims recorded for the second pass TrimSecondPass back.
func (k trimKind) makeSecondPassDue(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), `UPDATE `+k.table+`_trimmed SET trimmed_at = trimmed_at - interval '1 hour'`); err != nil {
		t.Fatal(err)
	}
}

// runSecondPass runs k's trim with the second pass due, which forgets every trimmed row.
func (k trimKind) runSecondPass(t *testing.T, st *featurestore.Store, pool *pgxpool.Pool) {
	t.Helper()
	k.makeSecondPassDue(t, pool)
	k.trim(t, st, 1000)
	if got := k.rows(t, pool, k.table+"_trimmed"); len(got) != 0 {
		t.Errorf("%s_trimmed holds %v after the second pass, want none", k.table, got)
	}
}

// trimRaceSteps are the steps of a trim a racing batch's Redis write lands at: before the
// keys are deleted, between their deletion and the trim's read of what came back, and after
// the trim is done.
var trimRaceSteps = []string{"before-delete", "before-read", "after"}

// raceTrim runs a trim of k whose lock of the rows (deleted, not committed) a batch of evs,
// writing the row of id among them, waits for (what names the rows in the wait's failure);
// the batch's Redis write lands at step at of trimRaceSteps. The hooks are gone on return.
func raceTrim(t *testing.T, st *featurestore.Store, pool *pgxpool.Pool, k trimKind, at, id, what string, evs ...featurestore.Event) {
	t.Helper()
	ctx := context.Background()
	applied := make(chan error, 1)
	var wrote chan error
	started := false
	locked := func(ids []string) {
		if !slices.Contains(ids, id) {
			t.Errorf("trim deleting %v, want %s among them", ids, id)
		}
		started = true
		go func() {
			a, err := st.Apply(ctx, &featurestore.Batch{Events: evs})
			if err == nil {
				wrote = make(chan error, 1)
				applied <- nil
				wrote <- st.WriteRedis(ctx, a)
				return
			}
			applied <- err
		}()
		waitForLockWait(t, pool, what)
	}
	landed := func() {
		if err := <-applied; err != nil {
			t.Fatal(err)
		}
		if err := <-wrote; err != nil {
			t.Fatal(err)
		}
	}
	var trimmed, deleted func([]string)
	switch at {
	case "before-delete":
		trimmed = func([]string) { landed() }
	case "before-read":
		deleted = func([]string) { landed() }
	}
	st.SetTrimHooks(locked, trimmed, deleted)
	defer st.SetTrimHooks(nil, nil, nil)
	k.trim(t, st, 1000)
	if !started {
		t.Fatal("the trim never held the rows")
	}
	if at == "after" {
		landed()
	}
}

// secondPassWaits runs k's trim after a late write to the copy of trimmed rows: while the
// second pass is not due yet, and while a repopulation holds its lock (trimmed rows are
// still recorded for it then); late reports whether the late write is still in the copy. It
// returns with the lock free.
func secondPassWaits(t *testing.T, st *featurestore.Store, pool *pgxpool.Pool, rd rueidis.Client, keys featurestore.Keys,
	k trimKind, trimmed int, late func() bool) {
	t.Helper()
	ctx := context.Background()
	k.trim(t, st, 1000)
	if !late() || len(k.rows(t, pool, k.table+"_trimmed")) != trimmed {
		t.Fatal("the second pass ran before TrimSecondPass")
	}
	k.makeSecondPassDue(t, pool)
	if err := rd.Do(ctx, rd.B().Set().Key(keys.Lock).Value("another-process").Px(time.Minute).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	k.trim(t, st, 1000)
	if !late() || len(k.rows(t, pool, k.table+"_trimmed")) != trimmed {
		t.Fatal("the second pass ran while a repopulation held its lock")
	}
	if err := rd.Do(ctx, rd.B().Del().Key(keys.Lock).Build()).Error(); err != nil {
		t.Fatal(err)
	}
}

// testTrimInPages: each call deletes at most a page, examining the next page in id order, and
// starts over after the last one. Of 25 rows whose ids are format with 0 to 24 (written by
// event), the first 20 are made stale.
func testTrimInPages(t *testing.T, k trimKind, prefix, format string, event func(i int, id string, now, past int64) featurestore.Event) {
	pool, rd := servers(t)
	st := featurestore.New(pool, rd, testutil.Unique(prefix)+":", testConfig(), nil)
	now := time.Now().UnixMilli()
	past := now - k.stale.Milliseconds()
	var evs []featurestore.Event
	var ids []string
	for i := range 25 {
		id := fmt.Sprintf(format, i)
		ids = append(ids, id)
		evs = append(evs, event(i, id, now, past))
	}
	applyMirrored(t, st, evs)
	k.age(t, pool, past, ids[:20]...)
	var got []int
	for range 3 {
		got = append(got, k.trim(t, st, 10))
	}
	// Pages: 00-09, 10-19, 20-24 (active).
	if want := []int{10, 10, 0}; !slices.Equal(got, want) {
		t.Errorf("trimmed %v per call, want %v", got, want)
	}
	// The call after the last page starts from the first again: 20-24, stale now. (Aged
	// before it, not a call later: a pass that started over a call late would trim them too.)
	k.age(t, pool, past, ids[20:]...)
	if n, err := k.trimFunc(st, context.Background(), k.retention, 10); err != nil || n != 5 {
		t.Errorf("the pass after the wrap-around trimmed %d (%v), want 5", n, err)
	}
	if got := k.rows(t, pool, k.table); len(got) != 0 {
		t.Errorf("%s holds %v, want none", k.table, got)
	}
}

// testRetentionOffFinishesSecondPass: a trim of k, then a late write (write makes it and
// reports whether it is in the copy) brings trimmed rows back in the copy, then the
// retention is turned off (0) before the second pass is due; the caller checks the late write
// is gone. The passes at retention 0
// delete no row but still run the second pass: turned off, it used to stop too, leaving the
// rows in k's _trimmed table and the late write in the copy for good.
func testRetentionOffFinishesSecondPass(t *testing.T, st *featurestore.Store, pool *pgxpool.Pool, k trimKind, write func() bool) {
	t.Helper()
	ctx := context.Background()
	if k.trim(t, st, 1000) == 0 {
		t.Fatal("fixture: nothing trimmed")
	}
	if !write() {
		t.Fatal("fixture: the late write is not in the copy")
	}
	kept := k.rows(t, pool, k.table)
	off := func() {
		t.Helper()
		if n, err := k.trimFunc(st, ctx, 0, 1000); err != nil || n != 0 {
			t.Fatalf("a pass with the retention off trimmed %d (%v), want 0", n, err)
		}
	}
	off()
	if len(k.rows(t, pool, k.table+"_trimmed")) == 0 {
		t.Fatal("the second pass ran before TrimSecondPass")
	}
	k.makeSecondPassDue(t, pool)
	off()
	if got := k.rows(t, pool, k.table+"_trimmed"); len(got) != 0 {
		t.Errorf("%s_trimmed holds %v with the retention off, want none (the second pass done)", k.table, got)
	}
	if got := k.rows(t, pool, k.table); !slices.Equal(got, kept) {
		t.Errorf("%s holds %v after passes with the retention off, want %v", k.table, got, kept)
	}
	verifyCopy(t, st)
}

// testTrimOneConsumerAtATime: several consumers run the pass: one at a time trims (want),
// the others' calls return at once; meanwhile runs, with another consumer's store, while the
// first holds the lock.
func testTrimOneConsumerAtATime(t *testing.T, st *featurestore.Store, pool *pgxpool.Pool, k trimKind, want int,
	meanwhile func(other *featurestore.Store)) {
	t.Helper()
	ctx := context.Background()
	other := featurestore.New(pool, nil, "unused:", testConfig(), nil)
	held := false
	st.SetTrimHooks(func([]string) {
		held = true
		if n, err := k.trimFunc(other, ctx, k.retention, 1000); err != nil || n != 0 {
			t.Errorf("a second consumer's pass trimmed %d (%v) while the first held the lock, want 0", n, err)
		}
		if meanwhile != nil {
			meanwhile(other)
		}
	}, nil, nil)
	if n, err := k.trimFunc(st, ctx, k.retention, 1000); err != nil || n != want || !held {
		t.Fatalf("trimmed %d (%v), want %d", n, err, want)
	}
}

func exists(t *testing.T, rd rueidis.Client, key string) bool {
	t.Helper()
	n, err := rd.Do(context.Background(), rd.B().Exists().Key(key).Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	return n == 1
}

func inList(t *testing.T, rd rueidis.Client, key, member string) bool {
	t.Helper()
	_, err := rd.Do(context.Background(), rd.B().Zscore().Key(key).Member(member).Build()).AsFloat64()
	if rueidis.IsRedisNil(err) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

// trimFixture applies, 100 days ago: two watched items "old-a" and "old-b" (one user, so each
// is in the other's neighbour list), an item only shown, "quiet", and "popular-old", watched
// by 20 users; and now: a watch of "hot" and an impression of "shown". All but hot and shown
// are then made to look last written 100 days ago.
func trimFixture(t *testing.T) (*featurestore.Store, *pgxpool.Pool, rueidis.Client, featurestore.Keys, int64) {
	t.Helper()
	pool, rd := servers(t)
	prefix := testutil.Unique("trim") + ":"
	st := featurestore.New(pool, rd, prefix, testConfig(), nil)
	now := time.Now().UnixMilli()
	past := now - (100 * day).Milliseconds()
	evs := []featurestore.Event{
		trimWatch("w1", "u1", "old-a", past),
		trimWatch("w2", "u1", "old-b", past+60_000),
		trimImpression("m1", "u2", past, "quiet"),
	}
	for i := range 20 {
		evs = append(evs, trimWatch(fmt.Sprintf("p%d", i), fmt.Sprintf("fan%d", i), "popular-old", past))
	}
	applyMirrored(t, st, evs)
	applyMirrored(t, st, []featurestore.Event{trimWatch("w3", "u3", "hot", now), trimImpression("m2", "u4", now, "shown")})
	ageItems(t, pool, past, "old-a", "old-b", "quiet", "popular-old")
	return st, pool, rd, featurestore.NewKeys(prefix), now
}

// TrimItems deletes the items no batch wrote for the retention whose long popularity is
// below one full watch that long ago: their rows, their neighbour lists, their Redis hashes
// and lists, their places in the global lists. An item watched or only shown within the
// retention stays, and so does one whose popularity still outweighs the threshold.
func TestTrimItemsDeletesInactiveItemsOnly(t *testing.T) {
	ctx := context.Background()
	st, pool, rd, keys, _ := trimFixture(t)
	if !exists(t, rd, keys.Neighbours("old-a")) || !inList(t, rd, keys.PopLong, "old-a") || !inList(t, rd, keys.Fresh, "quiet") {
		t.Fatal("fixture: the old items are not in the copy")
	}
	n, err := st.TrimItems(ctx, retention, 1000)
	if err != nil {
		t.Fatal(err)
	}
	gone := []string{"old-a", "old-b", "quiet"}
	if n != len(gone) {
		t.Errorf("trimmed %d items, want %d (%v)", n, len(gone), gone)
	}
	if got, want := itemRows(t, pool, "feature_items"), []string{"hot", "popular-old", "shown"}; !slices.Equal(got, want) {
		t.Errorf("feature_items holds %v, want %v", got, want)
	}
	if got := itemRows(t, pool, "feature_neighbours"); len(got) != 0 {
		t.Errorf("feature_neighbours holds %v, want no list (only old-a and old-b had one)", got)
	}
	if got := itemRows(t, pool, "feature_items_trimmed"); !slices.Equal(got, gone) {
		t.Errorf("feature_items_trimmed holds %v, want %v (for the second pass)", got, gone)
	}
	for _, id := range gone {
		for _, key := range []string{keys.Item(id), keys.Neighbours(id)} {
			if exists(t, rd, key) {
				t.Errorf("%s still in the copy", key)
			}
		}
		for _, key := range []string{keys.PopShort, keys.PopLong, keys.Fresh} {
			if inList(t, rd, key, id) {
				t.Errorf("%s still in %s", id, key)
			}
		}
	}
	for _, id := range []string{"hot", "popular-old", "shown"} {
		if !exists(t, rd, keys.Item(id)) {
			t.Errorf("%s kept in PostgreSQL but gone from the copy", id)
		}
	}
	verifyCopy(t, st)
	if n, err := st.TrimItems(ctx, retention, 1000); err != nil || n != 0 {
		t.Errorf("second call trimmed %d (%v), want 0", n, err)
	}
}

// A trimmed item that gets an event comes back as a new item, whole, in PostgreSQL and in
// the copy: its counters start over (not the trimmed ones plus the new event), and its first
// seen is the new event's. One only paired with a watch (it is in the watching user's history)
// comes back with no statistics and first seen 0, not the far future that would head the fresh
// lists, and is trimmed again once it stays quiet.
func TestTrimmedItemComesBackWhole(t *testing.T) {
	ctx := context.Background()
	st, pool, rd, keys, now := trimFixture(t)
	if _, err := st.TrimItems(ctx, retention, 1000); err != nil {
		t.Fatal(err)
	}
	applyMirrored(t, st, []featurestore.Event{
		trimImpression("m3", "u5", now, "old-a"),
		trimWatch("w4", "u1", "new", now), // u1's history: old-b, old-a
	})
	var imp, wat, fs, nb int64
	if err := pool.QueryRow(ctx, `SELECT impressions, watches, first_seen_ms, nb_count FROM feature_items WHERE item_id = 'old-a'`).Scan(&imp, &wat, &fs, &nb); err != nil {
		t.Fatal(err)
	}
	if imp != 1 || wat != 0 || fs != now || nb != 1 {
		t.Errorf("old-a back with impressions %d, watches %d, first seen %d, %d neighbours; want 1, 0, %d, 1", imp, wat, fs, nb, now)
	}
	if got := hget(t, rd, keys.Item("old-a"), "imp"); got != 1 {
		t.Errorf("copy of old-a has %d impressions, want 1", got)
	}
	if err := pool.QueryRow(ctx, `SELECT impressions, watches, first_seen_ms, nb_count FROM feature_items WHERE item_id = 'old-b'`).Scan(&imp, &wat, &fs, &nb); err != nil {
		t.Fatal(err)
	}
	if imp != 0 || wat != 0 || fs != 0 || nb != 1 {
		t.Errorf("old-b back (paired only) with impressions %d, watches %d, first seen %d, %d neighbours; want 0, 0, 0, 1", imp, wat, fs, nb)
	}
	if got := hget(t, rd, keys.Item("old-b"), "fs"); got != 0 {
		t.Errorf("copy of old-b: first seen %d, want 0", got)
	}
	verifyCopy(t, st)
	// Paired again later: a pair moves no first seen (old-b's stays 0, new's the watch's).
	applyMirrored(t, st, []featurestore.Event{trimWatch("w5", "u1", "newer", now+1000)})
	for id, want := range map[string]int64{"old-b": 0, "new": now} {
		if err := pool.QueryRow(ctx, `SELECT first_seen_ms FROM feature_items WHERE item_id = $1`, id).Scan(&fs); err != nil || fs != want {
			t.Errorf("%s first seen %d after another pair (%v), want %d", id, fs, err, want)
		}
	}
	ageItems(t, pool, now-(100*day).Milliseconds(), "old-b")
	if _, err := st.TrimItems(ctx, retention, 1000); err != nil {
		t.Fatal(err)
	}
	if got := itemRows(t, pool, "feature_items"); slices.Contains(got, "old-b") || !slices.Contains(got, "old-a") {
		t.Errorf("feature_items holds %v, want old-b trimmed again and old-a kept", got)
	}
	verifyCopy(t, st)
}

// A batch that writes an item while a trim deletes it waits for the trim's locks and creates
// the item anew; whatever order its Redis write and the trim's deletion of the keys land in,
// the copy ends up with PostgreSQL's values. Each case has the batch's write land at another
// step of the trim: before the keys are deleted, between their deletion and the trim's read
// of what came back, and after the trim is done.
func TestTrimRacingABatchLeavesTheCopyWhole(t *testing.T) {
	for _, at := range trimRaceSteps {
		t.Run(at, func(t *testing.T) {
			ctx := context.Background()
			st, pool, rd, keys, now := trimFixture(t)
			raceTrim(t, st, pool, itemKind, at, "old-a", "the trimmed rows",
				trimWatch("race", "u9", "old-a", now), trimImpression("race-imp", "u10", now, "old-b"))
			var wat, imp int64
			if err := pool.QueryRow(ctx, `SELECT watches FROM feature_items WHERE item_id = 'old-a'`).Scan(&wat); err != nil || wat != 1 {
				t.Fatalf("old-a in PostgreSQL: %d watches (%v), want 1 (the batch's, after the trim)", wat, err)
			}
			if err := pool.QueryRow(ctx, `SELECT impressions FROM feature_items WHERE item_id = 'old-b'`).Scan(&imp); err != nil || imp != 1 {
				t.Fatalf("old-b in PostgreSQL: %d impressions (%v), want 1", imp, err)
			}
			if got := hget(t, rd, keys.Item("old-a"), "wat"); got != 1 {
				t.Errorf("copy of old-a: %d watches, want 1", got)
			}
			if got := hget(t, rd, keys.Item("old-b"), "imp"); got != 1 {
				t.Errorf("copy of old-b: %d impressions, want 1", got)
			}
			if !inList(t, rd, keys.PopLong, "old-a") {
				t.Error("old-a, watched again, is not in the popular list of the copy")
			}
			verifyCopy(t, st)
			// The second pass deletes the keys of items still trimmed; those back are
			// written again whole.
			itemKind.runSecondPass(t, st, pool)
			if got := hget(t, rd, keys.Item("old-a"), "wat"); got != 1 {
				t.Errorf("after the second pass, copy of old-a: %d watches, want 1", got)
			}
			verifyCopy(t, st)
		})
	}
}

// A writer that read an item's row before the trim and wrote the copy after its deletion of
// the keys (a journal heal, a repopulation's snapshot) brings them back; the second pass,
// TrimSecondPass later and once no repopulation runs, deletes them again and forgets the
// item.
func TestTrimSecondPassDeletesLateWrites(t *testing.T) {
	ctx := context.Background()
	st, pool, rd, keys, _ := trimFixture(t)
	if _, err := st.TrimItems(ctx, retention, 1000); err != nil {
		t.Fatal(err)
	}
	late := func() {
		t.Helper()
		cmds := rueidis.Commands{
			rd.B().Hset().Key(keys.Item("old-a")).FieldValue().FieldValue("imp", "5").FieldValue("fs", "1").Build(),
			rd.B().Zadd().Key(keys.PopLong).ScoreMember().ScoreMember(1, "old-a").Build(),
		}
		for _, r := range rd.DoMulti(ctx, cmds...) {
			if err := r.Error(); err != nil {
				t.Fatal(err)
			}
		}
	}
	late()
	secondPassWaits(t, st, pool, rd, keys, itemKind, 3, func() bool { return exists(t, rd, keys.Item("old-a")) })
	itemKind.runSecondPass(t, st, pool)
	if exists(t, rd, keys.Item("old-a")) || inList(t, rd, keys.PopLong, "old-a") {
		t.Error("the second pass left the late write of old-a")
	}
	verifyCopy(t, st)
}

// Items trimmed before --consumer.item-retention is turned off (0) still get their second
// pass: a late write of old-a's hash would otherwise stay in the copy, an item /reco serves
// with no row behind it.
func TestTrimItemsSecondPassRunsWithTheRetentionOff(t *testing.T) {
	ctx := context.Background()
	st, pool, rd, keys, _ := trimFixture(t)
	testRetentionOffFinishesSecondPass(t, st, pool, itemKind, func() bool {
		if err := rd.Do(ctx, rd.B().Hset().Key(keys.Item("old-a")).FieldValue().FieldValue("imp", "5").FieldValue("fs", "1").Build()).Error(); err != nil {
			t.Fatal(err)
		}
		return exists(t, rd, keys.Item("old-a"))
	})
	if exists(t, rd, keys.Item("old-a")) {
		t.Error("the second pass left the late write of old-a")
	}
}

// A batch that commits between the trim's scan and its locks (a watch and an impression of
// candidates) keeps the items: the criterion is checked again under the locks.
func TestTrimRechecksUnderTheLocks(t *testing.T) {
	ctx := context.Background()
	st, pool, rd, keys, now := trimFixture(t)
	st.SetTrimScanned(func(ids []string) {
		if !slices.Contains(ids, "old-a") || !slices.Contains(ids, "quiet") {
			t.Errorf("candidates %v, want old-a and quiet among them", ids)
		}
		applyMirrored(t, st, []featurestore.Event{trimWatch("late-w", "u7", "old-a", now), trimImpression("late-m", "u8", now, "quiet")})
	})
	if n, err := st.TrimItems(ctx, retention, 1000); err != nil || n != 1 {
		t.Fatalf("trimmed %d (%v), want 1 (old-b)", n, err)
	}
	if got, want := itemRows(t, pool, "feature_items"), []string{"hot", "old-a", "popular-old", "quiet", "shown"}; !slices.Equal(got, want) {
		t.Errorf("feature_items holds %v, want %v", got, want)
	}
	if got := hget(t, rd, keys.Item("old-a"), "wat"); got != 2 {
		t.Errorf("copy of old-a: %d watches, want 2", got)
	}
	verifyCopy(t, st)
}

// Each call deletes at most a page of items (see testTrimInPages).
func TestTrimItemsInPages(t *testing.T) {
	testTrimInPages(t, itemKind, "trimp", "item%02d", func(i int, id string, _, past int64) featurestore.Event {
		return trimImpression(fmt.Sprintf("m%d", i), "u", past, id)
	})
}

// Several consumers run the pass: one at a time trims, the others' calls return at once.
func TestTrimItemsOneConsumerAtATime(t *testing.T) {
	st, pool, _, _, _ := trimFixture(t)
	testTrimOneConsumerAtATime(t, st, pool, itemKind, 3, nil)
}

// A neighbour list may name a trimmed item (lists are not searched for it): both loaders
// return it as a neighbour without statistics, and the ranker scores it with zero statistics
// instead of failing the request.
func TestRecoRanksATrimmedNeighbour(t *testing.T) {
	ctx := context.Background()
	st, pool, rd, keys, now := trimFixture(t)
	ageItems(t, pool, now, "old-a")
	if _, err := st.TrimItems(ctx, retention, 1000); err != nil {
		t.Fatal(err)
	}
	applyMirrored(t, st, []featurestore.Event{trimWatch("v1", "v", "old-a", now)})
	rcfg := ranking.DefaultConfig()
	opts := rcfg.SnapshotOptions()
	for name, l := range map[string]interface {
		Snapshot(context.Context, string, int64, ranking.SnapshotOptions) (ranking.Snapshot, error)
	}{
		"redis":    featurestore.NewRedisLoader(rd, keys.Prefix, testConfig()),
		"postgres": featurestore.NewPGLoader(pool, keys.Prefix, testConfig()),
	} {
		s, err := l.Snapshot(ctx, "v", now, opts)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !slices.ContainsFunc(s.Neighbours["old-a"], func(x ranking.Scored) bool { return x.ItemID == "old-b" }) {
			t.Fatalf("%s: neighbours of old-a %v, want the trimmed old-b", name, s.Neighbours["old-a"])
		}
		if _, ok := s.Stats("old-b"); ok {
			t.Errorf("%s: statistics for the trimmed old-b", name)
		}
		res := ranking.NewWeighted(rcfg).Rank(&s, 10)
		if !slices.Contains(res.Items, "old-b") || slices.Contains(res.Items, "old-a") {
			t.Errorf("%s: ranked %v, want old-b (a candidate with zero statistics) and not the watched old-a", name, res.Items)
		}
	}
}
