package outbox

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Backlog is the outbox snapshot of /healthz (event_backbone.outbox) and of the backlog gauges,
// with the original service's field names. Counts are events, not rows (a batch row carries
// event_count events).
type Backlog struct {
	Pending    int64 `json:"pending"`
	Publishing int64 `json:"publishing"`
	Published  int64 `json:"published"` // still retained; see the relay's retention
	Dead       int64 `json:"dead"`
	// OldestLagMS is the age of the oldest unpublished (pending or publishing) event, 0 if none.
	OldestLagMS int64 `json:"oldest_lag_ms"`
	// Capped reports that at least one status had the limit's number of rows or more: its
	// count is a lower bound.
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

// SnapshotLimit computes the backlog without scanning the table: each status reads at most
// limit rows through its partial index, and the oldest age comes from the first pending row in
// id order plus the (few) rows in flight. Counts are events (the sum of event_count: a batch
// row carries many), so a count may exceed limit; it is capped (a lower bound) when the
// status had limit rows or more. Ids follow insertion order, so the first pending id is the
// oldest pending row up to the length of a writer's transaction.
func SnapshotLimit(ctx context.Context, q Querier, limit int) (Backlog, error) {
	var b Backlog
	var rows [4]int64
	err := q.QueryRow(ctx, `
SELECT p.n, p.e, i.n, i.e, d.n, d.e, x.n, x.e,
    coalesce(greatest(0, (extract(epoch FROM now() - least(
        (SELECT created_at FROM event_outbox WHERE status = 'pending' ORDER BY id LIMIT 1),
        (SELECT min(created_at) FROM event_outbox WHERE status = 'publishing'))) * 1000)::bigint), 0)
FROM
    (SELECT count(*) AS n, coalesce(sum(event_count), 0) AS e FROM (SELECT event_count FROM event_outbox WHERE status = 'pending' LIMIT $1) s) p,
    (SELECT count(*) AS n, coalesce(sum(event_count), 0) AS e FROM (SELECT event_count FROM event_outbox WHERE status = 'publishing' LIMIT $1) s) i,
    (SELECT count(*) AS n, coalesce(sum(event_count), 0) AS e FROM (SELECT event_count FROM event_outbox WHERE status = 'published' LIMIT $1) s) d,
    (SELECT count(*) AS n, coalesce(sum(event_count), 0) AS e FROM (SELECT event_count FROM event_outbox WHERE status = 'dead' LIMIT $1) s) x`,
		limit).Scan(&rows[0], &b.Pending, &rows[1], &b.Publishing, &rows[2], &b.Published, &rows[3], &b.Dead, &b.OldestLagMS)
	if err != nil {
		return Backlog{}, fmt.Errorf("outbox snapshot: %w", err)
	}
	for _, n := range rows {
		b.Capped = b.Capped || n >= int64(limit)
	}
	return b, nil
}
