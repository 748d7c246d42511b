package ingest_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/events"
	"recsys/pkg/ingest"
	"recsys/pkg/testutil"
)

// behindPgBouncer returns the URL of a migrated test database through a real PgBouncer in
// transaction pooling, with the query mode docs/scaling.md prescribes for it (PgBouncer 1.18
// keeps no prepared statements in that mode), and a direct pool on the database.
func behindPgBouncer(t *testing.T) (bouncerDSN string, direct *pgxpool.Pool) {
	t.Helper()
	dsn := testutil.MigratedDatabase(t)
	return testutil.StartPgBouncer(t, dsn) + "&default_query_exec_mode=exec", testutil.Pool(t, dsn)
}

// requirePooledPID fails the test unless the process id that pool's connections are told is
// PgBouncer's own, not their server session's: the writer could not find a session by it.
func requirePooledPID(t *testing.T, pool, direct *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	c, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	told := c.Conn().PgConn().PID()
	var backend uint32
	if err := c.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&backend); err != nil {
		t.Fatal(err)
	}
	if told == backend {
		t.Fatalf("the client was told the backend's process id %d: not behind the pooler", told)
	}
	if n := count(t, direct, `SELECT count(*) FROM pg_stat_activity WHERE pid = $1`, int32(told)); n != 0 {
		t.Fatalf("a server session has the process id %d the pooler told its client", told)
	}
}

// TestWriterBehindPgBouncer: through a real PgBouncer 1.18 in transaction pooling (with
// default_query_exec_mode=exec, as docs/scaling.md prescribes), more clients than server
// connections write groups concurrently on both paths, and their resends are answered
// duplicate: the statement path's pipeline (the transaction id, a Flush, the insert, one
// Sync) and the COPY path's transaction each keep one server connection throughout.
func TestWriterBehindPgBouncer(t *testing.T) {
	forEachPath(t, func(t *testing.T, path func(*ingest.Config)) {
		ctx := context.Background()
		bouncer, direct := behindPgBouncer(t)
		cfg, err := pgxpool.ParseConfig(bouncer)
		if err != nil {
			t.Fatal(err)
		}
		cfg.MaxConns = 4 * testutil.PgBouncerPoolSize
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		requirePooledPID(t, pool, direct)
		w := newWriter(t, pool, func(c *ingest.Config) { path(c); c.Workers = int(cfg.MaxConns) })
		const writers, perWriter = 16, 3
		for round, want := range []ingest.Status{ingest.StatusOK, ingest.StatusDuplicate} {
			var wg sync.WaitGroup
			errs := make(chan error, writers)
			for g := range writers {
				wg.Go(func() {
					var evs []events.Any
					for i := range perWriter {
						evs = append(evs, watch(fmt.Sprintf("bouncer-%02d-%d", g, i), fmt.Sprintf("u%d", g%5)))
					}
					evs = append(evs, impression(fmt.Sprintf("bouncer-imp-%02d", g), "u1", "a", "b"))
					res, err := w.Write(ctx, evs, "")
					if err != nil {
						errs <- fmt.Errorf("writer %d: %w", g, err)
						return
					}
					for i, r := range res {
						if r.Status != want || r.OutboxEnqueued != (want == ingest.StatusOK) {
							errs <- fmt.Errorf("writer %d, event %d: %+v, want %s", g, i, r, want)
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Errorf("round %d: %v", round, err)
			}
		}
		if n := count(t, direct, `SELECT count(*) FROM watches WHERE event_id LIKE 'bouncer-%'`); n != writers*perWriter {
			t.Errorf("%d watches stored, want %d", n, writers*perWriter)
		}
		if n := count(t, direct, `SELECT count(*) FROM impression_events WHERE event_id LIKE 'bouncer-imp-%'`); n != writers {
			t.Errorf("%d impressions stored, want %d", n, writers)
		}
		// The clients shared the pooler's few server sessions.
		if n := pool.Stat().TotalConns(); n <= testutil.PgBouncerPoolSize {
			t.Errorf("the writer used %d connections to the pooler, want more than its %d server sessions", n, testutil.PgBouncerPoolSize)
		}
		if n := count(t, direct, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1`,
			testutil.PgBouncerAppName); n < 1 || n > testutil.PgBouncerPoolSize {
			t.Errorf("%d server sessions of the pooler, want 1 to %d", n, testutil.PgBouncerPoolSize)
		}
	})
}

// TestPgBouncerPassesFlush: the statement path's outcome is found by the transaction id the
// server sends at the pipeline's Flush, before the write runs and commits at the Sync. The
// pooler must pass the Flush on and the answer back while it holds the server connection for
// the Sync; otherwise a write held up (on a lock, in its commit) has no id to be found by.
func TestPgBouncerPassesFlush(t *testing.T) {
	ctx := context.Background()
	bouncer, direct := behindPgBouncer(t)
	holder, err := direct.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Release()
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_lock(4243)`); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release := func() {
		once.Do(func() {
			if _, err := holder.Exec(ctx, `SELECT pg_advisory_unlock(4243)`); err != nil {
				t.Error(err)
			}
		})
	}
	defer release()
	conn, err := pgx.Connect(ctx, bouncer)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	pl := conn.PgConn().StartPipeline(ctx)
	pl.SendQueryParams(`SELECT pg_current_xact_id()::text::int8`, nil, nil, nil, nil)
	pl.SendFlushRequest()
	pl.SendQueryParams(`SELECT pg_advisory_xact_lock(4243)`, nil, nil, nil, nil)
	pl.SendPipelineSync()
	if err := pl.Flush(); err != nil {
		t.Fatal(err)
	}
	heard := make(chan error, 1)
	go func() {
		res, err := pl.GetResults()
		if err == nil {
			rr, ok := res.(*pgconn.ResultReader)
			if !ok {
				err = fmt.Errorf("got %T, want the id's rows", res)
			} else {
				_, err = rr.Close()
			}
		}
		heard <- err
	}()
	select {
	case err := <-heard:
		if err != nil {
			t.Fatalf("the transaction id's answer: %v", err)
		}
	case <-time.After(5 * time.Second):
		release()
		t.Fatal("no answer to the transaction id before the Sync's statement ended: the pooler held the Flush back")
	}
	release()
	for {
		res, err := pl.GetResults()
		if err != nil {
			t.Fatal(err)
		}
		if res == nil {
			break
		}
		if rr, ok := res.(*pgconn.ResultReader); ok {
			if _, err := rr.Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := pl.Close(); err != nil {
		t.Fatal(err)
	}
}

// lostCommitCase is a case of TestWriterResolvesALostCommitBehindPgBouncer.
type lostCommitCase struct {
	name string
	// path: "statement" or "copy", or both when empty.
	path       string
	holdCommit bool // see TestWriterAnswersWhatATimedOutCommitLeft
	lose       bool
	// firstHeard: the answers are lost after the transaction id's (the statement path).
	firstHeard bool
	// stored: the event was stored already, by an earlier write.
	stored bool
	// relay: what the relay does to the group's rows once they were committed.
	relay      string
	wantStored bool
	want       ingest.Status // "" for unavailable, nothing stored
}

// TestWriterResolvesALostCommitBehindPgBouncer: the cases of
// TestWriterAnswersWhatATimedOutCommitLeft and TestWriterAnswersALostCommitTheRelayMovedOn
// that stand in for a pooler by rewriting the process id, through a real PgBouncer in
// transaction pooling: faultyNet sits between the writer and the pooler. A write whose commit
// answer is lost, or whose commit is held past the write timeout, is answered by what the
// database kept, found by its transaction id: the process id the client knows is the
// pooler's (requirePooledPID), which names no server session.
func TestWriterResolvesALostCommitBehindPgBouncer(t *testing.T) {
	for _, tc := range []lostCommitCase{
		{name: "commit held past the timeout", holdCommit: true},
		{name: "answer of a commit lost", lose: true, wantStored: true, want: ingest.StatusOK},
		// Without its transaction id, a group that stored nothing left no row to find it by:
		// its outcome is unknown, behind a pooler or not.
		{name: "answer lost after the transaction id, the event stored before", path: "statement", lose: true,
			firstHeard: true, stored: true, wantStored: true, want: ingest.StatusDuplicate},
		{name: "answer lost after the transaction id, rows published and deleted", path: "statement", lose: true,
			firstHeard: true, relay: `DELETE FROM event_outbox`, wantStored: true, want: ingest.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, p := range []struct {
				name    string
				copyMin int
			}{{"statement", 1 << 30}, {"copy", 1}} {
				if tc.path == "" || tc.path == p.name {
					t.Run(p.name, func(t *testing.T) { tc.run(t, p.copyMin) })
				}
			}
		})
	}
}

func (tc lostCommitCase) run(t *testing.T, copyMin int) {
	const timeout = time.Second
	ctx := context.Background()
	path := func(c *ingest.Config) { c.CopyMinEvents = copyMin }
	bouncer, direct := behindPgBouncer(t)
	const id, user = "bouncer-lost-0001", "u1"
	if tc.stored {
		if res, err := newWriter(t, direct, path).Write(ctx, []events.Any{watch(id, user)}, ""); err != nil || res[0].Status != ingest.StatusOK {
			t.Fatalf("first write: %+v %v", res, err)
		}
	}
	fn := &faultyNet{firstHeard: tc.firstHeard}
	if tc.lose {
		fn.marker = []byte(id) // in the statement's parameters
		if copyMin == 1 {
			fn.marker = []byte("commit") // pgx's COMMIT
		}
	}
	if tc.relay != "" {
		fn.lost = func() {
			if _, err := direct.Exec(context.Background(), tc.relay); err != nil {
				t.Errorf("relay: %v", err)
			}
		}
	}
	faulty := faultyPool(t, bouncer, fn)
	requirePooledPID(t, faulty, direct)
	var release func()
	if tc.holdCommit {
		release = holdCommits(t, direct)
	}
	res, werr := writeWithin(t, faulty, path, timeout, watch(id, user), release)
	// Room for a transaction the server still runs to commit.
	time.Sleep(500 * time.Millisecond)
	stored := count(t, direct, `SELECT count(*) FROM watches WHERE event_id = $1`, id) > 0
	if stored != tc.wantStored {
		t.Fatalf("stored %v, want %v (the write was answered %+v %v)", stored, tc.wantStored, res, werr)
	}
	if tc.want == "" {
		if !errors.Is(werr, ingest.ErrUnavailable) || errors.Is(werr, ingest.ErrOutcomeUnknown) {
			t.Fatalf("answered %+v %v, want unavailable with nothing stored", res, werr)
		}
		// The resend, through the pooler too, stores it.
		res, err := newWriter(t, testutil.Pool(t, bouncer), path).Write(ctx, []events.Any{watch(id, user)}, "")
		if err != nil || res[0].Status != ingest.StatusOK {
			t.Fatalf("resend after the 503: %v %+v, want it stored now (ok)", err, res)
		}
		return
	}
	if werr != nil || len(res) != 1 || res[0].Status != tc.want || res[0].OutboxEnqueued != (tc.want == ingest.StatusOK) {
		t.Fatalf("answered %+v %v, want %s", res, werr, tc.want)
	}
}
