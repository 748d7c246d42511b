package outbox

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"recsys/pkg/postgres"
)

// batchIDPrefix starts a batch row's event_id: "batch:" + its first event's id + "/" + that
// event's user + "@" + the writer's group suffix (pkg/ingest names them).
const batchIDPrefix = "batch:"

// erasePage is how many dead batch rows EraseDead reads and locks at once.
const erasePage = 500

// EraseDead removes the events of users from the dead rows created up to at, for `recsys
// users forget`. Dead rows are never published, so the relay's retention never deletes them:
// without this an erased user's events (ids, sessions, client context) would stay in the
// outbox until someone replays them. A single-event row of the users goes whole; a batch row
// loses the users' frames (and goes when none is left), and one named after an erased user's
// event is renamed after its new first event. An event goes when it was received up to at
// (erasedBefore): rows of a user who came back after the erasure stay. A batch row that does
// not decode (a poison row) is left as it is. Rows that go dead after it
// looked lose the users' events as they go dead (eraseForgotten). It returns the events
// removed.
//
// Its statements run without the session's statement_timeout (ctx still stops them): the
// deletion reads every dead row, and a page every dead row up to its 500th batch row, and
// an outbox that a Kafka outage filled with millions of dead rows takes longer than the 5 s
// default (--pg.statement-timeout), which cancelled the erasure there after the users'
// raw rows were gone, at every rerun.
func (s *Store) EraseDead(ctx context.Context, users []string, at time.Time) (int64, error) {
	if len(users) == 0 {
		return 0, nil
	}
	var erased int64
	err := postgres.Untimed(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM event_outbox
WHERE status = 'dead' AND payload_format = 1 AND msg_key = ANY($1) AND created_at <= $2`, users, at)
		erased = tag.RowsAffected()
		if err != nil {
			return err
		}
		// Rows created after at may hold an event received before it: the API stamps an event
		// when it receives it and writes its row up to --ingest.write-timeout later.
		rows, _ := tx.Query(ctx, `SELECT id, payload, created_at FROM event_outbox
WHERE status = 'dead' AND payload_format = 1 AND msg_key = ANY($1) AND created_at > $2 FOR UPDATE`, users, at)
		var late []int64
		var id int64
		var payload []byte
		var createdAt time.Time
		if _, err := pgx.ForEachRow(rows, []any{&id, &payload, &createdAt}, func() error {
			if erasedBefore(payload, createdAt, at) {
				late = append(late, id)
			}
			return nil
		}); err != nil {
			return err
		}
		if len(late) == 0 {
			return nil
		}
		tag, err = tx.Exec(ctx, `DELETE FROM event_outbox WHERE id = ANY($1)`, late)
		erased += tag.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("delete erased users' dead outbox rows: %w", err)
	}
	gone := make(map[string]bool, len(users))
	for _, u := range users {
		gone[u] = true
	}
	var after int64
	for {
		var n int64
		var last int64
		err := postgres.Untimed(ctx, s.pool, func(tx pgx.Tx) error {
			var err error
			n, last, err = eraseDeadPage(ctx, tx, gone, at, after)
			return err
		})
		if err != nil {
			return erased, fmt.Errorf("erase users from dead outbox batch rows: %w", err)
		}
		erased += n
		if last == 0 {
			return erased, nil
		}
		after = last
	}
}

// eraseDeadPage scrubs the dead batch rows after id after, up to erasePage of them, under
// their row locks (a replay requeuing one meanwhile waits, then finds it changed). last is
// the page's last id, 0 when there was none.
func eraseDeadPage(ctx context.Context, tx pgx.Tx, gone map[string]bool, at time.Time, after int64) (erased, last int64, err error) {
	// Every dead batch row, also those created after at: see erasedBefore.
	rows, _ := tx.Query(ctx, `SELECT id, event_id, payload, event_count, created_at FROM event_outbox
WHERE status = 'dead' AND payload_format = 2 AND id > $1
ORDER BY id LIMIT $2 FOR UPDATE`, after, erasePage)
	var page []batchRow
	var r batchRow
	var createdAt []time.Time
	var c time.Time
	if _, err := pgx.ForEachRow(rows, []any{&r.id, &r.eventID, &r.payload, &r.count, &c}, func() error {
		page = append(page, batchRow{id: r.id, eventID: r.eventID, payload: append([]byte(nil), r.payload...), count: r.count})
		createdAt = append(createdAt, c)
		return nil
	}); err != nil {
		return 0, 0, fmt.Errorf("read dead batch rows: %w", err)
	}
	if len(page) == 0 {
		return 0, 0, nil
	}
	for i, r := range page {
		msgs, err := DecodeBatch(r.payload, r.count)
		if err != nil {
			continue
		}
		n, err := scrubBatch(ctx, tx, r, msgs, func(m Message) bool { return gone[m.Key] && erasedBefore(m.Payload, createdAt[i], at) })
		if err != nil {
			return 0, 0, err
		}
		erased += n
	}
	return erased, page[len(page)-1].id, nil
}

// ErasureLockKey is the transaction-scoped advisory lock that orders outbox rows going dead
// (eraseForgotten, shared) and dead letters being stored (featurestore's batches, shared) against `recsys users forget` recording erasures in forgotten_users
// (LockErasures, exclusive). The other advisory keys of the repository: 7_254_391_001 to
// _004 (pkg/featurestore: feature_meta, rebuild, item and user trims), 7_311_500_001
// (pkg/migrate).
const ErasureLockKey = 7_254_391_005

// LockErasures takes, in tx, the lock that a transaction recording erasures in forgotten_users
// must hold before it writes there: a relay transaction making rows dead meanwhile then waits
// for it to commit and reads the erasure, or commits first and EraseDead sees its rows dead
// (eraseForgotten). A write to forgotten_users without it (an operator's hand-written INSERT)
// is not ordered so: a row going dead at that moment may keep the user's events until the
// next `users forget` of the same user.
func LockErasures(ctx context.Context, tx pgx.Tx) error {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(ErasureLockKey)); err != nil {
		return fmt.Errorf("lock out rows going dead while erasures are recorded: %w", err)
	}
	return nil
}

// batchRow is a dead batch row to scrub.
type batchRow struct {
	id      int64
	eventID string
	payload []byte
	count   int
}

// scrubBatch takes the events gone reports out of the batch row r (msgs, its decoded
// frames), deleting the row when none is left, and returns how many it took out.
func scrubBatch(ctx context.Context, tx pgx.Tx, r batchRow, msgs []Message, gone func(m Message) bool) (int64, error) {
	var kept []byte
	n := 0
	var first *Message
	for i := range msgs {
		if gone(msgs[i]) {
			continue
		}
		if first == nil {
			first = &msgs[i]
		}
		kept = AppendFrame(kept, msgs[i])
		n++
	}
	if n == len(msgs) {
		return 0, nil
	}
	if n == 0 {
		if _, err := tx.Exec(ctx, `DELETE FROM event_outbox WHERE id = $1`, r.id); err != nil {
			return 0, fmt.Errorf("delete dead batch row %d: %w", r.id, err)
		}
		return int64(len(msgs)), nil
	}
	if _, err := tx.Exec(ctx, `UPDATE event_outbox SET payload = $2, event_count = $3, event_id = $4 WHERE id = $1`,
		r.id, kept, n, renamedBatch(r.eventID, msgs[0], *first)); err != nil {
		return 0, fmt.Errorf("rewrite dead batch row %d: %w", r.id, err)
	}
	return int64(len(msgs) - n), nil
}

// eraseForgotten removes from the rows ids that are dead the events of users erased by
// `recsys users forget` (forgotten_users) up to the row's creation, as EraseDead does, in
// the transaction tx that made them dead. EraseDead only sees rows already dead when it
// runs: without this a row still pending, in flight or backing off then, that used its last
// attempt later, kept the erased user's events (ids, session, client context) for good.
//
// It first takes ErasureLockKey shared, which waits for an erasure being recorded (which
// holds it exclusively, LockErasures) to commit and holds back any other until tx ends. So
// either an erasure committed before the lock and the read below (a statement of its own, so
// a snapshot taken after the lock in READ COMMITTED) sees it, or it commits after tx: the rows
// were dead by then, and its EraseDead, which runs --settle later, sees them dead and scrubs
// them. A plain read could miss both ways: its snapshot taken before the erasure commits, and
// tx committing after EraseDead's snapshot. An advisory lock rather than a lock on
// forgotten_users: LOCK TABLE in any mode needs UPDATE, DELETE or TRUNCATE on the table, and
// a relay's role granted only SELECT there would fail every recording that makes rows dead and
// every Reap. Undecodable batch rows are left as they are, as EraseDead leaves them. It
// returns the events removed.
func eraseForgotten(ctx context.Context, tx pgx.Tx, ids []int64) (int64, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock_shared($1)`, int64(ErasureLockKey)); err != nil {
		return 0, fmt.Errorf("wait for erasures being recorded: %w", err)
	}
	type deadRow struct {
		batchRow
		key       string
		format    int16
		createdAt time.Time
		msgs      []Message
	}
	rows, _ := tx.Query(ctx, `SELECT id, event_id, msg_key, payload_format, payload, event_count, created_at
FROM event_outbox WHERE id = ANY($1) AND status = 'dead'`, ids)
	var dead []deadRow
	var d deadRow
	if _, err := pgx.ForEachRow(rows, []any{&d.id, &d.eventID, &d.key, &d.format, &d.payload, &d.count, &d.createdAt}, func() error {
		d.payload = append([]byte(nil), d.payload...)
		dead = append(dead, d)
		return nil
	}); err != nil {
		return 0, fmt.Errorf("read dead rows: %w", err)
	}
	var users []string
	for i := range dead {
		r := &dead[i]
		if r.format != FormatBatch {
			users = append(users, r.key)
			continue
		}
		msgs, err := DecodeBatch(r.payload, r.count)
		if err != nil {
			continue // a poison row: nothing to read users from
		}
		r.msgs = msgs
		for _, m := range msgs {
			users = append(users, m.Key)
		}
	}
	if len(users) == 0 {
		return 0, nil
	}
	rows, _ = tx.Query(ctx, `SELECT user_id, forgotten_at_ms FROM forgotten_users WHERE user_id = ANY($1)`, users)
	forgotten := map[string]time.Time{}
	var user string
	var atMs int64
	if _, err := pgx.ForEachRow(rows, []any{&user, &atMs}, func() error {
		forgotten[user] = time.UnixMilli(atMs)
		return nil
	}); err != nil {
		return 0, fmt.Errorf("read erased users: %w", err)
	}
	if len(forgotten) == 0 {
		return 0, nil
	}
	var erased int64
	for _, r := range dead {
		// As EraseDead: events received after the erasure are of a user who came back.
		gone := func(m Message) bool {
			at, ok := forgotten[m.Key]
			return ok && erasedBefore(m.Payload, r.createdAt, at)
		}
		switch {
		case r.format != FormatBatch:
			if !gone(Message{Key: r.key, Payload: r.payload}) {
				continue
			}
			if _, err := tx.Exec(ctx, `DELETE FROM event_outbox WHERE id = $1`, r.id); err != nil {
				return 0, fmt.Errorf("delete erased user's dead row %d: %w", r.id, err)
			}
			erased++
		case r.msgs != nil:
			n, err := scrubBatch(ctx, tx, r.batchRow, r.msgs, gone)
			if err != nil {
				return 0, err
			}
			erased += n
		}
	}
	return erased, nil
}

// erasedBefore reports whether an event (its payload) of a row created at createdAt was
// received up to an erasure at at, as the consumers judge events (featurestore.Forgotten):
// by the payload's server_received_ts_ms, the API's stamp, when it holds a positive one
// earlier than the row; by the row's creation otherwise (a row is created after its events
// were received). The creation alone missed the events received in the last moments before
// the erasure: the API writes a row up to --ingest.write-timeout after receiving its events,
// and such a row, created after the erasure time, kept the erased user's event once dead.
func erasedBefore(payload []byte, createdAt, at time.Time) bool {
	if !createdAt.After(at) {
		return true
	}
	var probe struct {
		ServerReceivedTsMs int64 `json:"server_received_ts_ms"`
	}
	if err := json.Unmarshal(payload, &probe); err != nil || probe.ServerReceivedTsMs <= 0 {
		return false
	}
	return probe.ServerReceivedTsMs <= at.UnixMilli()
}

// renamedBatch is the event_id of a batch row named id whose first event was was and is now
// first: unchanged unless the name held was's event id and user, which the erasure removes.
func renamedBatch(id string, was, first Message) string {
	old := batchIDPrefix + was.EventID + "/" + was.Key
	if was.EventID == first.EventID && was.Key == first.Key || !strings.HasPrefix(id, old) {
		return id
	}
	return batchIDPrefix + first.EventID + "/" + first.Key + id[len(old):]
}
