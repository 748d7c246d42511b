package featurestore_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"

	"recsys/pkg/features"
	"recsys/pkg/featurestore"
	"recsys/pkg/featurestore/fstest"
)

var rawTs = time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC).UnixMilli()

// insertRawWatch writes a raw watch row as the API's ingest does, and returns the event the
// stream carries for it.
func insertRawWatch(t *testing.T, pool *pgxpool.Pool, id, user, item string, ts int64) featurestore.Event {
	t.Helper()
	pct, ended := 80.0, true
	if _, err := pool.Exec(context.Background(), `INSERT INTO watches (event_id, user_id, session_id, request_id, item_id,
  watch_time_sec, percent_watched, ended, ts_ms, ts, server_received_ts_ms)
VALUES ($1, $2, 's', 'r', $3, 30, $4, true, $5::bigint, to_timestamp($5::bigint / 1000.0), $5::bigint)`, id, user, item, pct, ts); err != nil {
		t.Fatal(err)
	}
	return featurestore.Event{Interaction: features.Interaction{Kind: features.KindWatch, EventID: id, UserID: user, TsMs: ts,
		ItemID: item, WatchTimeSec: 30, PercentWatched: &pct, Ended: &ended}}
}

// streamed sets up what a deployment has before a rebuild from events: n raw watches applied
// by the stream, and a copy replaced once by `features rebuild` (generation 2).
func streamed(t *testing.T, pool *pgxpool.Pool, st *featurestore.Store, n int) {
	t.Helper()
	ctx := context.Background()
	var evs []featurestore.Event
	for i := range n {
		evs = append(evs, insertRawWatch(t, pool, fmt.Sprintf("e%d", i), fmt.Sprintf("u%d", i%2), fmt.Sprintf("i%d", i%3), rawTs+int64(i)*1000))
	}
	if _, err := st.Apply(ctx, &featurestore.Batch{Events: evs}); err != nil {
		t.Fatal(err)
	}
	if err := st.Repopulate(ctx, true); err != nil {
		t.Fatal(err)
	}
}

func pgGeneration(t *testing.T, pool *pgxpool.Pool) int64 {
	t.Helper()
	var g int64
	if err := pool.QueryRow(context.Background(), `SELECT coalesce(max(generation), 0) FROM feature_meta`).Scan(&g); err != nil {
		t.Fatal(err)
	}
	return g
}

func copyGeneration(t *testing.T, rd rueidis.Client, prefix string) int64 {
	t.Helper()
	ctx := context.Background()
	v, err := rd.Do(ctx, rd.B().Hget().Key(featurestore.NewKeys(prefix).Meta).Field("ep").Build()).ToString()
	if err != nil {
		t.Fatalf("copy generation: %v", err)
	}
	g, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		t.Fatalf("copy generation %q: %v", v, err)
	}
	return g
}

func verifyCopy(t *testing.T, st *featurestore.Store) {
	t.Helper()
	rep, err := st.Verify(context.Background(), featurestore.VerifyOptions{Sample: 100, Grace: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("the copy differs from postgres: %+v", rep)
	}
}

// A rebuild from events that fails after emptying the tables (interrupted here after its
// first batch; a PostgreSQL error does the same) used to recreate feature_meta at generation
// 1 under a copy still marked ready at generation 2: the copy refused every later write as
// older, the writers took that for a repopulation to come and dropped their journal rows,
// and `features rebuild` bumped 1 -> 2 and merged into the old copy. The generation must stay
// above the copy's, so the next write finds the copy behind, keeps its journal row and gets
// it repopulated, by the heal loop or by `features rebuild`, to PostgreSQL's state.
func TestFailedRebuildFromEventsLeavesCopyRepairable(t *testing.T) {
	for _, tc := range []struct {
		name  string
		force bool
	}{
		{"heal loop", false},
		{"features rebuild", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			pool, rd := servers(t)
			const prefix = "rb:"
			st := featurestore.New(pool, rd, prefix, testConfig(), nil)
			streamed(t, pool, st, 6)
			before := copyGeneration(t, rd, prefix)

			rctx, cancel := context.WithCancel(ctx)
			defer cancel()
			if _, err := st.RebuildFromEvents(rctx, 2, func(int) { cancel() }); err == nil {
				t.Fatal("the interrupted rebuild succeeded")
			}
			if g := pgGeneration(t, pool); g <= before {
				t.Fatalf("after the failed rebuild postgres is at generation %d, the copy at %d: want postgres above", g, before)
			}

			// A consumer runs again and mirrors a new watch.
			consumer := featurestore.New(pool, rd, prefix, testConfig(), nil)
			a, err := consumer.Apply(ctx, &featurestore.Batch{Events: []featurestore.Event{insertRawWatch(t, pool, "new", "u9", "i9", rawTs+100_000)}})
			if err != nil {
				t.Fatal(err)
			}
			if err := consumer.WriteRedis(ctx, a); !errors.Is(err, featurestore.ErrRedisBehind) {
				t.Fatalf("write onto the old copy: %v, want ErrRedisBehind", err)
			}
			if ready, err := consumer.RedisReady(ctx); err != nil || ready {
				t.Fatalf("the old copy is ready: %v (%v)", ready, err)
			}
			if _, err := consumer.HealPending(ctx, 0, 100); err != nil {
				t.Fatal(err)
			}
			var journal int
			if err := pool.QueryRow(ctx, `SELECT count(*) FROM feature_redis_pending`).Scan(&journal); err != nil {
				t.Fatal(err)
			}
			if journal == 0 {
				t.Fatal("the refused write's journal row was deleted before a repopulation")
			}

			if err := consumer.Repopulate(ctx, tc.force); err != nil {
				t.Fatal(err)
			}
			if got, want := copyGeneration(t, rd, prefix), pgGeneration(t, pool); got != want {
				t.Fatalf("copy generation %d after the repair, postgres %d", got, want)
			}
			keys := featurestore.NewKeys(prefix)
			if n, err := rd.Do(ctx, rd.B().Exists().Key(keys.User("u9"), keys.Item("i9")).Build()).AsInt64(); err != nil || n != 2 {
				t.Fatalf("the new watch's user and item in the copy: %d (%v), want 2", n, err)
			}
			verifyCopy(t, consumer)
		})
	}
}

// A copy of a newer generation than PostgreSQL's (a database restored from a backup) refuses
// every write as older; it must not count as ready, so the heal loop replaces it.
func TestCopyAheadOfPostgresIsNotReady(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	const prefix = "ah:"
	st := featurestore.New(pool, rd, prefix, testConfig(), nil)
	streamed(t, pool, st, 6)
	if ready, err := st.RedisReady(ctx); err != nil || !ready {
		t.Fatalf("ready after the rebuild: %v (%v)", ready, err)
	}
	// PostgreSQL unreachable (a closed pool): the copy is judged by Redis alone, so an outage
	// does not make it look incomplete.
	down, err := pgxpool.New(ctx, pool.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	down.Close()
	if ready, err := featurestore.New(down, rd, prefix, testConfig(), nil).RedisReady(ctx); err != nil || !ready {
		t.Fatalf("ready with postgres unreachable: %v (%v), want true", ready, err)
	}
	if _, err := pool.Exec(ctx, `UPDATE feature_meta SET generation = 1`); err != nil {
		t.Fatal(err)
	}
	if ready, err := st.RedisReady(ctx); err != nil || ready {
		t.Fatalf("a copy at generation %d over postgres at 1 is ready: %v (%v)", copyGeneration(t, rd, prefix), ready, err)
	}
	if err := st.Repopulate(ctx, false); err != nil {
		t.Fatal(err)
	}
	if ready, err := st.RedisReady(ctx); err != nil || !ready {
		t.Fatalf("ready after the repopulation: %v (%v)", ready, err)
	}
	if g := copyGeneration(t, rd, prefix); g != 1 {
		t.Fatalf("copy generation %d after the repopulation, want 1", g)
	}
	verifyCopy(t, st)
}

// A rebuild from events never lowers the generation (the emptied tables start one above the
// old one, and the end bumps again), and it gives the state the stream gave.
func TestRebuildFromEventsKeepsGenerationIncreasing(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	const prefix = "rg:"
	st := featurestore.New(pool, rd, prefix, testConfig(), nil)
	streamed(t, pool, st, 7)
	nowMs := rawTs + time.Hour.Milliseconds()
	want, err := fstest.ReadTables(ctx, pool, nowMs)
	if err != nil {
		t.Fatal(err)
	}
	old := pgGeneration(t, pool)
	var during []int64
	n, err := st.RebuildFromEvents(ctx, 3, func(int) { during = append(during, pgGeneration(t, pool)) })
	if err != nil {
		t.Fatal(err)
	}
	if n != 7 {
		t.Fatalf("%d events rebuilt, want 7", n)
	}
	for _, g := range during {
		if g <= old {
			t.Fatalf("generation %d during the rebuild, was %d before", g, old)
		}
	}
	if g := pgGeneration(t, pool); g <= old+1 {
		t.Fatalf("generation %d after the rebuild, was %d before: want at least %d", g, old, old+2)
	}
	got, err := fstest.ReadTables(ctx, pool, nowMs)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("rebuilt tables differ from the streamed ones:\n got %+v\nwant %+v", got, want)
	}
	verifyCopy(t, st)
}

// Two rebuilds from events at once each emptied the tables and applied their events
// interleaved with the other's, and both reported success. The second must fail, changing
// nothing, and a rebuild after the first may run again.
func TestRebuildFromEventsRefusesASecondRun(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	const prefix = "r2:"
	st := featurestore.New(pool, rd, prefix, testConfig(), nil)
	streamed(t, pool, st, 6)
	var second error
	applied := -1
	if _, err := st.RebuildFromEvents(ctx, 2, func(int) {
		if applied >= 0 {
			return
		}
		_, second = featurestore.New(pool, rd, prefix, testConfig(), nil).RebuildFromEvents(ctx, 2, nil)
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM feature_applied`).Scan(&applied); err != nil {
			t.Error(err)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(second, featurestore.ErrRebuildRunning) {
		t.Fatalf("a second rebuild during the first: %v, want ErrRebuildRunning", second)
	}
	if applied != 2 {
		t.Fatalf("%d events applied after the first batch of 2 and the refused second rebuild", applied)
	}
	if _, err := st.RebuildFromEvents(ctx, 2, nil); err != nil {
		t.Fatalf("a rebuild after the first: %v", err)
	}
	verifyCopy(t, st)
}

// A batch size of 0 or less is refused before anything is emptied.
func TestRebuildFromEventsRefusesBatchSize(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	st := featurestore.New(pool, rd, "rs:", testConfig(), nil)
	streamed(t, pool, st, 3)
	for _, size := range []int{0, -1} {
		if _, err := st.RebuildFromEvents(ctx, size, nil); err == nil {
			t.Fatalf("batch size %d accepted", size)
		}
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM feature_applied`).Scan(&n); err != nil || n != 3 {
		t.Fatalf("%d applied events after the refused rebuilds (%v), want 3", n, err)
	}
}

// A rebuild from events applies what the stream would have: an erased user's events received
// up to the erasure time are skipped, as the consumers skip them. Without it, a rebuild that
// ran while `users forget` waited out its settle time read the user's raw rows before they
// were deleted and wrote the user's features back after the erasure, in PostgreSQL and in the
// copy, for good; a user who came back after an erasure keeps the events received since (a
// legacy row by its insert time, the time the erasure deletes it by).
func TestRebuildFromEventsSkipsErasedUsers(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	const prefix = "rf:"
	st := featurestore.New(pool, rd, prefix, testConfig(), nil)
	streamed(t, pool, st, 4)
	now := time.Now().UnixMilli()
	// "settling" is being erased: recorded, its rows not deleted yet. "back" was erased an
	// hour ago; its watch was received before that (a row the erasure missed), its legacy
	// event after.
	insertRawWatch(t, pool, "g1", "settling", "i1", rawTs+10_000)
	insertRawWatch(t, pool, "b1", "back", "i1", rawTs+11_000)
	if _, err := pool.Exec(ctx, `INSERT INTO legacy_events (event_id, user_id, item_id, event_type, ts, ts_ms)
VALUES ('b2', 'back', 'i2', 'click', $1::bigint, $1::bigint)`, rawTs+12_000); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO forgotten_users (user_id, forgotten_at_ms) VALUES ('settling', $1), ('back', $2)`,
		now+time.Hour.Milliseconds(), now-time.Hour.Milliseconds()); err != nil {
		t.Fatal(err)
	}
	if _, err := st.RebuildFromEvents(ctx, 2, nil); err != nil {
		t.Fatal(err)
	}
	var settling int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM feature_users WHERE user_id = 'settling'`).Scan(&settling); err != nil {
		t.Fatal(err)
	}
	if settling != 0 {
		t.Error("the rebuild wrote the features of a user being erased")
	}
	var history string
	if err := pool.QueryRow(ctx, `SELECT history::text FROM feature_users WHERE user_id = 'back'`).Scan(&history); err != nil {
		t.Fatalf("the features of the user who came back: %v", err)
	}
	if !strings.Contains(history, `"i2"`) || strings.Contains(history, `"i1"`) {
		t.Errorf("history of the user who came back %s: want only i2 (received after the erasure)", history)
	}
	var applied []string
	rows, _ := pool.Query(ctx, `SELECT event_id FROM feature_applied WHERE user_id IN ('settling', 'back') ORDER BY event_id`)
	applied, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(applied, []string{"b2"}) {
		t.Errorf("applied events of the erased users %v, want [b2]", applied)
	}
	n, err := rd.Do(ctx, rd.B().Exists().Key(st.UserKey("settling")).Build()).AsInt64()
	if err != nil || n != 0 {
		t.Errorf("the user being erased is in the copy: %d (%v)", n, err)
	}
	verifyCopy(t, st)
}
