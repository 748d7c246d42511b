package featurestore_test

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/events"
	"recsys/pkg/featurestore"
	"recsys/pkg/testutil"
)

// forgetting starts `users forget` of user (settle short) and returns once its erasure is
// recorded, with the channel its result arrives on.
func forgetting(t *testing.T, pool *pgxpool.Pool, st *featurestore.Store, user string) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := st.Forget(context.Background(), []string{user}, 300*time.Millisecond)
		done <- err
	}()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var n int
		if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM forgotten_users WHERE user_id = $1`, user).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			return done
		}
		if time.Now().After(deadline) {
			t.Fatal("the erasure was not recorded")
		}
	}
}

// userEvents lists the event ids applied for the users (feature_applied).
func userEvents(t *testing.T, pool *pgxpool.Pool, users ...string) []string {
	t.Helper()
	rows, _ := pool.Query(context.Background(), `SELECT event_id FROM feature_applied WHERE user_id = ANY($1) ORDER BY event_id`, users)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// A rebuild from events reads the raw rows in one snapshot: a user erased while it runs
// (after it read the erased users, within ForgottenRefresh) still has rows there, even once
// Forget deleted them. Its batches find the erasure in their transaction (ErasedError) and
// drop the user's events: the rebuild goes on with the others and the user gets no features.
func TestRebuildFromEventsDropsAUserErasedWhileItRuns(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	st := featurestore.New(pool, rd, testutil.Unique("re")+":", testConfig(), nil)
	const gone = "erased-mid-rebuild"
	insertRawWatch(t, pool, "a1", "ua", "i1", rawTs)
	insertRawWatch(t, pool, "g1", gone, "i1", rawTs+1000)
	insertRawWatch(t, pool, "b1", "ub", "i2", rawTs+2000)
	insertRawWatch(t, pool, "g2", gone, "i2", rawTs+3000)
	var forgot <-chan error
	n, err := st.RebuildFromEvents(ctx, 1, func(int) {
		if forgot == nil { // after the first batch: the rebuild's list of erased users is read
			forgot = forgetting(t, pool, st, gone)
		}
	})
	if err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	if n != 4 {
		t.Errorf("rebuild read %d events, want 4", n)
	}
	if err := <-forgot; err != nil {
		t.Fatalf("forget: %v", err)
	}
	if got := userEvents(t, pool, gone, "ua", "ub"); !reflect.DeepEqual(got, []string{"a1", "b1"}) {
		t.Errorf("applied %v, want [a1 b1]: the erased user's events are dropped, the others' applied", got)
	}
	if got := userRows(t, pool, "feature_users"); !reflect.DeepEqual(got, []string{"ua", "ub"}) {
		t.Errorf("feature users %v, want [ua ub]", got)
	}
	if n, err := rd.Do(ctx, rd.B().Exists().Key(st.UserKey(gone)).Build()).AsInt64(); err != nil || n != 0 {
		t.Errorf("the erased user is in the copy: %d (%v)", n, err)
	}
}

// replay-dlq reads the erased users before applying: a user erased after that read (whose
// erasure the batch's transaction finds, ErasedError) has their entry reported ignored and
// deleted, with nothing applied; the other entries of the page apply.
func TestReplayDLQIgnoresAUserErasedDuringTheReplay(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	st := featurestore.New(pool, rd, testutil.Unique("rd")+":", testConfig(), nil)
	const gone, kept = "erased-mid-replay", "kept-replay"
	received := time.Now().Add(-time.Hour).UnixMilli()
	// The erased user has features already: the batch's check comes after their row's lock.
	if _, err := st.Apply(ctx, &featurestore.Batch{Events: []featurestore.Event{insertRawWatch(t, pool, "g0", gone, "i0", received)}}); err != nil {
		t.Fatal(err)
	}
	pct := 50.0
	for i, user := range []string{gone, kept} {
		p, _ := events.Encode(&events.Watch{Common: events.Common{EventID: "dlq-" + user, UserID: user, SessionID: "s", RequestID: "r",
			TsMs: received, ServerReceivedTsMs: received}, EventType: "watch", ItemID: "i1", WatchTimeSec: 30, PercentWatched: &pct})
		if _, err := pool.Exec(ctx, `INSERT INTO feature_dlq (topic, kafka_partition, kafka_offset, headers, payload, error)
VALUES ('t', 0, $1, '{"event_type":"watch"}', $2, 'earlier error')`, i, p); err != nil {
			t.Fatal(err)
		}
	}
	// The replay's transaction is held at the meta lock, after it read the erased users,
	// while the erasure is recorded.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // released below
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(7254391001)`); err != nil {
		t.Fatal(err)
	}
	type result struct {
		rep featurestore.ReplayReport
		err error
	}
	replayed := make(chan result, 1)
	go func() {
		rep, err := st.ReplayDLQ(ctx, featurestore.ReplayOptions{})
		replayed <- result{rep, err}
	}()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var waiting int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'advisory'`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the replay did not wait for the meta lock")
		}
	}
	forgot := forgetting(t, pool, st, gone)
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-replayed
	if err := <-forgot; err != nil {
		t.Fatalf("forget: %v", err)
	}
	if r.err != nil {
		t.Fatalf("replay: %v (%+v)", r.err, r.rep)
	}
	outcomes := map[string]string{}
	for _, e := range r.rep.Entries {
		outcomes[e.UserID] = e.Outcome
	}
	if want := map[string]string{gone: "ignored", kept: "applied"}; !reflect.DeepEqual(outcomes, want) ||
		r.rep.Ignored != 1 || r.rep.Applied != 1 {
		t.Errorf("report %+v: want %v", r.rep, want)
	}
	// g0's dedup record stays (Forget keeps them until their retention).
	if got := userEvents(t, pool, gone, kept); !reflect.DeepEqual(got, []string{"dlq-" + kept, "g0"}) {
		t.Errorf("applied %v, want [dlq-%s g0]: the erased user's entry applies nothing", got, kept)
	}
	rows, _ := pool.Query(ctx, `SELECT kafka_offset || ' ' || status FROM feature_dlq ORDER BY id`)
	left, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"1 replayed"}; !reflect.DeepEqual(left, want) {
		t.Errorf("dlq holds %v, want %v (%s's entry, offset 0, deleted)", left, want, gone)
	}
	if got := userRows(t, pool, "feature_users"); !reflect.DeepEqual(got, []string{kept}) {
		t.Errorf("feature users %v, want [%s]", got, kept)
	}
}

// Recording an erasure waits for a batch holding one of the users, possibly past --settle;
// the consumers learn of it only at the commit. An undecodable message of the user received
// before `users forget` started, which a consumer dead-letters during that wait (its list
// cannot have the erasure), must still go with the DLQ's clearing: the erasure time counts
// settle from when the record holds the users, not from the start of the wait, which left
// the consumers no time at all and such an entry, created after that time, in the DLQ for
// good.
func TestForgetWaitingForABatchStillClearsTheDLQ(t *testing.T) {
	const settle = 300 * time.Millisecond
	ctx := context.Background()
	pool, rd := servers(t)
	st := featurestore.New(pool, rd, testutil.Unique("fw")+":", testConfig(), nil)
	const user = "erased-behind-a-batch"
	received := time.Now().Add(-time.Minute).UnixMilli()
	if _, err := st.Apply(ctx, &featurestore.Batch{Events: []featurestore.Event{insertRawWatch(t, pool, "w0", user, "i0", received)}}); err != nil {
		t.Fatal(err)
	}
	// A batch attempt holding the user's row for longer than settle.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // released below
	if _, err := tx.Exec(ctx, `SELECT 1 FROM feature_users WHERE user_id = $1 FOR UPDATE`, user); err != nil {
		t.Fatal(err)
	}
	type result struct {
		rep featurestore.ForgetReport
		err error
	}
	forgot := make(chan result, 1)
	go func() {
		rep, err := st.Forget(ctx, []string{user}, settle)
		forgot <- result{rep, err}
	}()
	time.Sleep(2 * settle)
	// A consumer dead-letters the user's undecodable message meanwhile.
	if _, err := st.Apply(ctx, &featurestore.Batch{DLQ: []featurestore.DLQEntry{{Topic: "t", Partition: 0, Offset: 1,
		Key: []byte(user), Headers: map[string]string{}, Payload: []byte("not an event"), Error: "decode"}}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(settle)
	released := time.Now().UnixMilli()
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-forgot
	if r.err != nil {
		t.Fatalf("forget: %v", r.err)
	}
	if r.rep.ForgottenAtMs < released+settle.Milliseconds() {
		t.Errorf("erasure time %d, want at least %d (settle from the record, which waited until %d)",
			r.rep.ForgottenAtMs, released+settle.Milliseconds(), released)
	}
	var dlq int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM feature_dlq WHERE msg_key = $1`, []byte(user)).Scan(&dlq); err != nil {
		t.Fatal(err)
	}
	if dlq != 0 {
		t.Errorf("%d dlq entries of the erased user, dead-lettered while the erasure waited to be recorded, outlived it", dlq)
	}
	if r.rep.Deleted["feature_users"] != 1 || r.rep.Deleted["watches"] != 1 {
		t.Errorf("deleted %v, want the user's row and raw watch", r.rep.Deleted)
	}
}

// waitForLockWaits returns once n sessions of the test's database wait for a lock of the kind
// (pg_stat_activity's wait_event: advisory, transactionid, tuple).
func waitForLockWaits(t *testing.T, pool *pgxpool.Pool, n int, kinds ...string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var waiting int
		if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = ANY($1)`, kinds).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %d sessions waiting for a lock of %v", n, kinds)
		}
	}
}

// A batch whose lock of the user's row waits for the erasure's record (which holds the row)
// reads forgotten_users in the next statement of its pipeline, after that wait: it must find
// the erasure committed meanwhile and write nothing.
func TestBatchWaitingForTheRecordFindsTheErasure(t *testing.T) {
	ctx := context.Background()
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	st := featurestore.New(pool, nil, testutil.Unique("bw")+":", testConfig(), nil)
	const user = "erased-while-locking"
	now := time.Now().UnixMilli()
	watch := func(id string) *featurestore.Batch {
		return &featurestore.Batch{Events: []featurestore.Event{insertRawWatch(t, pool, id, user, "i-"+id, now)}}
	}
	if _, err := st.Apply(ctx, watch("w0")); err != nil {
		t.Fatal(err)
	}
	// The record is held, the user's row locked, at the outbox erasure lock.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // released below
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(7254391005)`); err != nil {
		t.Fatal(err)
	}
	forgot := make(chan error, 1)
	go func() {
		_, err := st.Forget(ctx, []string{user}, 300*time.Millisecond)
		forgot <- err
	}()
	waitForLockWaits(t, pool, 1, "advisory")
	applied := make(chan error, 1)
	go func() {
		_, err := st.Apply(ctx, watch("w1"))
		applied <- err
	}()
	waitForLockWaits(t, pool, 1, "transactionid", "tuple")
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-applied; !errors.As(err, new(*featurestore.ErasedError)) {
		t.Errorf("apply after waiting for the record = %v, want ErasedError", err)
	}
	if err := <-forgot; err != nil {
		t.Fatalf("forget: %v", err)
	}
	if got := userEvents(t, pool, user); !reflect.DeepEqual(got, []string{"w0"}) {
		t.Errorf("applied %v, want [w0]", got)
	}
}

// A consumer batch judged its dead letters by a list of erased users read before the
// erasure, and its transaction was held up (here by the decay meta's lock, as a rebase holds
// it) until `users forget` had cleared the DLQ: the user's raw message, stored after that
// clearing, stayed in the DLQ for good. The batch's insert now reads forgotten_users under
// the erasure lock and leaves out the entries of a user erased after their receive time; an
// entry received after the erasure (the user came back) and another user's are stored.
func TestBatchHeldPastTheErasureStoresNoDeadLetterOfTheUser(t *testing.T) {
	ctx := context.Background()
	dsn := testutil.MigratedDatabase(t)
	pool := testutil.Pool(t, dsn)
	st := featurestore.New(pool, nil, testutil.Unique("dh")+":", testConfig(), nil)
	const gone, other = "erased-behind-a-held-batch", "someone-else"
	now := time.Now()
	entry := func(offset int64, key string, received time.Time) featurestore.DLQEntry {
		return featurestore.DLQEntry{Topic: "t", Partition: 0, Offset: offset, Key: []byte(key), Headers: map[string]string{},
			Payload: []byte("not an event of " + key), Error: "decode", ReceivedMs: received.UnixMilli()}
	}
	release := testutil.HoldLock(t, dsn, `SELECT pg_advisory_xact_lock(7254391001)`)
	applied := make(chan error, 1)
	var a *featurestore.Applied
	go func() {
		var err error
		a, err = st.Apply(ctx, &featurestore.Batch{DLQ: []featurestore.DLQEntry{
			entry(1, gone, now.Add(-time.Minute)),
			entry(2, other, now.Add(-time.Minute)),
			entry(3, gone, now.Add(time.Hour)),
		}})
		applied <- err
	}()
	waitForLockWaits(t, pool, 1, "advisory")
	if _, err := st.Forget(ctx, []string{gone}, 100*time.Millisecond); err != nil {
		t.Fatalf("forget: %v", err)
	}
	release()
	if err := <-applied; err != nil {
		t.Fatalf("apply: %v", err)
	}
	offsets := dlqOffsets(t, pool)
	if want := []int64{2, 3}; !reflect.DeepEqual(offsets, want) {
		t.Errorf("dlq holds offsets %v, want %v (not the erased user's message received before the erasure)", offsets, want)
	}
	// The consumer counts the entry left out as erased, not as stored.
	if want := []int{0}; !reflect.DeepEqual(a.DLQErased, want) {
		t.Errorf("entries reported erased %v, want %v", a.DLQErased, want)
	}
}

// The other order: a batch stores the user's dead letter, then is held up (by an item row's
// lock) before it commits, while the erasure is recorded. Its check ran before the record,
// so it stored the entry; the record must wait for it (the erasure lock, held shared from the
// insert to the commit), so that the DLQ's clearing, which comes after the record, sees the
// entry. Without that wait the clearing ran first and missed the uncommitted entry.
func TestErasureWaitsForABatchStoringTheUsersDeadLetter(t *testing.T) {
	ctx := context.Background()
	dsn := testutil.MigratedDatabase(t)
	pool := testutil.Pool(t, dsn)
	st := featurestore.New(pool, nil, testutil.Unique("dw")+":", testConfig(), nil)
	const gone, other = "erased-while-a-batch-commits", "someone-else"
	now := time.Now().UnixMilli()
	if _, err := st.Apply(ctx, &featurestore.Batch{Events: []featurestore.Event{insertRawWatch(t, pool, "w0", other, "held", now)}}); err != nil {
		t.Fatal(err)
	}
	release := testutil.HoldLock(t, dsn, `SELECT 1 FROM feature_items WHERE item_id = 'held' FOR UPDATE`)
	applied := make(chan error, 1)
	go func() {
		_, err := st.Apply(ctx, &featurestore.Batch{
			Events: []featurestore.Event{insertRawWatch(t, pool, "w1", other, "held", now)},
			DLQ: []featurestore.DLQEntry{{Topic: "t", Partition: 0, Offset: 1, Key: []byte(gone), Headers: map[string]string{},
				Payload: []byte("not an event"), Error: "decode", ReceivedMs: now - 1000}},
		})
		applied <- err
	}()
	waitForLockWaits(t, pool, 1, "transactionid", "tuple")
	forgot := make(chan error, 1)
	go func() {
		_, err := st.Forget(ctx, []string{gone}, 100*time.Millisecond)
		forgot <- err
	}()
	// The record waits for the batch (the fix), or Forget runs to its end without it.
	var forgetErr error
	waited := false
	for deadline := time.Now().Add(20 * time.Second); !waited; time.Sleep(10 * time.Millisecond) {
		select {
		case forgetErr = <-forgot:
			waited = true
			forgot = nil
			continue
		default:
		}
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'advisory'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		waited = n > 0
		if time.Now().After(deadline) {
			t.Fatal("forget neither waited for the batch nor ended")
		}
	}
	release()
	if err := <-applied; err != nil {
		t.Fatalf("apply: %v", err)
	}
	if forgot != nil {
		forgetErr = <-forgot
	}
	if forgetErr != nil {
		t.Fatalf("forget: %v", forgetErr)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM feature_dlq WHERE msg_key = $1`, []byte(gone)).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d dlq entries of the erased user, committed while the erasure ran, outlived it", n)
	}
}
