package outbox

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ClaimRequest says what to claim.
type ClaimRequest struct {
	Owner string // lease owner, for operators reading the table
	Limit int    // most rows in the claim
	// MaxEvents bounds the events (sum of event_count) in the claim; 0 means no bound beyond
	// Limit. The first row is always claimable, so a row larger than MaxEvents still goes out.
	MaxEvents int
	Lease     time.Duration // lease length; renew it while the batch is in flight
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

// claimSQL runs the claim: one statement, one round trip. The function (migration 0015)
// holds the claim's two steps (see the package doc for why the result is safe with any number
// of claimers):
//
//  1. From a window of pending rows, up to Limit due rows (and MaxEvents events) that are
//     their unit's head or whose head is itself pending and due, locked FOR UPDATE SKIP
//     LOCKED (rows that stopped being pending and due meanwhile are re-checked on the locked
//     version and left out).
//  2. In a snapshot taken after the locks of step 1 (a VOLATILE PL/pgSQL function takes one
//     per statement), per unit: nothing of the unit is in flight and no unpublished row below
//     the end of our run is outside it (rows another claimer holds locked, or has in flight,
//     are unpublished in that snapshot, so two claimers can never both keep rows of one
//     unit); the kept rows are leased under one new fencing token.
//
// The per-unit decision is made from id arrays, so every statement keeps the same cheap plan
// whatever the planner believes about row counts (a join between CTEs it misestimates can
// turn into a million index probes on a table without statistics). Every row also carries the
// window's size and end (for the cursor, computed only when the claim is not full) and whether
// the claim is full; with no row leased, one row with id 0 carries them alone.
const claimSQL = `SELECT id, event_id, event_type, topic, msg_key, payload, schema_version, correlation_id,
    payload_format, event_count, attempts, max_attempts, created_at, age_us, lease_token, window_rows, window_end, claim_full
FROM outbox_claim($1, $2, $3, $4, $5, $6)`

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
	rows, err := s.pool.Query(ctx, claimSQL, req.After, window, req.Limit, maxEvents, req.Owner, req.Lease.Milliseconds())
	if err != nil {
		return nil, fmt.Errorf("claim outbox batch: %w", err)
	}
	defer rows.Close()
	var winN int64
	for rows.Next() {
		var r Row
		var correlation *string
		var attempts, mx, count int32
		var ageUS, tok int64
		if err := rows.Scan(&r.ID, &r.EventID, &r.EventType, &r.Topic, &r.Key, &r.Payload, &r.SchemaVersion,
			&correlation, &r.PayloadFormat, &count, &attempts, &mx, &r.CreatedAt, &ageUS, &tok,
			&winN, &c.WindowEnd, &c.Full); err != nil {
			return nil, fmt.Errorf("claim outbox batch: %w", err)
		}
		if r.ID == 0 {
			continue // the statistics row of a claim that leased nothing
		}
		if c.Token != 0 && tok != c.Token {
			return nil, fmt.Errorf("claim outbox batch: rows got different fencing tokens (%d, %d)", c.Token, tok)
		}
		c.Token = tok
		if correlation != nil {
			r.CorrelationID = *correlation
		}
		r.EventCount = int(count)
		r.Attempts, r.MaxAttempts, r.AgeAtClaim = int(attempts), int(mx), time.Duration(ageUS)*time.Microsecond
		c.Rows = append(c.Rows, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("claim outbox batch: %w", err)
	}
	if c.Full {
		c.WindowEnd = 0
		c.Blocked = true
	} else {
		c.WindowFull = winN >= int64(window)
		c.Blocked = winN > int64(len(c.Rows))
	}
	return c, nil
}

// Renew extends the lease of the claim's rows that still carry its token and returns how
// many did; fewer than len(c.Rows) means part of the lease was lost (reaped after expiry).
func (s *Store) Renew(ctx context.Context, c *Claim) (int, error) {
	tag, err := s.pool.Exec(ctx, `
UPDATE event_outbox SET lease_expires_at = now() + $3 * interval '1 millisecond'
WHERE id = ANY($1) AND lease_token = $2 AND status = 'publishing'`, c.IDs(), c.Token, c.Lease.Milliseconds())
	if err != nil {
		return 0, fmt.Errorf("renew outbox lease: %w", err)
	}
	return int(tag.RowsAffected()), nil
}
