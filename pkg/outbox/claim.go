package outbox

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"recsys/pkg/postgres"
)

// ClaimRequest says what to claim.
type ClaimRequest struct {
	Owner string // lease owner, for operators reading the table
	Limit int    // most rows in the claim
	// MaxEvents bounds the events (sum of event_count) in the claim; 0 means no bound beyond
	// Limit. The first row is always claimable, so a row larger than MaxEvents still goes out.
	MaxEvents int
	Lease     time.Duration // lease length; renew it until the batch's outcome is recorded
	// After is the scan cursor: only pending rows with a larger id are considered. 0 scans from
	// the front of the queue. See Claim.NextAfter.
	After int64
	// Window bounds how many pending rows one claim examines; 0 means 4 × Limit.
	Window int
}

// Claim is a set of rows leased to one owner under one fencing token.
type Claim struct {
	Token     int64
	Owner     string
	Rows      []Row // ascending id
	ClaimedAt time.Time
	Lease     time.Duration
	// WindowFull reports that the scanned window was full, so more pending rows exist past
	// WindowEnd.
	WindowFull bool
	WindowEnd  int64
	// Full reports that the claim stopped at its Limit rows or MaxEvents events, so more
	// claimable rows probably wait.
	Full bool
	// Blocked reports that the window held pending rows the claim did not take (behind rows
	// of their unit in flight, backing off, or locked by another claimer), or that it was Full:
	// rows may become claimable when a batch in flight is recorded, with no new commit (and so
	// no NOTIFY) to announce them.
	Blocked bool
}

// Events is the number of events in the claim's rows.
func (c *Claim) Events() int {
	n := 0
	for _, r := range c.Rows {
		n += r.Events()
	}
	return n
}

// IDs returns the claimed row ids.
func (c *Claim) IDs() []int64 {
	ids := make([]int64, len(c.Rows))
	for i, r := range c.Rows {
		ids[i] = r.ID
	}
	return ids
}

// NextAfter is the cursor for the next claim: past this window when the window was full yet
// yielded less than a full batch (the front of the queue is congested by units that are in
// flight or backing off), otherwise back to the front, so the oldest rows go first and a
// congested front cannot starve the rows behind it.
func (c *Claim) NextAfter(limit int) int64 {
	if c.WindowFull && !c.Full && len(c.Rows) < limit {
		return c.WindowEnd
	}
	return 0
}

// The claim is one transaction in two round trips (see the package doc for why the result
// is safe with any number of claimers):
//
//  1. BEGIN and scanLockSQL: from a window of pending rows, up to Limit due rows (and
//     MaxEvents events) that are their unit's head or whose head is itself pending and due,
//     locked FOR UPDATE SKIP
//     LOCKED (rows that stopped being pending and due meanwhile are re-checked on the locked
//     version and left out).
//  2. takeSQL, then COMMIT. Its snapshot is taken after the locks of step 1 were acquired;
//     in it, per unit, it checks that nothing of the unit is in flight and that no
//     unpublished row below the end of our run is outside it (rows another claimer holds
//     locked, or has in flight, are unpublished in that snapshot, so two claimers can never
//     both keep rows of one unit), and leases the kept rows under one new fencing token.
//     Checking and leasing in one statement saves a round trip per claim, which is most of a
//     small claim's cost.
//
// The per-unit decision is made from id arrays, so every statement keeps the same cheap plan
// whatever the planner believes about row counts (a join between CTEs it misestimates can
// turn into a million index probes on a table without statistics).
//
// The lock step names the rows by id alone and re-checks status and due time on the locked
// versions outside it: with the status test beside the ids, a generic plan made while the
// outbox was near empty (a queue usually is) may read the candidates with a full scan of
// event_outbox_unpublished_key_idx filtered by id, which its partial predicate allows, and
// that scan walks every dead entry until vacuum: 20 ms per claim, a whole core, in one
// /reco run with autolog. By id alone only the primary key applies. A row that stopped
// being pending since the scan is then locked and left out, held until the claim commits.
const scanLockSQL = `
WITH cand AS (
    SELECT w.id, w.event_count
    FROM (
        SELECT id, msg_key, topic, next_attempt_at, event_count
        FROM event_outbox
        WHERE status = 'pending' AND id > $1
        ORDER BY id
        LIMIT $2
    ) w
    CROSS JOIN LATERAL (
        SELECT h.id, h.status, h.next_attempt_at
        FROM event_outbox h
        WHERE h.msg_key = w.msg_key AND h.topic = w.topic AND h.status IN ('pending', 'publishing')
        ORDER BY h.id
        LIMIT 1
    ) head
    WHERE w.next_attempt_at <= now()
      AND (head.id = w.id OR (head.status = 'pending' AND head.next_attempt_at <= now()))
    ORDER BY w.id
    LIMIT $3
), ok AS (
    -- The events limit: candidates in id order while the events before them are below $4,
    -- so a claim always gets its first row however many events that row carries.
    SELECT id FROM (SELECT id, sum(event_count) OVER (ORDER BY id) - event_count AS before FROM cand) s
    WHERE before < $4
)
SELECT l.id, l.msg_key, l.topic, l.event_count
FROM (
    SELECT o.id, o.msg_key, o.topic, o.event_count, o.status, o.next_attempt_at
    FROM event_outbox o
    WHERE o.id = ANY(ARRAY(SELECT id FROM ok))
    OFFSET 0 -- keeps the status test out: PostgreSQL would push it down beside the ids
    FOR UPDATE OF o SKIP LOCKED
) l
WHERE l.status = 'pending' AND l.next_attempt_at <= now()
ORDER BY l.id`

// byKeySQL plans the claim's, the record's and the renewal's statements as cached index
// probes (postgres.ByKeyPlans). Measured here: PostgreSQL had planned takeSQL on every claim,
// 2,153 plans in 2,338 calls of BenchmarkRelayCommitToAck, 1.4 s planning against 0.9 s
// executing; and on an empty outbox the generic plan of "id = ANY($n)" is a sequential scan,
// which a growing backlog would keep until an ANALYZE. JIT would also compile the claim's
// statements past jit_above_cost (their estimated cost grows with the batch size), tens of
// milliseconds that save nothing here.
const byKeySQL = `SELECT ` + postgres.ByKeyPlans

// sendByKey sends the statements queue adds in one round trip and one transaction planned by
// byKeySQL. The results begin with the first queued statement; Close reads the COMMIT and
// reports its error. A failed statement leaves the connection inside the aborted transaction,
// and the pool destroys such a connection when the results are closed.
func (s *Store) sendByKey(ctx context.Context, queue func(*pgx.Batch)) (pgx.BatchResults, error) {
	return s.sendPlanned(ctx, byKeySQL, nil, queue)
}

// sendPlanned is sendByKey with plans, the transaction's first statement, of its own
// (recordPlans).
func (s *Store) sendPlanned(ctx context.Context, plans string, args []any, queue func(*pgx.Batch)) (pgx.BatchResults, error) {
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue(plans, args...)
	queue(b)
	b.Queue("COMMIT")
	br := s.pool.SendBatch(ctx, b)
	for range 2 {
		if _, err := br.Exec(); err != nil {
			br.Close()
			return nil, fmt.Errorf("begin: %w", err)
		}
	}
	return br, nil
}

// execByKey runs one statement through sendByKey and returns its command tag.
func (s *Store) execByKey(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	br, err := s.sendByKey(ctx, func(b *pgx.Batch) { b.Queue(sql, args...) })
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return tag, err
}

// windowSQL gives the window's size and end, for the cursor. It is only needed when the claim
// came out short of Limit (the scan stops as soon as it has Limit candidates), so it rides in
// the same round trip as the next statement.
const windowSQL = `
SELECT count(*), coalesce(max(id), 0)
FROM (SELECT id FROM event_outbox WHERE status = 'pending' AND id > $1 ORDER BY id LIMIT $2) w`

// takeSQL keeps, per run ($1..$5: unit, first and last id, row count), the whole run when it
// is its unit's entire unpublished prefix up to its last id and nothing of the unit is in
// flight, or only its first row (the unit's head) when the run's tail is interrupted; then it
// leases the kept rows of $6 (run number $7) under one token drawn in an InitPlan, evaluated
// once for the statement. The ok CTE is MATERIALIZED so the per-unit checks run once per unit:
// inlined into the join, a plan may repeat them for every id of the run.
const takeSQL = `
WITH ok AS MATERIALIZED (
    SELECT u.i, u.f, c.upto = u.n AS whole
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[]) WITH ORDINALITY AS u(k, t, f, l, n, i)
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE e.id < u.f) AS below, count(*) AS upto,
            -- In the select list it stays one index probe per unit: as a NOT EXISTS in
            -- WHERE the planner may turn it into an anti-join that compares every unit
            -- with every row in flight.
            EXISTS (SELECT 1 FROM event_outbox p WHERE p.msg_key = u.k AND p.topic = u.t AND p.status = 'publishing') AS busy
        FROM event_outbox e
        WHERE e.msg_key = u.k AND e.topic = u.t AND e.status IN ('pending', 'publishing') AND e.id <= u.l
    ) c
    WHERE c.below = 0 AND NOT c.busy
)
UPDATE event_outbox
SET status = 'publishing', attempts = attempts + 1, lease_owner = $8,
    lease_token = (SELECT nextval('event_outbox_lease_token_seq')),
    lease_expires_at = now() + $9 * interval '1 millisecond'
WHERE id = ANY(ARRAY(
    SELECT x.id FROM unnest($6::bigint[], $7::bigint[]) AS x(id, run) JOIN ok ON ok.i = x.run
    WHERE ok.whole OR x.id = ok.f
))
RETURNING id, event_id, event_type, topic, msg_key, payload, schema_version, correlation_id, payload_format, event_count, attempts,
    max_attempts, created_at, greatest((extract(epoch FROM now() - created_at) * 1000000)::bigint, 0), lease_token`

type unitRun struct {
	unit        Unit
	first, last int64
	ids         []int64
}

// Claim leases up to req.Limit due rows under a new fencing token. It returns a claim with no
// rows when nothing is claimable.
func (s *Store) Claim(ctx context.Context, req ClaimRequest) (*Claim, error) {
	if req.Limit < 1 {
		return nil, errors.New("claim outbox batch: limit must be >= 1")
	}
	if req.Lease <= 0 {
		return nil, errors.New("claim outbox batch: lease must be > 0")
	}
	window := req.Window
	if window <= 0 {
		window = 4 * req.Limit
	}
	window = max(window, req.Limit)
	maxEvents := int64(req.MaxEvents)
	if maxEvents <= 0 {
		maxEvents = 1 << 62
	}
	c := &Claim{Owner: req.Owner, ClaimedAt: time.Now(), Lease: req.Lease}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("claim outbox batch: %w", err)
	}
	defer conn.Release()
	committed := false // or rolled back on purpose
	defer func() {
		if !committed {
			// A failed or empty claim: release the locks. A connection broken meanwhile is
			// discarded by the pool when it is released.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_, _ = conn.Exec(rctx, "ROLLBACK")
			cancel()
		}
	}()
	runs, locked, events, err := scanLock(ctx, conn.Conn(), req.After, window, req.Limit, maxEvents)
	if err != nil {
		return nil, fmt.Errorf("claim outbox batch: %w", err)
	}
	var winN int64
	if len(runs) == 0 {
		b := &pgx.Batch{}
		b.Queue(windowSQL, req.After, window)
		b.Queue("ROLLBACK")
		br := conn.SendBatch(ctx, b)
		err := br.QueryRow().Scan(&winN, &c.WindowEnd)
		if err == nil {
			_, err = br.Exec()
		}
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("claim outbox batch: window: %w", err)
		}
		committed = true // rolled back: nothing was locked
		c.WindowFull = winN >= int64(window)
		c.Blocked = winN > 0
		return c, nil
	}
	c.Full = locked >= req.Limit || events >= maxEvents
	var stats *windowStats
	if !c.Full {
		stats = &windowStats{after: req.After, window: window}
	}
	c.Rows, c.Token, err = take(ctx, conn.Conn(), runs, stats, req)
	if err != nil {
		return nil, fmt.Errorf("claim outbox batch: %w", err)
	}
	if stats != nil {
		c.WindowFull, c.WindowEnd = stats.n >= int64(window), stats.end
		c.Blocked = stats.n > int64(len(c.Rows))
	} else {
		c.Blocked = true
	}
	committed = true
	sort.Slice(c.Rows, func(i, j int) bool { return c.Rows[i].ID < c.Rows[j].ID })
	return c, nil
}

// scanLock begins the transaction and locks the candidates in one round trip, grouping the
// locked rows into per-unit runs.
func scanLock(ctx context.Context, conn *pgx.Conn, after int64, window, limit int, maxEvents int64) ([]*unitRun, int, int64, error) {
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue(byKeySQL)
	b.Queue(scanLockSQL, after, window, limit, maxEvents)
	br := conn.SendBatch(ctx, b)
	defer br.Close()
	for range 2 {
		if _, err := br.Exec(); err != nil {
			return nil, 0, 0, fmt.Errorf("begin: %w", err)
		}
	}
	rows, err := br.Query()
	if err != nil {
		return nil, 0, 0, fmt.Errorf("lock: %w", err)
	}
	defer rows.Close()
	byUnit := map[Unit]*unitRun{}
	var runs []*unitRun
	locked, events := 0, int64(0)
	for rows.Next() {
		var id int64
		var u Unit
		var n int32
		if err := rows.Scan(&id, &u.Key, &u.Topic, &n); err != nil {
			return nil, 0, 0, fmt.Errorf("lock: %w", err)
		}
		locked++
		events += int64(n)
		r := byUnit[u]
		if r == nil {
			r = &unitRun{unit: u, first: id}
			byUnit[u] = r
			runs = append(runs, r)
		}
		r.last = id // ascending: ORDER BY id
		r.ids = append(r.ids, id)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, 0, fmt.Errorf("lock: %w", err)
	}
	return runs, locked, events, nil
}

// windowStats asks take to also read the window's size and end.
type windowStats struct {
	after  int64
	window int
	n, end int64
}

// take checks the locked runs, leases the rows it keeps and commits, in one round trip.
func take(ctx context.Context, conn *pgx.Conn, runs []*unitRun, stats *windowStats, req ClaimRequest) ([]Row, int64, error) {
	keys, topics := make([]string, len(runs)), make([]string, len(runs))
	firsts, lasts, counts := make([]int64, len(runs)), make([]int64, len(runs)), make([]int64, len(runs))
	var ids, runOf []int64
	for i, r := range runs {
		keys[i], topics[i], firsts[i], lasts[i], counts[i] = r.unit.Key, r.unit.Topic, r.first, r.last, int64(len(r.ids))
		for _, id := range r.ids {
			ids = append(ids, id)
			runOf = append(runOf, int64(i+1))
		}
	}
	b := &pgx.Batch{}
	if stats != nil {
		// Before takeSQL, so the rows it leases still count in the window.
		b.Queue(windowSQL, stats.after, stats.window)
	}
	b.Queue(takeSQL, keys, topics, firsts, lasts, counts, ids, runOf, req.Owner, req.Lease.Milliseconds())
	b.Queue("COMMIT")
	br := conn.SendBatch(ctx, b)
	defer br.Close()
	if stats != nil {
		if err := br.QueryRow().Scan(&stats.n, &stats.end); err != nil {
			return nil, 0, fmt.Errorf("window: %w", err)
		}
	}
	rows, err := br.Query()
	if err != nil {
		return nil, 0, fmt.Errorf("lease: %w", err)
	}
	out := make([]Row, 0, len(ids))
	var token int64
	for rows.Next() {
		var r Row
		var correlation *string
		var attempts, mx, count int32
		var ageUS, tok int64
		if err := rows.Scan(&r.ID, &r.EventID, &r.EventType, &r.Topic, &r.Key, &r.Payload, &r.SchemaVersion,
			&correlation, &r.PayloadFormat, &count, &attempts, &mx, &r.CreatedAt, &ageUS, &tok); err != nil {
			rows.Close()
			return nil, 0, fmt.Errorf("lease: %w", err)
		}
		if token != 0 && tok != token {
			rows.Close()
			return nil, 0, fmt.Errorf("lease: rows got different fencing tokens (%d, %d)", token, tok)
		}
		token = tok
		if correlation != nil {
			r.CorrelationID = *correlation
		}
		r.EventCount = int(count)
		r.Attempts, r.MaxAttempts, r.AgeAtClaim = int(attempts), int(mx), time.Duration(ageUS)*time.Microsecond
		out = append(out, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("lease: %w", err)
	}
	if _, err := br.Exec(); err != nil {
		return nil, 0, fmt.Errorf("commit: %w", err)
	}
	return out, token, nil
}

// renewSQL, like the statements that record a batch, finds its rows by id and fencing token
// alone (see leaseHeld). It skips the rows another transaction holds locked instead of waiting
// for it: that is the claim's own recording most of the time (a statement slowed down on a
// degraded database holds the rows it already wrote until it commits), and a renewal stuck
// behind it would leave the rows it has not reached yet to expire and be reaped. A locked row
// cannot be reaped either (the reap skips locked rows too). The second count, read in the
// statement's snapshot, tells such rows from lost ones.
const renewSQL = `
WITH renewed AS (
    UPDATE event_outbox SET lease_expires_at = now() + $3 * interval '1 millisecond'
    WHERE id = ANY(ARRAY(
        SELECT id FROM event_outbox WHERE id = ANY($1) AND lease_token = $2
        FOR UPDATE SKIP LOCKED
    )) AND lease_token = $2
    RETURNING 1
)
SELECT (SELECT count(*) FROM renewed), count(*) FROM event_outbox WHERE id = ANY($1) AND lease_token = $2`

// Renewal is what Renew found.
type Renewal struct {
	// Renewed counts the rows whose lease was extended.
	Renewed int
	// Held counts the rows that still carried the claim's token, Renewed included; the others
	// were locked by another transaction and kept the expiry they had. len(c.Rows) - Held
	// rows were lost (reaped after their lease expired).
	Held int
}

// Renew extends the lease of the claim's rows that still carry its token and are not locked
// by another transaction.
func (s *Store) Renew(ctx context.Context, c *Claim) (Renewal, error) {
	br, err := s.sendByKey(ctx, func(b *pgx.Batch) { b.Queue(renewSQL, c.IDs(), c.Token, c.Lease.Milliseconds()) })
	if err != nil {
		return Renewal{}, fmt.Errorf("renew outbox lease: %w", err)
	}
	var r Renewal
	err = br.QueryRow().Scan(&r.Renewed, &r.Held)
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Renewal{}, fmt.Errorf("renew outbox lease: %w", err)
	}
	return r, nil
}
