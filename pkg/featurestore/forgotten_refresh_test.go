package featurestore_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/featurestore"
	"recsys/pkg/postgres"
	"recsys/pkg/testutil"
)

// forgottenStore is a store on a new database (no Redis: only forgotten_users is read).
func forgottenStore(t *testing.T) (*featurestore.Store, *pgxpool.Pool) {
	t.Helper()
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	return featurestore.New(pool, nil, testutil.Unique("fr")+":", testConfig(), nil), pool
}

// checkForgotten fails unless f holds exactly forgotten_users: every row with its erasure time,
// nothing else.
func checkForgotten(t *testing.T, pool *pgxpool.Pool, f *featurestore.Forgotten) {
	t.Helper()
	rows, _ := pool.Query(context.Background(), `SELECT user_id, forgotten_at_ms FROM forgotten_users`)
	type row struct {
		ID string
		At int64
	}
	all, err := pgx.CollectRows(rows, pgx.RowToStructByPos[row])
	if err != nil {
		t.Fatal(err)
	}
	if f.Len() != len(all) {
		t.Errorf("the set holds %d users, the table %d", f.Len(), len(all))
	}
	for _, r := range all {
		if !f.Skip(r.ID, r.At) || f.Skip(r.ID, r.At+1) {
			t.Errorf("user %q: the set does not hold erasure time %d", r.ID, r.At)
		}
	}
}

// Every consumer reread the whole table every 5 s: one row per erasure ever made, millions
// for a deployment erasing thousands of users a day, in each consumer. After its first read a
// refresh reads only what was written since, and still sees every new erasure and every
// change of an erasure time (`users forget` again, by this release or an older one, or a
// hand-made UPDATE).
func TestForgottenRefreshReadsOnlyNewRows(t *testing.T) {
	ctx := context.Background()
	st, pool := forgottenStore(t)
	const n = 2000
	if _, err := pool.Exec(ctx, `INSERT INTO forgotten_users (user_id, forgotten_at_ms)
SELECT 'old-' || i, 1000 + i FROM generate_series(1, $1) i`, n); err != nil {
		t.Fatal(err)
	}
	var f featurestore.Forgotten
	if err := st.RefreshForgotten(ctx, &f); err != nil {
		t.Fatal(err)
	}
	if f.LastRead() != n {
		t.Fatalf("the first refresh read %d rows, want the whole table (%d)", f.LastRead(), n)
	}
	// The shared server's other transactions hold the snapshot's xmin back (the rows of a
	// transaction running at a read are read again the next time): wait for a quiet moment.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if err := st.RefreshForgotten(ctx, &f); err != nil {
			t.Fatal(err)
		}
		if f.LastRead() == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a refresh with nothing new still read %d rows of %d after 30 s", f.LastRead(), n)
		}
	}
	for _, tc := range []struct {
		name, sql string
		args      []any
	}{
		{"insert", `INSERT INTO forgotten_users (user_id, forgotten_at_ms) VALUES ('new', 5)`, nil},
		{"update", `UPDATE forgotten_users SET forgotten_at_ms = 9000 WHERE user_id = 'old-7'`, nil},
		// `users forget` again, as this release writes it (and an older one, with no xid).
		{"upsert", `INSERT INTO forgotten_users (user_id, forgotten_at_ms) VALUES ('old-8', 9100)
ON CONFLICT (user_id) DO UPDATE SET forgotten_at_ms = greatest(forgotten_users.forgotten_at_ms, EXCLUDED.forgotten_at_ms), forgotten_at = now()`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := pool.Exec(ctx, tc.sql, tc.args...); err != nil {
				t.Fatal(err)
			}
			if err := st.RefreshForgotten(ctx, &f); err != nil {
				t.Fatal(err)
			}
			if f.LastRead() >= n {
				t.Errorf("the refresh read %d rows for one change: the whole table", f.LastRead())
			}
			checkForgotten(t, pool, &f)
		})
	}
}

// Transaction ids (like sequence values) are taken in one order and committed in another: an
// erasure whose transaction began first but committed after a refresh had read a later one
// must still be read, however many refreshes come between.
func TestForgottenRefreshReadsRowsCommittedOutOfOrder(t *testing.T) {
	ctx := context.Background()
	st, pool := forgottenStore(t)
	var f featurestore.Forgotten
	if err := st.RefreshForgotten(ctx, &f); err != nil {
		t.Fatal(err)
	}
	slow, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Rollback(ctx)
	if _, err := slow.Exec(ctx, `INSERT INTO forgotten_users (user_id, forgotten_at_ms) VALUES ('slow', 100)`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO forgotten_users (user_id, forgotten_at_ms) VALUES ('fast', 200)`); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := st.RefreshForgotten(ctx, &f); err != nil {
			t.Fatal(err)
		}
	}
	if !f.Skip("fast", 200) || f.Skip("slow", 100) {
		t.Fatalf("before the slow commit: fast %t (want true), slow %t (want false)", f.Skip("fast", 200), f.Skip("slow", 100))
	}
	if err := slow.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := st.RefreshForgotten(ctx, &f); err != nil {
		t.Fatal(err)
	}
	if !f.Skip("slow", 100) {
		t.Error("the erasure committed after a later one had been read was never read")
	}
	checkForgotten(t, pool, &f)
}

// Concurrent erasures (single rows and lists, some held open, some raising a user's erasure
// time) while a consumer refreshes: after them, the set is what a whole read gives.
func TestForgottenRefreshMatchesTheTable(t *testing.T) {
	ctx := context.Background()
	st, pool := forgottenStore(t)
	var f featurestore.Forgotten
	var wg sync.WaitGroup
	stop := make(chan struct{})
	refreshed := make(chan int)
	go func() {
		n := 0
		defer func() { refreshed <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := st.RefreshForgotten(ctx, &f); err != nil {
				t.Error(err)
				return
			}
			n++
		}
	}()
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					users := []string{fmt.Sprintf("w%d-%d", w, i), fmt.Sprintf("w%d-again-%d", w, i/4)} // the second one again and again, later
					_, err := tx.Exec(ctx, `INSERT INTO forgotten_users (user_id, forgotten_at_ms) SELECT unnest($1::text[]), $2
ON CONFLICT (user_id) DO UPDATE SET forgotten_at_ms = greatest(forgotten_users.forgotten_at_ms, EXCLUDED.forgotten_at_ms), forgotten_at = now()`,
						users, int64(1000*w+i))
					time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond) // held open across refreshes
					return err
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	if n := <-refreshed; n < 10 {
		t.Fatalf("only %d refreshes during the erasures", n)
	}
	if err := st.RefreshForgotten(ctx, &f); err != nil {
		t.Fatal(err)
	}
	checkForgotten(t, pool, &f)
}

// A refresh whose snapshot is below the last one's (another cluster answers on the address:
// a restore from a dump) reads the table whole: its rows may all lie below the watermark.
func TestForgottenRefreshRereadsWhenTransactionIDsGoBack(t *testing.T) {
	ctx := context.Background()
	st, pool := forgottenStore(t)
	var f featurestore.Forgotten
	if err := st.RefreshForgotten(ctx, &f); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO forgotten_users (user_id, forgotten_at_ms) VALUES ('restored', 7)`); err != nil {
		t.Fatal(err)
	}
	f.SetXmin(1 << 62)
	if err := st.RefreshForgotten(ctx, &f); err != nil {
		t.Fatal(err)
	}
	checkForgotten(t, pool, &f)
}

// A failover to an asynchronous replica: the new primary lost the old one's last commits
// (an erasure among them) and hands out their transaction ids again, below the watermark of
// the consumer's last read, to new erasures; by the consumer's next read it may have gone
// past that watermark, so the ids do not go back. The server changed (its start time): the
// refresh reads the table whole, and keeps the erasure it read before that the new primary
// lost (the set only grows).
func TestForgottenRefreshRereadsAfterAFailover(t *testing.T) {
	ctx := context.Background()
	st, pool := forgottenStore(t)
	if _, err := pool.Exec(ctx, `INSERT INTO forgotten_users (user_id, forgotten_at_ms) VALUES ('lost', 5)`); err != nil {
		t.Fatal(err)
	}
	var f featurestore.Forgotten
	if err := st.RefreshForgotten(ctx, &f); err != nil {
		t.Fatal(err)
	}
	// On the new primary: 'lost' never committed, and 'reused' was written by a transaction
	// whose id lies below the consumer's watermark.
	for _, q := range []string{
		`DELETE FROM forgotten_users WHERE user_id = 'lost'`,
		`ALTER TABLE forgotten_users DISABLE TRIGGER forgotten_users_xid`,
		`INSERT INTO forgotten_users (user_id, forgotten_at_ms, xid) VALUES ('reused', 7, '3')`,
		`ALTER TABLE forgotten_users ENABLE TRIGGER forgotten_users_xid`,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	f.SetServerStarted(time.Unix(1, 0))
	if err := st.RefreshForgotten(ctx, &f); err != nil {
		t.Fatal(err)
	}
	if !f.Skip("reused", 7) {
		t.Error("the erasure written below the watermark on the new server was not read")
	}
	if !f.Skip("lost", 5) {
		t.Error("the erasure read from the old server was dropped by the whole read")
	}
	// The same server from then on: incremental again.
	if err := st.RefreshForgotten(ctx, &f); err != nil {
		t.Fatal(err)
	}
	if n := f.LastRead(); n != 0 {
		t.Errorf("the refresh after the whole read read %d rows, want 0", n)
	}
}

// A consumer reads forgotten_users whole when it starts and after a failover: millions of
// rows for a deployment that erases thousands of users a day (about 5 s for 3 M rows here).
// That read ran under the session's statement_timeout (--pg.statement-timeout, 5 s) and the
// consumer's 5 s per refresh: past them every whole read failed, and the consumer, which
// applies no batch without a fresh list, stopped for good. Here 200,000 rows under a session
// timeout of 50 ms.
func TestForgottenWholeReadOutlastsTheSessionStatementTimeout(t *testing.T) {
	ctx := context.Background()
	dsn := testutil.MigratedDatabase(t)
	pool := testutil.Pool(t, dsn)
	const n = 200_000
	if _, err := pool.Exec(ctx, `INSERT INTO forgotten_users (user_id, forgotten_at_ms)
SELECT 'user-' || g, 1700000000000 + g FROM generate_series(1, $1::int) g`, n); err != nil {
		t.Fatal(err)
	}
	pc := postgres.DefaultConfig()
	pc.DSN, pc.StatementTimeout = dsn, 50*time.Millisecond
	timed, err := postgres.Open(ctx, pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(timed.Close)
	st := featurestore.New(timed, nil, testutil.Unique("frw")+":", testConfig(), nil)
	var f featurestore.Forgotten
	if err := st.RefreshForgotten(ctx, &f); err != nil {
		t.Fatalf("whole read: %v", err)
	}
	if f.Len() != n || !f.Skip("user-7", 1700000000007) {
		t.Fatalf("the set holds %d users, want %d", f.Len(), n)
	}
}
