package featurestore

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"recsys/pkg/postgres"
)

// DLQStats is the dead-letter backlog.
type DLQStats struct {
	Pending, Replayed int64
	// OldestPendingMs is the age of the oldest pending entry (0 when none).
	OldestPendingMs int64
}

// DLQStats counts the DLQ: pending rows through their partial index; replayed rows are
// few (they are kept for audit only until retention).
func (s *Store) DLQStats(ctx context.Context) (DLQStats, error) {
	var st DLQStats
	var oldest *time.Time
	err := s.pg.QueryRow(ctx, `SELECT
  (SELECT count(*) FROM feature_dlq WHERE status = 'pending'),
  (SELECT count(*) FROM feature_dlq WHERE status = 'replayed'),
  (SELECT created_at FROM feature_dlq WHERE status = 'pending' ORDER BY id LIMIT 1)`).Scan(&st.Pending, &st.Replayed, &oldest)
	if err != nil {
		return st, fmt.Errorf("count dlq: %w", err)
	}
	if oldest != nil {
		st.OldestPendingMs = max(time.Since(*oldest).Milliseconds(), 0)
	}
	return st, nil
}

// PurgeApplied deletes dedup records older than retention in batches of limit, until a
// batch comes back short; it returns how many it deleted.
//
// It keeps the BRIN index on applied_at narrow as the ingest's retention does for its tables
// (postgres.DesummarizeBRIN): the space it frees is reused by new records, and without that
// every block range would match the cutoff after one retention period, so that the last,
// short batch of every purge (every 30 s in each consumer) read the whole table.
func (s *Store) PurgeApplied(ctx context.Context, retention time.Duration, limit int) (int64, error) {
	if err := postgres.SummarizeBRIN(ctx, s.pg, "feature_applied"); err != nil && !errors.Is(err, postgres.ErrBRINBusy) {
		return 0, fmt.Errorf("purge applied events: %w", err)
	}
	var total int64
	for {
		var n int64
		var blocks []int64
		err := s.pg.QueryRow(ctx, `WITH d AS (DELETE FROM feature_applied WHERE ctid = ANY(ARRAY(
  SELECT ctid FROM feature_applied WHERE applied_at < now() - $1::interval LIMIT $2)) RETURNING ctid)
SELECT count(*), COALESCE(array_agg(DISTINCT (ctid::text::point)[0]::bigint), '{}') FROM d`,
			fmt.Sprintf("%d seconds", int64(retention.Seconds())), limit).Scan(&n, &blocks)
		if err != nil {
			return total, fmt.Errorf("purge applied events: %w", err)
		}
		total += n
		if err := s.brin.Desummarize(ctx, s.pg, "feature_applied", blocks); err != nil && !errors.Is(err, postgres.ErrBRINBusy) {
			return total, fmt.Errorf("purge applied events: %w", err)
		}
		if n < int64(limit) {
			return total, nil
		}
	}
}

// PurgeReplayedDLQ deletes replayed DLQ entries older than retention (pending ones are
// kept until they are replayed).
func (s *Store) PurgeReplayedDLQ(ctx context.Context, retention time.Duration) (int64, error) {
	tag, err := s.pg.Exec(ctx, `DELETE FROM feature_dlq WHERE ctid = ANY(ARRAY(
  SELECT ctid FROM feature_dlq WHERE status = 'replayed' AND replayed_at < now() - $1::interval LIMIT 10000))`,
		fmt.Sprintf("%d seconds", int64(retention.Seconds())))
	if err != nil {
		return 0, fmt.Errorf("purge replayed dlq: %w", err)
	}
	return tag.RowsAffected(), nil
}

// ReplayOptions select what ReplayDLQ does.
type ReplayOptions struct {
	Limit int // most entries to look at, oldest first
	// After skips the entries up to this id: a caller passes ReplayReport.LastID to go on
	// past entries that keep failing.
	After  int64
	DryRun bool // decode and report, change nothing
	// MaxEventFuture refuses entries whose time is this far past now (CheckNotFuture); 0:
	// DefaultMaxEventFuture.
	MaxEventFuture time.Duration
}

// ReplayEntry is the outcome for one DLQ entry.
type ReplayEntry struct {
	ID      int64  `json:"id"`
	EventID string `json:"event_id,omitempty"`
	// UserID tells apart two users' events with one event_id.
	UserID string `json:"user_id,omitempty"`
	// Outcome: applied (new now), duplicate (its user's event_id was applied before), ignored (an
	// event of a user erased since, received before the erasure: deleted without applying
	// it), invalid (still cannot be decoded; stays pending), refused (decodes, but
	// PostgreSQL refuses its update; stays pending), pending (not tried: a transient error stopped
	// the replay first; run it again) or would_apply (dry run).
	Outcome string `json:"outcome"`
	Error   string `json:"error,omitempty"`
}

// ReplayReport summarises a replay.
type ReplayReport struct {
	DryRun     bool `json:"dry_run"`
	Examined   int  `json:"examined"`
	Applied    int  `json:"applied"`
	Duplicates int  `json:"duplicates"`
	Ignored    int  `json:"ignored"`
	Invalid    int  `json:"invalid"`
	Refused    int  `json:"refused"`
	WouldApply int  `json:"would_apply"`
	// LastID is the highest id examined (0 when none): the After of the next page.
	LastID  int64         `json:"last_id"`
	Entries []ReplayEntry `json:"entries"`
}

// ReplayDLQ re-decodes pending DLQ entries (oldest first, after o.After) and applies those
// that now decode through the same Apply as the stream (idempotent: a user's event_id
// applied before is a duplicate), writes Redis, and marks them replayed. Entries that still fail
// stay pending with their new error and a higher replay_attempts: those that do not decode,
// and those PostgreSQL refuses (when the batch is refused, its events are applied one by
// one, so one such entry holds back no other).
func (s *Store) ReplayDLQ(ctx context.Context, o ReplayOptions) (ReplayReport, error) {
	// Entries is [] when there are none, not null: scripts read the report.
	rep := ReplayReport{DryRun: o.DryRun, Entries: []ReplayEntry{}}
	if o.Limit <= 0 {
		o.Limit = 1000
	}
	rows, _ := s.pg.Query(ctx, `SELECT id, headers::text, payload FROM feature_dlq WHERE status = 'pending' AND id > $2
ORDER BY id LIMIT $1`, o.Limit, o.After)
	type entry struct {
		id      int64
		headers string
		payload []byte
	}
	var list []entry
	var e entry
	if _, err := pgx.ForEachRow(rows, []any{&e.id, &e.headers, &e.payload}, func() error { list = append(list, e); return nil }); err != nil {
		return rep, fmt.Errorf("read dlq: %w", err)
	}
	// Read now, not cached: an erasure is recorded before its rows go, so an entry the
	// consumer dead-lettered after the erasure is still skipped here (featurestore.Forgotten).
	var forgotten Forgotten
	if err := s.RefreshForgotten(ctx, &forgotten); err != nil {
		return rep, err
	}
	b := &Batch{}
	var ids, badIDs, okIDs, goneIDs []int64
	var badErrs []string
	idx := map[int]int{} // batch event -> report entry
	for _, x := range list {
		rep.Examined++
		rep.LastID = x.id
		var h map[string]string
		if err := json.Unmarshal([]byte(x.headers), &h); err != nil {
			h = map[string]string{}
		}
		ev, err := Decode(h["event_type"], h["schema_version"], x.payload)
		if err == nil {
			err = CheckNotFuture(ev, time.Now(), cmp.Or(o.MaxEventFuture, DefaultMaxEventFuture))
		}
		if err != nil {
			rep.Invalid++
			rep.Entries = append(rep.Entries, ReplayEntry{ID: x.id, Outcome: "invalid", Error: err.Error()})
			badIDs, badErrs = append(badIDs, x.id), append(badErrs, dlqText(err.Error()))
			continue
		}
		// A legacy payload written before the API stamped receive times has 0: it is
		// skipped for an erased user whenever it was received.
		if forgotten.Skip(ev.UserID, ev.ServerReceivedTsMs) {
			rep.Ignored++
			rep.Entries = append(rep.Entries, ReplayEntry{ID: x.id, EventID: ev.EventID, UserID: ev.UserID, Outcome: "ignored"})
			if !o.DryRun {
				goneIDs = append(goneIDs, x.id)
			}
			continue
		}
		if o.DryRun {
			rep.WouldApply++
			rep.Entries = append(rep.Entries, ReplayEntry{ID: x.id, EventID: ev.EventID, UserID: ev.UserID, Outcome: "would_apply"})
			continue
		}
		idx[len(b.Events)] = len(rep.Entries)
		rep.Entries = append(rep.Entries, ReplayEntry{ID: x.id, EventID: ev.EventID, UserID: ev.UserID})
		b.Events = append(b.Events, ev)
		ids = append(ids, x.id)
	}
	if o.DryRun {
		return rep, nil
	}
	var applyErr error
	// untried marks the entries from batch event i on as left pending, not tried, when a
	// transient error stops the replay: the report then says which are still to do.
	untried := func(i int) {
		for ; i < len(b.Events); i++ {
			rep.Entries[idx[i]].Outcome = "pending"
		}
	}
	done := func(i int, isNew bool) {
		if isNew {
			rep.Applied++
			rep.Entries[idx[i]].Outcome = "applied"
		} else {
			rep.Duplicates++
			rep.Entries[idx[i]].Outcome = "duplicate"
		}
		okIDs = append(okIDs, ids[i])
	}
	// ignore takes out of the batch the events the erased users, as now known, skip: an
	// ErasedError's (users erased after the list was read).
	ignore := func(erased *ErasedError) {
		forgotten.Note(erased.Users)
		n := 0
		kept := map[int]int{}
		for i, ev := range b.Events {
			if forgotten.Skip(ev.UserID, ev.ServerReceivedTsMs) {
				rep.Ignored++
				rep.Entries[idx[i]].Outcome = "ignored"
				goneIDs = append(goneIDs, ids[i])
				continue
			}
			b.Events[n], ids[n], kept[n] = ev, ids[i], idx[i]
			n++
		}
		b.Events, ids, idx = b.Events[:n], ids[:n], kept
	}
	for len(b.Events) > 0 {
		a, err := s.applyReplayed(ctx, b)
		if erased := new(ErasedError); errors.As(err, &erased) {
			ignore(erased)
			continue
		}
		switch {
		case err == nil:
			for i, isNew := range a.New {
				done(i, isNew)
			}
		case Refused(err):
			for i := range b.Events {
				a, err := s.applyReplayed(ctx, &Batch{Events: b.Events[i : i+1]})
				if erased := new(ErasedError); errors.As(err, &erased) {
					forgotten.Note(erased.Users)
					rep.Ignored++
					rep.Entries[idx[i]].Outcome = "ignored"
					goneIDs = append(goneIDs, ids[i])
					continue
				}
				if err != nil && !Refused(err) {
					applyErr = fmt.Errorf("apply replayed event %s: %w", b.Events[i].EventID, err)
					untried(i)
					break
				}
				if err != nil {
					rep.Refused++
					rep.Entries[idx[i]].Outcome, rep.Entries[idx[i]].Error = "refused", err.Error()
					badIDs, badErrs = append(badIDs, ids[i]), append(badErrs, dlqText(err.Error()))
					continue
				}
				done(i, a.New[0])
			}
		default:
			untried(0)
			return rep, fmt.Errorf("apply replayed events: %w", err)
		}
		if err := s.FlushWritten(ctx); err != nil {
			s.log.WarnContext(ctx, "clear redis journal after dlq replay", "err", err)
		}
		break
	}
	if len(goneIDs) > 0 {
		// Deleted, not kept as replayed: the entry holds the raw event of a user whose data
		// was erased, and `users forget`, which ran before or runs later, clears the DLQ only of
		// entries keyed by the user and created up to the erasure time (this one may be
		// neither: published after it, or keyed otherwise).
		if _, err := s.pg.Exec(ctx, `DELETE FROM feature_dlq WHERE id = ANY($1)`, goneIDs); err != nil {
			return rep, fmt.Errorf("delete erased users' dlq entries: %w", err)
		}
	}
	if len(okIDs) > 0 {
		if _, err := s.pg.Exec(ctx, `UPDATE feature_dlq SET status = 'replayed', replayed_at = now(), replay_attempts = replay_attempts + 1
WHERE id = ANY($1)`, okIDs); err != nil {
			return rep, fmt.Errorf("mark dlq replayed: %w", err)
		}
	}
	if len(badIDs) > 0 {
		if _, err := s.pg.Exec(ctx, `UPDATE feature_dlq d SET replay_attempts = replay_attempts + 1, error = v.e
FROM unnest($1::bigint[], $2::text[]) AS v(id, e) WHERE d.id = v.id`, badIDs, badErrs); err != nil {
			return rep, fmt.Errorf("record dlq replay errors: %w", err)
		}
	}
	return rep, applyErr
}

// applyReplayed applies replayed events and writes them to Redis (a failed Redis write is
// left to the journal).
func (s *Store) applyReplayed(ctx context.Context, b *Batch) (*Applied, error) {
	a, err := s.Apply(ctx, b)
	if err != nil {
		return nil, err
	}
	if err := s.WriteRedis(ctx, a); err != nil {
		s.log.WarnContext(ctx, "write redis after dlq replay; the journal keeps it for the consumer's heal loop", "err", err)
	}
	return a, nil
}
