package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// BRIN maintenance for tables trimmed by age in batches (raw events, dedup records) and
// indexed by BRIN on their time columns. Vacuum hands the space of deleted rows to new rows,
// and a BRIN summary only ever widens: without desummarizing, a block range keeps the min of
// its deleted rows (weeks old) and gains the max of the new ones, and after one retention
// period every range matches every "older than the cutoff" or time-range query: a full scan
// for each retention batch and range scan. Callers desummarize the ranges of the blocks they
// emptied (DesummarizeBRIN) and summarize again what is unsummarized (SummarizeBRIN) before
// their next scan, once the deleted rows are dead to every snapshot; until then those ranges
// are read by every range scan, like the unsummarized newest ranges.

// brinIndexesSQL lists a table's BRIN indexes with their pages per range (default 128).
const brinIndexesSQL = `
SELECT c.oid::regclass::text, COALESCE((SELECT option_value::int FROM pg_options_to_table(c.reloptions) WHERE option_name = 'pages_per_range'), 128)
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
WHERE i.indrelid = $1::regclass AND a.amname = 'brin'`

// brinLockTimeout bounds the wait for the ShareUpdateExclusiveLock that BRIN summarizing
// takes on the table. It is below deadlock_timeout (1 s by default) on purpose: a longer wait
// behind an autovacuum of the table would cancel that vacuum. A range that could not be
// desummarized only stays wider than it need be; one left unsummarized is summarized by the
// next call.
const brinLockTimeout = "200ms"

// ErrBRINBusy is returned (wrapped) when another session, normally an autovacuum of the table,
// held the lock BRIN maintenance needs: the work was skipped, which is not a failure.
var ErrBRINBusy = errors.New("brin maintenance skipped: table busy")

// DesummarizeBRIN desummarizes the block ranges holding blocks in every BRIN index of table.
func DesummarizeBRIN(ctx context.Context, pool *pgxpool.Pool, table string, blocks []int64) error {
	if len(blocks) == 0 {
		return nil
	}
	return brinMaintenance(ctx, pool, table, func(tx pgx.Tx, index string, pagesPerRange int64) error {
		_, err := tx.Exec(ctx, `SELECT brin_desummarize_range($1::regclass, r) FROM (SELECT DISTINCT b / $2::bigint * $2::bigint AS r FROM unnest($3::bigint[]) b) s`,
			index, pagesPerRange, blocks)
		return err
	})
}

// maxDeferredBlocks bounds the blocks a BRINDesummarizer remembers per table (8 bytes
// each, plus the map's overhead); past it, further ranges stay wide.
const maxDeferredBlocks = 1 << 20

// BRINDesummarizer desummarizes the ranges of emptied blocks like DesummarizeBRIN, and
// remembers those it could not (ErrBRINBusy, a failure) to desummarize them with the next
// call for the same table. A range skipped for good would stay wide for good: vacuum hands
// its space to new rows, and nothing narrows a summarized range again. An autovacuum of a
// large table holds the lock for an hour or more, and every range emptied meanwhile was lost
// that way; over months of vacuums, more and more of the table matched every scan. The zero
// value is ready; it is safe for concurrent use.
type BRINDesummarizer struct {
	mu       sync.Mutex
	deferred map[string]map[int64]struct{} // table -> blocks
}

// Desummarize desummarizes the ranges of blocks and of the blocks deferred before for table.
// ErrBRINBusy (wrapped) says they are deferred again.
func (d *BRINDesummarizer) Desummarize(ctx context.Context, pool *pgxpool.Pool, table string, blocks []int64) error {
	d.mu.Lock()
	prev := d.deferred[table]
	delete(d.deferred, table)
	d.mu.Unlock()
	all := blocks
	if len(prev) > 0 {
		all = slices.Grow(slices.Clone(blocks), len(prev))
		for b := range prev {
			all = append(all, b)
		}
	}
	err := DesummarizeBRIN(ctx, pool, table, all)
	if err != nil {
		d.mu.Lock()
		if d.deferred == nil {
			d.deferred = map[string]map[int64]struct{}{}
		}
		m := d.deferred[table]
		if m == nil {
			m = make(map[int64]struct{}, len(all))
			d.deferred[table] = m
		}
		for _, b := range all {
			if len(m) >= maxDeferredBlocks {
				break
			}
			m[b] = struct{}{}
		}
		d.mu.Unlock()
	}
	return err
}

// SummarizeBRIN summarizes every unsummarized block range of table's BRIN indexes.
func SummarizeBRIN(ctx context.Context, pool *pgxpool.Pool, table string) error {
	return brinMaintenance(ctx, pool, table, func(tx pgx.Tx, index string, _ int64) error {
		_, err := tx.Exec(ctx, `SELECT brin_summarize_new_values($1::regclass)`, index)
		return err
	})
}

// brinMaintenance runs do for each BRIN index of table in one transaction.
func brinMaintenance(ctx context.Context, pool *pgxpool.Pool, table string, do func(tx pgx.Tx, index string, pagesPerRange int64) error) error {
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '"+brinLockTimeout+"'"); err != nil {
			return fmt.Errorf("set lock_timeout: %w", err)
		}
		rows, err := tx.Query(ctx, brinIndexesSQL, table)
		if err != nil {
			return fmt.Errorf("list brin indexes of %s: %w", table, err)
		}
		type index struct {
			name          string
			pagesPerRange int64
		}
		indexes, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (index, error) {
			var i index
			err := r.Scan(&i.name, &i.pagesPerRange)
			return i, err
		})
		if err != nil {
			return fmt.Errorf("list brin indexes of %s: %w", table, err)
		}
		for _, i := range indexes {
			if err := do(tx, i.name, i.pagesPerRange); err != nil {
				return fmt.Errorf("brin index %s: %w", i.name, err)
			}
		}
		return nil
	})
	if pe := (*pgconn.PgError)(nil); errors.As(err, &pe) && pe.Code == "55P03" /* lock_not_available */ {
		return fmt.Errorf("%s: %w", table, ErrBRINBusy)
	}
	return err
}
