package postgres_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"recsys/pkg/postgres"
	"recsys/pkg/testutil"
)

// A pooled session that found the server read-only (25006: the demoted primary of a
// failover, reached before or after DNS flipped) can never write again: the pool must drop it,
// or every writer on it fails until the pool's connection lifetime (an hour) ends it, long
// after the new primary took over.
func TestPoolDropsSessionsOfAReadOnlyServer(t *testing.T) {
	dsn := testutil.NewDatabase(t)
	ctx := context.Background()
	c := postgres.DefaultConfig()
	c.DSN, c.MaxConns, c.MinConns = dsn, 1, 0
	pool, err := postgres.Open(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, "CREATE TABLE w (x int)"); err != nil {
		t.Fatal(err)
	}
	pool.Reset() // the next session opens with the database read-only
	testutil.SetReadOnly(t, dsn, true)
	_, err = pool.Exec(ctx, "INSERT INTO w VALUES (1)")
	if pe := (*pgconn.PgError)(nil); !errors.As(err, &pe) || pe.Code != "25006" {
		t.Fatalf("insert on a read-only session: %v, want 25006", err)
	}
	testutil.SetReadOnly(t, dsn, false) // failed over: new sessions reach a writable primary
	if _, err := pool.Exec(ctx, "INSERT INTO w VALUES (2)"); err != nil {
		t.Fatalf("insert after the failover: %v (the pool kept the read-only session)", err)
	}
}
