package featurestore_test

import (
	"context"
	"testing"
	"time"

	"recsys/pkg/events"
	"recsys/pkg/featurestore"
	"recsys/pkg/testutil"
)

// `recsys consume replay-dlq` skips a DLQ entry of an erased user whose event the API
// received before the erasure. Forget deletes the DLQ entries created up to the erasure time;
// one the consumer dead-letters later (a lagging consumer meeting a message it cannot decode
// yet, e.g. a newer schema_version during a rolling upgrade) stays pending, and its replay is
// reported as ignored and marked replayed, never applied.
func TestReplayDLQSkipsErasedUsers(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	st := featurestore.New(pool, rd, testutil.Unique("fg")+":", testConfig(), nil)
	const gone = "user-gone"
	rep, err := st.Forget(ctx, []string{gone}, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	// The event was received before the erasure; it reaches the DLQ after it.
	w := &events.Watch{Common: events.Common{EventID: "dlq-gone-1", UserID: gone, SessionID: "s", RequestID: "r",
		TsMs: rep.ForgottenAtMs - 60_000, ServerReceivedTsMs: rep.ForgottenAtMs - 30_000}, EventType: "watch", ItemID: "i1", WatchTimeSec: 30}
	p, err := events.Encode(w)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO feature_dlq (topic, kafka_partition, kafka_offset, msg_key, headers, payload, error)
VALUES ('t', 0, 1, $1, '{"event_type":"watch","schema_version":"1"}', $2, 'unknown schema_version')`, []byte(gone), p); err != nil {
		t.Fatal(err)
	}
	rep2, err := st.ReplayDLQ(ctx, featurestore.ReplayOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep2.Ignored != 1 || rep2.Applied != 0 || len(rep2.Entries) != 1 || rep2.Entries[0].Outcome != "ignored" {
		t.Errorf("replay report %+v, want the entry ignored", rep2)
	}
	var status string
	if err := pool.QueryRow(ctx, `SELECT status FROM feature_dlq WHERE msg_key = $1`, []byte(gone)).Scan(&status); err != nil || status != "replayed" {
		t.Errorf("the ignored entry's status %q (%v), want replayed", status, err)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM feature_users WHERE user_id = $1`, gone).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("replay-dlq brought the erased user's features back (event received %d ms before the erasure)", rep.ForgottenAtMs-w.ServerReceivedTsMs)
	}
}
