package outbox_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/outbox"
	"recsys/pkg/testutil"
)

// insertBatch writes one batch row (payload_format 2) of n events for users of lane, as the
// ingest writer does, and returns its id and its events.
func insertBatch(t *testing.T, pool *pgxpool.Pool, lane, n int) (int64, []outbox.Message) {
	t.Helper()
	var payload []byte
	msgs := make([]outbox.Message, n)
	for i := range msgs {
		ev := testutil.Unique("ev-")
		msgs[i] = outbox.Message{EventID: ev, EventType: "watch", Key: fmt.Sprintf("user-%d-%d", lane, i),
			CorrelationID: "corr-" + ev, SchemaVersion: 1, Payload: []byte(`{"event_id":"` + ev + `"}`)}
		payload = outbox.AppendFrame(payload, msgs[i])
	}
	var id int64
	err := pool.QueryRow(context.Background(), `
INSERT INTO event_outbox (event_id, event_type, topic, msg_key, payload, max_attempts, payload_format, event_count)
VALUES ($1, 'watch', 't', $2, $3, 5, 2, $4) RETURNING id`,
		"batch:"+msgs[0].EventID, outbox.LaneKey(lane), payload, n).Scan(&id)
	if err != nil {
		t.Fatalf("insert batch row: %v", err)
	}
	return id, msgs
}

// A claim returns each row's format and event count, stops at MaxEvents (but always takes
// its first row), and its rows give back exactly the events written: the frames of a batch
// row, the columns of a single row.
func TestClaimBatchRows(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := context.Background()
	b1, m1 := insertBatch(t, pool, 0, 3)
	single := insert(t, pool, row{key: "solo"})[0]
	b2, m2 := insertBatch(t, pool, 1, 5)
	b3, _ := insertBatch(t, pool, 2, 2)

	for _, tc := range []struct {
		name      string
		maxEvents int
		want      []int64
		full      bool
	}{
		// 3 + 1 events are below 5, so the 5-event row still comes; the 2-event one does not.
		{"events limit", 5, []int64{b1, single, b2}, true},
		{"first row always", 1, []int64{b3}, true},
	} {
		c, err := s.Claim(ctx, outbox.ClaimRequest{Owner: "r", Limit: 100, MaxEvents: tc.maxEvents, Lease: 30e9})
		if err != nil {
			t.Fatal(err)
		}
		if !equal(ids(c), tc.want) || c.Full != tc.full {
			t.Fatalf("%s: claimed %v full %t, want %v full %t", tc.name, ids(c), c.Full, tc.want, tc.full)
		}
		if tc.name != "events limit" {
			continue
		}
		if c.Events() != 9 {
			t.Fatalf("claim has %d events, want 9", c.Events())
		}
		for i, want := range [][]outbox.Message{m1, nil, m2} {
			r := c.Rows[i]
			got, err := r.Messages()
			if err != nil {
				t.Fatalf("row %d: %v", r.ID, err)
			}
			if want == nil { // the single row: its columns
				if r.PayloadFormat != outbox.FormatSingle || r.EventCount != 1 || len(got) != 1 ||
					got[0].EventID != r.EventID || got[0].Key != "solo" || got[0].CorrelationID != "corr" || string(got[0].Payload) != `{"k":"solo"}` {
					t.Fatalf("single row %+v gave %+v", r, got)
				}
				continue
			}
			if r.PayloadFormat != outbox.FormatBatch || r.EventCount != len(want) || len(got) != len(want) {
				t.Fatalf("batch row %d: format %d count %d, %d messages; want %d", r.ID, r.PayloadFormat, r.EventCount, len(got), len(want))
			}
			for j := range want {
				if g, w := got[j], want[j]; g.EventID != w.EventID || g.Key != w.Key || g.CorrelationID != w.CorrelationID ||
					g.SchemaVersion != w.SchemaVersion || string(g.Payload) != string(w.Payload) || g.EventType != w.EventType {
					t.Fatalf("batch row %d message %d = %+v, want %+v", r.ID, j, g, w)
				}
			}
		}
	}
	// A window cut short by the events limit is not a congested front: the cursor stays at
	// the front.
	c := &outbox.Claim{WindowFull: true, WindowEnd: 99, Full: true}
	if c.NextAfter(100) != 0 {
		t.Fatal("a claim full by events moved the cursor past the front of the queue")
	}
}

// A row whose payload does not hold event_count frames is poison: Messages fails.
func TestRowMessagesRejectsCorruptBatch(t *testing.T) {
	ok := outbox.AppendFrame(nil, outbox.Message{EventID: "e", Key: "u", Payload: []byte("{}")})
	for _, tc := range []struct {
		name string
		row  outbox.Row
	}{
		{"truncated", outbox.Row{ID: 1, PayloadFormat: outbox.FormatBatch, EventCount: 1, Payload: ok[:len(ok)-1]}},
		{"count too high", outbox.Row{ID: 2, PayloadFormat: outbox.FormatBatch, EventCount: 2, Payload: ok}},
		{"not frames", outbox.Row{ID: 3, PayloadFormat: outbox.FormatBatch, EventCount: 1, Payload: []byte(`{"json":1}`)}},
		{"unknown format", outbox.Row{ID: 4, PayloadFormat: 7, EventCount: 1, Payload: ok}},
	} {
		if msgs, err := tc.row.Messages(); err == nil {
			t.Errorf("%s: decoded %+v, want an error", tc.name, msgs)
		}
	}
}

// The snapshot and replay count events: a batch row counts its event_count.
func TestSnapshotAndReplayCountEvents(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := context.Background()
	dead, _ := insertBatch(t, pool, 0, 4)
	insertBatch(t, pool, 1, 7)
	insert(t, pool, row{key: "a"})
	if _, err := pool.Exec(ctx, `UPDATE event_outbox SET status = 'dead' WHERE id = $1`, dead); err != nil {
		t.Fatal(err)
	}
	b, err := outbox.Snapshot(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if b.Pending != 8 || b.Dead != 4 || b.Publishing != 0 || b.Capped {
		t.Fatalf("snapshot %+v, want 8 pending events (7 + 1) and 4 dead", b)
	}
	if capped, err := outbox.SnapshotLimit(ctx, pool, 2); err != nil || !capped.Capped || capped.Pending != 8 {
		t.Fatalf("limited snapshot %+v, %v; want capped (2 pending rows) with 8 events", capped, err)
	}
	res, err := s.Replay(ctx, outbox.ReplayFilter{Status: outbox.StatusDead, EventType: "watch", Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requeued != 1 || res.Events != 4 || res.ByEventType["watch"] != 1 {
		t.Fatalf("replay %+v, want 1 row of 4 events", res)
	}
}
