package migrations_test

import (
	"context"
	"testing"

	"recsys/pkg/migrate"
	"recsys/pkg/testutil"
)

// before migrates a new database all the way up and back down to the schema just before
// version, where a migration's test starts. It returns the migrator (closed with the test),
// the database and the number of migrations from version on (what Down takes to return here).
func before(t *testing.T, version uint) (m *migrate.Migrator, dsn string, since int) {
	t.Helper()
	dsn = testutil.NewDatabase(t)
	m, err := migrate.Open(dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	files, _, err := migrate.Local()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if f.Version >= version {
			since++
		}
	}
	ctx := context.Background()
	if err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Down(ctx, since); err != nil {
		t.Fatal(err)
	}
	return m, dsn, since
}
