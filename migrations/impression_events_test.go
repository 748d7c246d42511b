package migrations_test

import (
	"context"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/testutil"
)

// TestImpressionEventsMigration runs 0012 over a per-item impressions table with data, checks
// the view gives back exactly the rows the table had (every column, created_at included) from
// one impression_events row per event, that a writer from before 0012 can still insert into
// impressions, and that the down migration restores the table with every row.
func TestImpressionEventsMigration(t *testing.T) {
	m, dsn, since := before(t, 12)
	ctx := context.Background()
	pool := testutil.Pool(t, dsn)
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := pool.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	const insertOld = `INSERT INTO impressions (event_id, position, item_id, feed_id, slot, user_id, session_id, request_id, ts_ms, ts,
		server_received_ts_ms, context, created_at) VALUES ($1, $2, $3, $4, $5, $6, 's1', 'r1', 1700000000123, to_timestamp(1700000000.123),
		1700000000456, $7::jsonb, $8::timestamptz)`
	exec(insertOld, "ev-a", 5, "i5", nil, "hero", "u1", `{"device": "tv"}`, "2026-01-02 03:04:05.678+00")
	exec(insertOld, "ev-a", 1, "i1", "home", nil, "u1", `{"device": "tv"}`, "2026-01-02 03:04:05.678+00")
	exec(insertOld, "ev-a", 3, "i3", nil, nil, "u1", `{"device": "tv"}`, "2026-01-02 03:04:05.678+00")
	exec(insertOld, "ev-b", 0, "j0", nil, nil, "u2", nil, "2026-01-03 00:00:00+00")
	before := snapshot(t, pool)
	if len(before) != 4 {
		t.Fatalf("%d rows before the migration", len(before))
	}

	if err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, pool); !slices.Equal(after, before) {
		t.Fatalf("impressions view after 0012:\n%v\nwant\n%v", after, before)
	}
	var rows []string
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		r, err := tx.Query(ctx, `SELECT concat_ws(' ', event_id, positions, item_ids, coalesce(feed_ids::text, '-'), coalesce(slots::text, '-'), user_id)
			FROM impression_events ORDER BY event_id`)
		if err != nil {
			return err
		}
		rows, err = pgx.CollectRows(r, pgx.RowTo[string])
		return err
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{"ev-a {1,3,5} {i1,i3,i5} {home,NULL,NULL} {NULL,NULL,hero} u1", "ev-b {0} {j0} - - u2"}
	if !slices.Equal(rows, want) {
		t.Errorf("impression_events = %q, want %q", rows, want)
	}

	// A binary from before 0012 (rolling deploy, image rollback) still inserts item rows.
	exec(`INSERT INTO impressions (event_id, position, item_id, user_id, session_id, request_id, ts_ms, ts, server_received_ts_ms)
		VALUES ('ev-c', 0, 'k0', 'u3', 's', 'r', 1, to_timestamp(0.001), 2), ('ev-c', 1, 'k1', 'u3', 's', 'r', 1, to_timestamp(0.001), 2)`)
	var n, created int
	if err := pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE created_at > now() - interval '1 hour') FROM impressions WHERE event_id = 'ev-c'`).Scan(&n, &created); err != nil || n != 2 || created != 2 {
		t.Fatalf("rows inserted through the view: %d (%d with created_at now), %v", n, created, err)
	}
	withC := snapshot(t, pool)

	if err := m.Down(ctx, since); err != nil {
		t.Fatal(err)
	}
	var kind string
	if err := pool.QueryRow(ctx, `SELECT relkind::text FROM pg_class WHERE relname = 'impressions'`).Scan(&kind); err != nil || kind != "r" {
		t.Fatalf("impressions after the down migration: relkind %q, %v", kind, err)
	}
	if got := snapshot(t, pool); !slices.Equal(got, withC) {
		t.Fatalf("impressions table after the down migration:\n%v\nwant\n%v", got, withC)
	}

	// Up again regroups the per-item rows of ev-c into one event.
	if err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM impression_events WHERE event_id = 'ev-c'`).Scan(&n); err != nil || n != 1 {
		t.Errorf("ev-c has %d impression_events rows after up again (%v), want 1", n, err)
	}
	if got := snapshot(t, pool); !slices.Equal(got, withC) {
		t.Errorf("impressions view after up again:\n%v\nwant\n%v", got, withC)
	}
}

// snapshot renders every column of every impressions row, in a fixed order.
func snapshot(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	r, err := pool.Query(context.Background(), `SELECT row_to_json(x)::text FROM (
		SELECT event_id, position, item_id, feed_id, slot, user_id, session_id, request_id, ts_ms, ts, server_received_ts_ms, context, created_at
		FROM impressions ORDER BY event_id, position) x`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(r, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}
