package featurestore_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"

	"recsys/pkg/features"
	"recsys/pkg/featurestore"
	"recsys/pkg/testutil"
)

// markedWatch is a watch of user received at receivedMs.
func markedWatch(id, user string, receivedMs int64) featurestore.Event {
	pct, ended := 80.0, true
	return featurestore.Event{Interaction: features.Interaction{Kind: features.KindWatch, EventID: id, UserID: user,
		TsMs: receivedMs, ItemID: "i-" + id, WatchTimeSec: 30, PercentWatched: &pct, Ended: &ended}, ServerReceivedTsMs: receivedMs}
}

// holdWrite makes st's Redis writes of user wait, once, until the returned release is
// called; held is closed when one is waiting (its values read from PostgreSQL).
func holdWrite(st *featurestore.Store, user string) (held <-chan struct{}, release func()) {
	h, r := make(chan struct{}), make(chan struct{})
	once := false
	st.SetWriting(func(users []string) {
		if once || !slices.Contains(users, user) {
			return
		}
		once = true
		close(h)
		<-r
	})
	return h, func() { close(r) }
}

func userVersion(t *testing.T, rd rueidis.Client, st *featurestore.Store, user string) int64 {
	t.Helper()
	v, err := rd.Do(context.Background(), rd.B().Hget().Key(st.UserKey(user)).Field("v").Build()).AsInt64()
	if rueidis.IsRedisNil(err) {
		return -1
	}
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func rowVersion(t *testing.T, pool *pgxpool.Pool, user string) int64 {
	t.Helper()
	var v int64
	if err := pool.QueryRow(context.Background(), `SELECT coalesce(max(version), -1) FROM feature_users WHERE user_id = $1`, user).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// A writer of the Redis copy that read an erased user's row before `users forget` deleted it
// and writes after both of Forget's passes (a journal heal after a Redis outage, a
// read-through or a batch's write that stalled) put the user's hash back for good: Forget's second pass came
// 2 s after the deletion, a delay nothing bounds. The copy now refuses to create the hash at
// or below the version of the erased row (the erasure marker), whenever the write lands, and
// a repopulation restores the markers a Redis that lost its data lost. The user's return (an
// event received after the erasure) starts above that version and is written.
func TestErasedUsersHashIsNotWrittenBackLate(t *testing.T) {
	for _, tc := range []struct {
		name string
		// write starts the writer (another process's store w) holding the row it read.
		write func(ctx context.Context, w *featurestore.Store, user string) error
		// lost: Redis loses its data before the write lands, and is repopulated.
		lost bool
	}{
		{name: "journal heal", write: func(ctx context.Context, w *featurestore.Store, _ string) error {
			_, err := w.HealPending(ctx, 0, 10)
			return err
		}},
		{name: "journal heal after redis lost its data", lost: true, write: func(ctx context.Context, w *featurestore.Store, _ string) error {
			_, err := w.HealPending(ctx, 0, 10)
			return err
		}},
		{name: "batch write in flight", write: func(ctx context.Context, w *featurestore.Store, user string) error {
			a, err := w.Apply(ctx, &featurestore.Batch{Events: []featurestore.Event{markedWatch("w2", user, time.Now().UnixMilli()-30_000)}})
			if err != nil {
				return err
			}
			return w.WriteRedis(ctx, a)
		}},
		{name: "read-through", write: func(ctx context.Context, w *featurestore.Store, user string) error {
			_, _, err := w.ReadThroughUser(ctx, user, time.Hour)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			pool, rd := servers(t)
			prefix := testutil.Unique("em") + ":"
			t.Cleanup(func() { deleteKeys(t, rd, prefix) })
			st := featurestore.New(pool, rd, prefix, testConfig(), nil)
			const gone = "erased-written-late"
			now := time.Now().UnixMilli() - 60_000
			if _, err := st.Apply(ctx, &featurestore.Batch{Events: []featurestore.Event{markedWatch("w0", gone, now), markedWatch("k0", "kept", now)}}); err != nil {
				t.Fatal(err)
			}
			if err := st.Repopulate(ctx, false); err != nil {
				t.Fatal(err)
			}
			if tc.name == "read-through" {
				// The hash expired: the API reads the user through.
				if err := rd.Do(ctx, rd.B().Del().Key(st.UserKey(gone)).Build()).Error(); err != nil {
					t.Fatal(err)
				}
			} else {
				// A batch whose Redis write failed: its journal row waits for a heal.
				if _, err := st.Apply(ctx, &featurestore.Batch{Events: []featurestore.Event{markedWatch("w1", gone, now+1)}}); err != nil {
					t.Fatal(err)
				}
			}
			w := featurestore.New(pool, rd, prefix, testConfig(), nil)
			held, release := holdWrite(w, gone)
			wrote := make(chan error, 1)
			go func() { wrote <- tc.write(ctx, w, gone) }()
			<-held
			rep, err := st.Forget(ctx, []string{gone}, 100*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			if tc.lost {
				deleteKeys(t, rd, prefix)
				if err := st.Repopulate(ctx, false); err != nil {
					t.Fatal(err)
				}
			}
			release()
			if err := <-wrote; err != nil {
				t.Fatal(err)
			}
			if v := userVersion(t, rd, st, gone); v != -1 {
				t.Fatalf("the erased user's hash is in the copy again (version %d) after a write of the row read before the erasure", v)
			}
			if v := userVersion(t, rd, st, "kept"); v < 1 {
				t.Errorf("another user's hash: version %d", v)
			}
			// The user comes back: the new row starts above the erased one and is written.
			var erasedVersion int64
			if err := pool.QueryRow(ctx, `SELECT version FROM forgotten_users WHERE user_id = $1`, gone).Scan(&erasedVersion); err != nil {
				t.Fatal(err)
			}
			if erasedVersion < 1 {
				t.Errorf("erased row's version recorded as %d", erasedVersion)
			}
			a, err := st.Apply(ctx, &featurestore.Batch{Events: []featurestore.Event{markedWatch("back", gone, rep.ForgottenAtMs+1)}})
			if err != nil {
				t.Fatal(err)
			}
			if err := st.WriteRedis(ctx, a); err != nil {
				t.Fatal(err)
			}
			if v, row := userVersion(t, rd, st, gone), rowVersion(t, pool, gone); v != row || row != erasedVersion+1 {
				t.Errorf("returning user: hash version %d, row version %d, want both %d", v, row, erasedVersion+1)
			}
		})
	}
}
