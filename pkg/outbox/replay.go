package outbox

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"recsys/pkg/events"
)

// ReplayFilter selects rows to requeue.
type ReplayFilter struct {
	// Status is StatusDead (the runbook case) or StatusPublished (publish again, e.g. after a
	// topic was lost); nothing else, so a replay never mixes the two by accident.
	Status string
	// EventType matches the row's event_type ("" for any). Batch rows are typed by topic:
	// "impression" or "watch"; legacy events ride in "watch" rows. A single-event row has its
	// event's type: "legacy" for one written before migration 0008 or dead-lettered out of a
	// batch row.
	EventType string
	Since     time.Time // zero for any; otherwise rows created at or after it
	// AfterID is the cursor: only rows with a larger id (0 for all). Passing the previous
	// run's LastID walks the matching rows once, so rows that go dead again at once (poison
	// rows) are not picked again by every run ahead of the rows behind them.
	AfterID int64
	Limit   int
	DryRun  bool
}

// ReplayResult is what Replay did (or, in a dry run, would do). It is printed as JSON by
// `recsys relay replay`.
type ReplayResult struct {
	Status string `json:"status"`
	// EventType and Since are the filters, null when unset (any): present either way, as the
	// command's help lists them for the scripts that read the report.
	EventType *string    `json:"event_type"`
	Since     *time.Time `json:"since"`
	AfterID   int64      `json:"after_id"`
	Limit     int        `json:"limit"`
	DryRun    bool       `json:"dry_run"`
	// Matched and Requeued count rows, ByEventType rows per row event_type (legacy events ride
	// in watch batch rows); Events counts the events those rows carry (event_count).
	Matched     int            `json:"matched"`
	Requeued    int            `json:"requeued"`
	Events      int            `json:"events"`
	ByEventType map[string]int `json:"by_event_type"`
	IDs         []int64        `json:"ids"`
	// Skipped counts matching rows another transaction held (a relay's claim scanning their
	// lane), left as they were; the cursor stops before the first of them, so the next run
	// takes them.
	Skipped int `json:"skipped"`
	// LastID is the next run's AfterID: the largest id up to which every matching row was
	// requeued; AfterID itself when no row matched or the first was skipped.
	LastID int64 `json:"last_id"`
}

// MaxReplayLimit bounds one replay, so one command cannot requeue an unbounded set in a single
// transaction; run it again for more.
const MaxReplayLimit = 100_000

// Validate reports an invalid filter, naming the command's flags.
func (f ReplayFilter) Validate() error {
	var errs []string
	if f.Status != StatusDead && f.Status != StatusPublished {
		errs = append(errs, fmt.Sprintf("--status must be %q or %q, got %q", StatusDead, StatusPublished, f.Status))
	}
	if f.Limit < 1 || f.Limit > MaxReplayLimit {
		errs = append(errs, fmt.Sprintf("--limit must be between 1 and %d, got %d", MaxReplayLimit, f.Limit))
	}
	if f.AfterID < 0 {
		errs = append(errs, fmt.Sprintf("--after-id must be >= 0, got %d", f.AfterID))
	}
	// A type no row has (a plural, a legacy event's own view/click/purchase) matched nothing:
	// the run reported 0 requeued, which the runbook reads as done, and the dead rows stayed.
	switch events.Kind(f.EventType) {
	case "", events.KindImpression, events.KindWatch, events.KindLegacy:
	default:
		errs = append(errs, fmt.Sprintf("--event-type must be %q, %q or %q (legacy events ride in watch batch rows), got %q",
			events.KindImpression, events.KindWatch, events.KindLegacy, f.EventType))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// Replay requeues the oldest rows matching f past f.AfterID (pending, attempts 0, due now)
// and wakes the relays. Rows are taken in id order so a key's replayed rows keep their
// relative order; each goes out behind nothing (it becomes its key's head if it is the oldest
// unpublished row). Rows another transaction holds are skipped rather than waited for, and
// counted in Skipped; the cursor (LastID) stays before the first of them.
func (s *Store) Replay(ctx context.Context, f ReplayFilter) (ReplayResult, error) {
	if err := f.Validate(); err != nil {
		return ReplayResult{}, err
	}
	res := ReplayResult{Status: f.Status, AfterID: f.AfterID, Limit: f.Limit, DryRun: f.DryRun,
		ByEventType: map[string]int{}, IDs: []int64{}, LastID: f.AfterID}
	if f.EventType != "" {
		res.EventType = &f.EventType
	}
	if !f.Since.IsZero() {
		since := f.Since.UTC()
		res.Since = &since
	}
	// The status is a literal (validated above) so the planner uses the status' partial index.
	where := []string{"status = '" + f.Status + "'"}
	args := []any{f.Limit}
	if f.AfterID > 0 {
		args = append(args, f.AfterID)
		where = append(where, fmt.Sprintf("id > $%d", len(args)))
	}
	if f.EventType != "" {
		args = append(args, f.EventType)
		where = append(where, fmt.Sprintf("event_type = $%d", len(args)))
	}
	if !f.Since.IsZero() {
		args = append(args, f.Since)
		where = append(where, fmt.Sprintf("created_at >= $%d", len(args)))
	}
	cond := " FROM event_outbox WHERE " + strings.Join(where, " AND ") + " ORDER BY id LIMIT $1"
	pick, pickIDs := "SELECT id, event_type, event_count"+cond, "SELECT id"+cond
	collect := func(rows pgx.Rows) error {
		defer rows.Close()
		for rows.Next() {
			var id int64
			var et string
			var n int32
			if err := rows.Scan(&id, &et, &n); err != nil {
				return err
			}
			res.IDs = append(res.IDs, id)
			res.LastID = max(res.LastID, id)
			res.ByEventType[et]++
			res.Events += int(n)
		}
		return rows.Err()
	}
	if f.DryRun {
		rows, err := s.pool.Query(ctx, pick, args...)
		if err != nil {
			return res, fmt.Errorf("select outbox rows to replay: %w", err)
		}
		if err := collect(rows); err != nil {
			return res, fmt.Errorf("select outbox rows to replay: %w", err)
		}
		res.Matched = len(res.IDs)
		return res, nil
	}
	var candidates []int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// The rows matching now, unlocked: those the update below skips as held elsewhere
		// keep the cursor behind them (a cursor past a skipped dead row would leave it
		// behind every later run).
		rows, err := tx.Query(ctx, pickIDs, args...)
		if err != nil {
			return err
		}
		if candidates, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `
UPDATE event_outbox
SET status = 'pending', attempts = 0, next_attempt_at = now(), published_at = NULL,
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
WHERE id = ANY(ARRAY(`+pickIDs+` FOR UPDATE SKIP LOCKED))
RETURNING id, event_type, event_count`, args...)
		if err != nil {
			return err
		}
		if err := collect(rows); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, "SELECT pg_notify($1, '')", Channel)
		return err
	})
	if err != nil {
		return res, fmt.Errorf("requeue outbox rows: %w", err)
	}
	// RETURNING order is unspecified.
	slices.Sort(res.IDs)
	// With rows skipped, the update may have taken rows past the candidates instead; they
	// are requeued, but the cursor does not pass a skipped row for them.
	res.Requeued, res.LastID = len(res.IDs), f.AfterID
	cursor := true
	for _, id := range candidates {
		if _, done := slices.BinarySearch(res.IDs, id); !done {
			res.Skipped++
			cursor = false
		} else if cursor {
			res.LastID = id
		}
	}
	res.Matched = res.Requeued + res.Skipped
	return res, nil
}
