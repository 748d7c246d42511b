package ingest

import (
	"context"
	"fmt"
	"time"
)

// retentionTables are the tables the retention loop trims, each by created_at. event_outbox is
// not here: the relay owns its rows. Impressions are trimmed in impression_events (one row per
// event, migration 0012): the impressions view has no rows of its own, and a batch of event
// rows removes all their items at once.
var (
	rawTables   = []string{"impression_events", "watches", "legacy_events"}
	dedupTables = []string{"event_dedup"}
)

// retentionLoop deletes old rows every --ingest.retention-interval until ctx ends. Failures
// are logged and retried next pass: retention is housekeeping, never a reason to stop serving.
func (m *Ingest) retentionLoop(ctx context.Context) {
	if m.cfg.RawRetention == 0 && m.cfg.DedupRetention == 0 {
		return
	}
	t := time.NewTicker(m.cfg.RetentionInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := m.retentionPass(ctx, time.Now()); err != nil && ctx.Err() == nil {
			m.m.retentionErrors.Inc()
			m.deps.Log.WarnContext(ctx, "retention pass failed, retrying next interval", "err", err)
		}
	}
}

// retentionPass deletes rows created before now minus the configured ages.
func (m *Ingest) retentionPass(ctx context.Context, now time.Time) error {
	for _, g := range []struct {
		tables []string
		age    time.Duration
	}{{rawTables, m.cfg.RawRetention}, {dedupTables, m.cfg.DedupRetention}} {
		if g.age == 0 {
			continue
		}
		for _, table := range g.tables {
			n, err := m.deleteBefore(ctx, table, now.Add(-g.age))
			if n > 0 {
				m.m.retentionDeleted(table).Add(int(n))
				m.deps.Log.InfoContext(ctx, "retention deleted rows", "table", table, "rows", n)
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// deleteBefore deletes rows of table created before cutoff, --ingest.retention-batch-size
// rows per statement (short transactions, short locks, bounded WAL bursts), until a statement
// deletes fewer rows than that. The ctid sub-select uses the BRIN index on created_at.
func (m *Ingest) deleteBefore(ctx context.Context, table string, cutoff time.Time) (int64, error) {
	q := fmt.Sprintf(`DELETE FROM %[1]s WHERE ctid = ANY(ARRAY(SELECT ctid FROM %[1]s WHERE created_at < $1 LIMIT $2))`, table)
	var total int64
	for {
		tag, err := m.deps.PG.Exec(ctx, q, cutoff, m.cfg.RetentionBatchSize)
		if err != nil {
			return total, fmt.Errorf("delete old rows of %s: %w", table, err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < int64(m.cfg.RetentionBatchSize) || ctx.Err() != nil {
			return total, nil
		}
	}
}
