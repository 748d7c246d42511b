package migrate_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"recsys/pkg/migrate"
	"recsys/pkg/testutil"
)

// A binary older than a migration that broke it (recorded in schema_breaking_migrations) is
// refused on a schema ahead of it, with the versions and the way out; at or above the
// recorded minimum it runs. Today's schema records 0022 (event ids per user) as the floor: a
// binary embedding up to 0021 cannot write on it.
func TestBinaryBelowTheRecordedMinimumIsRefused(t *testing.T) {
	dsn := testutil.MigratedDatabase(t)
	pool := testutil.Pool(t, dsn)
	ctx := context.Background()
	latest := migrate.Latest()
	tests := []struct {
		name   string
		binary uint
		want   *migrate.TooOldError // nil: runs
	}{
		{"below every breaking migration", 8, &migrate.TooOldError{Binary: 8, Schema: latest, MinBinary: 22, By: 22, DownTo: 8}},
		{"one below the floor", 21, &migrate.TooOldError{Binary: 21, Schema: latest, MinBinary: 22, By: 22, DownTo: 21}},
		{"at the floor", 22, nil},
		{"above the floor, below the schema", latest - 1, nil},
		{"the schema's own", latest, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := migrate.CheckBinary(ctx, pool, tc.binary)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("CheckBinary(%d) = %v, want it to run", tc.binary, err)
				}
				return
			}
			var got *migrate.TooOldError
			if !errors.As(err, &got) {
				t.Fatalf("CheckBinary(%d) = %v, want a *TooOldError", tc.binary, err)
			}
			tc.want.Reason = got.Reason
			if *got != *tc.want || !strings.Contains(got.Reason, "event ids are keyed per user") {
				t.Fatalf("CheckBinary(%d) = %+v, want %+v (reason of 0022)", tc.binary, *got, *tc.want)
			}
			msg := err.Error()
			for _, want := range []string{"embeds migrations up to 00", "older than 0022", "migration 0022 recorded it",
				"embeds migration 0022 or later", fmt.Sprintf("`recsys migrate down --to-version %d`", tc.want.DownTo)} {
				if !strings.Contains(msg, want) {
					t.Errorf("message %q lacks %q", msg, want)
				}
			}
		})
	}
}

// The next release's breaking migration, as it will be written (docs/rollback.md): this
// binary refuses its schema, readiness included, and runs again once its down file removed
// the record.
func TestNextReleasesBreakingMigrationRefusesThisBinary(t *testing.T) {
	dsn := testutil.MigratedDatabase(t)
	pool := testutil.Pool(t, dsn)
	ctx := context.Background()
	next := int64(migrate.Latest() + 1)
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := pool.Exec(ctx, sql, args...); err != nil {
			t.Fatal(err)
		}
	}
	exec("UPDATE schema_migrations SET version = $1", next)
	exec("INSERT INTO schema_breaking_migrations (version, min_binary, reason) VALUES ($1, $1, 'drops a column older binaries write')", next)
	err := migrate.CheckSchema(ctx, pool)
	var old *migrate.TooOldError
	if !errors.As(err, &old) || old.MinBinary != uint(next) || old.DownTo != migrate.Latest() || old.Binary != migrate.Latest() {
		t.Fatalf("CheckSchema = %v, want this binary refused down to %d", err, migrate.Latest())
	}
	if err := migrate.CheckBinary(ctx, pool, uint(next)); err != nil {
		t.Fatalf("the next release's binary is refused: %v", err)
	}
	// This image's migration Job of a rollback has nothing to apply and says what follows.
	m, err := migrate.Open(dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var logs bytes.Buffer
	m.Log = slog.New(slog.NewTextHandler(&logs, nil))
	if err := m.Up(ctx); err != nil || !strings.Contains(logs.String(), "the schema refuses this binary") {
		t.Fatalf("up = %v, log %q; want success and a warning", err, logs.String())
	}
	// Its down file.
	exec("DELETE FROM schema_breaking_migrations WHERE version = $1", next)
	exec("UPDATE schema_migrations SET version = $1", next-1)
	if err := migrate.CheckSchema(ctx, pool); err != nil {
		t.Fatalf("CheckSchema after the down migration = %v", err)
	}
}

// `migrate down` to the version the refusal names lets the refused binary run, and the
// record comes back with the migrations: 0025's down drops it (below 0025 nothing is
// recorded, as before it), its up restores it.
func TestMigrateDownPastTheBreakingMigrationLowersTheMinimum(t *testing.T) {
	dsn := testutil.MigratedDatabase(t)
	pool := testutil.Pool(t, dsn)
	ctx := context.Background()
	var old *migrate.TooOldError
	if err := migrate.CheckBinary(ctx, pool, 21); !errors.As(err, &old) {
		t.Fatalf("a binary of 0021 on the latest schema: %v, want refused", err)
	}
	m, err := migrate.Open(dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.DownTo(ctx, old.DownTo); err != nil {
		t.Fatalf("down --to-version %d: %v", old.DownTo, err)
	}
	if err := migrate.CheckBinary(ctx, pool, 21); err != nil {
		t.Fatalf("a binary of 0021 after down --to-version %d: %v", old.DownTo, err)
	}
	if err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if err := migrate.CheckBinary(ctx, pool, 21); !errors.As(err, &old) || old.MinBinary != 22 {
		t.Fatalf("a binary of 0021 after up again: %v, want refused by 0022", err)
	}
}
