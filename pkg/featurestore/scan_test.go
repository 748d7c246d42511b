package featurestore_test

import (
	"context"
	"testing"
	"time"

	"recsys/pkg/featurestore"
	"recsys/pkg/featurestore/fstest"
	"recsys/pkg/testutil"
)

// TestApplyNeverScansFeatureTablesWhole: a connection that made its plans while the feature
// tables were empty (a fresh deployment) keeps them while the tables grow, until an ANALYZE;
// the apply transaction must still reach users and co-visitation lists by key. One pooled
// connection, so the plans under test are the ones the batches ran with.
func TestApplyNeverScansFeatureTablesWhole(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t)+"&pool_max_conns=1")
	ctx := context.Background()
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	evs := toEvents(fstest.Generate(fstest.GenConfig{Seed: 7, Users: 10, Items: 20, Events: 200, StartMs: start, StepMs: 1000, Prefix: "p"}))
	st := featurestore.New(pool, nil, "", testConfig(), nil)
	apply := func(from, to int) {
		t.Helper()
		if _, err := st.Apply(ctx, &featurestore.Batch{Events: evs[from:to]}); err != nil {
			t.Fatal(err)
		}
	}
	// More batches than PostgreSQL's five custom plans, so generic plans are cached.
	for i := range 10 {
		apply(i*10, i*10+10)
	}
	if _, err := pool.Exec(ctx, `
INSERT INTO feature_users (user_id) SELECT 'bulk-' || g FROM generate_series(1, 20000) g;
INSERT INTO feature_neighbours (item_id, neighbours) SELECT 'bulk-' || g, ''::bytea FROM generate_series(1, 20000) g`); err != nil {
		t.Fatalf("grow the tables: %v", err)
	}
	seqScans := func() (n int64) {
		t.Helper()
		// The one connection flushes its statistics when it next goes idle.
		if _, err := pool.Exec(ctx, `SELECT pg_stat_force_next_flush()`); err != nil {
			t.Fatal(err)
		}
		err := pool.QueryRow(ctx, `SELECT coalesce(sum(seq_scan), 0) FROM pg_stat_user_tables
WHERE relname IN ('feature_users', 'feature_neighbours')`).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := seqScans()
	for i := 10; i < 20; i++ {
		apply(i*10, i*10+10)
	}
	if after := seqScans(); after != before {
		t.Errorf("the apply transactions scanned feature_users or feature_neighbours whole %d times; want every row reached by key", after-before)
	}
}
