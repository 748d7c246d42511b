package migrations_test

import (
	"context"
	"testing"
	"time"

	"recsys/pkg/testutil"
)

// testRetentionMigration: migration version makes every existing row of table active at the
// upgrade (the retention must not trim, at its first pass, the rows written before it
// existed), without rewriting the table, and later inserts take their own time. insert is
// the INSERT of a row with id $1.
func testRetentionMigration(t *testing.T, version uint, table, column, what, insert string) {
	m, dsn, _ := before(t, version)
	ctx := context.Background()
	pool := testutil.Pool(t, dsn)
	if _, err := pool.Exec(ctx, insert, "old"); err != nil {
		t.Fatal(err)
	}
	var node uint32
	if err := pool.QueryRow(ctx, `SELECT relfilenode FROM pg_class WHERE relname = $1`, table).Scan(&node); err != nil {
		t.Fatal(err)
	}
	up := time.Now()
	if err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	var active int64
	var after uint32
	if err := pool.QueryRow(ctx, `SELECT last_active_ms, (SELECT relfilenode FROM pg_class WHERE relname = $1)
FROM `+table+` WHERE `+column+` = 'old'`, table).Scan(&active, &after); err != nil {
		t.Fatal(err)
	}
	if d := time.UnixMilli(active).Sub(up); d < -time.Minute || d > time.Minute {
		t.Errorf("existing %s active at %s, want the upgrade's time (%s)", what, time.UnixMilli(active), up)
	}
	if after != node {
		t.Errorf("the migration rewrote %s", table)
	}
	time.Sleep(20 * time.Millisecond)
	var inserted int64
	if err := pool.QueryRow(ctx, insert+` RETURNING last_active_ms`, "new").Scan(&inserted); err != nil {
		t.Fatal(err)
	}
	if inserted <= active {
		t.Errorf("a %s inserted later is active at %d, not after the upgrade's %d", what, inserted, active)
	}
}

// TestItemRetentionMigration: 0027 makes every existing item active at the upgrade (see
// testRetentionMigration).
func TestItemRetentionMigration(t *testing.T) {
	testRetentionMigration(t, 27, "feature_items", "item_id", "item",
		`INSERT INTO feature_items (item_id, first_seen_ms) VALUES ($1, 1)`)
}
