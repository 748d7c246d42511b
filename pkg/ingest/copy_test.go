package ingest_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/events"
	"recsys/pkg/ingest"
	"recsys/pkg/outbox"
	"recsys/pkg/testutil"
)

// mixedEvents is one request of every kind with every optional field both set and null.
func mixedEvents(prefix string) []events.Any {
	now := time.Now().UnixMilli()
	feed, slot, dev, loc := "home", "hero", "tv", "fr-FR"
	pct, speed := 99.5, 1.25
	ended := false
	rebuf := int64(3)
	imp := impression(prefix+"-imp-1", "u1", "a", "b", "c")
	imp.Items[1].FeedID, imp.Items[2].Slot = &feed, &slot
	full := &events.Watch{Common: events.Common{EventID: prefix + "-wat-1", UserID: "u2", SessionID: "s2", RequestID: "r2", TsMs: now - 1234, ServerReceivedTsMs: now,
		Context: &events.Context{Device: &dev, Locale: &loc}}, EventType: "watch", ItemID: "item-9", WatchTimeSec: 0.001,
		PercentWatched: &pct, Ended: &ended, PlaybackSpeed: &speed, RebufferCount: &rebuf}
	bare := &events.Watch{Common: events.Common{EventID: prefix + "-wat-2", UserID: "u3", SessionID: "s3", RequestID: "r3", TsMs: now, ServerReceivedTsMs: now,
		Context: &events.Context{}}, EventType: "watch", ItemID: "item-8", WatchTimeSec: 42}
	leg := &events.Legacy{EventID: prefix + "-leg-1", UserID: "u1", ItemID: "i9", EventType: "purchase", Ts: now}
	return []events.Any{imp, full, watch(prefix+"-wat-3", "u1"), bare, leg, impression(prefix+"-imp-2", "u4", "z")}
}

// tableText renders every stored column but the ones the database generates (ids, created_at,
// the prefix of event ids), so two databases can be compared row for row.
func tableText(t *testing.T, pool *pgxpool.Pool, prefix string) []string {
	t.Helper()
	queries := []string{
		`SELECT replace(row_to_json(x)::text, $1, '') FROM (SELECT event_id, position, item_id, feed_id, slot, user_id, session_id, request_id, ts_ms, ts, server_received_ts_ms, context FROM impressions) x`,
		`SELECT replace(row_to_json(x)::text, $1, '') FROM (SELECT event_id, user_id, session_id, request_id, item_id, watch_time_sec, percent_watched, ended, playback_speed, rebuffer_count, ts_ms, ts, server_received_ts_ms, context FROM watches) x`,
		`SELECT replace(row_to_json(x)::text, $1, '') FROM (SELECT event_id, user_id, item_id, event_type, ts, ts_ms FROM legacy_events) x`,
		`SELECT replace(row_to_json(x)::text, $1, '') FROM (SELECT split_part(event_id, '@', 1) AS event_id, event_type, topic, msg_key, payload_format, event_count, schema_version, correlation_id, status, attempts, max_attempts FROM event_outbox ORDER BY id) x`,
		`SELECT replace(row_to_json(x)::text, $1, '') FROM (SELECT event_id, user_id, event_type FROM event_dedup) x`,
	}
	var out []string
	for _, q := range queries {
		rows, err := pool.Query(context.Background(), q, prefix)
		if err != nil {
			t.Fatal(err)
		}
		var part []string
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			part = append(part, s)
		}
		rows.Close()
		if len(part) == 0 {
			t.Fatalf("no rows for %s", q)
		}
		if q != queries[3] { // outbox order is part of the contract (per-user order); the rest is a set
			slices.Sort(part)
		}
		out = append(out, part...)
	}
	// The frames are binary; compare them decoded, without the id prefix.
	for _, f := range outboxFrames(t, pool) {
		out = append(out, strings.ReplaceAll(fmt.Sprintf("%s %s %s %s %d %s", f.EventID, f.EventType, f.Key, f.CorrelationID, f.SchemaVersion, f.Payload), prefix, ""))
	}
	return out
}

// TestCopyMatchesStatement writes the same events through both paths into two databases:
// every stored value must be the same.
func TestCopyMatchesStatement(t *testing.T) {
	evs := map[string][]events.Any{}
	got := map[string][]string{}
	for _, p := range []struct {
		name    string
		copyMin int
	}{{"statement", 1 << 30}, {"copy", 1}} {
		pool := testutil.Pool(t, testutil.MigratedDatabase(t))
		set := metrics.NewSet()
		w := newWriter(t, pool, func(c *ingest.Config) { c.CopyMinEvents = p.copyMin; c.Metrics = set })
		// Share the event values (timestamps) between the two runs; only the ids differ.
		if evs["statement"] == nil {
			evs[p.name] = mixedEvents(p.name)
		} else {
			evs[p.name] = mixedEvents(p.name)
			for i, ev := range evs["statement"] {
				switch e := ev.(type) {
				case *events.Impression:
					c := *e
					c.EventID = evs[p.name][i].ID()
					evs[p.name][i] = &c
				case *events.Watch:
					c := *e
					c.EventID = evs[p.name][i].ID()
					evs[p.name][i] = &c
				case *events.Legacy:
					c := *e
					c.EventID = evs[p.name][i].ID()
					evs[p.name][i] = &c
				}
			}
		}
		res, err := w.Write(context.Background(), evs[p.name], "corr-1")
		if err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
		for i, r := range res {
			if r.Status != ingest.StatusOK || !r.OutboxEnqueued {
				t.Errorf("%s: result %d = %+v", p.name, i, r)
			}
		}
		got[p.name] = tableText(t, pool, p.name)
	}
	if !slices.Equal(got["statement"], got["copy"]) {
		t.Errorf("stored rows differ:\nstatement: %q\ncopy:      %q", got["statement"], got["copy"])
	}
}

// TestBatchRowNameOutlivedDedupKey: an old (dead) outbox row named after an event whose dedup
// key retention has since deleted must not stop a resend of that event, nor the other new
// events sharing its lane row, from being enqueued, on either write path.
func TestBatchRowNameOutlivedDedupKey(t *testing.T) {
	for _, path := range []struct {
		name    string
		copyMin int
	}{{"statement", 1 << 20}, {"copy", 1}} {
		t.Run(path.name, func(t *testing.T) {
			pool := testutil.Pool(t, testutil.MigratedDatabase(t))
			set := metrics.NewSet()
			w := newWriter(t, pool, func(c *ingest.Config) { c.CopyMinEvents = path.copyMin; c.Metrics = set })
			lane := outbox.LaneKey(outbox.Lane("u1", ingest.DefaultConfig().OutboxLanes))
			// The name the row of this lane would get if it were only "batch:" + the first id.
			if _, err := pool.Exec(context.Background(), `INSERT INTO event_outbox (event_id, event_type, topic, msg_key, payload, max_attempts, status)
				VALUES ('batch:stale-0001', 'watch', 't', $1, '{}', 25, 'dead')`, lane); err != nil {
				t.Fatal(err)
			}
			evs := []events.Any{watch("stale-0001", "u1")}
			for i := range 5 {
				evs = append(evs, watch(fmt.Sprintf("fresh-%04d", i), "u1"))
			}
			res, err := w.Write(context.Background(), evs, "")
			if err != nil {
				t.Fatal(err)
			}
			for i, r := range res {
				if want := (ingest.Result{Status: ingest.StatusOK, Rows: 1, OutboxEnqueued: true}); r != want {
					t.Errorf("result %d = %+v, want %+v", i, r, want)
				}
			}
			if n := set.GetOrCreateCounter(`recsys_ingest_copy_conflicts_total{writer="ingest"}`).Get(); n != 0 {
				t.Errorf("copy conflicts = %d, want 0", n)
			}
			if c := count(t, pool, "SELECT coalesce(sum(event_count), 0) FROM event_outbox WHERE status = 'pending'"); c != 6 {
				t.Errorf("pending outbox events = %d, want 6", c)
			}
		})
	}
}

// TestCopyPartialResend: a COPY group holding new ids and already stored ones stores only
// the new ones and reports the others as duplicates.
func TestCopyPartialResend(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	w := newWriter(t, pool, func(c *ingest.Config) { c.CopyMinEvents = 1 })
	ctx := context.Background()
	if _, err := w.Write(ctx, []events.Any{watch("old-00001", "u1"), impression("old-00002", "u1", "a", "b")}, ""); err != nil {
		t.Fatal(err)
	}
	res, err := w.Write(ctx, []events.Any{watch("new-00001", "u1"), impression("old-00002", "u1", "x"), watch("old-00001", "u1"), impression("new-00002", "u1", "c", "d", "e")}, "")
	if err != nil {
		t.Fatal(err)
	}
	want := []ingest.Result{{Status: "ok", Rows: 1, OutboxEnqueued: true}, {Status: "duplicate"}, {Status: "duplicate"}, {Status: "ok", Rows: 3, OutboxEnqueued: true}}
	if !slices.Equal(res, want) {
		t.Errorf("results = %+v, want %+v", res, want)
	}
	if ids := frameIDs(outboxFrames(t, pool)); !slices.Equal(ids, []string{"old-00001", "old-00002", "new-00001", "new-00002"}) {
		t.Errorf("frames = %v", ids)
	}
	for table, n := range map[string]int{"event_dedup": 4, "watches": 2, "impressions": 5} {
		if c := count(t, pool, "SELECT count(*) FROM "+table); c != n {
			t.Errorf("%s rows = %d, want %d", table, c, n)
		}
	}
}

// TestCopyDedupRace: an id of a COPY group is inserted by a concurrent transaction after the
// group's probe; the group's dedup COPY waits for it, fails on the unique key when it
// commits, and the group is redone by the statement: that id is a duplicate, the rest is
// stored once.
func TestCopyDedupRace(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	set := metrics.NewSet()
	w := newWriter(t, pool, func(c *ingest.Config) { c.CopyMinEvents = 1; c.Metrics = set; c.Timeout = 20 * time.Second })
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `INSERT INTO event_dedup (event_id, user_id, event_type) VALUES ('race-0003', 'u1', 'watch')`); err != nil {
		t.Fatal(err)
	}
	var evs []events.Any
	for i := range 6 {
		evs = append(evs, watch(fmt.Sprintf("race-%04d", i), "u1"))
	}
	type outcome struct {
		res []ingest.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := w.Write(ctx, evs, "")
		done <- outcome{res, err}
	}()
	// Commit only once the group waits on the uncommitted key, i.e. after its probe.
	deadline := time.Now().Add(15 * time.Second)
	for count(t, pool, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the group never waited on the concurrent key")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	o := <-done
	if o.err != nil {
		t.Fatal(o.err)
	}
	for i, r := range o.res {
		want := ingest.Result{Status: ingest.StatusOK, Rows: 1, OutboxEnqueued: true}
		if i == 3 {
			want = ingest.Result{Status: ingest.StatusDuplicate}
		}
		if r != want {
			t.Errorf("result %d = %+v, want %+v", i, r, want)
		}
	}
	if n := set.GetOrCreateCounter(`recsys_ingest_copy_conflicts_total{writer="ingest"}`).Get(); n != 1 {
		t.Errorf("copy conflicts = %d, want 1", n)
	}
	if c := count(t, pool, "SELECT count(*) FROM watches"); c != 5 {
		t.Errorf("watch rows = %d, want 5", c)
	}
	if ids := frameIDs(outboxFrames(t, pool)); !slices.Equal(ids, []string{"race-0000", "race-0001", "race-0002", "race-0004", "race-0005"}) {
		t.Errorf("frames = %v", ids)
	}
}

// TestCopyProbesAfterDuplicate: a COPY group takes its ids as new without probing them (the
// dedup COPY is the check); a stored id fails it once and the group is redone by the
// statement, and the next groups probe first, so a burst of resends is not redone group by
// group. Results and rows are the same either way.
func TestCopyProbesAfterDuplicate(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	set := metrics.NewSet()
	w := newWriter(t, pool, func(c *ingest.Config) { c.CopyMinEvents = 1; c.Metrics = set })
	conflicts := func() uint64 {
		return set.GetOrCreateCounter(`recsys_ingest_copy_conflicts_total{writer="ingest"}`).Get()
	}
	ok := ingest.Result{Status: ingest.StatusOK, Rows: 1, OutboxEnqueued: true}
	dup := ingest.Result{Status: ingest.StatusDuplicate}
	for i, step := range []struct {
		evs           []events.Any
		want          []ingest.Result
		wantConflicts uint64
	}{
		{[]events.Any{watch("probe-0001", "u1")}, []ingest.Result{ok}, 0},
		{[]events.Any{watch("probe-0002", "u1"), watch("probe-0001", "u1")}, []ingest.Result{ok, dup}, 1},
		{[]events.Any{watch("probe-0001", "u1"), watch("probe-0003", "u2")}, []ingest.Result{dup, ok}, 1},
		{[]events.Any{watch("probe-0001", "u1"), watch("probe-0002", "u1")}, []ingest.Result{dup, dup}, 1},
		{[]events.Any{watch("probe-0004", "u3")}, []ingest.Result{ok}, 1},
	} {
		res, err := w.Write(context.Background(), step.evs, "")
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if !slices.Equal(res, step.want) {
			t.Errorf("step %d: results = %+v, want %+v", i, res, step.want)
		}
		if n := conflicts(); n != step.wantConflicts {
			t.Errorf("step %d: copy conflicts = %d, want %d", i, n, step.wantConflicts)
		}
	}
	for table, n := range map[string]int{"event_dedup": 4, "watches": 4} {
		if c := count(t, pool, "SELECT count(*) FROM "+table); c != n {
			t.Errorf("%s rows = %d, want %d", table, c, n)
		}
	}
	if ids := frameIDs(outboxFrames(t, pool)); !slices.Equal(ids, []string{"probe-0001", "probe-0002", "probe-0003", "probe-0004"}) {
		t.Errorf("frames = %v", ids)
	}
}

// TestWriterNotifiesRelay: a write that enqueued frames notifies the relay's channel on commit,
// on both paths (the COPY path without its probe too); a write of duplicates only does not. The
// payload marks a write of impressions only, which the relay may claim lazily; a write with a
// watch among impressions is not one.
func TestWriterNotifiesRelay(t *testing.T) { forEachPath(t, testWriterNotifiesRelay) }

func testWriterNotifiesRelay(t *testing.T, path func(*ingest.Config)) {
	dsn := testutil.MigratedDatabase(t)
	pool := testutil.Pool(t, dsn)
	w := newWriter(t, pool, path)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	listener, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Release()
	if _, err := listener.Exec(ctx, "LISTEN "+ingest.NotifyChannel); err != nil {
		t.Fatal(err)
	}
	var payload string
	notified := func(wait time.Duration) bool {
		wctx, wcancel := context.WithTimeout(ctx, wait)
		defer wcancel()
		n, err := listener.Conn().WaitForNotification(wctx)
		if err == nil {
			payload = n.Payload
		}
		return err == nil
	}
	for _, c := range []struct {
		name string
		evs  []events.Any
		want string
	}{
		{"impressions", []events.Any{impression("notify-i1", "u1", "a", "b"), impression("notify-i2", "u2", "c")}, outbox.NotifyImpressionsOnly},
		{"mixed", []events.Any{impression("notify-m1", "u1", "a"), watch("notify-m2", "u1")}, ""},
	} {
		if _, err := w.Write(ctx, c.evs, ""); err != nil {
			t.Fatal(err)
		}
		if !notified(10 * time.Second) {
			t.Fatalf("%s: no notification after new events", c.name)
		}
		if payload != c.want {
			t.Errorf("%s: notification payload %q, want %q", c.name, payload, c.want)
		}
	}
	evs := []events.Any{watch("notify-0001", "u1"), watch("notify-0002", "u2")}
	if _, err := w.Write(ctx, evs, ""); err != nil {
		t.Fatal(err)
	}
	if !notified(10 * time.Second) {
		t.Fatal("no notification after new events")
	}
	if payload != "" {
		t.Errorf("watches: notification payload %q, want none", payload)
	}
	res, err := w.Write(ctx, evs, "")
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Status != ingest.StatusDuplicate || res[1].Status != ingest.StatusDuplicate {
		t.Fatalf("resend results = %+v", res)
	}
	if notified(300 * time.Millisecond) {
		t.Error("notification after a write of duplicates only")
	}
}
