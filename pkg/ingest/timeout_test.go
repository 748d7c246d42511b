package ingest_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math"
	"net"
	"sync"
	"sync/atomic"
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

// faultyNet stands between a pool and the server: once a connection writes marker first (the
// group's last message: its statement's parameters, or COMMIT), the server's answers to it
// are lost on the way, as on a network that fails right after the request left; with down
// set, every connection loses its answers from then on and no new one can be made, as when
// the database host becomes unreachable.
type faultyNet struct {
	marker []byte
	down   bool
	hit    atomic.Bool
	// firstHeard: the connection that writes marker hears the server's first statement
	// answer after it (up to its CommandComplete) before it goes deaf, as when the network
	// fails between two answers.
	firstHeard bool
	// lost, when set, runs once as the first answer of a deaf connection is dropped: the
	// server has answered, so what it ran has committed or rolled back.
	lost     func()
	lostOnce sync.Once
	// hiddenPID, when set, is the process id every connection is told instead of its
	// backend's, as a pooler in front of the server (PgBouncer) tells its own: no session of
	// the server has it, and a cancel request naming it reaches none.
	hiddenPID uint32
}

func (f *faultyNet) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if f.down && f.hit.Load() {
		return nil, errors.New("faulty net: host unreachable")
	}
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return &faultyConn{Conn: c, net: f}, nil
}

type faultyConn struct {
	net.Conn
	net  *faultyNet
	deaf atomic.Bool
	// deafAfterAnswer: deaf once the next CommandComplete was read (faultyNet.firstHeard).
	deafAfterAnswer atomic.Bool
	// The server's stream as walk follows it: header is the part of the current message's
	// header read so far, left what remains of its body.
	header []byte
	left   int
}

func (c *faultyConn) Write(p []byte) (int, error) {
	if len(c.net.marker) > 0 && bytes.Contains(p, c.net.marker) && c.net.hit.CompareAndSwap(false, true) {
		if c.net.firstHeard {
			c.deafAfterAnswer.Store(true)
		} else {
			c.deaf.Store(true)
		}
	}
	return c.Conn.Write(p)
}

// Read drops what the server sends to a deaf connection; the read still ends at the
// connection's deadline or close, as pgx ends it.
func (c *faultyConn) Read(p []byte) (int, error) {
	for {
		n, err := c.Conn.Read(p)
		if err != nil || !(c.deaf.Load() || c.net.down && c.net.hit.Load()) {
			if c.net.hiddenPID == 0 && !c.net.firstHeard {
				return n, err
			}
			heard := n
			c.walk(p[:n], func(typ byte, size, end int) {
				switch {
				case typ == 'K' && size == 8 && end >= 8 && c.net.hiddenPID != 0:
					// BackendKeyData (protocol 3.0): the process id, then the cancel key.
					binary.BigEndian.PutUint32(p[end-8:], c.net.hiddenPID)
				case typ == 'C' && c.deafAfterAnswer.Load() && !c.deaf.Load():
					heard = end
					c.deaf.Store(true)
				}
			})
			if heard < n && c.net.lost != nil {
				c.net.lostOnce.Do(c.net.lost)
			}
			return heard, err
		}
		if c.net.lost != nil {
			c.net.lostOnce.Do(c.net.lost)
		}
	}
}

// walk follows the server's messages (a type byte, an int32 length that counts itself, the
// body) through buf, the next bytes it sent, and calls f for each message that ends in buf
// with its type, its body's size and the offset in buf where it ends.
func (c *faultyConn) walk(buf []byte, f func(typ byte, size, end int)) {
	at := 0
	for at < len(buf) {
		if len(c.header) < 5 {
			k := min(5-len(c.header), len(buf)-at)
			c.header = append(c.header, buf[at:at+k]...)
			at += k
			if len(c.header) < 5 {
				return
			}
			c.left = int(binary.BigEndian.Uint32(c.header[1:5])) - 4
		}
		k := min(c.left, len(buf)-at)
		c.left -= k
		at += k
		if c.left > 0 {
			return
		}
		f(c.header[0], int(binary.BigEndian.Uint32(c.header[1:5]))-4, at)
		c.header = c.header[:0]
	}
}

// TestWriterAnswersWhatATimedOutCommitLeft: a group whose transaction did not answer by the
// write timeout is answered by what the database really kept, not "nothing stored". The
// server ignores a cancel request that arrives while it reads a command or commits, and a
// network can lose the answer of a COMMIT that went through: either way the group could be
// committed while its callers were told 503 "nothing stored", and their resends were then
// answered "duplicate" (or, for events sent without an id under
// --ingest.missing-event-id=random, stored twice). Behind a pooler (PgBouncer in transaction
// pooling) the connection's process id is the pooler's: the session of a small group, written
// by the statement, was not ended before the lookup, and its commit could land after it.
func TestWriterAnswersWhatATimedOutCommitLeft(t *testing.T) {
	const timeout = time.Second
	cases := []struct {
		name string
		// holdCommit makes the transaction's commit wait for a lock the test holds until the
		// writer has answered, through a deferred trigger that ignores cancel requests (as the
		// server does while it reads the COMMIT).
		holdCommit bool
		// marker per path (statement, copy): the write after which the answers are lost.
		lose bool
		down bool
		// pooled: the connections are told a process id no session has, as behind PgBouncer.
		pooled bool
		// What the caller must be told, and what must be stored.
		wantStored  bool
		wantUnknown bool
	}{
		{name: "commit held past the timeout, cancel ignored", holdCommit: true},
		{name: "answer of a commit lost", lose: true, wantStored: true},
		{name: "database unreachable once the commit was sent", lose: true, down: true, wantStored: true, wantUnknown: true},
		// Behind a pooler the session cannot be found by its process id: unless it is found by
		// its transaction id, the held commit lands after the lookup answered "nothing stored".
		{name: "commit held past the timeout behind a pooler", holdCommit: true, pooled: true},
		{name: "answer of a commit lost behind a pooler", lose: true, pooled: true, wantStored: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			forEachPath(t, func(t *testing.T, path func(*ingest.Config)) {
				ctx := context.Background()
				dsn := testutil.MigratedDatabase(t)
				pool := testutil.Pool(t, dsn)
				const id, user = "lost-answer-0001", "u1"
				probe := &ingest.Config{}
				path(probe)
				marker := id // in the statement's parameters (and the COPY's rows)
				if probe.CopyMinEvents == 1 {
					marker = "commit" // pgx's COMMIT
				}
				fn := &faultyNet{down: tc.down}
				if tc.lose {
					fn.marker = []byte(marker)
				}
				if tc.pooled {
					fn.hiddenPID = math.MaxInt32 - 7
				}
				faulty := faultyPool(t, dsn, fn)
				if tc.pooled {
					c, err := faulty.Acquire(ctx)
					if err != nil {
						t.Fatal(err)
					}
					pid := c.Conn().PgConn().PID()
					c.Release()
					if pid != fn.hiddenPID {
						t.Fatalf("the writer's connection knows process id %d, want the hidden %d", pid, fn.hiddenPID)
					}
				}
				var release func()
				if tc.holdCommit {
					release = holdCommits(t, pool)
				}
				// Another session of the same role, which ending the write's session must spare.
				bystander, err := pool.Acquire(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer bystander.Release()
				if err := bystander.Ping(ctx); err != nil {
					t.Fatal(err)
				}
				res, werr := writeWithin(t, faulty, path, timeout, watch(id, user), release)
				if _, err := bystander.Exec(ctx, `SELECT 1`); err != nil {
					t.Fatalf("another session after the write: %v", err)
				}
				// Room for a transaction the server still runs to commit.
				time.Sleep(500 * time.Millisecond)
				stored := count(t, pool, `SELECT count(*) FROM watches WHERE event_id = $1`, id) > 0
				if stored != tc.wantStored {
					t.Fatalf("stored %v, want %v (the write was answered %+v %v)", stored, tc.wantStored, res, werr)
				}
				switch {
				case tc.wantUnknown:
					if !errors.Is(werr, ingest.ErrOutcomeUnknown) || !errors.Is(werr, ingest.ErrUnavailable) {
						t.Fatalf("answered %+v %v, want an unavailable error with an unknown outcome", res, werr)
					}
				case stored:
					if werr != nil || len(res) != 1 || res[0].Status != ingest.StatusOK || !res[0].OutboxEnqueued {
						t.Fatalf("answered %+v %v, want ok and enqueued: the event was stored", res, werr)
					}
				default:
					if !errors.Is(werr, ingest.ErrUnavailable) || errors.Is(werr, ingest.ErrOutcomeUnknown) {
						t.Fatalf("answered %+v %v, want unavailable with nothing stored", res, werr)
					}
					res, err := newWriter(t, pool, path).Write(ctx, []events.Any{watch(id, user)}, "")
					if err != nil || res[0].Status != ingest.StatusOK {
						t.Fatalf("resend after the 503: %v %+v, want it stored now (ok)", err, res)
					}
				}
			})
		})
	}
}

// TestWriterAnswersALostCommitTheRelayMovedOn: on the statement path the outcome of a commit
// whose answer was lost is read from the group's outbox rows, and the relay claims (an
// update: a new xmin) and, by default (--relay.retention=0), deletes them as soon as the
// commit's NOTIFY wakes it, which can come before the writer looks. The events were stored,
// yet the callers were answered "duplicate" for events they sent first (claimed rows), or 503
// "nothing was stored" (deleted rows), and then "duplicate" for the resend. The statement asks
// for its transaction's id first, and the server sends that answer before it writes: once it
// was heard, the outcome is read by the id, whatever the relay did, and behind a pooler that
// hides the server's process id (PgBouncer) too.
func TestWriterAnswersALostCommitTheRelayMovedOn(t *testing.T) {
	const timeout = time.Second
	for _, tc := range []struct {
		name  string
		relay string // what the relay did to the group's rows once they were committed
		// idHeard: the answers are lost after the transaction id's (faultyNet.firstHeard),
		// and the connection was told a process id no session has (faultyNet.hiddenPID).
		idHeard bool
		// wantOK: the answer must be ok; otherwise an unknown outcome will do, never
		// "nothing stored" nor "duplicate".
		wantOK bool
	}{
		{name: "claimed", relay: `UPDATE event_outbox SET status = 'publishing', lease_owner = 'relay-x', lease_token = 1, lease_expires_at = now() + interval '1 minute'`, wantOK: true},
		{name: "published", relay: `UPDATE event_outbox SET status = 'published', published_at = now()`, wantOK: true},
		{name: "published and deleted", relay: `DELETE FROM event_outbox`},
		{name: "published and deleted, transaction id heard, behind a pooler", relay: `DELETE FROM event_outbox`, idHeard: true, wantOK: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dsn := testutil.MigratedDatabase(t)
			pool := testutil.Pool(t, dsn)
			const id, user = "relayed-0001", "u1"
			fn := &faultyNet{marker: []byte(id), lost: func() {
				if _, err := pool.Exec(context.Background(), tc.relay); err != nil {
					t.Errorf("relay: %v", err)
				}
			}}
			if tc.idHeard {
				fn.firstHeard = true
				fn.hiddenPID = math.MaxInt32 - 7
			}
			faulty := faultyPool(t, dsn, fn)
			w := newWriter(t, faulty, func(c *ingest.Config) { c.CopyMinEvents = 1 << 30; c.Timeout = timeout })
			res, werr := w.Write(ctx, []events.Any{watch(id, user)}, "")
			if n := count(t, pool, `SELECT count(*) FROM watches WHERE event_id = $1`, id); n != 1 {
				t.Fatalf("%d rows stored, want 1 (the write was answered %+v %v)", n, res, werr)
			}
			switch {
			case werr == nil:
				if len(res) != 1 || res[0].Status != ingest.StatusOK || !res[0].OutboxEnqueued {
					t.Fatalf("answered %+v, want ok and enqueued: the event was stored by this write", res)
				}
			case tc.wantOK || !errors.Is(werr, ingest.ErrOutcomeUnknown):
				t.Fatalf("answered %v, want ok: the event was stored by this write", werr)
			}
		})
	}
}

// holdCommits makes the commit of every transaction that inserts a watch wait, until release
// (called once the writer has answered), for a lock the test holds, through a deferred
// trigger that ignores cancel requests (as the server does while it reads the COMMIT).
func holdCommits(t *testing.T, pool *pgxpool.Pool) (release func()) {
	t.Helper()
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `
CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	LOOP
		BEGIN
			PERFORM pg_advisory_xact_lock_shared(4242);
			RETURN NULL;
		EXCEPTION WHEN query_canceled THEN
			-- as a cancel request that came while the server read the COMMIT
		END;
	END LOOP;
END $$;
CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON watches DEFERRABLE INITIALLY DEFERRED
	FOR EACH ROW EXECUTE FUNCTION slow_commit();`); err != nil {
		t.Fatal(err)
	}
	holder, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(holder.Release)
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_lock(4242)`); err != nil {
		t.Fatal(err)
	}
	return func() {
		if _, err := holder.Exec(ctx, `SELECT pg_advisory_unlock(4242)`); err != nil {
			t.Fatal(err)
		}
	}
}

// faultyPool is a pool on dsn whose connections go through fn, with two idle connections for
// the writer's check, as a busy pool has: dialling one would take much of the half grace
// period it gets.
func faultyPool(t *testing.T, dsn string, fn *faultyNet) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.DialFunc = fn.dial
	faulty, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(faulty.Close)
	var warm []*pgxpool.Conn
	for range 2 {
		c, err := faulty.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		warm = append(warm, c)
	}
	for _, c := range warm {
		c.Release()
	}
	return faulty
}

// writeWithin writes ev through pool with the write timeout set, lets the held commits go
// (release, when set) once it is answered, and checks that the answer came within the timeout.
func writeWithin(t *testing.T, pool *pgxpool.Pool, path func(*ingest.Config), timeout time.Duration, ev events.Any, release func()) ([]ingest.Result, error) {
	t.Helper()
	w := newWriter(t, pool, func(c *ingest.Config) { path(c); c.Timeout = timeout })
	t0 := time.Now()
	res, err := w.Write(context.Background(), []events.Any{ev}, "")
	took := time.Since(t0)
	if release != nil {
		release()
	}
	if took > timeout+200*time.Millisecond {
		t.Errorf("answered after %s, the write timeout is %s", took, timeout)
	}
	return res, err
}
