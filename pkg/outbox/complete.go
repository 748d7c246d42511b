package outbox

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

// Backoff is the retry schedule of failed rows: Base·2^(attempt-1), capped at Max, with
// "equal jitter" (uniform in [d/2, d]) so rows that failed together do not retry in lockstep.
// Reap applies the same formula in SQL.
type Backoff struct {
	Base, Max time.Duration
}

// Delay returns the wait after a row's attempt-th failed attempt (attempt >= 1).
func (b Backoff) Delay(attempt int) time.Duration {
	d := b.cap(attempt)
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2+1)
}

// cap is the un-jittered delay.
func (b Backoff) cap(attempt int) time.Duration {
	if attempt < 1 {
		attempt = 1
	}
	d := b.Base
	for i := 1; i < attempt && d < b.Max; i++ {
		d *= 2
	}
	return min(d, b.Max)
}

// Result is what publishing one row gave.
type Result struct {
	Err error
	// Permanent marks an error retrying cannot fix (the message is larger than the broker
	// accepts): the row goes dead at once instead of holding its unit back for the whole
	// retry schedule.
	Permanent bool
	// NotSent marks a row that was held back before sending because an earlier row of its
	// unit failed.
	NotSent bool
	// DeadLetters are events of an acked batch row that were left out of its publish because
	// no retry can publish them (larger than the broker accepts): each is stored as a dead
	// single-event row of its own, so the row's other events are not lost with it and a
	// replay acts on the bad event alone.
	DeadLetters []DeadLetter
}

// DeadLetter is one event of a batch row that goes dead on its own.
type DeadLetter struct {
	Message
	Err string
}

// Outcome is the new state of one claimed row.
type Outcome struct {
	ID     int64
	Status string        // StatusPublished, StatusPending or StatusDead
	Delay  time.Duration // StatusPending: wait before the next attempt
	Err    string        // "" keeps last_error
	// Refund un-counts the claim's attempt: the row was held back behind an earlier failure
	// of its unit, which is not its own failure.
	Refund bool
	// DeadLetters (StatusPublished only) become dead single-event rows when the outcome is
	// recorded, in the same transaction.
	DeadLetters []DeadLetter
}

// maxErrLen bounds last_error.
const maxErrLen = 2000

// Settle turns per-row publish results into outcomes. It walks each unit in id order and,
// after a failure that will be retried, holds back every later row of that unit, even one
// Kafka acked, so a later row is never marked published while an earlier one is pending: the
// later row is published again after the earlier one (a duplicate, never an inversion). A
// failure that ends dead does not hold the unit back. Rows missing from results were acked.
func Settle(rows []Row, results map[int64]Result, b Backoff) []Outcome {
	out := make([]Outcome, 0, len(rows))
	held := map[Unit]bool{}
	for _, r := range rows {
		res := results[r.ID]
		switch {
		case held[r.Unit()] || res.NotSent:
			out = append(out, Outcome{ID: r.ID, Status: StatusPending, Refund: true})
		case res.Err != nil:
			msg := truncate(res.Err.Error())
			if res.Permanent || r.Attempts >= r.MaxAttempts {
				out = append(out, Outcome{ID: r.ID, Status: StatusDead, Err: msg})
				continue
			}
			held[r.Unit()] = true
			out = append(out, Outcome{ID: r.ID, Status: StatusPending, Delay: b.Delay(r.Attempts), Err: msg})
		default:
			out = append(out, Outcome{ID: r.ID, Status: StatusPublished, DeadLetters: res.DeadLetters})
		}
	}
	return out
}

func truncate(s string) string {
	if len(s) <= maxErrLen {
		return s
	}
	s = s[:maxErrLen]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// Completed counts what Complete applied.
type Completed struct {
	Published, Retried, Dead int
	// DeadLettered counts the dead single-event rows stored for Outcome.DeadLetters.
	DeadLettered int
	// Fenced counts outcomes dropped because the row no longer carried the claim's token: the
	// lease expired and the row was reaped (and maybe claimed by another relay) meanwhile.
	Fenced int
	// Erased counts the events of erased users (`recsys users forget`) taken out of the rows
	// that went dead, dead letters included, instead of being kept (eraseForgotten).
	Erased int
}

// Complete records outcomes for rows of the claim that still hold its lease (fencing), and
// releases their lease. The events of erased users leave the rows that go dead
// (eraseForgotten).
func (s *Store) Complete(ctx context.Context, c *Claim, outcomes []Outcome) (Completed, error) {
	var done Completed
	if len(outcomes) == 0 {
		return done, nil
	}
	allPublished := true
	for _, o := range outcomes {
		if o.Status != StatusPublished || len(o.DeadLetters) > 0 {
			allPublished = false
			break
		}
	}
	var applied map[string]int
	var err error
	if allPublished {
		applied, err = s.completePublished(ctx, c, outcomes)
	} else {
		applied, err = s.completeMixed(ctx, c, outcomes)
	}
	if err != nil {
		return done, fmt.Errorf("complete outbox batch: %w", err)
	}
	done.Published, done.Retried, done.Dead = applied[StatusPublished], applied[StatusPending], applied[StatusDead]
	done.DeadLettered, done.Erased = applied[deadLettered], applied[erasedEvents]
	done.Fenced = len(outcomes) - done.Published - done.Retried - done.Dead
	return done, nil
}

// completePublished is the common all-acked case with the smallest statement.
func (s *Store) completePublished(ctx context.Context, c *Claim, outcomes []Outcome) (map[string]int, error) {
	ids := make([]int64, len(outcomes))
	for i, o := range outcomes {
		ids[i] = o.ID
	}
	sql := markPublishedSQL
	if s.deleteOnAck {
		sql = deletePublishedSQL
	}
	plans, args := recordPlans(ctx)
	br, err := s.sendPlanned(ctx, plans, args, func(b *pgx.Batch) { b.Queue(sql, ids, c.Token) })
	if err != nil {
		return nil, err
	}
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	return map[string]int{StatusPublished: int(tag.RowsAffected())}, nil
}

// recordPlans is the first statement of a recording's transaction: byKeySQL and, when ctx
// has a deadline, the time left to it as the transaction's statement_timeout. The caller
// gives a recording that failed on a slow database longer the next time (the relay's
// recordTimeout); the session's statement_timeout (--pg.statement-timeout, 5 s by default)
// cancelled every statement that outlasted it however long the caller waited, so such a
// batch was never recorded and was published again after each lease.
func recordPlans(ctx context.Context) (string, []any) {
	dl, ok := ctx.Deadline()
	if !ok {
		return byKeySQL, nil
	}
	ms := max(time.Until(dl).Milliseconds()+1, 1) // 0 would turn the timeout off
	return byKeySQL + `, set_config('statement_timeout', $1, true)`, []any{strconv.FormatInt(ms, 10)}
}

// leaseHeld: the statements on a claim's rows (record, renew) select them by id and the
// claim's fencing token, without "status = 'publishing'". The token says it already: only a
// claim sets one (a new one each time, with status 'publishing'), and every move out of
// 'publishing' (record, reap, replay) clears it. The status test would also let PostgreSQL
// read the rows by a full scan of event_outbox_publishing_idx, whose partial predicate it
// satisfies, filtered by id: the generic plan it made on an empty table, which walks every
// row in flight and every dead entry until vacuum (13 ms for one ack, measured), where the
// primary key finds the ids directly. TestClaimPlanIsCachedIndexProbes checks the plans.
const markPublishedSQL = `
UPDATE event_outbox
SET status = 'published', published_at = now(), lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
WHERE id = ANY($1) AND lease_token = $2`

const deletePublishedSQL = `
DELETE FROM event_outbox WHERE id = ANY($1) AND lease_token = $2`

const completeMixedSQL = `
UPDATE event_outbox o
SET status = u.status,
    published_at = CASE WHEN u.status = 'published' THEN now() END,
    next_attempt_at = CASE WHEN u.status = 'pending' THEN now() + u.delay_ms * interval '1 millisecond'
                           ELSE o.next_attempt_at END,
    attempts = greatest(o.attempts - u.refund, 0),
    last_error = coalesce(nullif(u.err, ''), o.last_error),
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::int[]) AS u(id, status, delay_ms, err, refund)
WHERE o.id = ANY($1) AND o.id = u.id AND o.lease_token = $6 -- see leaseHeld
RETURNING o.id, o.status`

// deadLetterSQL stores dead letters as dead single-event rows (payload_format 1, msg_key the
// user id: their own order unit, so a replay publishes each alone) for the rows that still
// carry the claim's token: a fenced row's new owner splits it again. It runs before the acked
// rows are deleted, in the same transaction. ON CONFLICT: a row of that event already exists
// (an earlier split whose batch row was then published again). The key holds msg_key, the
// user: two users' events may share an event_id (migration 0022), and each is its own dead
// letter. created_at is the batch row's, when the event entered the outbox: an erasure keeps
// the dead rows created after it as a returning user's (EraseDead), and a dead letter split
// off after an erasure holds an event from before it.
const deadLetterSQL = `
INSERT INTO event_outbox (event_id, event_type, topic, msg_key, payload, schema_version, correlation_id,
                          status, attempts, max_attempts, last_error, payload_format, event_count, created_at)
SELECT u.event_id, u.event_type, o.topic, u.msg_key, u.payload, u.sv, nullif(u.cid, ''),
       'dead', o.attempts, o.max_attempts, u.err, 1, 1, o.created_at
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::int2[], $7::text[], $8::text[])
     WITH ORDINALITY AS u(row_id, event_id, event_type, msg_key, payload, sv, cid, err, ord)
JOIN event_outbox o ON o.id = u.row_id AND o.lease_token = $9 -- see leaseHeld
ORDER BY u.ord
ON CONFLICT (event_id, event_type, msg_key) DO NOTHING
RETURNING id`

// deadLettered is the key of applied counting the rows deadLetterSQL stored.
const deadLettered = "dead_lettered"

// completeMixed records a batch with failures or dead letters. With DeleteOnAck the acked
// rows are deleted and the rest updated, in one round trip and one transaction.
func (s *Store) completeMixed(ctx context.Context, c *Claim, outcomes []Outcome) (map[string]int, error) {
	var dl struct {
		rows                   []int64
		ids, types, keys, cids []string
		payloads               [][]byte
		versions               []int16
		errs                   []string
	}
	for _, o := range outcomes {
		for _, d := range o.DeadLetters {
			dl.rows, dl.ids, dl.types, dl.keys = append(dl.rows, o.ID), append(dl.ids, d.EventID), append(dl.types, d.EventType), append(dl.keys, d.Key)
			dl.payloads, dl.versions, dl.cids, dl.errs = append(dl.payloads, d.Payload), append(dl.versions, d.SchemaVersion), append(dl.cids, d.CorrelationID), append(dl.errs, truncate(d.Err))
		}
	}
	var acked []int64
	if s.deleteOnAck {
		rest := make([]Outcome, 0, len(outcomes))
		for _, o := range outcomes {
			if o.Status == StatusPublished {
				acked = append(acked, o.ID)
			} else {
				rest = append(rest, o)
			}
		}
		outcomes = rest
	}
	n := len(outcomes)
	ids, statuses, delays, errs, refunds := make([]int64, n), make([]string, n), make([]int64, n), make([]string, n), make([]int32, n)
	for i, o := range outcomes {
		ids[i], statuses[i], delays[i], errs[i] = o.ID, o.Status, o.Delay.Milliseconds(), o.Err
		if o.Refund {
			refunds[i] = 1
		}
	}
	queue := func(b *pgx.Batch) {
		if len(dl.rows) > 0 {
			b.Queue(deadLetterSQL, dl.rows, dl.ids, dl.types, dl.keys, dl.payloads, dl.versions, dl.cids, dl.errs, c.Token)
		}
		if len(acked) > 0 {
			b.Queue(deletePublishedSQL, acked, c.Token)
		}
		b.Queue(completeMixedSQL, ids, statuses, delays, errs, refunds, c.Token)
	}
	if len(dl.rows) == 0 && !slices.ContainsFunc(outcomes, func(o Outcome) bool { return o.Status == StatusDead }) {
		plans, args := recordPlans(ctx)
		br, err := s.sendPlanned(ctx, plans, args, queue)
		if err != nil {
			return nil, err
		}
		applied, _, err := readMixed(br, false, len(acked) > 0)
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		return applied, err
	}
	// Rows go dead: erased users' events leave them in the same transaction (eraseForgotten),
	// which takes a second round trip and so a transaction of its own.
	var applied map[string]int
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		plans, args := recordPlans(ctx)
		b.Queue(plans, args...)
		queue(b)
		br := tx.SendBatch(ctx, b)
		if _, err := br.Exec(); err != nil {
			br.Close()
			return fmt.Errorf("begin: %w", err)
		}
		var dead []int64
		var err error
		applied, dead, err = readMixed(br, len(dl.rows) > 0, len(acked) > 0)
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		n, err := eraseForgotten(ctx, tx, dead)
		applied[erasedEvents] = int(n)
		return err
	})
	return applied, err
}

// erasedEvents is the key of applied counting the events eraseForgotten removed.
const erasedEvents = "erased"

// readMixed reads the results of completeMixed's statements: what was applied, and the ids of
// the rows now dead (dead letters included).
func readMixed(br pgx.BatchResults, deadLetters, acked bool) (map[string]int, []int64, error) {
	applied := map[string]int{}
	var dead []int64
	var id int64
	var st string
	if deadLetters {
		rows, err := br.Query()
		if err != nil {
			return nil, nil, err
		}
		n, err := pgx.ForEachRow(rows, []any{&id}, func() error { dead = append(dead, id); return nil })
		if err != nil {
			return nil, nil, err
		}
		applied[deadLettered] = int(n.RowsAffected())
	}
	if acked {
		tag, err := br.Exec()
		if err != nil {
			return nil, nil, err
		}
		applied[StatusPublished] = int(tag.RowsAffected())
	}
	rows, err := br.Query()
	if err != nil {
		return nil, nil, err
	}
	if _, err := pgx.ForEachRow(rows, []any{&id, &st}, func() error {
		applied[st]++
		if st == StatusDead {
			dead = append(dead, id)
		}
		return nil
	}); err != nil {
		return nil, nil, err
	}
	return applied, dead, nil
}
