package outbox

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Backlog is the outbox snapshot of /healthz (event_backbone.outbox) and of the backlog gauges,
// with the original service's field names.
type Backlog struct {
	Pending    int64 `json:"pending"`
	Publishing int64 `json:"publishing"`
	Published  int64 `json:"published"` // still retained; see the relay's retention
	Dead       int64 `json:"dead"`
	// OldestLagMS is the age of the oldest unpublished (pending or publishing) row, 0 if none.
	OldestLagMS int64 `json:"oldest_lag_ms"`
	// Capped reports that at least one count reached the limit and is a lower bound.
	Capped bool `json:"capped"`
}

// DefaultSnapshotLimit is the count limit of Snapshot.
const DefaultSnapshotLimit = 100_000

// Querier is what Snapshot needs: a *pgxpool.Pool, a *pgx.Conn or a pgx.Tx.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Snapshot computes the backlog with counts limited to DefaultSnapshotLimit.
func Snapshot(ctx context.Context, q Querier) (Backlog, error) {
	return SnapshotLimit(ctx, q, DefaultSnapshotLimit)
}

// SnapshotLimit computes the backlog without scanning the table: each count reads only its
// status' partial index and stops at limit, and the oldest age comes from the first pending
// row in id order plus the (few) rows in flight. Ids follow insertion order, so the first
// pending id is the oldest pending row up to the length of a writer's transaction.
func SnapshotLimit(ctx context.Context, q Querier, limit int) (Backlog, error) {
	var b Backlog
	err := q.QueryRow(ctx, `
SELECT
    (SELECT count(*) FROM (SELECT 1 FROM event_outbox WHERE status = 'pending' LIMIT $1) s),
    (SELECT count(*) FROM (SELECT 1 FROM event_outbox WHERE status = 'publishing' LIMIT $1) s),
    (SELECT count(*) FROM (SELECT 1 FROM event_outbox WHERE status = 'published' LIMIT $1) s),
    (SELECT count(*) FROM (SELECT 1 FROM event_outbox WHERE status = 'dead' LIMIT $1) s),
    coalesce(greatest(0, (extract(epoch FROM now() - least(
        (SELECT created_at FROM event_outbox WHERE status = 'pending' ORDER BY id LIMIT 1),
        (SELECT min(created_at) FROM event_outbox WHERE status = 'publishing'))) * 1000)::bigint), 0)`,
		limit).Scan(&b.Pending, &b.Publishing, &b.Published, &b.Dead, &b.OldestLagMS)
	if err != nil {
		return Backlog{}, fmt.Errorf("outbox snapshot: %w", err)
	}
	l := int64(limit)
	b.Capped = b.Pending >= l || b.Publishing >= l || b.Published >= l || b.Dead >= l
	return b, nil
}
