package migrations_test

import (
	"context"
	"testing"
	"time"

	"recsys/pkg/testutil"
)

// TestUserRetentionMigration: 0028 makes every existing user active at the upgrade (the
// retention must not trim, at its first pass, the users seen before it existed), without
// rewriting the table, and later inserts take their own time.
func TestUserRetentionMigration(t *testing.T) {
	m, dsn, _ := before(t, 28)
	ctx := context.Background()
	pool := testutil.Pool(t, dsn)
	if _, err := pool.Exec(ctx, `INSERT INTO feature_users (user_id) VALUES ('old')`); err != nil {
		t.Fatal(err)
	}
	var node uint32
	if err := pool.QueryRow(ctx, `SELECT relfilenode FROM pg_class WHERE relname = 'feature_users'`).Scan(&node); err != nil {
		t.Fatal(err)
	}
	up := time.Now()
	if err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	var active int64
	var after uint32
	if err := pool.QueryRow(ctx, `SELECT last_active_ms, (SELECT relfilenode FROM pg_class WHERE relname = 'feature_users')
FROM feature_users WHERE user_id = 'old'`).Scan(&active, &after); err != nil {
		t.Fatal(err)
	}
	if d := time.UnixMilli(active).Sub(up); d < -time.Minute || d > time.Minute {
		t.Errorf("existing user active at %s, want the upgrade's time (%s)", time.UnixMilli(active), up)
	}
	if after != node {
		t.Error("the migration rewrote feature_users")
	}
	time.Sleep(20 * time.Millisecond)
	var inserted int64
	if err := pool.QueryRow(ctx, `INSERT INTO feature_users (user_id) VALUES ('new') RETURNING last_active_ms`).Scan(&inserted); err != nil {
		t.Fatal(err)
	}
	if inserted <= active {
		t.Errorf("a user inserted later is active at %d, not after the upgrade's %d", inserted, active)
	}
}
