package migrations_test

import (
	"context"
	"testing"

	"recsys/pkg/testutil"
)

// TestOverlayCompressionMigration: 0017 gives the impression overlay lz4 like the other user
// documents (when the server has it), keeps the overlays stored, and the down migration gives
// the column back the server's default.
func TestOverlayCompressionMigration(t *testing.T) {
	m, dsn, since := before(t, 17)
	ctx := context.Background()
	pool := testutil.Pool(t, dsn)
	if _, err := pool.Exec(ctx, `INSERT INTO feature_users (user_id, impressions_recent) VALUES ('u', 'deadbeef3:["a",1,2]')`); err != nil {
		t.Fatal(err)
	}
	expect := func(stage, compression string) {
		t.Helper()
		var got, overlay string
		if err := pool.QueryRow(ctx, `SELECT a.attcompression::text, (SELECT impressions_recent FROM feature_users WHERE user_id = 'u')
			FROM pg_attribute a WHERE a.attrelid = 'feature_users'::regclass AND a.attname = 'impressions_recent'`).Scan(&got, &overlay); err != nil {
			t.Fatal(err)
		}
		if got != compression || overlay != `deadbeef3:["a",1,2]` {
			t.Errorf("%s: compression %q overlay %q, want %q and the overlay stored", stage, got, overlay, compression)
		}
	}
	expect("before 0017", "")
	if err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if serverHasLZ4(t, pool) {
		expect("after 0017", "l")
	} else {
		expect("after 0017 (no lz4 in this server)", "")
	}
	if err := m.Down(ctx, since); err != nil {
		t.Fatal(err)
	}
	expect("after the down migration", "")
}
