package migrations_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/migrate"
	"recsys/pkg/testutil"
)

// TestFeatureUserDocsMigration runs 0015 over users stored as json (one with a document large
// enough to be TOASTed, one with the defaults): the columns become text with their defaults
// and lz4 (when the server has it), every document is kept byte for byte, and the down
// migration gives back json columns with the same documents.
func TestFeatureUserDocsMigration(t *testing.T) {
	dsn := testutil.NewDatabase(t)
	ctx := context.Background()
	m, err := migrate.Open(dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	files, _, err := migrate.Local()
	if err != nil {
		t.Fatal(err)
	}
	since := 0 // migrations from 0015 on
	for _, f := range files {
		if f.Version >= 15 {
			since++
		}
	}
	if err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Down(ctx, since); err != nil {
		t.Fatal(err)
	}
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
	before := userDocs(t, pool)

	if err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	lz4 := false
	if err := pool.QueryRow(ctx, `SELECT 'lz4' = ANY (enumvals) FROM pg_settings WHERE name = 'default_toast_compression'`).Scan(&lz4); err != nil {
		t.Fatal(err)
	}
	wantCompression := ""
	if lz4 {
		wantCompression = "l"
	}
	wantCols := []string{
		fmt.Sprintf("history text %q '[]'::text", wantCompression),
		fmt.Sprintf("impressions text %q '{}'::text", wantCompression),
		fmt.Sprintf("watched text %q '{}'::text", wantCompression),
	}
	if got := userDocColumns(t, pool); !slices.Equal(got, wantCols) {
		t.Errorf("columns after 0015:\n%q\nwant\n%q", got, wantCols)
	}
	if got := userDocs(t, pool); !slices.Equal(got, before) {
		t.Errorf("documents after 0015:\n%q\nwant\n%q", got, before)
	}
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
	wantCols = []string{
		fmt.Sprintf("history json %q '[]'::json", wantCompression),
		fmt.Sprintf("impressions json %q '{}'::json", wantCompression),
		fmt.Sprintf("watched json %q '{}'::json", wantCompression),
	}
	if got := userDocColumns(t, pool); !slices.Equal(got, wantCols) {
		t.Errorf("columns after the down migration:\n%q\nwant\n%q", got, wantCols)
	}
	if got := userDocs(t, pool); !slices.Equal(got, withNew) {
		t.Errorf("documents after the down migration:\n%q\nwant\n%q", got, withNew)
	}
}

// userDocColumns describes the document columns: name, type, compression, default.
func userDocColumns(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	r, err := pool.Query(context.Background(), `SELECT format('%s %s %s %s', a.attname, format_type(a.atttypid, a.atttypmod),
			'"' || a.attcompression::text || '"', pg_get_expr(d.adbin, d.adrelid))
		FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
		WHERE a.attrelid = 'feature_users'::regclass AND a.attname IN ('history', 'watched', 'impressions') ORDER BY a.attname`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(r, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// userDocs renders every user's documents as stored (text, no normalisation).
func userDocs(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	r, err := pool.Query(context.Background(), `SELECT concat_ws(' ', user_id, history::text, watched::text, impressions::text, version)
		FROM feature_users ORDER BY user_id`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(r, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}
