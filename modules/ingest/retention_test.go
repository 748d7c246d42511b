package ingest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"recsys/pkg/testutil"
)

// TestRetentionKeepsBRINRangesNarrow: space freed by retention and reused by new rows must
// not leave the old rows' receive times in the BRIN summaries, or every range scan of old
// times would read the new rows' blocks (and, after one retention period, every block).
func TestRetentionKeepsBRINRangesNarrow(t *testing.T) {
	for _, tc := range []struct {
		name string
		// busy: an autovacuum holds the table while the pass deletes, so its desummarizing
		// is skipped; a long vacuum of a large table skipped every range emptied meanwhile,
		// and those stayed wide for good.
		busy bool
	}{{"table free", false}, {"vacuum holds the table during the delete", true}} {
		t.Run(tc.name, func(t *testing.T) { testRetentionKeepsBRINRangesNarrow(t, tc.busy) })
	}
}

func testRetentionKeepsBRINRangesNarrow(t *testing.T, busy bool) {
	v := newEnv(t, testutil.MigratedDatabase(t))
	ctx := context.Background()
	const (
		oldTs = int64(1_600_000_000_000)
		newTs = int64(1_700_000_000_000)
		rows  = 5000 // about 100 heap pages, several block ranges of 32 pages
	)
	insert := func(prefix string, srv int64, age string) {
		t.Helper()
		if _, err := v.pool.Exec(ctx, `INSERT INTO watches (event_id, user_id, session_id, request_id, item_id, watch_time_sec, ts_ms, ts, server_received_ts_ms, created_at)
			SELECT $1 || g, 'u' || g % 50, 's', 'r' || g, 'i' || g % 70, 1, $2::bigint, to_timestamp($2::bigint / 1000.0), $2::bigint + g, now() - $3::interval
			FROM generate_series(1, $4::int) g`, prefix, srv, age, rows); err != nil {
			t.Fatal(err)
		}
	}
	insert("old-", oldTs, "40 days")                              // deleted by retention
	insert("kept-", oldTs+rows, "1 day")                          // keeps the heap from being truncated by vacuum
	if _, err := v.pool.Exec(ctx, "VACUUM watches"); err != nil { // summarizes the ranges, as autovacuum does
		t.Fatal(err)
	}
	var vacuum pgx.Tx
	if busy {
		var err error
		if vacuum, err = v.pool.Begin(ctx); err != nil {
			t.Fatal(err)
		}
		defer vacuum.Rollback(ctx) //nolint:errcheck // test cleanup
		if _, err := vacuum.Exec(ctx, "LOCK TABLE watches IN SHARE UPDATE EXCLUSIVE MODE"); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.mod.retentionPass(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	if busy {
		if err := vacuum.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := v.count("SELECT count(*) FROM watches"); n != rows {
		t.Fatalf("%d watches left, want the %d kept", n, rows)
	}
	// Vacuum frees the deleted rows' space; the new rows fill it.
	if _, err := v.pool.Exec(ctx, "VACUUM watches"); err != nil {
		t.Fatal(err)
	}
	insert("new-", newTs, "0 days")
	var reused bool
	if err := v.pool.QueryRow(ctx, `SELECT min((ctid::text::point)[0]) < (SELECT min((ctid::text::point)[0]) FROM watches WHERE event_id LIKE 'kept-%')
		FROM watches WHERE event_id LIKE 'new-%'`).Scan(&reused); err != nil || !reused {
		t.Fatalf("the new rows did not reuse the freed pages (%v): the test proves nothing", err)
	}
	// The next passes summarize what is unsummarized (a range desummarized late, after new
	// rows came in, by the pass after); then a scan of the deleted rows' receive times must
	// read no block (it read all the new rows' blocks before the fix).
	for range 2 {
		if err := v.mod.retentionPass(ctx, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	usesBRIN, blocks, plan := testutil.IndexScan(t, v.pool, "watches_server_ts_brin",
		`SELECT count(*) FROM watches WHERE server_received_ts_ms >= $1 AND server_received_ts_ms < $2`, oldTs, oldTs+rows)
	if !usesBRIN || blocks != 0 {
		t.Fatalf("scan of the deleted receive times read %d heap blocks (want 0, through the BRIN index):\n%v", blocks, plan)
	}
}

// TestRetentionSkipsBRINMaintenanceWhileVacuumHoldsTheTable: summarizing needs the lock an
// (auto)vacuum holds; retention must neither wait for it (which would cancel an autovacuum)
// nor count it as a failure, and must still delete.
func TestRetentionSkipsBRINMaintenanceWhileVacuumHoldsTheTable(t *testing.T) {
	v := newEnv(t, testutil.MigratedDatabase(t))
	ctx := context.Background()
	if _, err := v.pool.Exec(ctx, `INSERT INTO watches (event_id, user_id, session_id, request_id, item_id, watch_time_sec, ts_ms, ts, server_received_ts_ms, created_at)
		SELECT 'old-' || g, 'u', 's', 'r', 'i', 1, 1, to_timestamp(0), g, now() - interval '40 days' FROM generate_series(1, 100) g`); err != nil {
		t.Fatal(err)
	}
	// What VACUUM holds for its whole run.
	tx, err := v.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // test cleanup
	if _, err := tx.Exec(ctx, "LOCK TABLE watches IN SHARE UPDATE EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := v.mod.retentionPass(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("retention pass waited %s behind the lock", d)
	}
	if n := v.count("SELECT count(*) FROM watches"); n != 0 {
		t.Errorf("%d old watches left, want 0", n)
	}
	if n := v.metric("recsys_ingest_retention_errors_total"); n != 0 {
		t.Errorf("retention errors = %v, want 0 (a busy table is skipped, not a failure)", n)
	}
}

// TestRetentionGoesOnPastAFailingTable: a table whose delete fails (here one that is gone)
// is reported, and the tables after it are still trimmed: one table failing every pass used
// to leave every table after it unbounded.
func TestRetentionGoesOnPastAFailingTable(t *testing.T) {
	v := newEnv(t, testutil.MigratedDatabase(t))
	ctx := context.Background()
	for _, sql := range []string{
		`INSERT INTO watches (event_id, user_id, session_id, request_id, item_id, watch_time_sec, ts_ms, ts, server_received_ts_ms, created_at)
		 VALUES ('old-watch', 'u', 's', 'r', 'i', 1, 1600000000000, to_timestamp(1600000000), 1600000000000, now() - interval '40 days')`,
		`INSERT INTO event_dedup (event_id, user_id, event_type, created_at) VALUES ('old-watch', 'u', 'watch', now() - interval '40 days')`,
		`ALTER TABLE impression_events RENAME TO impression_events_moved`, // the first table the pass trims
	} {
		if _, err := v.pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	err := v.mod.retentionPass(ctx, time.Now())
	if err == nil || !strings.Contains(err.Error(), "impression_events") {
		t.Errorf("retention pass with impression_events gone: %v, want an error naming it", err)
	}
	if n := v.count(`SELECT count(*) FROM watches`); n != 0 {
		t.Errorf("%d old watches left after the failing table", n)
	}
	if n := v.count(`SELECT count(*) FROM event_dedup`); n != 0 {
		t.Errorf("%d old dedup keys left after the failing table", n)
	}
}
