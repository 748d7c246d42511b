package ingest_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/events"
	"recsys/pkg/ingest"
	"recsys/pkg/migrate"
	"recsys/pkg/outbox"
	"recsys/pkg/testutil"
)

func newWriter(t *testing.T, pool *pgxpool.Pool, mod func(*ingest.Config)) *ingest.Writer {
	t.Helper()
	cfg := ingest.DefaultConfig()
	if mod != nil {
		mod(&cfg)
	}
	w := ingest.New(pool, cfg)
	w.Start()
	t.Cleanup(w.Close)
	return w
}

// forEachPath runs a test with both ways of writing a group: the single unnest statement
// (every group is below CopyMinEvents) and COPY (every group is at or above it).
func forEachPath(t *testing.T, test func(t *testing.T, path func(*ingest.Config))) {
	for _, p := range []struct {
		name    string
		copyMin int
	}{{"statement", 1 << 30}, {"copy", 1}} {
		t.Run(p.name, func(t *testing.T) { test(t, func(c *ingest.Config) { c.CopyMinEvents = p.copyMin }) })
	}
}

func watch(id, user string) *events.Watch {
	now := time.Now().UnixMilli()
	pct := 50.0
	return &events.Watch{Common: events.Common{EventID: id, UserID: user, SessionID: "s1", RequestID: "r1", TsMs: now, ServerReceivedTsMs: now},
		EventType: "watch", ItemID: "item-1", WatchTimeSec: 12.5, PercentWatched: &pct}
}

func impression(id, user string, items ...string) *events.Impression {
	now := time.Now().UnixMilli()
	dev := "ios"
	e := &events.Impression{Common: events.Common{EventID: id, UserID: user, SessionID: "s1", RequestID: "r1", TsMs: now, ServerReceivedTsMs: now,
		Context: &events.Context{Device: &dev}}, EventType: "impression"}
	for i, it := range items {
		e.Items = append(e.Items, events.ImpressionItem{ItemID: it, Position: int64(i)})
	}
	return e
}

func count(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func TestWriterStoresEventsAndOutbox(t *testing.T) { forEachPath(t, testWriterStoresEventsAndOutbox) }

func testWriterStoresEventsAndOutbox(t *testing.T, path func(*ingest.Config)) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	w := newWriter(t, pool, path)
	ctx := context.Background()

	leg := &events.Legacy{EventID: "legacy-0001", UserID: "u1", ItemID: "i9", EventType: "click", Ts: time.Now().Unix()}
	evs := []events.Any{impression("imp-00001", "u1", "a", "b", "c"), watch("wat-00001", "u1"), leg}
	res, err := w.Write(ctx, evs, "corr-1234")
	if err != nil {
		t.Fatal(err)
	}
	want := []ingest.Result{{Status: "ok", Rows: 3, OutboxEnqueued: true}, {Status: "ok", Rows: 1, OutboxEnqueued: true}, {Status: "ok", Rows: 1, OutboxEnqueued: true}}
	for i := range want {
		if res[i] != want[i] {
			t.Errorf("result %d = %+v, want %+v", i, res[i], want[i])
		}
	}
	if n := count(t, pool, "SELECT count(*) FROM impressions WHERE event_id = 'imp-00001'"); n != 3 {
		t.Errorf("impression rows = %d, want 3", n)
	}
	var ctxJSON string
	if err := pool.QueryRow(ctx, "SELECT context::text FROM impressions WHERE event_id = 'imp-00001' AND position = 1").Scan(&ctxJSON); err != nil || ctxJSON != `{"device": "ios"}` {
		t.Errorf("context = %q, %v", ctxJSON, err)
	}
	var legTs, legTsMs int64
	if err := pool.QueryRow(ctx, "SELECT ts, ts_ms FROM legacy_events WHERE event_id = 'legacy-0001'").Scan(&legTs, &legTsMs); err != nil || legTs != leg.Ts || legTsMs != leg.Ts*1000 {
		t.Errorf("legacy ts = %d/%d, %v", legTs, legTsMs, err)
	}
	// One user: the impression in the impressions topic's row of the user's lane, the watch and
	// the legacy event in the watches topic's row of the same lane.
	rows := readOutbox(t, pool)
	if len(rows) != 2 {
		t.Fatalf("outbox rows = %d, want 2", len(rows))
	}
	lane := outbox.LaneKey(outbox.Lane("u1", ingest.DefaultConfig().OutboxLanes))
	wantRows := []struct{ id, typ, topic string }{{"batch:imp-00001/u1", "impression", "recsys.impressions.v1"}, {"batch:wat-00001/u1", "watch", "recsys.watches.v1"}}
	for i, o := range rows {
		if !strings.HasPrefix(o.eventID, wantRows[i].id+"@") || o.eventType != wantRows[i].typ || o.topic != wantRows[i].topic || o.key != lane || o.corr != nil || o.maxAttempts != 25 || o.status != "pending" {
			t.Errorf("outbox row %d = %+v", i, o)
		}
	}
	frames := outboxFrames(t, pool)
	wantFrames := []struct{ id, typ string }{{"imp-00001", "impression"}, {"wat-00001", "watch"}, {"legacy-0001", "legacy"}}
	if len(frames) != len(wantFrames) {
		t.Fatalf("frames = %d, want %d", len(frames), len(wantFrames))
	}
	for i, f := range frames {
		if f.EventID != wantFrames[i].id || f.EventType != wantFrames[i].typ || f.Key != "u1" || f.CorrelationID != "corr-1234" || f.SchemaVersion != events.SchemaVersion {
			t.Errorf("frame %d = %+v", i, f)
		}
		ev, err := events.DecodePayload(events.Kind(f.EventType), f.Payload)
		if err != nil {
			t.Errorf("payload %d: %v", i, err)
		} else if ev.ID() != f.EventID {
			t.Errorf("payload %d id %q", i, ev.ID())
		}
	}

	// Resend with different content: duplicate, nothing changes.
	res, err = w.Write(ctx, []events.Any{impression("imp-00001", "u1", "x", "y", "z", "w")}, "")
	if err != nil {
		t.Fatal(err)
	}
	if res[0] != (ingest.Result{Status: "duplicate"}) {
		t.Errorf("resend = %+v", res[0])
	}
	// The id namespace is global: a watch with an impression's id is a duplicate too.
	res, err = w.Write(ctx, []events.Any{watch("imp-00001", "u1")}, "")
	if err != nil || res[0].Status != "duplicate" {
		t.Errorf("cross-kind resend = %+v, %v", res, err)
	}
	if n := count(t, pool, "SELECT count(*) FROM impressions"); n != 3 {
		t.Errorf("impression rows after resend = %d, want 3", n)
	}
	if n := len(outboxFrames(t, pool)); n != 3 {
		t.Errorf("outbox frames after resend = %d, want 3", n)
	}
}

func TestWriterConcurrentSameID(t *testing.T) { forEachPath(t, testWriterConcurrentSameID) }

func testWriterConcurrentSameID(t *testing.T, path func(*ingest.Config)) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	w := newWriter(t, pool, path)
	const n = 50
	var wg sync.WaitGroup
	statuses := make([]ingest.Status, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := w.Write(context.Background(), []events.Any{watch("same-id-0001", "u1")}, "")
			errs[i] = err
			if err == nil {
				statuses[i] = res[0].Status
			}
		}()
	}
	wg.Wait()
	ok, dup := 0, 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("write %d: %v", i, errs[i])
		}
		switch statuses[i] {
		case "ok":
			ok++
		case "duplicate":
			dup++
		}
	}
	if ok != 1 || dup != n-1 {
		t.Errorf("ok=%d duplicate=%d, want 1 and %d", ok, dup, n-1)
	}
	if c := count(t, pool, "SELECT count(*) FROM watches"); c != 1 {
		t.Errorf("watch rows = %d", c)
	}
	if c := len(outboxFrames(t, pool)); c != 1 {
		t.Errorf("outbox frames = %d", c)
	}
}

// failOn installs a trigger that raises a check violation for one user_id, standing in for any
// data error caused by one request (the only errors requestSpecific isolates).
func failOn(t *testing.T, pool *pgxpool.Pool, table, user string) {
	t.Helper()
	_, err := pool.Exec(context.Background(), fmt.Sprintf(`
CREATE FUNCTION fail_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.user_id = '%s' THEN RAISE EXCEPTION 'poison row %%', NEW.event_id USING ERRCODE = '23514'; END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER fail_poison BEFORE INSERT ON %s FOR EACH ROW EXECUTE FUNCTION fail_poison();`, user, table))
	if err != nil {
		t.Fatal(err)
	}
}

func TestWriterBatchIsAtomic(t *testing.T) { forEachPath(t, testWriterBatchIsAtomic) }

func testWriterBatchIsAtomic(t *testing.T, path func(*ingest.Config)) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	failOn(t, pool, "watches", "poison")
	w := newWriter(t, pool, path)
	// The failing event comes after impressions and watches that insert fine.
	var evs []events.Any
	for i := range 10 {
		evs = append(evs, impression(fmt.Sprintf("imp-%05d", i), "u1", "a", "b"), watch(fmt.Sprintf("wat-%05d", i), "u1"))
	}
	evs = append(evs, watch("wat-poison", "poison"))
	_, err := w.Write(context.Background(), evs, "")
	if err == nil {
		t.Fatal("write with a failing event succeeded")
	}
	if errors.Is(err, ingest.ErrUnavailable) {
		t.Errorf("a rejected statement is reported as an outage: %v", err)
	}
	for _, table := range []string{"event_dedup", "impressions", "watches", "event_outbox"} {
		if n := count(t, pool, "SELECT count(*) FROM "+table); n != 0 {
			t.Errorf("%s has %d rows after a failed batch", table, n)
		}
	}
}

// TestWriterGroupFallback merges many requests into one transaction (long MaxWait, one
// worker) with one poisoned request among them: only that one fails.
func TestWriterGroupFallback(t *testing.T) { forEachPath(t, testWriterGroupFallback) }

func testWriterGroupFallback(t *testing.T, path func(*ingest.Config)) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	failOn(t, pool, "watches", "poison")
	set := metrics.NewSet()
	w := newWriter(t, pool, func(c *ingest.Config) { path(c); c.Workers = 1; c.MaxWait = 200 * time.Millisecond; c.Metrics = set })
	const n = 20
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			user := "u1"
			if i == 7 {
				user = "poison"
			}
			_, errs[i] = w.Write(context.Background(), []events.Any{watch(fmt.Sprintf("wat-%05d", i), user), impression(fmt.Sprintf("imp-%05d", i), user, "a")}, "")
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if (i == 7) != (err != nil) {
			t.Errorf("request %d: err = %v", i, err)
		}
	}
	if c := count(t, pool, "SELECT count(*) FROM watches"); c != n-1 {
		t.Errorf("watch rows = %d, want %d", c, n-1)
	}
	if c := count(t, pool, "SELECT count(*) FROM impressions WHERE user_id = 'poison'"); c != 0 {
		t.Errorf("the failed request left %d impression rows", c)
	}
	if c := len(outboxFrames(t, pool)); c != 2*(n-1) {
		t.Errorf("outbox frames = %d, want %d", c, 2*(n-1))
	}
	// The poisoned request shared a transaction with others, which the fallback saved.
	if f := set.GetOrCreateCounter(`recsys_ingest_group_fallbacks_total{writer="ingest"}`).Get(); f < 1 {
		t.Errorf("no group fallback happened (%d): the requests were not merged", f)
	}
}

// TestWriterSameIDInOneGroup: two requests of one merged group carry the same id.
func TestWriterSameIDInOneGroup(t *testing.T) { forEachPath(t, testWriterSameIDInOneGroup) }

func testWriterSameIDInOneGroup(t *testing.T, path func(*ingest.Config)) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	set := metrics.NewSet()
	w := newWriter(t, pool, func(c *ingest.Config) { path(c); c.Workers = 1; c.MaxWait = 100 * time.Millisecond; c.Metrics = set })
	var wg sync.WaitGroup
	res := make([][]ingest.Result, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			res[i], err = w.Write(context.Background(), []events.Any{watch("dup-in-group", "u1"), watch(fmt.Sprintf("own-%05d", i), "u1")}, "")
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if res[0] == nil || res[1] == nil {
		t.FailNow()
	}
	// Both requests in one transaction, or the shared id was never inside one group.
	if commits, reqs := groupCommits(set); commits != 1 || reqs != 2 {
		t.Fatalf("%d requests in %d transactions, want the two merged into one", reqs, commits)
	}
	if s := string(res[0][0].Status) + "," + string(res[1][0].Status); s != "ok,duplicate" && s != "duplicate,ok" {
		t.Errorf("statuses of the shared id = %s", s)
	}
	if res[0][1].Status != "ok" || res[1][1].Status != "ok" {
		t.Errorf("own ids: %+v %+v", res[0][1], res[1][1])
	}
	if c := count(t, pool, "SELECT count(*) FROM watches"); c != 3 {
		t.Errorf("watch rows = %d, want 3", c)
	}
}

// groupCommits returns the transactions a writer with metrics set committed and the requests
// they held.
func groupCommits(set *metrics.Set) (commits, requests int) {
	var buf strings.Builder
	set.WritePrometheus(&buf)
	for _, l := range strings.Split(buf.String(), "\n") {
		k, v, _ := strings.Cut(l, " ")
		n, _ := strconv.ParseFloat(v, 64)
		switch k {
		case `recsys_ingest_group_commit_requests_count{writer="ingest"}`:
			commits = int(n)
		case `recsys_ingest_group_commit_requests_sum{writer="ingest"}`:
			requests = int(n)
		}
	}
	return commits, requests
}

func TestWriterRejectsInvalidEvent(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	w := newWriter(t, pool, nil)
	bad := watch("short", "u1") // event_id under 8 characters
	var ve *events.ValidationError
	if _, err := w.Write(context.Background(), []events.Any{bad}, ""); !errors.As(err, &ve) {
		t.Fatalf("err = %v, want a validation error", err)
	}
}

// TestWriterValidated: WriteValidated stores what the decoders accepted with the frames and
// results Write gives, and Write still rejects an invalid event.
func TestWriterValidated(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	w := newWriter(t, pool, nil)
	ctx := context.Background()
	body := []byte(`{"events":[` + watchBody("validated-1") + `,` + watchBody("validated-2") + `]}`)
	evs, verr := events.DecodeBatch(body, events.DefaultLimits(), time.Now())
	if verr != nil {
		t.Fatal(verr)
	}
	res, err := w.WriteValidated(ctx, evs, "corr-1")
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Status != ingest.StatusOK || r.Rows != 1 || !r.OutboxEnqueued {
			t.Errorf("result %d = %+v, want ok with 1 row, enqueued", i, r)
		}
	}
	msgs := outboxFrames(t, pool)
	if len(msgs) != 2 {
		t.Fatalf("frames = %d, want 2", len(msgs))
	}
	for i, m := range msgs {
		want, _ := events.Encode(evs[i])
		if m.EventID != evs[i].ID() || m.CorrelationID != "corr-1" || string(m.Payload) != string(want) {
			t.Errorf("frame %d = %+v, want event %s, corr-1, payload %s", i, m, evs[i].ID(), want)
		}
	}
	// Write, used for events built by hand (the /reco autolog), still checks them.
	bad := watch("short", "u1")
	var ve *events.ValidationError
	if _, err := w.Write(ctx, []events.Any{bad}, ""); !errors.As(err, &ve) {
		t.Fatalf("Write err = %v, want a validation error", err)
	}
}

// TestWriterPrepared: Prepare validates (an invalid event is refused before any write), and
// WritePrepared stores the prepared events with the frame Write would have written; writing
// the same prepared events again, as a retry does, answers duplicate and adds nothing.
func TestWriterPrepared(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	w := newWriter(t, pool, nil)
	ctx := context.Background()
	var ve *events.ValidationError
	if _, err := w.Prepare([]events.Any{watch("short", "u1")}, ""); !errors.As(err, &ve) {
		t.Fatalf("Prepare err = %v, want a validation error", err)
	}
	ev := impression("prepared-1", "u1", "item-1", "item-2")
	p, err := w.Prepare([]events.Any{ev}, "corr-p")
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []ingest.Result{
		{Status: ingest.StatusOK, Rows: 2, OutboxEnqueued: true},
		{Status: ingest.StatusDuplicate},
	} {
		res, err := w.WritePrepared(ctx, p)
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		if len(res) != 1 || res[0] != want {
			t.Fatalf("write %d: results %+v, want [%+v]", i, res, want)
		}
	}
	if n := count(t, pool, "SELECT count(*) FROM impressions WHERE event_id = 'prepared-1'"); n != 2 {
		t.Fatalf("%d impression rows, want 2", n)
	}
	msgs := outboxFrames(t, pool)
	if len(msgs) != 1 {
		t.Fatalf("frames = %d, want 1", len(msgs))
	}
	want, _ := events.Encode(ev)
	if m := msgs[0]; m.EventID != "prepared-1" || m.CorrelationID != "corr-p" || string(m.Payload) != string(want) {
		t.Fatalf("frame %+v, want prepared-1, corr-p, payload %s", m, want)
	}
}

// TestWriterSubmit: Submit queues without waiting and reports the commit to its callback, as
// WritePrepared would answer; it refuses, without calling back, when the queue is full or the
// writer closed.
func TestWriterSubmit(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	cfg := ingest.DefaultConfig()
	cfg.QueueSize = 1
	w := ingest.New(pool, cfg) // not started yet: the queue fills
	t.Cleanup(w.Close)
	type answer struct {
		res []ingest.Result
		err error
	}
	answers := make(chan answer, 4)
	done := func(res []ingest.Result, err error) { answers <- answer{res, err} }
	p, err := w.Prepare([]events.Any{impression("submitted-1", "u1", "item-1", "item-2", "item-3")}, "corr-s")
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Submit(p, 0, done); err != nil {
		t.Fatalf("first submit: %v", err)
	}
	if err := w.Submit(p, 0, done); !errors.Is(err, ingest.ErrQueueFull) || !errors.Is(err, ingest.ErrUnavailable) {
		t.Fatalf("submit to a full queue: %v, want ErrQueueFull (an ErrUnavailable)", err)
	}
	w.Start()
	for i, want := range []ingest.Result{
		{Status: ingest.StatusOK, Rows: 3, OutboxEnqueued: true},
		{Status: ingest.StatusDuplicate},
	} {
		if i > 0 {
			if err := w.Submit(p, 0, done); err != nil {
				t.Fatalf("submit %d: %v", i, err)
			}
		}
		select {
		case a := <-answers:
			if a.err != nil || len(a.res) != 1 || a.res[0] != want {
				t.Fatalf("answer %d: %+v %v, want [%+v]", i, a.res, a.err, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no answer %d", i)
		}
	}
	if n := count(t, pool, "SELECT count(*) FROM impressions WHERE event_id = 'submitted-1'"); n != 3 {
		t.Fatalf("%d impression rows, want 3", n)
	}
	if msgs := outboxFrames(t, pool); len(msgs) != 1 || msgs[0].EventID != "submitted-1" || msgs[0].CorrelationID != "corr-s" {
		t.Fatalf("frames %+v, want one of submitted-1 with corr-s", msgs)
	}
	w.Close()
	if err := w.Submit(p, 0, done); !errors.Is(err, ingest.ErrClosed) {
		t.Fatalf("submit after close: %v, want ErrClosed", err)
	}
	if len(answers) != 0 {
		t.Fatalf("%d answers for refused submissions", len(answers))
	}
}

// TestWriterSubmitQueueWaitIsBounded: a submitted request no worker took within its maxWait
// is answered ErrUnavailable with nothing written (its caller writes it again, stamped anew);
// one taken in time commits.
func TestWriterSubmitQueueWaitIsBounded(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	w := ingest.New(pool, ingest.DefaultConfig()) // not started yet: the requests wait
	t.Cleanup(w.Close)
	errs := make(chan error, 2)
	submit := func(id string, maxWait time.Duration) {
		p, err := w.Prepare([]events.Any{impression(id, "u1", "item-1")}, "")
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Submit(p, maxWait, func(_ []ingest.Result, err error) { errs <- err }); err != nil {
			t.Fatalf("submit %s: %v", id, err)
		}
	}
	submit("expires-1", 50*time.Millisecond)
	submit("in-time-1", time.Minute)
	time.Sleep(100 * time.Millisecond)
	w.Start()
	for i, want := range []string{"expired", "committed"} {
		select {
		case err := <-errs:
			if want == "expired" && !errors.Is(err, ingest.ErrUnavailable) || want == "committed" && err != nil {
				t.Fatalf("answer %d: %v, want %s", i, err, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no answer %d", i)
		}
	}
	if n := count(t, pool, "SELECT count(*) FROM impressions WHERE event_id = 'expires-1'"); n != 0 {
		t.Fatalf("%d rows of the expired request, want none", n)
	}
	if n := count(t, pool, "SELECT count(*) FROM impressions WHERE event_id = 'in-time-1'"); n != 1 {
		t.Fatalf("%d rows of the request taken in time, want 1", n)
	}
}

func watchBody(id string) string {
	return fmt.Sprintf(`{"event_id":%q,"user_id":"u1","session_id":"s1","request_id":"r1","ts_ms":%d,"item_id":"item-1","watch_time_sec":3.5}`,
		id, time.Now().UnixMilli())
}

func TestWriterClose(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	w := ingest.New(pool, ingest.DefaultConfig())
	w.Start()
	if _, err := w.Write(context.Background(), []events.Any{watch("before-close", "u1")}, ""); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if _, err := w.Write(context.Background(), []events.Any{watch("after-close", "u1")}, ""); !errors.Is(err, ingest.ErrClosed) {
		t.Errorf("write after close: %v", err)
	}
}

// TestWriterOutage stops a private PostgreSQL: writes fail with ErrUnavailable within the
// timeout, then succeed again once it is back, without a new pool.
func TestWriterOutage(t *testing.T) { forEachPath(t, testWriterOutage) }

func testWriterOutage(t *testing.T, path func(*ingest.Config)) {
	pg := testutil.StartPrivate(t, "pg")
	migrateURL(t, pg.URL)
	pool := testutil.Pool(t, pg.URL)
	w := newWriter(t, pool, func(c *ingest.Config) { path(c); c.Timeout = time.Second })
	ctx := context.Background()
	if _, err := w.Write(ctx, []events.Any{watch("before-outage", "u1")}, ""); err != nil {
		t.Fatal(err)
	}
	pg.Stop()
	start := time.Now()
	_, err := w.Write(ctx, []events.Any{watch("during-outage", "u1")}, "")
	if !errors.Is(err, ingest.ErrUnavailable) {
		t.Errorf("write during outage: %v, want ErrUnavailable", err)
	}
	// Bounded by the 1 s timeout (plus scheduling slack on a loaded machine); without the bound
	// a write would hang on the pool.
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("write during outage took %s", d)
	}
	pg.Start()
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err = w.Write(ctx, []events.Any{watch("after-outage", "u1")}, "")
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("no recovery after restart: %v", err)
	}
	if c := count(t, pool, "SELECT count(*) FROM watches"); c != 2 {
		t.Errorf("watch rows = %d, want 2", c)
	}
}

func migrateURL(t *testing.T, dsn string) {
	t.Helper()
	m, err := migrate.Open(dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Up(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestWriterKindCombinations writes groups with every mix of kinds (each mix has its own
// statement) and checks every table got exactly its rows.
func TestWriterKindCombinations(t *testing.T) { forEachPath(t, testWriterKindCombinations) }

func testWriterKindCombinations(t *testing.T, path func(*ingest.Config)) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	w := newWriter(t, pool, path)
	want := map[string]int{}
	for mask := 1; mask < 8; mask++ {
		var evs []events.Any
		id := func(kind string) string { return fmt.Sprintf("mix-%d-%s", mask, kind) }
		if mask&1 != 0 {
			evs = append(evs, impression(id("imp"), "u1", "a", "b"))
			want["impressions"] += 2
		}
		if mask&2 != 0 {
			evs = append(evs, watch(id("wat"), "u1"))
			want["watches"]++
		}
		if mask&4 != 0 {
			evs = append(evs, &events.Legacy{EventID: id("leg"), UserID: "u1", ItemID: "i1", EventType: "view", Ts: time.Now().Unix()})
			want["legacy_events"]++
		}
		want["frames"] += len(evs)
		want["event_dedup"] += len(evs)
		res, err := w.Write(context.Background(), evs, "")
		if err != nil {
			t.Fatalf("kinds %03b: %v", mask, err)
		}
		for i, r := range res {
			if r.Status != ingest.StatusOK || !r.OutboxEnqueued {
				t.Errorf("kinds %03b: result %d = %+v", mask, i, r)
			}
		}
	}
	if c := len(outboxFrames(t, pool)); c != want["frames"] {
		t.Errorf("outbox frames = %d, want %d", c, want["frames"])
	}
	delete(want, "frames")
	for table, n := range want {
		if c := count(t, pool, "SELECT count(*) FROM "+table); c != n {
			t.Errorf("%s rows = %d, want %d", table, c, n)
		}
	}
}

// TestWriterStoresEachContext: the contexts of one request are encoded into one buffer; each
// row must still get its own event's context (or NULL without one).
func TestWriterStoresEachContext(t *testing.T) { forEachPath(t, testWriterStoresEachContext) }

func testWriterStoresEachContext(t *testing.T, path func(*ingest.Config)) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	w := newWriter(t, pool, path)
	str := func(s string) *string { return &s }
	a, b, c, d := watch("ctx-00001", "u1"), watch("ctx-00002", "u2"), watch("ctx-00003", "u3"), watch("ctx-00004", "u4")
	a.Context = &events.Context{Device: str("tv"), Locale: str("fr-FR")}
	c.Context = &events.Context{}
	d.Context = &events.Context{UserAgent: str("agent/1.0"), Country: str("DE")}
	if _, err := w.Write(context.Background(), []events.Any{a, b, c, d}, ""); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"ctx-00001": `{"device": "tv", "locale": "fr-FR"}`, "ctx-00002": "NULL", "ctx-00003": "{}",
		"ctx-00004": `{"country": "DE", "user_agent": "agent/1.0"}`}
	rows, err := pool.Query(context.Background(), "SELECT event_id, coalesce(context::text, 'NULL') FROM watches")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for rows.Next() {
		var id, ctx string
		if err := rows.Scan(&id, &ctx); err != nil {
			t.Fatal(err)
		}
		got[id] = ctx
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got, want) {
		t.Errorf("contexts = %v, want %v", got, want)
	}
}

// TestWriterEventIDsPerUser: an event is its user's event_id (api-contract §16.10: clients
// that number events per user or per device send other users' ids). On both write paths,
// another user's event with a stored id is stored with its frame, and the same user's is a
// duplicate, whether it was stored before, repeats within a request, shares a group with the
// other user's, or comes after a duplicate (the COPY path then probes the stored keys).
func TestWriterEventIDsPerUser(t *testing.T) { forEachPath(t, testWriterEventIDsPerUser) }

func testWriterEventIDsPerUser(t *testing.T, path func(*ingest.Config)) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	set := metrics.NewSet()
	w := newWriter(t, pool, func(c *ingest.Config) { path(c); c.Workers = 1; c.MaxWait = 100 * time.Millisecond; c.Metrics = set })
	ok := ingest.Result{Status: ingest.StatusOK, Rows: 1, OutboxEnqueued: true}
	ok2 := ingest.Result{Status: ingest.StatusOK, Rows: 2, OutboxEnqueued: true}
	dup := ingest.Result{Status: ingest.StatusDuplicate}
	// The requests of a step are written at once, so they share a group; steps run in order.
	for _, step := range []struct {
		name string
		reqs [][]events.Any
		want [][]ingest.Result
	}{
		{"first user", [][]events.Any{{watch("evt-00000001", "u1")}}, [][]ingest.Result{{ok}}},
		{"same id, another user", [][]events.Any{{watch("evt-00000001", "u2")}}, [][]ingest.Result{{ok}}},
		{"resent by the first user", [][]events.Any{{watch("evt-00000001", "u1")}}, [][]ingest.Result{{dup}}},
		{"same id, another kind, a third user", [][]events.Any{{impression("evt-00000001", "u3", "a", "b")}}, [][]ingest.Result{{ok2}}},
		{"another kind, same user", [][]events.Any{{impression("evt-00000001", "u2", "a")}}, [][]ingest.Result{{dup}}},
		{"one request, two users and a repeat", [][]events.Any{{watch("evt-00000002", "u1"), watch("evt-00000002", "u2"), watch("evt-00000002", "u1")}},
			[][]ingest.Result{{ok, ok, dup}}},
		{"one group, two users", [][]events.Any{{watch("evt-00000003", "u1")}, {watch("evt-00000003", "u2")}}, [][]ingest.Result{{ok}, {ok}}},
		{"one group, resends and a new user", [][]events.Any{{watch("evt-00000003", "u1"), watch("evt-00000003", "u3")}, {watch("evt-00000003", "u2")}},
			[][]ingest.Result{{dup, ok}, {dup}}},
	} {
		commits, _ := groupCommits(set)
		got := make([][]ingest.Result, len(step.reqs))
		var wg sync.WaitGroup
		for i, evs := range step.reqs {
			wg.Go(func() {
				var err error
				if got[i], err = w.Write(context.Background(), evs, ""); err != nil {
					t.Errorf("%s: %v", step.name, err)
				}
			})
		}
		wg.Wait()
		for i := range step.want {
			if !slices.Equal(got[i], step.want[i]) {
				t.Errorf("%s: request %d = %+v, want %+v", step.name, i, got[i], step.want[i])
			}
		}
		if after, _ := groupCommits(set); after-commits != 1 {
			t.Errorf("%s: %d transactions, want the step's requests in one group", step.name, after-commits)
		}
	}
	want := []string{"evt-00000001/u1", "evt-00000001/u2", "evt-00000001/u3", "evt-00000002/u1", "evt-00000002/u2",
		"evt-00000003/u1", "evt-00000003/u2", "evt-00000003/u3"}
	var keys []string
	rows, err := pool.Query(context.Background(), `SELECT event_id || '/' || user_id FROM event_dedup ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	if rows.Close(); !slices.Equal(keys, want) {
		t.Errorf("dedup keys = %q, want %q", keys, want)
	}
	var frames []string
	for _, f := range outboxFrames(t, pool) {
		frames = append(frames, f.EventID+"/"+f.Key)
	}
	if slices.Sort(frames); !slices.Equal(frames, want) {
		t.Errorf("outbox frames = %q, want one per key %q", frames, want)
	}
	if n := count(t, pool, "SELECT count(*) FROM watches") + count(t, pool, "SELECT count(*) FROM impression_events"); n != len(want) {
		t.Errorf("raw events = %d, want %d", n, len(want))
	}
}

// TestWriterStatementInEveryQueryExecMode: the statement path prepares its statements only
// when the pool's connections use pgx's statement cache (the default); with another
// default_query_exec_mode in the DSN (as a pooler that keeps no prepared statements needs)
// they are sent unnamed, their parameters in text as pgx would send them, and write the same:
// every kind of event with every optional field set and null, ids that need quoting in an
// array literal, and a group large enough for postgres.PresizeArgs to wrap an argument.
func TestWriterStatementInEveryQueryExecMode(t *testing.T) {
	ctx := context.Background()
	evs := mixedEvents("modes")
	for i := range 40 {
		evs = append(evs, watch(fmt.Sprintf(`modes-pad-%02d-"q\,{x} NULL`, i), `u"1,{}`))
	}
	var want []string
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe,
		pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		t.Run(mode.String(), func(t *testing.T) {
			cfg, err := pgxpool.ParseConfig(testutil.MigratedDatabase(t))
			if err != nil {
				t.Fatal(err)
			}
			cfg.ConnConfig.DefaultQueryExecMode = mode
			cfg.MaxConns = 1 // the writer's session is the one whose statements are counted
			pool, err := pgxpool.NewWithConfig(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(pool.Close)
			w := newWriter(t, pool, func(c *ingest.Config) { c.CopyMinEvents = 1 << 30 })
			for round, want := range []ingest.Status{ingest.StatusOK, ingest.StatusDuplicate} {
				res, err := w.Write(ctx, evs, "corr-1")
				if err != nil {
					t.Fatalf("write %d: %v", round, err)
				}
				for i, r := range res {
					if r.Status != want || r.OutboxEnqueued != (want == ingest.StatusOK) {
						t.Errorf("write %d, event %d: %+v, want %s", round, i, r, want)
					}
				}
			}
			named := count(t, pool, `SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'stmt\_%'`)
			if wantNamed := map[bool]int{true: 2, false: 0}[mode == pgx.QueryExecModeCacheStatement]; named != wantNamed {
				t.Errorf("%d statements prepared by the writer, want %d", named, wantNamed)
			}
			got := tableText(t, pool, "modes")
			if want == nil {
				want = got
			} else if !slices.Equal(got, want) {
				t.Errorf("stored rows differ from the cache_statement mode's:\n%s: %q\nwant:     %q", mode, got, want)
			}
		})
	}
}

// TestWriterPreparesAnewAfterDeallocate: the statement path's statements are prepared once
// per connection and kept by pgx as long as it lives. A server that lost them (DEALLOCATE ALL,
// DISCARD ALL by a pooler or an operator) fails the write that uses them; the next must not
// fail as well, on the same connection, forever.
func TestWriterPreparesAnewAfterDeallocate(t *testing.T) {
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(testutil.MigratedDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1 // the writer's statements and the DEALLOCATE share a connection
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	w := newWriter(t, pool, func(c *ingest.Config) { c.CopyMinEvents = 1 << 30; c.Workers = 1 })
	if _, err := w.Write(ctx, []events.Any{watch("prep-0001", "u1")}, ""); err != nil {
		t.Fatal(err)
	}
	// Behind pgx's back: its own DeallocateAll would forget them too.
	if _, err := pool.Exec(ctx, "DEALLOCATE ALL", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	// The first write may fail (nothing stored); a later one must succeed.
	var res []ingest.Result
	for i := range 3 {
		if res, err = w.Write(ctx, []events.Any{watch("prep-0002", "u1")}, ""); err == nil {
			break
		}
		if !errors.Is(err, ingest.ErrUnavailable) || i > 0 {
			t.Fatalf("write %d after DEALLOCATE ALL: %v", i, err)
		}
	}
	if err != nil || res[0].Status != ingest.StatusOK {
		t.Fatalf("after DEALLOCATE ALL: %+v %v, want ok", res, err)
	}
}
