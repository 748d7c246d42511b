package featurestore_test

import (
	"context"
	"testing"
	"time"

	"recsys/pkg/featurestore"
	"recsys/pkg/testutil"
)

// Repopulating thousands of users with large documents (500 watched items each) used to send
// them in round trips of megabytes and hit the 1 s Redis timeout; it must complete and copy
// every user.
func TestRepopulateLargeUsers(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	prefix := testutil.Unique("rp") + ":"
	t.Cleanup(func() { deleteKeys(t, rd, prefix) })
	const users = 5000
	now := time.Now().UnixMilli()
	if _, err := pool.Exec(ctx, `INSERT INTO feature_meta (lm_short_ms, lm_long_ms, lm_covis_ms, hl_short_ms, hl_long_ms, hl_covis_ms)
VALUES ($1, $1, $1, 1e7, 1e8, 1e9)`, now); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO feature_users (user_id, watched, version)
SELECT 'u' || lpad(u::text, 5, '0'),
       (SELECT json_object_agg('item-' || lpad(i::text, 6, '0'), $1::bigint + i) FROM generate_series(1, 500) i),
       u
FROM generate_series(1, $2) u`, now, users); err != nil {
		t.Fatal(err)
	}
	st := featurestore.New(pool, rd, prefix, testConfig(), nil)
	if err := st.Repopulate(ctx, false); err != nil {
		t.Fatalf("repopulate: %v", err)
	}
	ready, err := st.RedisReady(ctx)
	if err != nil || !ready {
		t.Fatalf("ready after repopulation: %v, %v", ready, err)
	}
	var want string
	if err := pool.QueryRow(ctx, `SELECT watched FROM feature_users WHERE user_id = 'u04321'`).Scan(&want); err != nil {
		t.Fatal(err)
	}
	got, err := rd.Do(ctx, rd.B().Hget().Key(prefix+"u:u04321").Field("w").Build()).ToString()
	if err != nil || got != want {
		t.Fatalf("user u04321 watched in redis: %d bytes (%v), want %d bytes", len(got), err, len(want))
	}
	n := 0
	var cursor uint64
	for {
		e, err := rd.Do(ctx, rd.B().Scan().Cursor(cursor).Match(prefix+"u:*").Count(1000).Build()).AsScanEntry()
		if err != nil {
			t.Fatal(err)
		}
		n += len(e.Elements)
		if cursor = e.Cursor; cursor == 0 {
			break
		}
	}
	if n != users {
		t.Fatalf("%d user hashes in redis, want %d", n, users)
	}
}
