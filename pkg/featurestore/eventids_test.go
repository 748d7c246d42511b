package featurestore_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"recsys/pkg/features"
	"recsys/pkg/featurestore"
	"recsys/pkg/testutil"
)

// TestApplyEventIDsPerUser: the exactly-once record is keyed by (event_id, user_id). Clients
// that number events per user send the ids of other users' events (api-contract §16.10): each
// user's event is applied, while the same user's repeat (within the batch, or redelivered
// later) is a duplicate.
func TestApplyEventIDsPerUser(t *testing.T) {
	ctx := context.Background()
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	st := featurestore.New(pool, nil, testutil.Unique("pu")+":", testConfig(), nil)
	ts := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	watch := func(id, user, item string, at int64) featurestore.Event {
		return featurestore.Event{Interaction: features.Interaction{Kind: features.KindWatch, EventID: id, UserID: user, TsMs: at,
			ItemID: item, WatchTimeSec: 30}, ServerReceivedTsMs: at}
	}
	for _, step := range []struct {
		name string
		evs  []featurestore.Event
		want []bool
	}{
		{"two users, one id, and a repeat within the batch",
			[]featurestore.Event{watch("evt-00000001", "u1", "a", ts), watch("evt-00000001", "u2", "b", ts+1), watch("evt-00000001", "u1", "a", ts+2)},
			[]bool{true, true, false}},
		{"redelivered", []featurestore.Event{watch("evt-00000001", "u2", "b", ts+1), watch("evt-00000001", "u1", "a", ts)}, []bool{false, false}},
		{"a third user", []featurestore.Event{watch("evt-00000001", "u3", "c", ts+3)}, []bool{true}},
	} {
		a, err := st.Apply(ctx, &featurestore.Batch{Events: step.evs})
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if !slices.Equal(a.New, step.want) {
			t.Errorf("%s: new = %v, want %v", step.name, a.New, step.want)
		}
	}
	// Every user's watch changed that user's features and its item's counters, once.
	if got, want := strs(t, pool, `SELECT user_id || ' ' || (watched::text LIKE '%"' || CASE user_id WHEN 'u1' THEN 'a' WHEN 'u2' THEN 'b' ELSE 'c' END || '"%')::text
		FROM feature_users ORDER BY 1`), []string{"u1 true", "u2 true", "u3 true"}; !slices.Equal(got, want) {
		t.Errorf("users' watched sets: %q, want %q", got, want)
	}
	if got, want := strs(t, pool, `SELECT item_id || '=' || watches FROM feature_items ORDER BY 1`), []string{"a=1", "b=1", "c=1"}; !slices.Equal(got, want) {
		t.Errorf("item watch counts: %q, want %q", got, want)
	}
	if got, want := strs(t, pool, `SELECT event_id || '/' || user_id FROM feature_applied ORDER BY 1`),
		[]string{"evt-00000001/u1", "evt-00000001/u2", "evt-00000001/u3"}; !slices.Equal(got, want) {
		t.Errorf("applied: %q, want %q", got, want)
	}
}

// TestRebuildFromEventsKeepsUsersApart: `features rebuild --from-events` reads impressions
// one row per shown item and groups them back into events; two users' impressions of one
// event_id are two events, as the stream applied them.
func TestRebuildFromEventsKeepsUsersApart(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	st := featurestore.New(pool, rd, "ru:", testConfig(), nil)
	for _, u := range []struct{ user, item string }{{"u1", "a"}, {"u2", "b"}} {
		if _, err := pool.Exec(ctx, `INSERT INTO impression_events (event_id, user_id, session_id, request_id, ts_ms, ts, server_received_ts_ms, positions, item_ids)
			VALUES ('evt-00000001', $1, 's', 'r', $2::bigint, to_timestamp($2::bigint / 1000.0), $2::bigint, '{0}', ARRAY[$3])`, u.user, rawTs, u.item); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.RebuildFromEvents(ctx, 10, nil); err != nil {
		t.Fatal(err)
	}
	if got, want := strs(t, pool, `SELECT event_id || '/' || user_id FROM feature_applied ORDER BY 1`), []string{"evt-00000001/u1", "evt-00000001/u2"}; !slices.Equal(got, want) {
		t.Errorf("applied: %q, want %q", got, want)
	}
	// Each user was shown its own item only.
	if got, want := strs(t, pool, `SELECT user_id || ' ' || (impressions LIKE '%"a"%')::text || ' ' || (impressions LIKE '%"b"%')::text
		FROM feature_users ORDER BY 1`), []string{"u1 true false", "u2 false true"}; !slices.Equal(got, want) {
		t.Errorf("users' impression counters (shown a, shown b): %q, want %q", got, want)
	}
}

func strs(t *testing.T, pool interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}, sql string) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), sql)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}

// TestApplySkipsEventsRecordedWithoutUser: a feature_applied row with an empty user_id is an
// event applied under global ids: written by the previous release's consumer, which keeps
// running after migration 0022 until the rollout replaces it (its inserts name event_id alone
// and take the column's default, the empty user), or backfilled by 0022 without a user. A redelivery of
// that event to this release's consumer (the rebalance of the rollout itself hands it the
// partitions whose offsets the old pod had not committed) must be a duplicate, not applied a
// second time.
func TestApplySkipsEventsRecordedWithoutUser(t *testing.T) {
	ctx := context.Background()
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	st := featurestore.New(pool, nil, testutil.Unique("nu")+":", testConfig(), nil)
	ts := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	watch := func(id, user string) featurestore.Event {
		return featurestore.Event{Interaction: features.Interaction{Kind: features.KindWatch, EventID: id, UserID: user, TsMs: ts,
			ItemID: "a", WatchTimeSec: 30}, ServerReceivedTsMs: ts}
	}
	// The previous release's consumer applied evt-00000001 (its dedup insert, verbatim).
	if _, err := pool.Exec(ctx, `INSERT INTO feature_applied (event_id) SELECT id FROM unnest($1::text[]) AS id
WHERE NOT EXISTS (SELECT 1 FROM feature_applied a WHERE a.event_id = id) RETURNING event_id`, []string{"evt-00000001"}); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		name string
		evs  []featurestore.Event
		want []bool
	}{
		{"redelivered after the rollout", []featurestore.Event{watch("evt-00000001", "u1"), watch("evt-00000002", "u1")}, []bool{false, true}},
		{"redelivered again", []featurestore.Event{watch("evt-00000001", "u1"), watch("evt-00000002", "u1")}, []bool{false, false}},
	} {
		a, err := st.Apply(ctx, &featurestore.Batch{Events: step.evs})
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if !slices.Equal(a.New, step.want) {
			t.Errorf("%s: new = %v, want %v", step.name, a.New, step.want)
		}
	}
	if got, want := strs(t, pool, `SELECT item_id || '=' || watches FROM feature_items ORDER BY 1`), []string{"a=1"}; !slices.Equal(got, want) {
		t.Errorf("item watch counts: %q, want %q (evt-00000002 only)", got, want)
	}
}
