package ingest_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/events"
	"recsys/pkg/ingest"
	"recsys/pkg/testutil"
)

// TestWriterTimeoutLeavesNothingCommitted: a write answered unavailable because its
// transaction ran past the write timeout must not commit afterwards. The group's statement
// waits on a dedup key another transaction holds; the writer gives up at its timeout, and
// right after its answer the other transaction rolls back. A backend notices no disconnect
// while it waits on a lock, so a statement only abandoned by its client (pgx closes the
// connection and sends its cancel request on the way out) goes on once the key is free and
// commits: the caller told 503 "nothing stored" would find its resend "duplicate", and the
// event would be committed after its receive time by more than the KPI roll-ups' commit
// margin allows. Every new connection to the server (a cancel request is one) is slowed
// down here, as a loaded network or server does, so the race is lost every time.
func TestWriterTimeoutLeavesNothingCommitted(t *testing.T) {
	forEachPath(t, func(t *testing.T, path func(*ingest.Config)) {
		ctx := context.Background()
		dsn := testutil.MigratedDatabase(t)
		pool := testutil.Pool(t, dsn)
		cfg, err := pgxpool.ParseConfig(dsn)
		if err != nil {
			t.Fatal(err)
		}
		const dialDelay = 100 * time.Millisecond
		cfg.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
			select {
			case <-time.After(dialDelay):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}
		slowDial, err := pgxpool.NewWithConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(slowDial.Close)
		const timeout = time.Second
		w := newWriter(t, slowDial, func(c *ingest.Config) { path(c); c.Timeout = timeout })
		const id, user = "late-commit-0001", "u1"
		blocker, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = blocker.Rollback(ctx) }()
		if _, err := blocker.Exec(ctx, `INSERT INTO event_dedup (event_id, user_id, event_type) VALUES ($1, $2, 'watch')`, id, user); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		_, werr := w.Write(ctx, []events.Any{watch(id, user)}, "")
		took := time.Since(t0)
		if err := blocker.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		if !errors.Is(werr, ingest.ErrUnavailable) {
			t.Fatalf("write behind a held key: %v, want unavailable", werr)
		}
		// The answer still comes within the write timeout (plus the first connection's dial).
		if took > timeout+dialDelay+200*time.Millisecond {
			t.Errorf("answered after %s, the write timeout is %s", took, timeout)
		}
		// Room for a statement the server still runs to commit.
		time.Sleep(500 * time.Millisecond)
		if n := count(t, pool, `SELECT count(*) FROM watches WHERE event_id = $1`, id); n != 0 {
			t.Fatalf("answered %v, yet %d watch rows were committed", werr, n)
		}
		res, err := w.Write(ctx, []events.Any{watch(id, user)}, "")
		if err != nil || res[0].Status != ingest.StatusOK {
			t.Fatalf("resend after the 503: %v %+v, want it stored now (ok)", err, res)
		}
	})
}
