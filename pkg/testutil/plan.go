package testutil

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// IndexScan runs query with args under EXPLAIN ANALYZE, sequential scans off, and reports
// whether its plan scans index and how many heap blocks its bitmap scan read: what a test
// of a BRIN index's upkeep checks (a range left wide reads blocks that hold no match).
func IndexScan(tb testing.TB, pool *pgxpool.Pool, index, query string, args ...any) (used bool, heapBlocks int, plan string) {
	tb.Helper()
	ctx := context.Background()
	var lines []string
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL enable_seqscan = off"); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) "+query, args...)
		if err != nil {
			return err
		}
		lines, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	if err != nil {
		tb.Fatalf("explain %s: %v", query, err)
	}
	for _, l := range lines {
		if m := heapBlocksRE.FindStringSubmatch(l); m != nil {
			heapBlocks, _ = strconv.Atoi(m[1])
		}
		used = used || strings.Contains(l, " on "+index)
	}
	return used, heapBlocks, strings.Join(lines, "\n")
}

var heapBlocksRE = regexp.MustCompile(`Heap Blocks: .*?(?:exact|lossy)=(\d+)`)
