package cmd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"recsys/pkg/migrate"
	"recsys/pkg/testutil"
)

// On a schema whose newer migration recorded that this binary must not run on it (a rollback
// of the image alone across a breaking migration), the operator tools refuse before they read
// or write anything, naming the versions and the way out, while `migrate` still answers.
func TestToolsRefusedByTheSchema(t *testing.T) {
	dsn := testutil.MigratedDatabase(t)
	pool := testutil.Pool(t, dsn)
	ctx := context.Background()
	next := int64(migrate.Latest() + 1)
	for _, q := range []string{"UPDATE schema_migrations SET version = $1",
		"INSERT INTO schema_breaking_migrations (version, min_binary, reason) VALUES ($1, $1, 'test: drops what older binaries write')"} {
		if _, err := pool.Exec(ctx, q, next); err != nil {
			t.Fatal(err)
		}
	}
	run := func(args ...string) (string, error) {
		root := NewRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(io.Discard)
		root.SetArgs(args)
		err := root.ExecuteContext(ctx)
		return out.String(), err
	}
	for _, args := range [][]string{
		{"items", "block", "--pg.dsn", dsn, "item-a"},
		{"items", "blocked", "--pg.dsn", dsn},
		{"relay", "replay", "--status", "dead", "--dry-run", "--pg.dsn", dsn},
	} {
		_, err := run(args...)
		var old *migrate.TooOldError
		if !errors.As(err, &old) || !strings.Contains(err.Error(), fmt.Sprintf("--to-version %d", migrate.Latest())) {
			t.Errorf("%s = %v, want the schema's refusal", strings.Join(args[:2], " "), err)
		}
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM blocked_items").Scan(&n); err != nil || n != 0 {
		t.Fatalf("a refused items block wrote %d rows (%v)", n, err)
	}
	if out, err := run("migrate", "version", "--pg.dsn", dsn); err != nil || !strings.Contains(out, fmt.Sprintf("version %d dirty=false", next)) {
		t.Fatalf("migrate version = %q, %v", out, err)
	}
}
