package featurestore_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/features"
	"recsys/pkg/featurestore"
	"recsys/pkg/featurestore/fstest"
	"recsys/pkg/testutil"
)

// TestApplyWaitsForAConcurrentDedupRecord: the dedup record is a probe and a plain INSERT, so a
// batch whose event another transaction is recording (a consumer that held the partition
// before a rebalance) blocks on that id, and fails once the other commits. Apply must retry
// and count the event as a duplicate, or apply it when the other rolls back: never an error,
// never twice.
func TestApplyWaitsForAConcurrentDedupRecord(t *testing.T) {
	ctx := context.Background()
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	evs := toEvents(fstest.Generate(fstest.GenConfig{Seed: 5, Users: 3, Items: 20, Events: 40, StartMs: start, StepMs: 60_000, Prefix: "c", NoLegacy: true}))
	for i, tc := range []struct {
		name    string
		commit  bool
		wantNew int
	}{
		{"other commits", true, 9},
		{"other rolls back", false, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			batch := evs[i*20 : i*20+10]
			held := batch[4]
			tx := otherTx(t, pool, `INSERT INTO feature_applied (event_id, user_id) VALUES ($1, $2)`, held.EventID, held.UserID)
			st := featurestore.New(pool, nil, testutil.Unique("dd")+":", testConfig(), nil)
			type result struct {
				a   *featurestore.Applied
				err error
			}
			done := make(chan result, 1)
			go func() {
				a, err := st.Apply(ctx, &featurestore.Batch{Events: batch})
				done <- result{a, err}
			}()
			// Release the other transaction only once Apply waits on the held id.
			waitForLockWait(t, pool, "the id another transaction holds")
			var err error
			if tc.commit {
				err = tx.Commit(ctx)
			} else {
				err = tx.Rollback(ctx)
			}
			if err != nil {
				t.Fatal(err)
			}
			r := <-done
			if r.err != nil {
				t.Fatalf("apply: %v", r.err)
			}
			if got := r.a.NewCount(); got != tc.wantNew {
				t.Fatalf("%d new events, want %d", got, tc.wantNew)
			}
			if r.a.New[4] != !tc.commit {
				t.Fatalf("held event new = %v, want %v", r.a.New[4], !tc.commit)
			}
			// Every event is recorded once, whoever recorded it.
			ids := make([]string, len(batch))
			for j, e := range batch {
				ids[j] = e.EventID
			}
			var n int
			if err := pool.QueryRow(ctx, `SELECT count(*) FROM feature_applied WHERE event_id = ANY($1)`, ids).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != len(batch) {
				t.Fatalf("%d of %d events recorded", n, len(batch))
			}
			again, err := st.Apply(ctx, &featurestore.Batch{Events: batch})
			if err != nil {
				t.Fatal(err)
			}
			if again.NewCount() != 0 {
				t.Fatalf("a redelivery applied %d events again", again.NewCount())
			}
		})
	}
}

// TestApplyWaitsForAConcurrentNewUser: while another transaction is creating a user of the
// batch (a consumer that held the partition before a rebalance), Apply waits on it, then locks
// the row the other committed, or creates the user itself when the other rolls back: either
// way the rows equal those of the same batch applied alone.
func TestApplyWaitsForAConcurrentNewUser(t *testing.T) {
	ctx := context.Background()
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	batch := toEvents(fstest.Generate(fstest.GenConfig{Seed: 9, Users: 4, Items: 30, Events: 30, StartMs: start, StepMs: 60_000, Prefix: "n", NoLegacy: true}))
	user := batch[len(batch)/2].UserID
	wantDB := testutil.Pool(t, testutil.MigratedDatabase(t))
	if _, err := featurestore.New(wantDB, nil, testutil.Unique("nu")+":", testConfig(), nil).Apply(ctx, &featurestore.Batch{Events: batch}); err != nil {
		t.Fatal(err)
	}
	now := start + 3_600_000
	want, err := fstest.ReadTables(ctx, wantDB, now)
	if err != nil {
		t.Fatal(err)
	}
	for _, commit := range []bool{true, false} {
		t.Run(map[bool]string{true: "other commits", false: "other rolls back"}[commit], func(t *testing.T) {
			pool := testutil.Pool(t, testutil.MigratedDatabase(t))
			tx := otherTx(t, pool, `INSERT INTO feature_users (user_id) VALUES ($1)`, user)
			st := featurestore.New(pool, nil, testutil.Unique("nu")+":", testConfig(), nil)
			done := make(chan error, 1)
			go func() {
				_, err := st.Apply(ctx, &featurestore.Batch{Events: batch})
				done <- err
			}()
			waitForLockWait(t, pool, "the user another transaction is creating")
			if commit {
				err = tx.Commit(ctx)
			} else {
				err = tx.Rollback(ctx)
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatalf("apply: %v", err)
			}
			got, err := fstest.ReadTables(ctx, pool, now)
			if err != nil {
				t.Fatal(err)
			}
			fstest.EqualTables(t, want, got)
		})
	}
}

// waitForLockWait waits until a backend of the test's database waits on a lock (Apply, on
// what another transaction holds).
func waitForLockWait(t *testing.T, pool *pgxpool.Pool, what string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var waiting int
		if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Apply never waited on %s", what)
		}
	}
}

// otherTx is another consumer's transaction, left open after statement sql (rolled back at
// the end of the test unless committed).
func otherTx(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) pgx.Tx {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(ctx) })
	if _, err := tx.Exec(ctx, sql, args...); err != nil {
		t.Fatal(err)
	}
	return tx
}

// A rebase whose factor takes an item's stored popularity below the smallest float8 (an
// item last raised hundreds of half-lives before the landmark: a backfill, a late replay)
// sets it to 0. PostgreSQL's multiplication answered "value out of range: underflow", so the
// rebase, and every batch after the landmark's range that needs it, failed for good.
func TestRebaseOfAnAncientPopularitySetsItToZero(t *testing.T) {
	ctx := context.Background()
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	cfg := testConfig()
	st := featurestore.New(pool, nil, testutil.Unique("rb")+":", cfg, nil)
	halfLife := cfg.PopShortHalfLife.Milliseconds()
	landmark := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	watch := func(id, item string, ts int64) *featurestore.Batch {
		return &featurestore.Batch{Events: []featurestore.Event{{Interaction: features.Interaction{Kind: features.KindWatch,
			EventID: "rebase-" + id, UserID: "user-" + id, TsMs: ts, ItemID: item}}}}
	}
	for _, b := range []*featurestore.Batch{watch("first", "a", landmark), watch("backfilled", "b", landmark-700*halfLife),
		watch("later", "c", landmark+501*halfLife)} {
		if _, err := st.Apply(ctx, b); err != nil {
			t.Fatalf("apply %s: %v", b.Events[0].EventID, err)
		}
	}
	pops := map[string]float64{}
	rows, _ := pool.Query(ctx, `SELECT item_id, pop_short FROM feature_items`)
	var id string
	var pop float64
	if _, err := pgx.ForEachRow(rows, []any{&id, &pop}, func() error { pops[id] = pop; return nil }); err != nil {
		t.Fatal(err)
	}
	if pops["b"] != 0 || pops["a"] <= 0 || pops["c"] <= 0 {
		t.Errorf("stored short popularity after the rebase: %v, want b (2^-700 times 2^-501) 0 and a, c kept", pops)
	}
}

// The very first batch of a store whose events span more than the decay range (500 short
// half-lives: a fresh database consuming a backlog, with a short trending half-life) created
// the landmarks in its transaction, asked for a rebase, and rolled back: the rebase found no
// landmarks to move ("feature meta not initialised"), and the batch failed the same way at
// every retry, so the consumer never got past it. The batch must apply, with the landmarks
// where MemoryStore puts them (the first event's, moved to the newest where it is out of
// range).
func TestFirstBatchBeyondTheDecayRange(t *testing.T) {
	ctx := context.Background()
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	cfg := testConfig()
	st := featurestore.New(pool, nil, testutil.Unique("fr")+":", cfg, nil)
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	last := start + 501*cfg.PopShortHalfLife.Milliseconds()
	var evs []featurestore.Event
	for i, ts := range []int64{start, start + 1000, last} {
		evs = append(evs, featurestore.Event{Interaction: features.Interaction{Kind: features.KindWatch,
			EventID: "range-" + string(rune('a'+i)), UserID: "user", TsMs: ts, ItemID: "item-" + string(rune('a'+i))}})
	}
	a, err := st.Apply(ctx, &featurestore.Batch{Events: evs})
	if err != nil {
		t.Fatalf("first batch: %v", err)
	}
	if a.NewCount() != len(evs) {
		t.Fatalf("%d new events, want %d", a.NewCount(), len(evs))
	}
	mem := features.NewMemoryStore(cfg)
	for _, e := range evs {
		mem.Apply(e.Interaction)
	}
	opts := testOpts()
	opts.Stored = true
	want := mem.Snapshot("user", last, opts)
	got, err := featurestore.NewPGLoader(pool, "", cfg).Snapshot(ctx, "user", last, opts)
	if err != nil {
		t.Fatal(err)
	}
	if got.Landmarks != want.Landmarks {
		t.Errorf("landmarks %+v, want %+v", got.Landmarks, want.Landmarks)
	}
	fstest.EqualSnapshots(t, "first batch", want, got)
}

// The rebase a batch needs rewrites every item, which takes seconds with millions of them
// (1.5 s for 300,000 here, on a loaded test machine). The consumer bounds each attempt of a
// batch (--consumer.drain-timeout, 15 s): a rebase cut off by that deadline rolled back and
// started over at the next attempt, every attempt, and every consumer stopped for good at
// the landmark's range. The rebase is bounded by its lock wait, not by the batch's deadline:
// a later attempt finds the landmarks moved.
func TestRebaseOutlastsTheBatchsDeadline(t *testing.T) {
	ctx := context.Background()
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	cfg := testConfig()
	st := featurestore.New(pool, nil, testutil.Unique("rbd")+":", cfg, nil)
	halfLife := cfg.PopShortHalfLife.Milliseconds()
	landmark := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	watch := func(id string, ts int64) *featurestore.Batch {
		return &featurestore.Batch{Events: []featurestore.Event{{Interaction: features.Interaction{Kind: features.KindWatch,
			EventID: "deadline-" + id, UserID: "user-" + id, TsMs: ts, ItemID: "item-" + id}}}}
	}
	if _, err := st.Apply(ctx, watch("first", landmark)); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO feature_items (item_id, first_seen_ms, pop_short, pop_long)
SELECT 'filler-' || g, $1::bigint, 1 + random(), 1 + random() FROM generate_series(1, 300000) g`, landmark); err != nil {
		t.Fatal(err)
	}
	before := pgGeneration(t, pool)
	const deadline = 100 * time.Millisecond
	var errs []error
	for range 5 { // as the consumer retries a batch, each attempt with its deadline
		actx, cancel := context.WithTimeout(ctx, deadline)
		_, err := st.Apply(actx, watch("later", landmark+501*halfLife))
		cancel()
		if err == nil {
			t.Logf("applied after %d failed attempts: %v", len(errs), errs)
			if g := pgGeneration(t, pool); g != before+1 {
				t.Errorf("generation %d after the rebase, want %d", g, before+1)
			}
			return
		}
		errs = append(errs, err)
		time.Sleep(2 * time.Second) // the backoff; the rebase goes on meanwhile
	}
	t.Fatalf("the batch that needs a rebase never applied within a %v deadline per attempt: %v", deadline, errs)
}
