package featurestore_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"recsys/pkg/events"
	"recsys/pkg/features"
	"recsys/pkg/featurestore"
	"recsys/pkg/testutil"
)

// Whatever bytes a poison message's headers or error hold, its DLQ entry is stored (text and
// jsonb refuse NUL and invalid UTF-8: they are replaced), and its key and payload exactly.
func TestDLQEntryWithAnyBytesIsStored(t *testing.T) {
	ctx := context.Background()
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	st := featurestore.New(pool, nil, testutil.Unique("dlq")+":", testConfig(), nil)
	for i, tc := range []struct {
		name        string
		headers     map[string]string
		err         string
		wantHeaders string
		wantErr     string
	}{
		{"nul in a header value", map[string]string{"event_type": "watch", "trace": "\x00\x01"},
			"bad", `{"trace": "\ufffd\u0001", "event_type": "watch"}`, "bad"},
		{"nul in a header key", map[string]string{"a\x00b": "v"}, "bad", `{"a\ufffdb": "v"}`, "bad"},
		{"invalid utf-8", map[string]string{"bin": "\xff\xfe"}, "bad \xff", `{"bin": "\ufffd"}`, "bad \ufffd"},
		{"nul in the error", nil, "decode: \x00 at 3", `{}`, "decode: \ufffd at 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			payload, key := []byte("raw \x00\xff payload"), []byte("k\x00\xff")
			e := featurestore.DLQEntry{Topic: "t", Partition: 0, Offset: int64(i), Key: key, Headers: tc.headers, Payload: payload, Error: tc.err}
			if _, err := st.Apply(ctx, &featurestore.Batch{DLQ: []featurestore.DLQEntry{e}}); err != nil {
				t.Fatalf("store dlq entry: %v", err)
			}
			var gotKey, gotPayload []byte
			var gotHeaders, gotErr string
			if err := pool.QueryRow(ctx, `SELECT msg_key, payload, headers::text, error FROM feature_dlq WHERE kafka_offset = $1`, i).
				Scan(&gotKey, &gotPayload, &gotHeaders, &gotErr); err != nil {
				t.Fatal(err)
			}
			var want string
			_ = pool.QueryRow(ctx, `SELECT $1::jsonb::text`, tc.wantHeaders).Scan(&want)
			if !bytes.Equal(gotKey, key) || !bytes.Equal(gotPayload, payload) || gotHeaders != want || gotErr != tc.wantErr {
				t.Errorf("stored key %q payload %q headers %s error %q; want %q %q %s %q", gotKey, gotPayload, gotHeaders, gotErr,
					key, payload, want, tc.wantErr)
			}
		})
	}
}

// An entry that decodes but whose update PostgreSQL refuses (here a watch count at the
// bigint limit) stays pending with the error, holds back no other entry of its batch, and,
// however many of them lead the queue, the next page (After) reaches the entries behind.
func TestReplayDLQGoesPastRefusedEntries(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	prefix := testutil.Unique("rq") + ":"
	st := featurestore.New(pool, rd, prefix, testConfig(), nil)
	ts := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	pct := 50.0
	watch := func(id, user, item string) *events.Watch {
		return &events.Watch{Common: events.Common{EventID: id, UserID: user, SessionID: "s", RequestID: "r", TsMs: ts},
			EventType: "watch", ItemID: item, WatchTimeSec: 30, PercentWatched: &pct}
	}
	if _, err := st.Apply(ctx, &featurestore.Batch{Events: []featurestore.Event{{Interaction: features.Interaction{
		Kind: features.KindWatch, EventID: "event-seed", UserID: "u0", TsMs: ts, ItemID: "full"}}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE feature_items SET watches = 9223372036854775807 WHERE item_id = 'full'`); err != nil {
		t.Fatal(err)
	}
	dead := []*events.Watch{watch("event-full-1", "u1", "full"), watch("event-full-2", "u2", "full"),
		watch("event-full-3", "u3", "full"), watch("event-good-4", "u4", "good")}
	for i, w := range dead {
		p, _ := events.Encode(w)
		if _, err := pool.Exec(ctx, `INSERT INTO feature_dlq (topic, kafka_partition, kafka_offset, headers, payload, error)
VALUES ('t', 0, $1, '{"event_type":"watch"}', $2, 'earlier error')`, i, p); err != nil {
			t.Fatal(err)
		}
	}
	type want struct{ examined, applied, refused int }
	after := int64(0)
	for _, step := range []struct {
		name  string
		limit int
		page  bool // continue after the previous page
		want  want
	}{
		{"head of refused entries", 2, false, want{2, 0, 2}},
		{"next page: one refused, one applied", 2, true, want{2, 1, 1}},
		{"from the start: the refused ones stay pending", 100, false, want{3, 0, 3}},
	} {
		o := featurestore.ReplayOptions{Limit: step.limit}
		if step.page {
			o.After = after
		}
		rep, err := st.ReplayDLQ(ctx, o)
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		after = rep.LastID
		if got := (want{rep.Examined, rep.Applied, rep.Refused}); got != step.want {
			t.Fatalf("%s: %+v, want %+v", step.name, rep, step.want)
		}
	}
	rows, _ := pool.Query(ctx, `SELECT kafka_offset, status, error, replay_attempts FROM feature_dlq ORDER BY id`)
	var got []string
	for rows.Next() {
		var off int64
		var status, msg string
		var attempts int
		if err := rows.Scan(&off, &status, &msg, &attempts); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%d %s %d %v", off, status, attempts, strings.Contains(msg, "out of range")))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	wantRows := []string{"0 pending 2 true", "1 pending 2 true", "2 pending 2 true", "3 replayed 1 false"}
	if fmt.Sprint(got) != fmt.Sprint(wantRows) {
		t.Errorf("dlq rows %q, want %q", got, wantRows)
	}
	var watches int64
	if err := pool.QueryRow(ctx, `SELECT watches FROM feature_items WHERE item_id = 'good'`).Scan(&watches); err != nil || watches != 1 {
		t.Errorf("good item watches %d (%v), want 1", watches, err)
	}
}

// A redelivered poison message adds no DLQ entry; a different message at the same
// coordinates (the topic was deleted and recreated, offsets start again at 0) is stored, and
// the earlier entry is kept under a topic naming it.
func TestDLQEntryOfARecreatedTopicIsKept(t *testing.T) {
	ctx := context.Background()
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	st := featurestore.New(pool, nil, testutil.Unique("dlq")+":", testConfig(), nil)
	// The consumer counts as stored only what Applied does not report redelivered.
	store := func(payload string, wantRedelivered int) {
		t.Helper()
		e := featurestore.DLQEntry{Topic: "watches", Partition: 2, Offset: 5, Payload: []byte(payload), Error: "bad"}
		a, err := st.Apply(ctx, &featurestore.Batch{DLQ: []featurestore.DLQEntry{e}})
		if err != nil {
			t.Fatalf("store dlq entry: %v", err)
		}
		if a.DLQRedelivered != wantRedelivered || len(a.DLQErased) != 0 {
			t.Errorf("store %s: %d redelivered, %v erased; want %d, none", payload, a.DLQRedelivered, a.DLQErased, wantRedelivered)
		}
	}
	store("first", 0)
	store("first", 1) // redelivered
	store("second", 0)
	store("second", 1)
	// Twice in one batch: stored once.
	twice := featurestore.DLQEntry{Topic: "watches", Partition: 2, Offset: 6, Payload: []byte("third"), Error: "bad"}
	if a, err := st.Apply(ctx, &featurestore.Batch{DLQ: []featurestore.DLQEntry{twice, twice}}); err != nil || a.DLQRedelivered != 1 {
		t.Fatalf("store an entry twice in one batch: %v; want 1 redelivered", err)
	}
	if _, err := pool.Exec(ctx, `DELETE FROM feature_dlq WHERE kafka_offset = 6`); err != nil {
		t.Fatal(err)
	}
	rows, _ := pool.Query(ctx, `SELECT id, topic, kafka_partition, kafka_offset, payload FROM feature_dlq ORDER BY id`)
	var got []string
	for rows.Next() {
		var id, off int64
		var topic string
		var part int
		var payload []byte
		if err := rows.Scan(&id, &topic, &part, &off, &payload); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s/%d/%d %s", topic, part, off, payload))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := []string{"watches (recreated since; entry 1)/2/5 first", "watches/2/5 second"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("dlq entries %q, want %q", got, want)
	}
}

// A replay stopped by a transient error reports the entries it did not try as pending, not
// with an empty outcome: they are still to do.
func TestReplayDLQStoppedByATransientErrorReportsPending(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	st := featurestore.New(pool, rd, testutil.Unique("rt")+":", testConfig(), nil)
	pct := 50.0
	for i, item := range []string{"boom", "fine"} {
		p, _ := events.Encode(&events.Watch{Common: events.Common{EventID: fmt.Sprintf("event-transient-%d", i), UserID: fmt.Sprintf("u%d", i),
			SessionID: "s", RequestID: "r", TsMs: time.Now().Add(-time.Hour).UnixMilli()}, EventType: "watch", ItemID: item, WatchTimeSec: 30, PercentWatched: &pct})
		if _, err := pool.Exec(ctx, `INSERT INTO feature_dlq (topic, kafka_partition, kafka_offset, headers, payload, error)
VALUES ('t', 0, $1, '{"event_type":"watch"}', $2, 'earlier error')`, i, p); err != nil {
			t.Fatal(err)
		}
	}
	for _, q := range []string{
		`CREATE FUNCTION fail_boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
IF NEW.item_id = 'boom' THEN RAISE EXCEPTION 'test: serialization failure' USING ERRCODE = '40001'; END IF; RETURN NEW; END $$`,
		`CREATE TRIGGER fail_boom BEFORE INSERT OR UPDATE ON feature_items FOR EACH ROW EXECUTE FUNCTION fail_boom()`,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := st.ReplayDLQ(ctx, featurestore.ReplayOptions{})
	if err == nil {
		t.Fatalf("replay through a serialization failure succeeded: %+v", rep)
	}
	if rep.Examined != 2 || len(rep.Entries) != 2 {
		t.Fatalf("report %+v: want both entries examined", rep)
	}
	for _, e := range rep.Entries {
		if e.Outcome != "pending" {
			t.Errorf("entry %d: outcome %q, want pending (not tried)", e.ID, e.Outcome)
		}
	}
}

// TestPurgeAppliedKeepsBRINRangesNarrow: the space the purge frees is reused by new dedup
// records; the BRIN summaries on applied_at must not keep the deleted rows' times, or after one
// retention period every purge (every 30 s per consumer) would read the whole table to find
// that nothing more is old enough.
func TestPurgeAppliedKeepsBRINRangesNarrow(t *testing.T) {
	for _, tc := range []struct {
		name string
		// busy: an autovacuum holds the table while the purge deletes, so its desummarizing
		// is skipped; it must be done by a later purge, or those ranges stay wide for good.
		busy bool
	}{{"table free", false}, {"vacuum holds the table during the purge", true}} {
		t.Run(tc.name, func(t *testing.T) { testPurgeAppliedKeepsBRINRangesNarrow(t, tc.busy) })
	}
}

func testPurgeAppliedKeepsBRINRangesNarrow(t *testing.T, busy bool) {
	ctx := context.Background()
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	st := featurestore.New(pool, nil, testutil.Unique("purge")+":", testConfig(), nil)
	const rows = 60000 // a few hundred heap pages: several block ranges of 128 pages
	insert := func(prefix, age string) {
		t.Helper()
		if _, err := pool.Exec(ctx, `INSERT INTO feature_applied (event_id, user_id, applied_at)
			SELECT $1 || g, 'u' || g % 50, now() - $2::interval FROM generate_series(1, $3::int) g`, prefix, age, rows); err != nil {
			t.Fatal(err)
		}
	}
	vacuum := func() {
		t.Helper()
		if _, err := pool.Exec(ctx, "VACUUM feature_applied"); err != nil {
			t.Fatal(err)
		}
	}
	insert("old-", "20 days")
	insert("kept-", "1 day") // keeps the heap from being truncated by vacuum
	vacuum()                 // summarizes the ranges, as autovacuum does in production
	const retention = 14 * 24 * time.Hour
	var vacuuming pgx.Tx
	if busy {
		var err error
		if vacuuming, err = pool.Begin(ctx); err != nil {
			t.Fatal(err)
		}
		defer vacuuming.Rollback(ctx) //nolint:errcheck // test cleanup
		if _, err := vacuuming.Exec(ctx, "LOCK TABLE feature_applied IN SHARE UPDATE EXCLUSIVE MODE"); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := st.PurgeApplied(ctx, retention, 5000); err != nil || n != rows {
		t.Fatalf("purged %d (%v), want %d", n, err, rows)
	}
	if busy {
		if err := vacuuming.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
	}
	vacuum() // frees the deleted rows' space; the new rows fill it
	insert("new-", "0 days")
	var reused bool
	if err := pool.QueryRow(ctx, `SELECT min((ctid::text::point)[0]) < (SELECT min((ctid::text::point)[0]) FROM feature_applied WHERE event_id LIKE 'kept-%')
		FROM feature_applied WHERE event_id LIKE 'new-%'`).Scan(&reused); err != nil || !reused {
		t.Fatalf("the new rows did not reuse the freed pages (%v): the test proves nothing", err)
	}
	// A range desummarized late (after new rows came in) is summarized by the purge after.
	for range 2 {
		if n, err := st.PurgeApplied(ctx, retention, 5000); err != nil || n != 0 {
			t.Fatalf("later purge deleted %d (%v), want 0", n, err)
		}
	}
	usesBRIN, blocks, plan := testutil.IndexScan(t, pool, "feature_applied_applied_at_brin",
		`SELECT ctid FROM feature_applied WHERE applied_at < now() - $1::interval`, fmt.Sprintf("%d seconds", int64(retention.Seconds())))
	if !usesBRIN || blocks != 0 {
		t.Fatalf("the purge's scan for expired records read %d heap blocks (want 0, through the BRIN index):\n%s", blocks, plan)
	}
}

// The consumers' DLQ housekeeping (the count of replayed entries and the purge of expired
// ones, every 30 s in each) finds replayed entries through an index, not by reading the
// whole table: after a mass replay it holds millions of them for the whole retention.
func TestDLQHousekeepingUsesTheReplayedIndex(t *testing.T) {
	ctx := context.Background()
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	if _, err := pool.Exec(ctx, `INSERT INTO feature_dlq (topic, kafka_partition, kafka_offset, headers, payload, error, status, replayed_at)
SELECT 't', 0, g, '{}', 'x', 'e', CASE WHEN g % 1000 = 0 THEN 'replayed' ELSE 'pending' END,
	CASE WHEN g % 1000 = 0 THEN now() - interval '30 days' END
FROM generate_series(1, 50000) g`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `ANALYZE feature_dlq`); err != nil {
		t.Fatal(err)
	}
	for name, q := range map[string]string{
		"count": `SELECT count(*) FROM feature_dlq WHERE status = 'replayed'`,
		"purge": `SELECT ctid FROM feature_dlq WHERE status = 'replayed' AND replayed_at < now() - '1209600 seconds'::interval LIMIT 10000`,
	} {
		rows, err := pool.Query(ctx, "EXPLAIN "+q)
		if err != nil {
			t.Fatal(err)
		}
		var plan []string
		for rows.Next() {
			var line string
			if err := rows.Scan(&line); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, line)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		if p := strings.Join(plan, "\n"); !strings.Contains(p, "feature_dlq_replayed_idx") {
			t.Errorf("%s reads the table without the replayed index:\n%s", name, p)
		}
	}
	st := featurestore.New(pool, nil, testutil.Unique("dlqh")+":", testConfig(), nil)
	if n, err := st.PurgeReplayedDLQ(ctx, 14*24*time.Hour); err != nil || n != 50 {
		t.Fatalf("purge: %d (%v), want the 50 expired replayed entries", n, err)
	}
}
