package migrations_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/testutil"
)

// TestFeatureUserDocsMigration runs 0015 over users stored as json (one with a document large
// enough to be TOASTed, one with the defaults): the columns become text with their defaults
// and lz4 (when the server has it), every document is kept byte for byte, and the down
// migration gives back json columns with the same documents.
func TestFeatureUserDocsMigration(t *testing.T) {
	m, dsn, since := before(t, 15)
	ctx := context.Background()
	pool := testutil.Pool(t, dsn)
	var watched strings.Builder
	watched.WriteByte('{')
	for i := range 500 {
		if i > 0 {
			watched.WriteByte(',')
		}
		fmt.Fprintf(&watched, `"item-%04d":%d`, i, 1795965389000+int64(i)*7919)
	}
	watched.WriteByte('}')
	if _, err := pool.Exec(ctx, `INSERT INTO feature_users (user_id, history, watched, impressions, version)
		VALUES ('u-big', '[{"item_id":"item-0001","ts_ms":1,"quality":0.5}]', $1, '{"item-0002":{"count":3,"last_ts_ms":9}}', 7)`, watched.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO feature_users (user_id) VALUES ('u-new')`); err != nil {
		t.Fatal(err)
	}
	stored := userDocs(t, pool)

	if err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	wantCompression := ""
	if serverHasLZ4(t, pool) {
		wantCompression = "l"
	}
	// expect checks the document columns' type, compression and defaults, and the documents.
	expect := func(stage, typ string, docs []string) {
		t.Helper()
		want := []string{
			fmt.Sprintf("history %s %q '[]'::%[1]s", typ, wantCompression),
			fmt.Sprintf("impressions %s %q '{}'::%[1]s", typ, wantCompression),
			fmt.Sprintf("watched %s %q '{}'::%[1]s", typ, wantCompression),
		}
		if got := userDocColumns(t, pool); !slices.Equal(got, want) {
			t.Errorf("columns %s:\n%q\nwant\n%q", stage, got, want)
		}
		if got := userDocs(t, pool); !slices.Equal(got, docs) {
			t.Errorf("documents %s:\n%q\nwant\n%q", stage, got, docs)
		}
	}
	expect("after 0015", "text", stored)
	if _, err := pool.Exec(ctx, `INSERT INTO feature_users (user_id) VALUES ('u-after')`); err != nil {
		t.Fatal(err)
	}
	withNew := userDocs(t, pool)
	if !slices.Contains(withNew, `u-after [] {} {} 0`) {
		t.Errorf("a user inserted after 0015 has no default documents: %q", withNew)
	}

	if err := m.Down(ctx, since); err != nil {
		t.Fatal(err)
	}
	expect("after the down migration", "json", withNew)
}

// serverHasLZ4 reports whether the server was built with lz4 (the migrations that set it
// leave pglz otherwise).
func serverHasLZ4(t *testing.T, pool *pgxpool.Pool) bool {
	t.Helper()
	lz4 := false
	if err := pool.QueryRow(context.Background(), `SELECT 'lz4' = ANY (enumvals) FROM pg_settings WHERE name = 'default_toast_compression'`).Scan(&lz4); err != nil {
		t.Fatal(err)
	}
	return lz4
}

// userDocColumns describes the document columns: name, type, compression, default.
func userDocColumns(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	return queryStrings(t, pool, `SELECT format('%s %s %s %s', a.attname, format_type(a.atttypid, a.atttypmod),
			'"' || a.attcompression::text || '"', pg_get_expr(d.adbin, d.adrelid))
		FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
		WHERE a.attrelid = 'feature_users'::regclass AND a.attname IN ('history', 'watched', 'impressions') ORDER BY a.attname`)
}

// userDocs renders every user's documents as stored (text, no normalisation).
func userDocs(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	return queryStrings(t, pool, `SELECT concat_ws(' ', user_id, history::text, watched::text, impressions::text, version)
		FROM feature_users ORDER BY user_id`)
}

// queryStrings runs a query of one text column.
func queryStrings(t *testing.T, pool *pgxpool.Pool, sql string) []string {
	t.Helper()
	r, err := pool.Query(context.Background(), sql)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(r, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}
