package featurestore_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"recsys/pkg/features"
	"recsys/pkg/featurestore"
	"recsys/pkg/testutil"
)

// A batch whose attempt is in progress when `users forget` records an erasure, and lasts
// past --settle (a slow attempt: --consumer.drain-timeout is 15 s, longer than the 10 s
// minimum), must not leave the erased user's features once Forget is done: it was judged
// by a list of erased users read before the erasure. The attempt is held after it inserted
// a new user's row (Forget's deletion does not see an uncommitted row), or before it locked
// an existing user's row (it finds the row deleted and creates it anew).
func TestForgetDuringABatchAttemptLeavesNoFeatures(t *testing.T) {
	const settle = 300 * time.Millisecond
	for _, tc := range []struct {
		name     string
		existing bool // the user has features before the batch: the attempt is held before its lock
	}{
		{name: "new user held after its insert"},
		{name: "existing user held before its lock", existing: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			pool := testutil.Pool(t, testutil.MigratedDatabase(t))
			prefix := testutil.Unique("fb") + ":"
			const user = "user-erased-mid-batch"
			now := time.Now().UnixMilli()
			watch := func(id string) *featurestore.Batch {
				return &featurestore.Batch{Events: []featurestore.Event{{Interaction: features.Interaction{Kind: features.KindWatch,
					EventID: id, UserID: user, TsMs: now, ItemID: "item-" + id}, ServerReceivedTsMs: now}}}
			}
			st := featurestore.New(pool, nil, prefix, testConfig(), nil)
			held := featurestore.New(pool, nil, prefix, testConfig(), nil)
			release := make(chan struct{})
			var releaseOnce sync.Once
			var unlock func()
			free := func() {
				releaseOnce.Do(func() {
					close(release)
					if unlock != nil {
						unlock()
					}
				})
			}
			defer free()
			holding := make(chan struct{})
			if tc.existing {
				if _, err := st.Apply(ctx, watch("before")); err != nil {
					t.Fatal(err)
				}
				// A rebase's exclusive meta lock stands for whatever holds the attempt up.
				tx, err := pool.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				unlock = func() { _ = tx.Rollback(ctx) }
				if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(7254391001)`); err != nil {
					t.Fatal(err)
				}
				close(holding)
			} else {
				var once sync.Once
				held.SetHooks(featurestore.Hooks{Phase: func(phase string, _ time.Duration) {
					if phase == "lock" {
						once.Do(func() { close(holding); <-release })
					}
				}})
			}
			applied := make(chan error, 1)
			go func() {
				_, err := held.Apply(ctx, watch("during"))
				applied <- err
			}()
			<-holding
			if tc.existing {
				time.Sleep(200 * time.Millisecond) // the attempt is waiting for the meta lock
			}
			forgotten := make(chan error, 1)
			go func() {
				_, err := st.Forget(ctx, []string{user}, settle)
				forgotten <- err
			}()
			// Held until Forget is done, or (when Forget waits for the attempt) well past the
			// moment it would have deleted the features.
			var ferr error
			done := false
			select {
			case ferr = <-forgotten:
				done = true
			case <-time.After(settle + 4*time.Second):
			}
			free()
			if err := <-applied; err != nil && !errors.As(err, new(*featurestore.ErasedError)) {
				t.Fatalf("apply: %v", err)
			}
			if !done {
				ferr = <-forgotten
			}
			if ferr != nil {
				t.Fatalf("forget: %v", ferr)
			}
			var n int
			if err := pool.QueryRow(ctx, `SELECT count(*) FROM feature_users WHERE user_id = $1`, user).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 0 {
				t.Errorf("the erased user has features after Forget returned: a batch attempt in progress at the erasure brought them back")
			}
		})
	}
}

// The check in the batch's transaction: an erased user's event received up to the erasure
// time fails the batch with ErasedError naming the user and its erasure time, and nothing is
// written; once the caller drops it, the rest applies, and an event received after the
// erasure (the user came back) applies.
func TestApplyRefusesEventsOfErasedUsers(t *testing.T) {
	ctx := context.Background()
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	st := featurestore.New(pool, nil, testutil.Unique("fe")+":", testConfig(), nil)
	const gone, kept = "user-gone-check", "user-kept-check"
	at := time.Now().UnixMilli()
	if _, err := pool.Exec(ctx, `INSERT INTO forgotten_users (user_id, forgotten_at_ms) VALUES ($1, $2)`, gone, at); err != nil {
		t.Fatal(err)
	}
	ev := func(id, user string, received int64) featurestore.Event {
		return featurestore.Event{Interaction: features.Interaction{Kind: features.KindWatch, EventID: id, UserID: user,
			TsMs: at, ItemID: "i"}, ServerReceivedTsMs: received}
	}
	for _, tc := range []struct {
		name   string
		events []featurestore.Event
		erased bool
	}{
		{"received before the erasure", []featurestore.Event{ev("k1", kept, at), ev("g1", gone, at-1)}, true},
		{"received at the erasure", []featurestore.Event{ev("g2", gone, at)}, true},
		{"receive time unknown", []featurestore.Event{ev("g3", gone, 0)}, true},
		{"others only", []featurestore.Event{ev("k1", kept, at)}, false},
		{"the user came back", []featurestore.Event{ev("g4", gone, at+1)}, false},
	} {
		_, err := st.Apply(ctx, &featurestore.Batch{Events: tc.events})
		var ee *featurestore.ErasedError
		switch {
		case tc.erased && (!errors.As(err, &ee) || len(ee.Users) != 1 || ee.Users[gone] != at):
			t.Errorf("%s: apply = %v, want ErasedError for %s at %d", tc.name, err, gone, at)
		case !tc.erased && err != nil:
			t.Errorf("%s: apply = %v", tc.name, err)
		}
	}
	rows, _ := pool.Query(ctx, `SELECT event_id FROM feature_applied ORDER BY event_id`)
	var got []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		got = append(got, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != "g4" || got[1] != "k1" {
		t.Errorf("applied %v, want [g4 k1]", got)
	}
}

// Forget deletes the feature rows after the raw data is gone: a batch holding one of the
// users' rows then (an attempt can last --consumer.drain-timeout) must be waited for, not
// fail the erasure on the session's lock_timeout (--pg.lock-timeout, 1 s), which left the
// features in place and asked for a rerun. Ctrl-C still stops the wait.
func TestForgetWaitsForABatchHoldingAUsersRow(t *testing.T) {
	for _, tc := range []struct {
		name      string
		interrupt bool // ctx ends during the wait
	}{
		{name: "waits and deletes"},
		{name: "interrupted while waiting", interrupt: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			pool := testutil.Pool(t, testutil.MigratedDatabase(t)+"&lock_timeout=1000")
			st := featurestore.New(pool, nil, testutil.Unique("fw")+":", testConfig(), nil)
			users := []string{"user-forget-wait-b", "user-forget-wait-a"}
			now := time.Now().UnixMilli()
			for _, u := range users {
				if _, err := st.Apply(ctx, &featurestore.Batch{Events: []featurestore.Event{{Interaction: features.Interaction{Kind: features.KindWatch,
					EventID: "before-" + u, UserID: u, TsMs: now, ItemID: "item"}, ServerReceivedTsMs: now}}}); err != nil {
					t.Fatal(err)
				}
			}
			type result struct {
				rep featurestore.ForgetReport
				err error
			}
			fctx, interrupt := context.WithCancel(ctx)
			defer interrupt()
			forgotten := make(chan result, 1)
			go func() {
				rep, err := st.Forget(fctx, users, 100*time.Millisecond)
				forgotten <- result{rep, err}
			}()
			// Once the erasure is recorded (the record itself waits for a batch), a batch-like
			// transaction takes a user's row and holds it well past the lock_timeout from the
			// moment the deletion starts (about a second after the record).
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				var n int
				if err := pool.QueryRow(ctx, `SELECT count(*) FROM forgotten_users`).Scan(&n); err != nil {
					t.Fatal(err)
				}
				if n == len(users) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the erasure was not recorded")
				}
			}
			tx, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx) //nolint:errcheck // rolled back below
			if _, err := tx.Exec(ctx, `SELECT 1 FROM feature_users WHERE user_id = $1 FOR UPDATE`, users[0]); err != nil {
				t.Fatal(err)
			}
			select {
			case r := <-forgotten:
				t.Fatalf("forget returned (%v) while a batch held a user's row", r.err)
			case <-time.After(3500 * time.Millisecond):
			}
			if tc.interrupt {
				interrupt()
				select {
				case r := <-forgotten:
					if !errors.Is(r.err, context.Canceled) {
						t.Errorf("forget interrupted while waiting: %v, want context.Canceled", r.err)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("forget did not stop when interrupted while waiting for a batch")
				}
				return
			}
			if err := tx.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
			r := <-forgotten
			if r.err != nil {
				t.Fatalf("forget behind a batch holding a user's row: %v", r.err)
			}
			if r.rep.Deleted["feature_users"] != 2 {
				t.Errorf("report counts %d feature users deleted, want 2", r.rep.Deleted["feature_users"])
			}
			var n int
			if err := pool.QueryRow(ctx, `SELECT count(*) FROM feature_users`).Scan(&n); err != nil || n != 0 {
				t.Errorf("%d feature users left (%v), want none", n, err)
			}
		})
	}
}
