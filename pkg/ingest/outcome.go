package ingest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrOutcomeUnknown is wrapped, with ErrUnavailable, in the error of a write whose commit was
// sent but whose outcome could not be learnt within the write timeout: its events may be
// stored or not. A resend is safe: it is deduplicated by the events' ids.
var ErrOutcomeUnknown = errors.New("outcome unknown: the commit was sent, but neither its answer nor the database's record of it came within the write timeout")

// pendingOutcome is the error of a transaction that may have committed although the writer
// heard no answer: its COMMIT (for the statement, the statement itself, an implicit
// transaction) was sent, and the connection ended or the write timeout came before the
// server answered. The server ignores a cancel request that arrives while it reads a
// command or commits, and a network can lose the answer of a COMMIT that went through, so
// the writer cannot take such a transaction as rolled back: resolve asks the database.
type pendingOutcome struct {
	pid uint32 // the backend of the transaction's connection
	// xid is the transaction's id (pg_current_xact_id), which both paths ask for in their
	// first statement; 0 when its answer never came (the statement path sends both of its
	// statements at once, and the connection can break before the first one's answer).
	xid int64
	err error
}

func (e *pendingOutcome) Error() string { return e.err.Error() }
func (e *pendingOutcome) Unwrap() error { return e.err }

// pending returns err, the error of conn's statement or COMMIT, as a *pendingOutcome unless
// it proves that the transaction did not commit: an error the server returned (it rolled
// back), one pgx raised before sending anything, or a COMMIT the server answered with a
// rollback. A connection still open heard the server's whole answer, and may be in another
// caller's hands by the time resolve would end its session.
func pending(err error, conn *pgconn.PgConn, xid int64) error {
	var pe *pgconn.PgError
	if err == nil || errors.As(err, &pe) || pgconn.SafeToRetry(err) || errors.Is(err, pgx.ErrTxCommitRollback) || !conn.IsClosed() {
		return err
	}
	return &pendingOutcome{pid: conn.PID(), xid: xid, err: err}
}

// endBackendSQL ends the session that ran a pending transaction, so its outcome is final
// before it is read: a backend waiting on a lock, or in a COMMIT, does not notice that its
// client closed the connection, and could commit after the writer answered. The session is
// named by its transaction id ($2) when known, which cannot name another session, behind a
// pooler too; otherwise by its process id ($1), which its connection told (the backend lives
// until it ends, so no other session has that id meanwhile; behind a pooler that hands out
// process ids of its own, as PgBouncer does, none matches, and the lookup may come before a
// late commit). It returns the number of such sessions still there,
// each sent the signal again: resolve repeats it until none is (pg_terminate_backend's own
// wait checks the process only every 100 ms). A session leaves pg_stat_activity after its
// transaction ended. The sessions are chosen first (MATERIALIZED): as one more condition of
// the scan, the planner may call pg_terminate_backend before the others, on every session.
const endBackendSQL = `
WITH s AS MATERIALIZED (
	SELECT pid FROM pg_stat_activity
	WHERE backend_type = 'client backend' AND usename = current_user AND pid <> pg_backend_pid()
		AND CASE WHEN $2::int8 = 0 THEN pid = $1::int4 ELSE backend_xid = $2::int8::text::xid8::xid END
)
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM s`

// endBackendPoll is the interval at which resolve checks whether the session ended.
const endBackendPoll = 2 * time.Millisecond

// lookupSQL reads what a pending transaction left, once it has ended: its status and the
// dedup indexes (0-based) of the keys it inserted (those whose row it created: xmin). $1, $2
// are the group's keys, $4 its transaction id or 0. Without the id (the statement path's
// connection broke before the id's answer came), the
// transaction is found by its outbox rows: $3 are the names its rows would have (batchRowName
// of each key; the group's idSuffix makes them its own), and a group that stored any new event
// wrote at least one of them. Its id is the xmin of the dedup key a found row is named after
// (a row's first event is a new one), not the row's own: the relay, woken by the commit's
// NOTIFY, may have claimed or published the row (an update, a new xmin) already. It may have
// deleted it too (--relay.retention=0): no row is then "aborted" only when none of the
// group's keys is stored either, and "undetermined" otherwise.
const lookupSQL = `
WITH ob AS (
	SELECT event_id FROM event_outbox WHERE event_id = ANY($3::text[])
), x AS (
	SELECT CASE WHEN $4::int8 <> 0 THEN $4::int8::text::xid8::xid ELSE (
		SELECT d.xmin FROM unnest($1::text[], $2::text[], $3::text[]) AS u(id, usr, name)
		JOIN event_dedup d ON d.event_id = u.id AND d.user_id = u.usr
		WHERE u.name IN (SELECT event_id FROM ob) LIMIT 1) END AS xid
)
SELECT CASE WHEN $4::int8 <> 0 THEN pg_xact_status($4::int8::text::xid8)
		WHEN (SELECT xid FROM x) IS NOT NULL THEN 'committed'
		WHEN EXISTS (SELECT FROM unnest($1::text[], $2::text[]) AS u(id, usr)
			JOIN event_dedup d ON d.event_id = u.id AND d.user_id = u.usr) THEN 'undetermined'
		ELSE 'aborted' END,
	ARRAY(SELECT u.ord - 1 FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(id, usr, ord)
		JOIN event_dedup d ON d.event_id = u.id AND d.user_id = u.usr
		WHERE d.xmin = (SELECT xid FROM x))`

// resolve learns, on another connection and by deadline, what the pending transaction of b
// left: per dedup index whether its event was stored by it and whether its frame was
// enqueued, as exec returns them, or an error saying that it stored nothing, or one wrapping
// ErrOutcomeUnknown when the database could not tell in time.
func (w *Writer) resolve(deadline time.Time, b *batch, p *pendingOutcome) (isNew, enqueued []bool, err error) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	unknown := func(step string, cause error) ([]bool, []bool, error) {
		w.m.unconfirmed("unknown").Inc()
		w.log.Warn("a write's outcome is unknown: its events may be stored or not", "step", step, "err", cause, "write_err", p.err, "events", len(b.dedupIDs))
		// cause only as text: a server error of the lookup says nothing about the events.
		return nil, nil, fmt.Errorf("%w (%s: %v): %w", ErrOutcomeUnknown, step, cause, p.err)
	}
	conn, err := w.pool.Acquire(ctx)
	if err != nil {
		return unknown("connect", err)
	}
	defer conn.Release()
	// Half the time left for the session to end, the rest for the lookup.
	wait := time.Until(deadline) / 2
	ended := time.Now().Add(wait)
	for {
		var left int64
		if err := conn.QueryRow(ctx, endBackendSQL, int32(p.pid), p.xid).Scan(&left); err != nil {
			return unknown("end the transaction's session", err)
		}
		if left == 0 {
			break
		}
		if time.Now().After(ended) {
			if p.xid != 0 {
				break // its status tells whether it is over
			}
			// Without its id the transaction's outcome is only read from its rows, which
			// it may still commit.
			return unknown("end the transaction's session", fmt.Errorf("still running after %s", wait))
		}
		time.Sleep(endBackendPoll)
	}
	var names []string
	if p.xid == 0 {
		names = make([]string, len(b.dedupIDs))
		for i := range names {
			names[i] = b.batchRowName(i)
		}
	}
	var status *string
	var stored []int64
	if err := conn.QueryRow(ctx, lookupSQL, b.dedupIDs, b.dedupUsers, names, p.xid).Scan(&status, &stored); err != nil {
		return unknown("read the transaction's rows", err)
	}
	switch {
	case status != nil && *status == "committed":
		isNew = make([]bool, len(b.dedupIDs))
		for _, i := range stored {
			if i < 0 || i >= int64(len(isNew)) {
				return unknown("read the transaction's rows", fmt.Errorf("dedup index %d of a group of %d", i, len(isNew)))
			}
			isNew[i] = true
		}
		w.m.unconfirmed("committed").Inc()
		w.log.Info("a write whose commit went unanswered was committed", "write_err", p.err, "events", len(b.dedupIDs), "stored", len(stored))
		// Both paths enqueue every new event (the statement's rows cannot clash: see
		// batch.enqueued); the rows themselves may be published and gone by now.
		return isNew, isNew, nil
	case status != nil && *status == "aborted":
		w.m.unconfirmed("rolled_back").Inc()
		// Without the id, a transaction that found every event stored already wrote no
		// outbox row either: it stored nothing as well.
		return nil, nil, fmt.Errorf("nothing was stored (the transaction's session was ended, and it had not committed anything): %w", p.err)
	case status != nil && *status == "undetermined":
		return unknown("read the transaction's rows", errors.New("no outbox row of it is left (the relay may have published and deleted them), and some of its events are stored"))
	default:
		return unknown("read the transaction's status", fmt.Errorf("status %v", deref(status)))
	}
}

func deref(s *string) string {
	if s == nil {
		return "NULL"
	}
	return *s
}
