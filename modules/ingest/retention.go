package ingest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"recsys/pkg/postgres"
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

// retentionPass deletes rows created before now minus the configured ages. It first
// summarizes the BRIN block ranges left unsummarized (by the previous pass, see deleteBefore,
// or not yet reached by autosummarize). A table whose delete fails does not stop the others:
// one table failing every pass must not leave the rest untrimmed.
func (m *Ingest) retentionPass(ctx context.Context, now time.Time) error {
	var errs []error
	for _, table := range append(rawTables[:len(rawTables):len(rawTables)], dedupTables...) {
		if err := m.summarizeBRIN(ctx, table); err != nil {
			m.m.retentionErrors.Inc()
			m.deps.Log.WarnContext(ctx, "brin summarize failed, retrying next pass", "table", table, "err", err)
		}
	}
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
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// deleteBefore deletes rows of table created before cutoff, --ingest.retention-batch-size
// rows per statement (short transactions, short locks, bounded WAL bursts), until a statement
// deletes fewer rows than that. The ctid sub-select uses the BRIN index on created_at.
//
// The block ranges of the deleted rows are then desummarized in every BRIN index of the table.
// Vacuum hands the freed space to new rows, and a BRIN summary only ever widens: without
// this, a range would keep the min of its deleted rows (a month old) and gain the max of the
// new ones, and after one retention period every range would match every query, a full
// scan for the receive-time and created_at range scans. The next pass (or vacuum) summarizes
// the ranges again from the rows left, once the deleted ones are dead to every snapshot;
// until then they are read by every range scan, like the unsummarized newest ranges.
func (m *Ingest) deleteBefore(ctx context.Context, table string, cutoff time.Time) (int64, error) {
	q := fmt.Sprintf(`
WITH d AS (DELETE FROM %[1]s WHERE ctid = ANY(ARRAY(SELECT ctid FROM %[1]s WHERE created_at < $1 LIMIT $2)) RETURNING ctid)
SELECT count(*), COALESCE(array_agg(DISTINCT (ctid::text::point)[0]::bigint), '{}') FROM d`, table)
	var total int64
	for {
		var n int64
		var blocks []int64
		if err := m.deps.PG.QueryRow(ctx, q, cutoff, m.cfg.RetentionBatchSize).Scan(&n, &blocks); err != nil {
			return total, fmt.Errorf("delete old rows of %s: %w", table, err)
		}
		total += n
		if err := m.desummarizeBRIN(ctx, table, blocks); err != nil {
			m.m.retentionErrors.Inc()
			m.deps.Log.WarnContext(ctx, "brin desummarize failed", "table", table, "err", err)
		}
		if n < int64(m.cfg.RetentionBatchSize) || ctx.Err() != nil {
			return total, nil
		}
	}
}

// desummarizeBRIN desummarizes the block ranges holding blocks in the table's BRIN indexes,
// and those a previous call could not (an autovacuum held the table).
func (m *Ingest) desummarizeBRIN(ctx context.Context, table string, blocks []int64) error {
	return m.brinSkipBusy(ctx, table, m.brin.Desummarize(ctx, m.deps.PG, table, blocks))
}

// summarizeBRIN summarizes every unsummarized block range of the table's BRIN indexes.
func (m *Ingest) summarizeBRIN(ctx context.Context, table string) error {
	return m.brinSkipBusy(ctx, table, postgres.SummarizeBRIN(ctx, m.deps.PG, table))
}

// brinSkipBusy: meeting an autovacuum of the table is normal and not an error: the work is
// skipped.
func (m *Ingest) brinSkipBusy(ctx context.Context, table string, err error) error {
	if errors.Is(err, postgres.ErrBRINBusy) {
		m.deps.Log.DebugContext(ctx, "brin maintenance skipped, table busy", "table", table)
		return nil
	}
	return err
}
