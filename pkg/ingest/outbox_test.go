package ingest_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/events"
	"recsys/pkg/ingest"
	"recsys/pkg/outbox"
	"recsys/pkg/testutil"
)

// outboxRow is one event_outbox row with its frames decoded.
type outboxRow struct {
	eventID, eventType, topic, key string
	format                         int16
	count, maxAttempts             int
	corr                           *string
	status                         string
	frames                         []outbox.Message
}

// readOutbox returns every outbox row in id order. A batch row whose payload does not decode
// into exactly event_count frames fails the test.
func readOutbox(t *testing.T, pool *pgxpool.Pool) []outboxRow {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT event_id, event_type, topic, msg_key, payload_format, event_count, max_attempts,
		correlation_id, status, payload FROM event_outbox ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []outboxRow
	for rows.Next() {
		var r outboxRow
		var payload []byte
		if err := rows.Scan(&r.eventID, &r.eventType, &r.topic, &r.key, &r.format, &r.count, &r.maxAttempts, &r.corr, &r.status, &payload); err != nil {
			t.Fatal(err)
		}
		if r.format != outbox.FormatBatch {
			t.Fatalf("outbox row %s has payload_format %d, want %d", r.eventID, r.format, outbox.FormatBatch)
		}
		if r.frames, err = outbox.DecodeBatch(payload, r.count); err != nil {
			t.Fatalf("outbox row %s: %v", r.eventID, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// outboxFrames returns the events of every outbox row, rows in id order.
func outboxFrames(t *testing.T, pool *pgxpool.Pool) []outbox.Message {
	t.Helper()
	var out []outbox.Message
	for _, r := range readOutbox(t, pool) {
		out = append(out, r.frames...)
	}
	return out
}

func frameIDs(ms []outbox.Message) []string {
	ids := make([]string, len(ms))
	for i, m := range ms {
		ids[i] = m.EventID
	}
	return ids
}

// TestWriterOutboxRowPerLane merges requests mixing users, topics and duplicates (of stored
// ids and within the group) into one transaction: exactly one row per (topic, lane) holding
// the new events of that topic and lane in arrival order.
func TestWriterOutboxRowPerLane(t *testing.T) { forEachPath(t, testWriterOutboxRowPerLane) }

func testWriterOutboxRowPerLane(t *testing.T, path func(*ingest.Config)) {
	const lanes = 4
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	w := newWriter(t, pool, func(c *ingest.Config) { path(c); c.OutboxLanes = lanes; c.Workers = 1; c.MaxWait = time.Second })
	ctx := context.Background()
	if _, err := w.Write(ctx, []events.Any{watch("stored-0001", "user-0"), impression("stored-0002", "user-1", "a")}, ""); err != nil {
		t.Fatal(err)
	}
	before := len(readOutbox(t, pool))

	// Requests are sent one after the other (each queued before the next) so the group's
	// arrival order is known; the single worker is held by a slow first request's wait.
	var reqs [][]events.Any
	for r := range 6 {
		var evs []events.Any
		for i := range 5 {
			user := fmt.Sprintf("user-%d", (r*5+i)%7)
			id := fmt.Sprintf("r%d-e%d-xxxx", r, i)
			switch i % 3 {
			case 0:
				evs = append(evs, watch(id, user))
			case 1:
				evs = append(evs, impression(id, user, "a", "b"))
			default:
				evs = append(evs, &events.Legacy{EventID: id, UserID: user, ItemID: "i1", EventType: "click", Ts: time.Now().Unix()})
			}
		}
		switch r {
		case 2:
			evs = append(evs, watch("stored-0001", "user-0")) // stored before
		case 4:
			evs = append(evs, watch("r1-e0-xxxx", "user-5")) // an earlier request of this group
		}
		reqs = append(reqs, evs)
	}
	results := make([][]ingest.Result, len(reqs))
	var wg sync.WaitGroup
	for r, evs := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if results[r], err = w.Write(ctx, evs, fmt.Sprintf("corr-%d", r)); err != nil {
				t.Error(err)
			}
		}()
		time.Sleep(40 * time.Millisecond)
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	// The expected rows: new events grouped by (topic, lane), rows in order of first event.
	type key struct {
		topic string
		lane  int
	}
	var order []key
	want := map[key][]string{}
	firstUser := map[key]string{} // the user of each row's first event, in the row's name
	seen := map[string]bool{"stored-0001": true, "stored-0002": true}
	for r, evs := range reqs {
		for i, ev := range evs {
			dup := seen[ev.ID()]
			seen[ev.ID()] = true
			if got := results[r][i]; (got.Status == ingest.StatusDuplicate) != dup || got.OutboxEnqueued == dup {
				t.Errorf("request %d event %d (%s): %+v, duplicate %v", r, i, ev.ID(), got, dup)
			}
			if dup {
				continue
			}
			k := key{"recsys.watches.v1", outbox.Lane(ev.User(), lanes)}
			if ev.Kind() == events.KindImpression {
				k.topic = "recsys.impressions.v1"
			}
			if _, ok := want[k]; !ok {
				order = append(order, k)
				firstUser[k] = ev.User()
			}
			want[k] = append(want[k], ev.ID())
		}
	}
	rows := readOutbox(t, pool)[before:]
	if len(rows) != len(order) {
		t.Fatalf("outbox rows = %d, want %d (one per topic and lane)", len(rows), len(order))
	}
	for i, r := range rows {
		k := order[i]
		wantType := "watch"
		if k.topic == "recsys.impressions.v1" {
			wantType = "impression"
		}
		ids := frameIDs(r.frames)
		if r.topic != k.topic || r.key != outbox.LaneKey(k.lane) || r.eventType != wantType || !strings.HasPrefix(r.eventID, "batch:"+want[k][0]+"/"+firstUser[k]+"@") ||
			r.count != len(want[k]) || !slices.Equal(ids, want[k]) || r.maxAttempts != 25 || r.status != "pending" || r.corr != nil {
			t.Errorf("row %d = %s %s %s %s count %d frames %v, want %s %s %s batch:%s frames %v",
				i, r.eventID, r.eventType, r.topic, r.key, r.count, ids, k.topic, outbox.LaneKey(k.lane), wantType, want[k][0], want[k])
		}
		for _, f := range r.frames {
			var req, idx int
			if _, err := fmt.Sscanf(f.EventID, "r%d-e%d-xxxx", &req, &idx); err != nil {
				t.Fatalf("frame id %q", f.EventID)
			}
			ev := reqs[req][idx]
			if f.EventType != string(ev.Kind()) || f.Key != ev.User() || f.CorrelationID != fmt.Sprintf("corr-%d", req) || f.SchemaVersion != events.SchemaVersion {
				t.Errorf("frame %s = %+v", f.EventID, f)
			}
			got, err := events.DecodePayload(events.Kind(f.EventType), f.Payload)
			if err != nil || got.ID() != f.EventID || got.User() != ev.User() {
				t.Errorf("frame %s payload: %v, %v", f.EventID, got, err)
			}
		}
	}
}

// TestWriterResendAddsNoFrame: a resend, alone or next to new events, writes no frame for the
// duplicate.
func TestWriterResendAddsNoFrame(t *testing.T) { forEachPath(t, testWriterResendAddsNoFrame) }

func testWriterResendAddsNoFrame(t *testing.T, path func(*ingest.Config)) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	w := newWriter(t, pool, path)
	ctx := context.Background()
	first := []events.Any{watch("resend-0001", "u1"), impression("resend-0002", "u1", "a")}
	if _, err := w.Write(ctx, first, ""); err != nil {
		t.Fatal(err)
	}
	rows := len(readOutbox(t, pool))
	res, err := w.Write(ctx, first, "")
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r != (ingest.Result{Status: ingest.StatusDuplicate}) {
			t.Errorf("resend %d = %+v", i, r)
		}
	}
	if n := len(readOutbox(t, pool)); n != rows {
		t.Errorf("an all-duplicate resend wrote %d outbox rows", n-rows)
	}
	// Same user, same lane: the new event's row must hold only the new event.
	res, err = w.Write(ctx, []events.Any{watch("resend-0001", "u1"), watch("resend-0003", "u1")}, "")
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Status != ingest.StatusDuplicate || res[1] != (ingest.Result{Status: ingest.StatusOK, Rows: 1, OutboxEnqueued: true}) {
		t.Errorf("mixed resend = %+v", res)
	}
	if ids := frameIDs(outboxFrames(t, pool)); !slices.Equal(ids, []string{"resend-0001", "resend-0002", "resend-0003"}) {
		t.Errorf("frames = %v", ids)
	}
}

// TestWriterLaneStablePerUser: every frame of a user, across groups, writers and topics, is in
// rows of the user's lane; with one lane every row has lane 0's key.
func TestWriterLaneStablePerUser(t *testing.T) {
	for _, lanes := range []int{1, 7, 32} {
		t.Run(fmt.Sprint(lanes), func(t *testing.T) {
			pool := testutil.Pool(t, testutil.MigratedDatabase(t))
			// Two writers (as ingest and the /reco autolog) over one database.
			ws := []*ingest.Writer{
				newWriter(t, pool, func(c *ingest.Config) { c.OutboxLanes = lanes }),
				newWriter(t, pool, func(c *ingest.Config) { c.OutboxLanes = lanes; c.CopyMinEvents = 1; c.Name = "other" }),
			}
			for g := range 6 {
				var evs []events.Any
				for u := range 10 {
					id := fmt.Sprintf("g%d-u%d-xxxx", g, u)
					if g%2 == 0 {
						evs = append(evs, watch(id, fmt.Sprintf("user-%d", u)))
					} else {
						evs = append(evs, impression(id, fmt.Sprintf("user-%d", u), "a"))
					}
				}
				if _, err := ws[g%2].Write(context.Background(), evs, ""); err != nil {
					t.Fatal(err)
				}
			}
			keys := map[string]map[string]bool{}
			frames := 0
			for _, r := range readOutbox(t, pool) {
				for _, f := range r.frames {
					frames++
					if keys[f.Key] == nil {
						keys[f.Key] = map[string]bool{}
					}
					keys[f.Key][r.key] = true
					if want := outbox.LaneKey(outbox.Lane(f.Key, lanes)); r.key != want {
						t.Errorf("%s of %s in row key %s, want %s", f.EventID, f.Key, r.key, want)
					}
				}
			}
			if frames != 60 || len(keys) != 10 {
				t.Fatalf("frames = %d, users = %d", frames, len(keys))
			}
			for user, ks := range keys {
				if len(ks) != 1 {
					t.Errorf("user %s is in %d lanes", user, len(ks))
				}
			}
		})
	}
}
