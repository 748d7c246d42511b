package outbox

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Reaped counts what Reap did.
type Reaped struct {
	Requeued, Dead int
	// Erased counts the events of erased users taken out of the rows that went dead
	// (eraseForgotten).
	Erased int
}

// Reap ends expired leases (the owner crashed, stalled or lost the database): up to limit
// rows go back to 'pending' after a backoff, or to 'dead' when the claim that leased them was
// their last allowed attempt. The attempt was counted when the row was claimed, so a row that
// crashes every relay still ends dead after max_attempts claims. The events of erased users
// leave the rows that go dead, in the same transaction.
func (s *Store) Reap(ctx context.Context, limit int, b Backoff) (Reaped, error) {
	var r Reaped
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		r = Reaped{}
		q := &pgx.Batch{}
		q.Queue(byKeySQL)
		q.Queue(reapSQL, limit, float64(b.Base.Milliseconds()), float64(b.Max.Milliseconds()))
		br := tx.SendBatch(ctx, q)
		_, err := br.Exec()
		var dead []int64
		if err == nil {
			var id int64
			var st string
			rows, _ := br.Query()
			_, err = pgx.ForEachRow(rows, []any{&id, &st}, func() error {
				if st == StatusDead {
					r.Dead++
					dead = append(dead, id)
				} else {
					r.Requeued++
				}
				return nil
			})
		}
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		n, err := eraseForgotten(ctx, tx, dead)
		r.Erased = int(n)
		return err
	})
	if err != nil {
		return Reaped{}, fmt.Errorf("reap expired outbox leases: %w", err)
	}
	return r, nil
}

// reapSQL is Reap's statement, planned by byKeySQL (as every statement that names rows by
// id): on an outbox empty when a relay started, a cached generic plan of "id = ANY(...)" is
// a sequential scan, which a growing backlog would keep until an ANALYZE.
const reapSQL = `
UPDATE event_outbox o
SET status = CASE WHEN o.attempts >= o.max_attempts THEN 'dead' ELSE 'pending' END,
    next_attempt_at = now() + least($3::float8, $2::float8 * power(2, least(greatest(o.attempts, 1) - 1, 40)))
                      * (0.5 + random() * 0.5) * interval '1 millisecond',
    last_error = 'lease of ' || coalesce(o.lease_owner, '?') || ' expired before the outcome was recorded',
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
WHERE o.id = ANY(ARRAY(
    SELECT id FROM event_outbox
    WHERE status = 'publishing' AND lease_expires_at < now()
    ORDER BY id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
))
RETURNING o.id, o.status`

// DeletePublished deletes up to limit rows published more than olderThan ago, oldest first,
// and returns how many it deleted. Callers loop while it returns limit, so each statement
// stays short and never holds many row locks. The outer status test is re-checked on the
// locked row, so a row replay requeued meanwhile is not deleted.
func (s *Store) DeletePublished(ctx context.Context, olderThan time.Duration, limit int) (int, error) {
	tag, err := s.execByKey(ctx, deleteOldPublishedSQL, olderThan.Milliseconds(), limit)
	if err != nil {
		return 0, fmt.Errorf("delete published outbox rows: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// deleteOldPublishedSQL is DeletePublished's statement, planned by byKeySQL as reapSQL is.
// The status re-check is written so that it does not match event_outbox_published_idx's
// predicate: PostgreSQL would otherwise read the rows by a full scan of that partial index
// filtered by id (see leaseHeld) instead of by primary key.
const deleteOldPublishedSQL = `
DELETE FROM event_outbox
WHERE status || '' = 'published' AND id = ANY(ARRAY(
    SELECT id FROM event_outbox
    WHERE status = 'published' AND published_at < now() - $1 * interval '1 millisecond'
    ORDER BY published_at
    LIMIT $2
))`
