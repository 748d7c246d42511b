package migrations_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	gomigrate "github.com/golang-migrate/migrate/v4"
	pgxmigrate "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"recsys/migrations"
	"recsys/pkg/migrate"
	"recsys/pkg/testutil"
)

// TestEveryDownMigrationRestoresThePreviousSchema: docs/rollback.md has operators run a down
// migration to return to the previous release's schema, which that release's binary (and the
// next up) must find as a fresh install leaves it. For every version N: up to N one step at a
// time (the fresh schema of each version), then from the latest down one step at a time,
// comparing with the fresh schema of N-1, and up again to N, comparing with N's.
func TestEveryDownMigrationRestoresThePreviousSchema(t *testing.T) {
	dsn := testutil.NewDatabase(t)
	ctx := context.Background()
	pool := testutil.Pool(t, dsn)
	m := stepper(t, dsn)
	latest := int(migrate.Latest())
	fresh := make([]string, latest+1)
	fresh[0] = schemaOf(t, pool)
	for v := 1; v <= latest; v++ {
		if err := m.Steps(1); err != nil {
			t.Fatalf("up to %d: %v", v, err)
		}
		fresh[v] = schemaOf(t, pool)
	}
	for v := latest; v >= 1; v-- {
		if err := m.Steps(-1); err != nil {
			t.Fatalf("down from %d: %v", v, err)
		}
		if got := schemaOf(t, pool); got != fresh[v-1] {
			t.Errorf("down from %d leaves a schema unlike a fresh %d:\n%s", v, v-1, diffLines(fresh[v-1], got))
		}
		if err := m.Steps(1); err != nil {
			t.Fatalf("up again to %d: %v", v, err)
		}
		if got := schemaOf(t, pool); got != fresh[v] {
			t.Errorf("up again to %d leaves a schema unlike a fresh %d:\n%s", v, v, diffLines(fresh[v], got))
		}
		if err := m.Steps(-1); err != nil {
			t.Fatalf("down again from %d: %v", v, err)
		}
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_class WHERE relnamespace = current_schema()::regnamespace
		AND relname NOT IN ('schema_migrations', 'schema_migrations_pkey')`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("down to 0 left %d relations (err %v)", n, err)
	}
}

// stepper is golang-migrate itself on the embedded files: pkg/migrate has no single steps up.
func stepper(t *testing.T, dsn string) *gomigrate.Migrate {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	src, err := iofs.New(migrations.FS, ".")
	if err != nil {
		t.Fatal(err)
	}
	drv, err := pgxmigrate.WithInstance(stdlib.OpenDB(*cfg), &pgxmigrate.Config{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := gomigrate.NewWithInstance("iofs", src, "pgx5", drv)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// schemaOf describes what pg_dump --schema-only would show of the current schema, from the
// catalogs (no client binary of the server's version needed): relations and their storage
// options, columns (type, collation, nullability, default, compression, statistics target,
// identity) in their order, constraints, indexes, views, functions, triggers and sequences.
func schemaOf(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	queries := []string{
		`SELECT 'relation ' || c.relname || ' ' || c.relkind::text || ' ' || COALESCE(array_to_string(c.reloptions, ','), '')
		 FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace ORDER BY 1`,
		`SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
		        || ' collate=' || COALESCE(co.collname, '') || ' notnull=' || a.attnotnull
		        || ' default=' || COALESCE(pg_get_expr(d.adbin, d.adrelid), '')
		        || ' compression=' || a.attcompression::text || ' statistics=' || COALESCE(a.attstattarget, -1)
		        || ' identity=' || a.attidentity::text || ' storage=' || a.attstorage::text
		 FROM pg_attribute a
		 JOIN pg_class c ON c.oid = a.attrelid
		 JOIN pg_type ty ON ty.oid = a.atttypid
		 LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
		 LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> ty.typcollation
		 WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'v', 'p', 'm')
		   AND a.attnum > 0 AND NOT a.attisdropped
		 ORDER BY c.relname, a.attnum`,
		`SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
		 FROM pg_constraint WHERE connamespace = current_schema()::regnamespace ORDER BY 1`,
		`SELECT 'index ' || pg_get_indexdef(indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
		 WHERE c.relnamespace = current_schema()::regnamespace ORDER BY 1`,
		`SELECT 'view ' || c.relname || ' ' || pg_get_viewdef(c.oid) FROM pg_class c
		 WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('v', 'm') ORDER BY 1`,
		`SELECT 'function ' || pg_get_functiondef(p.oid) FROM pg_proc p
		 WHERE p.pronamespace = current_schema()::regnamespace ORDER BY 1`,
		`SELECT 'trigger ' || pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
		 WHERE c.relnamespace = current_schema()::regnamespace AND NOT t.tgisinternal ORDER BY 1`,
		`SELECT 'sequence ' || c.relname || ' ' || format_type(s.seqtypid, NULL) || ' ' || s.seqstart || ' ' || s.seqincrement
		        || ' ' || s.seqmin || ' ' || s.seqmax || ' ' || s.seqcache || ' ' || s.seqcycle
		 FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
		 WHERE c.relnamespace = current_schema()::regnamespace ORDER BY 1`,
	}
	var b strings.Builder
	for _, q := range queries {
		for _, line := range queryStrings(t, pool, q) {
			b.WriteString(line)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// diffLines lists the lines only one of two descriptions has.
func diffLines(want, got string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	w, g := in(want), in(got)
	var b strings.Builder
	for _, l := range strings.Split(want, "\n") {
		if !g[l] {
			fmt.Fprintf(&b, "  - %s\n", l)
		}
	}
	for _, l := range strings.Split(got, "\n") {
		if !w[l] {
			fmt.Fprintf(&b, "  + %s\n", l)
		}
	}
	if b.Len() == 0 {
		return "  (same lines, in another order)"
	}
	return b.String()
}
