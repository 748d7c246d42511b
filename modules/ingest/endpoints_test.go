package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/labstack/echo/v4"

	"recsys/pkg/events"
	"recsys/pkg/httpx"
	"recsys/pkg/infra"
	writer "recsys/pkg/ingest"
	"recsys/pkg/outbox"
	"recsys/pkg/testutil"
)

func TestEndpointResponses(t *testing.T) {
	v := newEnv(t, testutil.MigratedDatabase(t))
	cases := []struct {
		name, path, body, want string
	}{
		{"impression ok", "/log/impression", mustJSON(t, impressionBody("impression-1", 3)),
			`{"status":"ok","inserted_rows":3,"event_backbone_mode":"transactional_outbox","outbox_enqueued":true}`},
		{"impression resent with other items", "/log/impression", mustJSON(t, impressionBody("impression-1", 5)),
			`{"status":"duplicate","inserted_rows":0,"event_backbone_mode":"transactional_outbox","outbox_enqueued":false}`},
		{"watch ok", "/log/watch", mustJSON(t, watchBody("watch-000001")),
			`{"status":"ok","feature_update_mode":"async_consumer","feature_updated":false,"event_backbone_mode":"transactional_outbox","outbox_enqueued":true}`},
		{"watch resent", "/log/watch", mustJSON(t, watchBody("watch-000001")),
			`{"status":"duplicate","feature_update_mode":"async_consumer","feature_updated":false,"event_backbone_mode":"transactional_outbox","outbox_enqueued":false}`},
		{"watch with the id of an impression", "/log/watch", mustJSON(t, watchBody("impression-1")),
			`{"status":"duplicate","feature_update_mode":"async_consumer","feature_updated":false,"event_backbone_mode":"transactional_outbox","outbox_enqueued":false}`},
		{"batch mixed, one already stored", "/log/batch", mustJSON(t, map[string]any{"events": []any{watchBody("watch-000001"), watchBody("watch-000002"), impressionBody("impression-2", 2)}}),
			`{"status":"ok","count":3,"inserted_events":2,"event_backbone_mode":"transactional_outbox","outbox_enqueued":2,"feature_update_mode":"async_consumer"}`},
		{"batch all duplicates", "/log/batch", mustJSON(t, map[string]any{"events": []any{watchBody("watch-000002"), impressionBody("impression-2", 2)}}),
			`{"status":"ok","count":2,"inserted_events":0,"event_backbone_mode":"transactional_outbox","outbox_enqueued":0,"feature_update_mode":"async_consumer"}`},
		{"legacy ok", "/event", mustJSON(t, legacyBody("legacy-000001")), `{"status":"ok","event_id":"legacy-000001"}`},
		{"legacy resent", "/event", mustJSON(t, legacyBody("legacy-000001")), `{"status":"duplicate","event_id":"legacy-000001"}`},
	}
	for _, tc := range cases {
		code, resp := v.post(tc.path, tc.body)
		if code != 200 || strings.TrimSpace(resp) != tc.want {
			t.Errorf("%s: %d %s\nwant %s", tc.name, code, resp, tc.want)
		}
	}
	if n := len(v.outboxEvents()); n != 5 {
		t.Errorf("outbox events = %d, want 5", n)
	}
	for table, want := range map[string]int{"impressions": 5, "watches": 2, "legacy_events": 1, "event_dedup": 5} {
		if n := v.count("SELECT count(*) FROM " + table); n != want {
			t.Errorf("%s rows = %d, want %d", table, n, want)
		}
	}
	if got := v.metric(`recsys_ingest_events_total{endpoint="watch",kind="watch",outcome="duplicate"}`); got != 2 {
		t.Errorf("watch duplicate metric = %v", got)
	}
	if got := v.metric(`recsys_ingest_events_total{endpoint="batch",kind="impression",outcome="accepted"}`); got != 1 {
		t.Errorf("batch impression accepted metric = %v", got)
	}
	if got := v.metric(`recsys_ingest_group_commit_events_count{writer="ingest"}`); got < 1 {
		t.Errorf("group commit histogram count = %v", got)
	}
}

// TestEventIDDefaultAndStoredValues: a missing event_id is derived from the event (32 hex),
// so a resend is a duplicate; ts in seconds is stored in milliseconds, the server stamps its
// receive time, and the outbox frame carries the request's correlation ID.
func TestEventIDDefaultAndStoredValues(t *testing.T) {
	v := newEnv(t, testutil.MigratedDatabase(t))
	sec := time.Now().Unix()
	body := set(watchBody(""), "event_id", del, "ts_ms", sec, "server_received_ts_ms", 5)
	req := mustJSON(t, body)
	before := nowMs()
	for i, want := range []string{"ok", "duplicate"} { // a client's resend without an id
		if code, resp := v.post("/log/watch", req); code != 200 || !strings.Contains(resp, `"status":"`+want+`"`) {
			t.Fatalf("post %d: %d %s, want status %s", i, code, resp, want)
		}
	}
	rows, err := v.pool.Query(context.Background(), "SELECT event_id, ts_ms, server_received_ts_ms FROM watches")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var id string
		var ts, srv int64
		if err := rows.Scan(&id, &ts, &srv); err != nil {
			t.Fatal(err)
		}
		n++
		if len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" {
			t.Errorf("generated event_id %q", id)
		}
		if ts != sec*1000 {
			t.Errorf("ts_ms = %d, want %d", ts, sec*1000)
		}
		if srv < before || srv > nowMs() {
			t.Errorf("server_received_ts_ms = %d, not the receive time", srv)
		}
	}
	if n != 1 {
		t.Errorf("%d watch rows, want 1", n)
	}

	legacy := mustJSON(t, set(legacyBody(""), "event_id", del))
	var first string
	for i, want := range []string{"ok", "duplicate"} {
		code, resp := v.post("/event", legacy)
		var lr legacyResponse
		if code != 200 || json.Unmarshal([]byte(resp), &lr) != nil || len(lr.EventID) != 32 || lr.Status != want {
			t.Errorf("legacy without id, post %d: %d %s, want status %s", i, code, resp, want)
		}
		if i == 0 {
			first = lr.EventID
		} else if lr.EventID != first {
			t.Errorf("the resend's event_id %q differs from the first's %q", lr.EventID, first)
		}
	}

	// Correlation ID from the header, and the payload the consumer will decode.
	r := httptestRequest("/log/impression", mustJSON(t, impressionBody("impression-9", 2)))
	r.Header.Set(httpx.HeaderCorrelationID, "corr-abcdef01")
	rec := serveRecorder(v, r)
	if rec.Code != 200 {
		t.Fatalf("impression: %d %s", rec.Code, rec.Body)
	}
	var ob, leg *outboxEvent
	all := v.outboxEvents()
	for i := range all {
		switch {
		case all[i].EventID == "impression-9":
			ob = &all[i]
		case all[i].EventType == "legacy":
			leg = &all[i]
		}
	}
	if ob == nil || leg == nil {
		t.Fatalf("outbox frames of impression-9 (%v) or of the legacy event (%v) missing", ob, leg)
	}
	lane := outbox.LaneKey(outbox.Lane("user-1", infra.DefaultConfig().OutboxLanes))
	if ob.CorrelationID != "corr-abcdef01" || ob.EventType != "impression" || ob.rowType != "impression" || ob.topic != "recsys.impressions.v1" ||
		ob.Key != "user-1" || ob.rowKey != lane {
		t.Errorf("outbox frame: %+v, want lane key %s", *ob, lane)
	}
	payload := ob.Payload
	ev, err := events.DecodePayload(events.Kind(ob.EventType), payload)
	if err != nil {
		t.Fatal(err)
	}
	imp := ev.(*events.Impression)
	if len(imp.Items) != 2 || imp.Items[1].FeedID == nil || *imp.Items[1].FeedID != "home" || imp.Items[1].Slot != nil {
		t.Errorf("payload items %+v", imp.Items)
	}
	if strings.Contains(string(payload), "null") {
		t.Errorf("payload has null fields: %s", payload)
	}
	// Legacy events ride in the watches topic's rows.
	if leg.topic != "recsys.watches.v1" || leg.rowType != "watch" || !strings.Contains(string(leg.Payload), `"event_type":"click"`) {
		t.Errorf("legacy outbox frame: %s %s %s", leg.topic, leg.rowType, leg.Payload)
	}
}

// TestResendsWithoutEventID: a client that resends an event without an event_id (a lost
// answer, a retried queue) stores it once with --ingest.missing-event-id=content, the
// default, on every endpoint and inside one batch; "random" stores every send, as the
// original service did (api-contract §16.10).
func TestResendsWithoutEventID(t *testing.T) {
	noID := func(b map[string]any) map[string]any { return set(b, "event_id", del) }
	watch, imp, legacy := noID(watchBody("")), noID(impressionBody("", 3)), noID(legacyBody(""))
	otherWatch := set(noID(watchBody("")), "watch_time_sec", 31)
	batch := func(evs ...any) map[string]any { return map[string]any{"events": evs} }
	for _, mode := range []string{MissingIDContent, MissingIDRandom} {
		t.Run(mode, func(t *testing.T) {
			v := newEnv(t, testutil.MigratedDatabase(t), func(c *Config, _ *httpx.Config) { c.MissingEventID = mode })
			content := mode == MissingIDContent
			pick := func(ifContent, ifRandom string) string {
				if content {
					return ifContent
				}
				return ifRandom
			}
			cases := []struct {
				name, path string
				body       map[string]any
				want       string // a substring of the answer
			}{
				{"watch", "/log/watch", watch, `"status":"ok"`},
				{"watch resent", "/log/watch", watch, pick(`"status":"duplicate"`, `"status":"ok"`)},
				{"another watch time is another watch", "/log/watch", otherWatch, `"status":"ok"`},
				{"impression", "/log/impression", imp, `"status":"ok","inserted_rows":3`},
				{"impression resent", "/log/impression", imp, pick(`"status":"duplicate","inserted_rows":0`, `"status":"ok","inserted_rows":3`)},
				{"batch of both, resent", "/log/batch", batch(watch, imp), pick(`"count":2,"inserted_events":0`, `"count":2,"inserted_events":2`)},
				{"one event twice in a batch", "/log/batch", batch(set(maps.Clone(watch), "request_id", "req-2"), set(maps.Clone(watch), "request_id", "req-2")),
					pick(`"count":2,"inserted_events":1`, `"count":2,"inserted_events":2`)},
				{"legacy", "/event", legacy, `"status":"ok"`},
				{"legacy resent", "/event", legacy, pick(`"status":"duplicate"`, `"status":"ok"`)},
			}
			for _, tc := range cases {
				if code, resp := v.post(tc.path, mustJSON(t, tc.body)); code != 200 || !strings.Contains(resp, tc.want) {
					t.Errorf("%s: %d %s, want %s", tc.name, code, resp, tc.want)
				}
			}
			want := map[string]int{"watches": 3, "impressions": 3, "legacy_events": 1}
			if !content {
				want = map[string]int{"watches": 6, "impressions": 9, "legacy_events": 2}
			}
			for table, n := range want {
				if got := v.count("SELECT count(*) FROM " + table); got != n {
					t.Errorf("%s rows = %d, want %d", table, got, n)
				}
			}
			if got, n := v.count("SELECT count(*) FROM event_dedup"), want["watches"]+1+want["legacy_events"]; content && got != n {
				t.Errorf("event_dedup rows = %d, want %d", got, n)
			}
		})
	}
}

// TestContract: /contract serves the contract's KPI targets, the latency targets it is given
// (cmd sets them from the reco module's, those /metrics/reco judges against; the contract's
// by default) and this process' event limits.
func TestContract(t *testing.T) {
	for _, tc := range []struct {
		name     string
		p95, p99 float64 // 0: the default
		sla      string
	}{
		{"defaults", 0, 0, `"sla_targets":{"reco_p95_ms":120,"reco_p99_ms":200,"api_error_rate_pct":1.0}`},
		{"configured", 90, 150.5, `"sla_targets":{"reco_p95_ms":90,"reco_p99_ms":150.5,"api_error_rate_pct":1.0}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newEnv(t, testutil.MigratedDatabase(t), func(c *Config, h *httpx.Config) {
				c.MaxBatchSize = 250
				if tc.p95 != 0 {
					c.SLATargetP95Ms, c.SLATargetP99Ms = tc.p95, tc.p99
				}
			})
			code, resp := v.do(http.MethodGet, "/contract", "", "")
			want := `{"kpi_targets":{"ctr_at_20":">= 8%","avg_watch_time_sec":">= 35","catalog_coverage_at_20":">= 60%"},` +
				tc.sla + `,"event_contract":{"max_event_future_ms":300000,"max_event_age_ms":2592000000,"max_batch_size":250}}`
			if code != 200 || strings.TrimSpace(resp) != want {
				t.Errorf("GET /contract: %d %s\nwant %s", code, resp, want)
			}
		})
	}
}

// TestConcurrentSameEvent: 50 clients post the same event at once; exactly one is stored.
func TestConcurrentSameEvent(t *testing.T) {
	v := newEnv(t, testutil.MigratedDatabase(t))
	url := v.serve()
	client := loadClient(50)
	for _, ep := range []struct{ path, body string }{
		{"/log/watch", mustJSON(t, watchBody("concurrent-1"))},
		{"/log/impression", mustJSON(t, impressionBody("concurrent-2", 4))},
		{"/event", mustJSON(t, legacyBody("concurrent-3"))},
	} {
		var wg sync.WaitGroup
		var ok, dup, other atomic.Int32
		start := make(chan struct{})
		for range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				code, body, err := postHTTP(client, url+ep.path, []byte(ep.body))
				switch {
				case err != nil || code != 200:
					t.Errorf("%s: %d %s %v", ep.path, code, body, err)
					other.Add(1)
				case strings.Contains(string(body), `"status":"ok"`):
					ok.Add(1)
				case strings.Contains(string(body), `"status":"duplicate"`):
					dup.Add(1)
				}
			}()
		}
		close(start)
		wg.Wait()
		if ok.Load() != 1 || dup.Load() != 49 {
			t.Errorf("%s: ok=%d duplicate=%d other=%d, want 1/49/0", ep.path, ok.Load(), dup.Load(), other.Load())
		}
	}
	if n := len(v.outboxEvents()); n != 3 {
		t.Errorf("outbox events = %d, want 3", n)
	}
	for table, want := range map[string]int{"watches": 1, "impressions": 4, "legacy_events": 1, "event_dedup": 3} {
		if n := v.count("SELECT count(*) FROM " + table); n != want {
			t.Errorf("%s rows = %d, want %d", table, n, want)
		}
	}
}

// TestBatchAtomicity: a batch whose insert fails on its last event leaves no row at all, and
// concurrent requests merged into the same transaction are still stored.
func TestBatchAtomicity(t *testing.T) {
	v := newEnv(t, testutil.MigratedDatabase(t), func(c *Config, h *httpx.Config) {
		c.GroupCommitWorkers = 1
		c.GroupCommitMaxWait = 50 * time.Millisecond
	})
	_, err := v.pool.Exec(context.Background(), `
CREATE FUNCTION fail_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.user_id = 'poison' THEN RAISE EXCEPTION 'poison row %', NEW.event_id USING ERRCODE = '23514'; END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER fail_poison BEFORE INSERT ON watches FOR EACH ROW EXECUTE FUNCTION fail_poison();`)
	if err != nil {
		t.Fatal(err)
	}
	var evs []any
	for i := range 20 {
		evs = append(evs, impressionBody(fmt.Sprintf("batch-imp-%03d", i), 3), watchBody(fmt.Sprintf("batch-wat-%03d", i)))
	}
	evs = append(evs, set(watchBody("batch-poison"), "user_id", "poison"))
	bad := mustJSON(t, map[string]any{"events": evs})

	var wg sync.WaitGroup
	var badCode int
	var badResp string
	goodCodes := make([]int, 10)
	wg.Add(1)
	go func() {
		defer wg.Done()
		badCode, badResp = v.post("/log/batch", bad)
	}()
	for i := range goodCodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			goodCodes[i], _ = v.post("/log/watch", mustJSON(t, watchBody(fmt.Sprintf("good-watch-%02d", i))))
		}()
	}
	wg.Wait()
	if badCode != http.StatusServiceUnavailable || badResp != `{"detail":"failed to persist batch events: database error"}`+"\n" {
		t.Errorf("failing batch: %d %s", badCode, badResp)
	}
	for i, c := range goodCodes {
		if c != 200 {
			t.Errorf("concurrent watch %d: %d", i, c)
		}
	}
	if n := v.count("SELECT count(*) FROM impressions"); n != 0 {
		t.Errorf("the failed batch left %d impression rows", n)
	}
	if n := v.count("SELECT count(*) FROM watches WHERE event_id LIKE 'batch-%'"); n != 0 {
		t.Errorf("the failed batch left %d watch rows", n)
	}
	left := 0
	for _, e := range v.outboxEvents() {
		if strings.HasPrefix(e.EventID, "batch-") {
			left++
		}
	}
	if left != 0 {
		t.Errorf("the failed batch left %d outbox frames", left)
	}
	if n := v.count("SELECT count(*) FROM watches"); n != 10 {
		t.Errorf("watch rows = %d, want the 10 concurrent ones", n)
	}
	// The failing batch shared a transaction with some of them, which the fallback saved.
	if n := v.metric(`recsys_ingest_group_fallbacks_total{writer="ingest"}`); n < 1 {
		t.Errorf("group fallbacks = %v: the failing batch was not merged with the concurrent watches", n)
	}
}

// TestOutage: PostgreSQL stopped → 503 with the contract's detail within the write timeout;
// PostgreSQL back → 200 again without a restart.
func TestOutage(t *testing.T) {
	pg := testutil.StartPrivate(t, "pg")
	migrateURL(t, pg.URL)
	v := newEnv(t, pg.URL)
	if code, resp := v.post("/log/watch", mustJSON(t, watchBody("before-outage"))); code != 200 {
		t.Fatalf("%d %s", code, resp)
	}
	pg.Stop()
	for _, ep := range []struct{ path, body, detail string }{
		{"/log/watch", mustJSON(t, watchBody("during-outage-1")), "failed to persist watch event: database unavailable"},
		{"/log/impression", mustJSON(t, impressionBody("during-outage-2", 2)), "failed to persist impression event: database unavailable"},
		{"/log/batch", mustJSON(t, map[string]any{"events": []any{watchBody("during-outage-3")}}), "failed to persist batch events: database unavailable"},
		{"/event", mustJSON(t, legacyBody("during-outage-4")), "failed to persist event: database unavailable"},
	} {
		start := time.Now()
		code, resp := v.post(ep.path, ep.body)
		took := time.Since(start)
		if code != http.StatusServiceUnavailable || strings.TrimSpace(resp) != `{"detail":"`+ep.detail+`"}` {
			t.Errorf("%s during outage: %d %s", ep.path, code, resp)
		}
		// The bound is --ingest.write-timeout (1 s); 3 s leaves room for a loaded machine.
		if took > 3*time.Second {
			t.Errorf("%s during outage took %s", ep.path, took)
		}
	}
	if got := v.metric(`recsys_ingest_rejected_total{endpoint="watch",reason="unavailable"}`); got != 1 {
		t.Errorf("unavailable metric = %v", got)
	}
	pg.Start()
	deadline := time.Now().Add(20 * time.Second)
	code, resp := 0, ""
	for time.Now().Before(deadline) {
		if code, resp = v.post("/log/watch", mustJSON(t, watchBody("after-outage"))); code == 200 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if code != 200 {
		t.Fatalf("no recovery: %d %s", code, resp)
	}
	if n := v.count("SELECT count(*) FROM watches"); n != 2 {
		t.Errorf("watch rows = %d, want 2 (before and after)", n)
	}
}

// TestCrashSafety restarts PostgreSQL under load: every event acknowledged with 200 must be
// stored exactly once (raw row, dedup row, outbox frame), and nothing half-written may remain.
func TestCrashSafety(t *testing.T) {
	pg := testutil.StartPrivate(t, "pg")
	migrateURL(t, pg.URL)
	v := newEnv(t, pg.URL)
	url := v.serve()
	client := loadClient(16)

	var mu sync.Mutex
	var acked []string // event ids answered 200 "ok"
	var sent, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var path string
				var body []byte
				var ids []string
				if g%4 == 0 { // some batches, to cover the multi-event transaction
					var evs []any
					for j := range 20 {
						id := fmt.Sprintf("crash-b%02d-%06d-%02d", g, i, j)
						ids = append(ids, id)
						if j%2 == 0 {
							evs = append(evs, watchBody(id))
						} else {
							evs = append(evs, impressionBody(id, 3))
						}
					}
					path, body = "/log/batch", []byte(mustJSON(t, map[string]any{"events": evs}))
				} else {
					id := fmt.Sprintf("crash-w%02d-%06d", g, i)
					ids = []string{id}
					path, body = "/log/watch", []byte(mustJSON(t, watchBody(id)))
				}
				sent.Add(1)
				code, resp, err := postHTTP(client, url+path, body)
				if err != nil || code != 200 {
					failed.Add(1)
					if err == nil && code != http.StatusServiceUnavailable {
						t.Errorf("%s: unexpected %d %s", path, code, resp)
					}
					time.Sleep(20 * time.Millisecond)
					continue
				}
				if path == "/log/batch" && !strings.Contains(string(resp), `"inserted_events":20`) {
					t.Errorf("batch answered %s", resp)
				}
				mu.Lock()
				acked = append(acked, ids...)
				mu.Unlock()
			}
		}()
	}
	time.Sleep(700 * time.Millisecond)
	t0 := time.Now()
	pg.Stop()
	t.Logf("stop took %s", time.Since(t0))
	time.Sleep(500 * time.Millisecond)
	t0 = time.Now()
	pg.Start()
	t.Logf("start took %s", time.Since(t0))
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	t0 = time.Now()
	wg.Wait()
	t.Logf("load stop took %s", time.Since(t0))
	t.Logf("requests sent=%d failed=%d, events acknowledged=%d", sent.Load(), failed.Load(), len(acked))
	if failed.Load() == 0 {
		t.Error("no request failed: the restart did not happen under load")
	}
	if len(acked) == 0 {
		t.Fatal("no event was acknowledged")
	}

	// Every acknowledged id exactly once in dedup and outbox, and with its raw rows.
	ctx := context.Background()
	var missing, extraOutbox, badRaw int
	// Hash joins over per-event counts: the raw tables have no event_id index (event_dedup is
	// the uniqueness guard), so correlated lookups would scan them per id.
	// The outbox counts are the frames of the batch rows, decoded here.
	obIDs, obCounts := []string{}, []int32{}
	for id, c := range v.outboxCounts() {
		obIDs, obCounts = append(obIDs, id), append(obCounts, int32(c))
	}
	const counts = `
WITH w AS (SELECT event_id, count(*) AS c FROM watches GROUP BY 1),
     i AS (SELECT event_id, count(*) AS c FROM impressions GROUP BY 1),
     o AS (SELECT * FROM unnest($1::text[], $2::int4[]) AS o(event_id, c))`
	err := v.pool.QueryRow(ctx, counts+`, a AS (SELECT unnest($3::text[]) AS id)
SELECT count(*) FILTER (WHERE d.event_id IS NULL),
       count(*) FILTER (WHERE coalesce(o.c, 0) <> 1),
       count(*) FILTER (WHERE coalesce(w.c, 0) + coalesce(i.c, 0) NOT IN (1, 3))
FROM a LEFT JOIN event_dedup d ON d.event_id = a.id LEFT JOIN w ON w.event_id = a.id
       LEFT JOIN i ON i.event_id = a.id LEFT JOIN o ON o.event_id = a.id`, obIDs, obCounts, acked).
		Scan(&missing, &extraOutbox, &badRaw)
	if err != nil {
		t.Fatal(err)
	}
	if missing != 0 || extraOutbox != 0 || badRaw != 0 {
		t.Errorf("acknowledged events: %d missing, %d without exactly one outbox frame, %d with wrong raw rows", missing, extraOutbox, badRaw)
	}
	// Nothing half-written: every stored event (acknowledged or not) is complete.
	var torn int
	err = v.pool.QueryRow(ctx, counts+`
SELECT count(*) FROM event_dedup d LEFT JOIN w ON w.event_id = d.event_id LEFT JOIN i ON i.event_id = d.event_id
       LEFT JOIN o ON o.event_id = d.event_id
WHERE coalesce(o.c, 0) <> 1 OR coalesce(w.c, 0) + coalesce(i.c, 0) NOT IN (1, 3)`, obIDs, obCounts).Scan(&torn)
	if err != nil || torn != 0 {
		t.Errorf("%d half-written events (%v)", torn, err)
	}
	var dupRaw int
	if err := v.pool.QueryRow(ctx, `SELECT count(*) FROM (SELECT event_id FROM watches GROUP BY event_id HAVING count(*) > 1) x`).Scan(&dupRaw); err != nil || dupRaw != 0 {
		t.Errorf("%d watch events stored twice (%v)", dupRaw, err)
	}
}

// TestRetention deletes raw rows and dedup keys older than their retention, in batches.
func TestRetention(t *testing.T) {
	// Fewer than the 3 old rows of each table: a pass takes them in more than one statement.
	v := newEnv(t, testutil.MigratedDatabase(t), func(c *Config, h *httpx.Config) { c.RetentionBatchSize = 2 })
	for i := range 5 {
		if code, resp := v.post("/log/impression", mustJSON(t, impressionBody(fmt.Sprintf("ret-imp-%02d", i), 2))); code != 200 {
			t.Fatalf("%d %s", code, resp)
		}
		if code, resp := v.post("/log/watch", mustJSON(t, watchBody(fmt.Sprintf("ret-wat-%02d", i)))); code != 200 {
			t.Fatalf("%d %s", code, resp)
		}
	}
	ctx := context.Background()
	// Age the first three of each kind: 40 days for raw rows and dedup keys.
	for _, q := range []string{
		`UPDATE impression_events SET created_at = now() - interval '40 days' WHERE event_id < 'ret-imp-03'`,
		`UPDATE watches SET created_at = now() - interval '40 days' WHERE event_id < 'ret-wat-03'`,
		`UPDATE event_dedup SET created_at = now() - interval '40 days' WHERE event_id IN ('ret-imp-00', 'ret-wat-00')`,
		`UPDATE event_dedup SET created_at = now() - interval '30 days 12 hours' WHERE event_id IN ('ret-imp-01')`,
	} {
		if _, err := v.pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.mod.retentionPass(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	for q, want := range map[string]int{
		"SELECT count(*) FROM impressions": 4, // 2 events × 2 items left
		"SELECT count(*) FROM watches":     2,
		"SELECT count(*) FROM event_dedup": 8, // 30.5 days is within the 31-day dedup retention
	} {
		if n := v.count(q); n != want {
			t.Errorf("%s = %d, want %d", q, n, want)
		}
	}
	if got := v.metric(`recsys_ingest_retention_deleted_total{table="impression_events"}`); got != 3 { // one row per event
		t.Errorf("retention metric = %v, want 3", got)
	}

	// Retention disabled: nothing is deleted.
	off := newEnv(t, testutil.MigratedDatabase(t), func(c *Config, h *httpx.Config) { c.RawRetention, c.DedupRetention = 0, 0 })
	if code, resp := off.post("/log/watch", mustJSON(t, watchBody("kept-watch-1"))); code != 200 {
		t.Fatalf("%d %s", code, resp)
	}
	if _, err := off.pool.Exec(ctx, `UPDATE watches SET created_at = now() - interval '400 days'`); err != nil {
		t.Fatal(err)
	}
	if _, err := off.pool.Exec(ctx, `UPDATE event_dedup SET created_at = now() - interval '400 days'`); err != nil {
		t.Fatal(err)
	}
	if err := off.mod.retentionPass(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	if n := off.count("SELECT count(*) FROM watches") + off.count("SELECT count(*) FROM event_dedup"); n != 2 {
		t.Errorf("retention 0 deleted rows: %d of 2 left", n)
	}
}

// TestSlowDatabase: a statement stuck behind a lock answers 503 within the write timeout
// (the pgx context cancels it server-side), and writes succeed once the lock is gone.
func TestSlowDatabase(t *testing.T) {
	v := newEnv(t, testutil.MigratedDatabase(t), func(c *Config, h *httpx.Config) { c.WriteTimeout = 500 * time.Millisecond })
	ctx := context.Background()
	tx, err := v.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE watches IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	code, resp := v.post("/log/watch", mustJSON(t, watchBody("slow-db-0001")))
	took := time.Since(start)
	if code != http.StatusServiceUnavailable || !strings.Contains(resp, "failed to persist watch event: database unavailable") {
		t.Errorf("locked table: %d %s", code, resp)
	}
	if took > 2*time.Second {
		t.Errorf("locked table answered after %s", took)
	}
	// The writer's own timeout (also 500 ms, started when it sent the statement) cancels the
	// statement just after the response; give it time before the lock goes away.
	time.Sleep(500 * time.Millisecond)
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if code, resp := v.post("/log/watch", mustJSON(t, watchBody("slow-db-0002"))); code != 200 {
		t.Errorf("after the lock: %d %s", code, resp)
	}
	// The timed-out write was rolled back: its id is free, so a retry stores it.
	if code, resp := v.post("/log/watch", mustJSON(t, watchBody("slow-db-0001"))); code != 200 || !strings.Contains(resp, `"status":"ok"`) {
		t.Errorf("retry of the timed-out write: %d %s", code, resp)
	}
}

// TestWatchResponseBytes: the pre-encoded /log/watch answers are byte for byte what c.JSON
// writes (trailing newline, content type), and ?pretty still indents.
func TestWatchResponseBytes(t *testing.T) {
	v := newEnv(t, testutil.MigratedDatabase(t))
	want := `{"status":"ok","feature_update_mode":"async_consumer","feature_updated":false,"event_backbone_mode":"transactional_outbox","outbox_enqueued":true}` + "\n"
	rec := serveRecorder(v, httptestRequest("/log/watch", mustJSON(t, watchBody("bytes-000001"))))
	if rec.Code != 200 || rec.Body.String() != want || rec.Header().Get(echo.HeaderContentType) != echo.MIMEApplicationJSON {
		t.Errorf("fast path: %d %q %q", rec.Code, rec.Body.String(), rec.Header().Get(echo.HeaderContentType))
	}
	rec = serveRecorder(v, httptestRequest("/log/watch?pretty", mustJSON(t, watchBody("bytes-000002"))))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), "{\n  \"status\": \"ok\"") {
		t.Errorf("pretty: %d %q", rec.Code, rec.Body.String())
	}
}

// TestOversizedEventIsRefused: an event encoding to more than --ingest.max-event-bytes is a
// 422 naming the field that makes it so (or the event when no single field does; in a batch,
// the event's index), and nothing of the request is stored: the relay could never publish it,
// and it would take the other events of its outbox row down with it.
func TestOversizedEventIsRefused(t *testing.T) {
	v := newEnv(t, testutil.MigratedDatabase(t), func(c *Config, h *httpx.Config) { c.MaxEventBytes = 8192 })
	withUA := func(b map[string]any, n int) map[string]any {
		b["context"] = map[string]any{"user_agent": strings.Repeat("A", n)}
		return b
	}
	bigFeed := impressionBody("big-feed-0001", 3)
	bigFeed["items"].([]any)[1].(map[string]any)["feed_id"] = strings.Repeat("f", 9000)
	manyItems := impressionBody("many-items-01", 300)
	cases := []struct {
		name, path, body string
		loc              []any
	}{
		{"watch context", "/log/watch", mustJSON(t, withUA(watchBody("big-ua-00001"), 9000)), []any{"body", "context", "user_agent"}},
		{"impression item feed_id", "/log/impression", mustJSON(t, bigFeed), []any{"body", "items", 1, "feed_id"}},
		{"impression of many items", "/log/impression", mustJSON(t, manyItems), []any{"body"}},
		{"second event of a batch", "/log/batch", mustJSON(t, map[string]any{"events": []any{watchBody("fits-000001"), withUA(watchBody("big-ua-00002"), 9000)}}),
			[]any{"body", "events", 1, "context", "user_agent"}},
	}
	for _, tc := range cases {
		code, resp := v.post(tc.path, tc.body)
		var out struct{ Detail []events.FieldError }
		_ = json.Unmarshal([]byte(resp), &out)
		if code != http.StatusUnprocessableEntity || len(out.Detail) != 1 || out.Detail[0].Type != "event_too_large" ||
			fmt.Sprint(out.Detail[0].Loc) != fmt.Sprint(tc.loc) {
			t.Errorf("%s: %d %.300s\nwant 422 event_too_large at %v", tc.name, code, resp, tc.loc)
		}
	}
	if n := v.count("SELECT count(*) FROM event_dedup"); n != 0 {
		t.Errorf("refused requests stored %d events", n)
	}
	if got := v.metric(`recsys_ingest_rejected_total{endpoint="batch",reason="event_too_large"}`); got != 1 {
		t.Errorf("event_too_large metric = %v", got)
	}

	// With the defaults, an event larger than the relay's default message limit (1 MiB) is
	// refused too.
	def := newEnv(t, testutil.MigratedDatabase(t))
	if code, resp := def.post("/log/watch", mustJSON(t, withUA(watchBody("big-ua-00003"), 3<<20))); code != http.StatusUnprocessableEntity {
		t.Errorf("3 MiB context with the defaults: %d %.300s", code, resp)
	}
}

// TestQueuedWriteAnswersItsOutcome: a request that waited in the writer's queue until shortly
// before its deadline and was then taken for a commit is answered with that commit's outcome
// (the commit is bounded by the writer's own timeout), never a 503 for events that are then
// stored: a client retry without event_id would store them twice.
func TestQueuedWriteAnswersItsOutcome(t *testing.T) {
	v := newEnv(t, testutil.MigratedDatabase(t), func(c *Config, h *httpx.Config) {
		c.WriteTimeout = time.Second
		c.GroupCommitWorkers = 1
	})
	ctx := context.Background()
	// Uncommitted dedup keys make the writes of X and B wait: X holds the only worker while B
	// waits in the queue.
	hold := func(id string) func() {
		tx, err := v.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO event_dedup (event_id, user_id, event_type) VALUES ($1, 'user-1', 'watch')", id); err != nil {
			t.Fatal(err)
		}
		return func() { _ = tx.Rollback(ctx) }
	}
	releaseX, releaseB := hold("late-x-0001"), hold("late-b-0001")
	var wg sync.WaitGroup
	var codeB int
	var respB string
	wg.Go(func() { v.post("/log/watch", mustJSON(t, watchBody("late-x-0001"))) })
	time.Sleep(100 * time.Millisecond)
	wg.Go(func() { codeB, respB = v.post("/log/watch", mustJSON(t, watchBody("late-b-0001"))) })
	time.Sleep(700 * time.Millisecond)
	releaseX() // B is taken at ~0.8 s, with ~0.3 s left of its deadline
	time.Sleep(400 * time.Millisecond)
	// B's statement completes at ~1.2 s, within the writer's timeout and before the server is
	// asked to cancel it (1.55 s: its 1 s less the grace of pkg/ingest's boundOnServer).
	releaseB()
	wg.Wait()
	n := v.count("SELECT count(*) FROM watches WHERE event_id = 'late-b-0001'")
	switch {
	case codeB == http.StatusServiceUnavailable && n != 0:
		t.Errorf("B answered 503 but its event was stored: %s", respB)
	case codeB == http.StatusOK && n != 1:
		t.Errorf("B answered 200 but %d rows are stored", n)
	case codeB != http.StatusOK:
		t.Errorf("B: %d %s, want 200 (its commit finished within the writer's timeout)", codeB, respB)
	}
}

// TestWriteDuringShutdown: a write reaching a closed writer is a 503 saying the service is
// shutting down (nothing was written), counted apart from database failures.
func TestWriteDuringShutdown(t *testing.T) {
	v := newEnv(t, testutil.MigratedDatabase(t))
	v.mod.w.Close()
	code, resp := v.post("/log/watch", mustJSON(t, watchBody("after-close-1")))
	if code != http.StatusServiceUnavailable || strings.TrimSpace(resp) != `{"detail":"failed to persist watch event: service is shutting down"}` {
		t.Errorf("write after close: %d %s", code, resp)
	}
	if got := v.metric(`recsys_ingest_rejected_total{endpoint="watch",reason="shutdown"}`); got != 1 {
		t.Errorf("shutdown metric = %v", got)
	}
}

// TestHealthExportsOutboxBacklog: the health details carry the outbox snapshot and set the
// contract's backlog gauges, so an api pod without a relay exports them; the query runs at
// most once a second however often health is asked.
func TestHealthExportsOutboxBacklog(t *testing.T) {
	v := newEnv(t, testutil.MigratedDatabase(t))
	pending := func() (outbox.Backlog, float64) {
		eb := v.mod.HealthDetails(context.Background())["event_backbone"].(map[string]any)
		b, _ := eb["outbox"].(outbox.Backlog)
		var buf bytes.Buffer
		metrics.WritePrometheus(&buf, false)
		for _, line := range strings.Split(buf.String(), "\n") {
			if rest, ok := strings.CutPrefix(line, `reco_outbox_backlog_events{status="pending"} `); ok {
				f, _ := strconv.ParseFloat(rest, 64)
				return b, f
			}
		}
		return b, -1
	}
	for i := range 2 {
		if code, resp := v.post("/log/watch", mustJSON(t, watchBody(fmt.Sprintf("backlog-%05d", i)))); code != 200 {
			t.Fatalf("%d %s", code, resp)
		}
	}
	asked := time.Now() // the snapshot below is taken, and its age counted, after this
	if b, g := pending(); b.Pending != 2 || g != 2 {
		t.Fatalf("snapshot pending %d, gauge %v; want 2", b.Pending, g)
	}
	if code, resp := v.post("/log/watch", mustJSON(t, watchBody("backlog-00003"))); code != 200 {
		t.Fatalf("%d %s", code, resp)
	}
	// On a loaded machine (-race, packages in parallel) the write may outlast the cache: the
	// snapshot is then rightly taken again, and the cache cannot be checked.
	if took := time.Since(asked); took < snapshotEvery/2 {
		if b, g := pending(); b.Pending != 2 || g != 2 {
			t.Errorf("within a second: snapshot pending %d, gauge %v; want the cached 2", b.Pending, g)
		}
	} else {
		t.Logf("the write took %s of the snapshot's %s: the cached snapshot is not checked", took, snapshotEvery)
	}
	time.Sleep(snapshotEvery)
	if b, g := pending(); b.Pending != 3 || g != 3 {
		t.Errorf("after a second: snapshot pending %d, gauge %v; want 3", b.Pending, g)
	}
}

// TestEventIDsArePerUser: clients that number their events per user or per device send ids
// that other users' clients send too (api-contract §16.10). On every endpoint another user's
// event with a stored id is stored and enqueued, while a resend by the same user, of any kind,
// is a duplicate; /log/batch still refuses one id twice in a request, whatever the users
// (the contract's rule).
func TestEventIDsArePerUser(t *testing.T) {
	v := newEnv(t, testutil.MigratedDatabase(t))
	as := func(body map[string]any, user string) map[string]any { return set(body, "user_id", user) }
	batch := func(evs ...map[string]any) map[string]any { return map[string]any{"events": evs} }
	const ok, dup = `"status":"ok"`, `"status":"duplicate"`
	cases := []struct {
		name, path string
		body       map[string]any
		code       int
		want       string // a substring of the answer
	}{
		{"impression", "/log/impression", as(impressionBody("evt-00000001", 2), "user-a"), 200, `"status":"ok","inserted_rows":2,"event_backbone_mode":"transactional_outbox","outbox_enqueued":true`},
		{"impression, same id, another user", "/log/impression", as(impressionBody("evt-00000001", 2), "user-b"), 200, `"status":"ok","inserted_rows":2,"event_backbone_mode":"transactional_outbox","outbox_enqueued":true`},
		{"impression resent", "/log/impression", as(impressionBody("evt-00000001", 2), "user-a"), 200, `"status":"duplicate","inserted_rows":0`},
		{"watch with that id, a third user", "/log/watch", as(watchBody("evt-00000001"), "user-c"), 200, ok},
		{"watch with that id, same user", "/log/watch", as(watchBody("evt-00000001"), "user-b"), 200, dup},
		{"watch", "/log/watch", as(watchBody("evt-00000002"), "user-a"), 200, `"status":"ok","feature_update_mode":"async_consumer","feature_updated":false,"event_backbone_mode":"transactional_outbox","outbox_enqueued":true`},
		{"watch, same id, another user", "/log/watch", as(watchBody("evt-00000002"), "user-b"), 200, `"outbox_enqueued":true`},
		{"watch resent", "/log/watch", as(watchBody("evt-00000002"), "user-b"), 200, dup},
		{"event", "/event", as(legacyBody("evt-00000003"), "user-a"), 200, `{"status":"ok","event_id":"evt-00000003"}`},
		{"event, same id, another user", "/event", as(legacyBody("evt-00000003"), "user-b"), 200, `{"status":"ok","event_id":"evt-00000003"}`},
		{"event resent", "/event", as(legacyBody("evt-00000003"), "user-b"), 200, `{"status":"duplicate","event_id":"evt-00000003"}`},
		{"batch", "/log/batch", batch(as(watchBody("evt-00000004"), "user-a"), as(impressionBody("evt-00000005", 1), "user-b")), 200, `"count":2,"inserted_events":2`},
		{"batch, same ids, other users", "/log/batch", batch(as(watchBody("evt-00000005"), "user-a"), as(impressionBody("evt-00000004", 1), "user-b")), 200, `"count":2,"inserted_events":2`},
		{"batch resent", "/log/batch", batch(as(watchBody("evt-00000004"), "user-a"), as(impressionBody("evt-00000005", 1), "user-b")), 200, `"count":2,"inserted_events":0`},
		{"batch, one id from two users", "/log/batch", batch(as(watchBody("evt-00000006"), "user-a"), as(watchBody("evt-00000006"), "user-b")), 422, "batch events must have unique event_id"},
	}
	for _, tc := range cases {
		if code, resp := v.post(tc.path, mustJSON(t, tc.body)); code != tc.code || !strings.Contains(resp, tc.want) {
			t.Errorf("%s: %d %s, want %d %s", tc.name, code, resp, tc.code, tc.want)
		}
	}
	want := []string{"evt-00000001/user-a", "evt-00000001/user-b", "evt-00000001/user-c", "evt-00000002/user-a", "evt-00000002/user-b",
		"evt-00000003/user-a", "evt-00000003/user-b", "evt-00000004/user-a", "evt-00000004/user-b", "evt-00000005/user-a", "evt-00000005/user-b"}
	var stored []string
	rows, err := v.pool.Query(context.Background(), `SELECT event_id || '/' || user_id FROM impression_events UNION ALL
		SELECT event_id || '/' || user_id FROM watches UNION ALL SELECT event_id || '/' || user_id FROM legacy_events ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		stored = append(stored, s)
	}
	if rows.Close(); !slices.Equal(stored, want) {
		t.Errorf("stored events = %q, want %q", stored, want)
	}
	var enqueued []string
	for _, ev := range v.outboxEvents() {
		enqueued = append(enqueued, ev.EventID+"/"+ev.Key)
	}
	if slices.Sort(enqueued); !slices.Equal(enqueued, want) {
		t.Errorf("outbox events = %q, want %q", enqueued, want)
	}
	if n := v.count("SELECT count(*) FROM event_dedup"); n != len(want) {
		t.Errorf("dedup keys = %d, want %d", n, len(want))
	}
}

// TestPersistFailureTellsWhatTheClientMayAssume: a write whose commit went unanswered and
// whose outcome the writer could not learn is a 503 that says so and asks for the resend
// (deduplicated by event_id), not "database unavailable", which a client reads as nothing
// stored; it is counted apart.
func TestPersistFailureTellsWhatTheClientMayAssume(t *testing.T) {
	for _, tc := range []struct {
		name         string
		err          error
		reason, text string
	}{
		{"closed", writer.ErrClosed, "shutdown", "failed to persist watch event: service is shutting down"},
		{"unavailable", fmt.Errorf("insert events: %w: %w", writer.ErrUnavailable, context.DeadlineExceeded), "unavailable", "failed to persist watch event: database unavailable"},
		{"outcome unknown", fmt.Errorf("insert events: %w: %w (connect: refused): %w", writer.ErrUnavailable, writer.ErrOutcomeUnknown, context.DeadlineExceeded),
			"outcome_unknown", "failed to persist watch event: outcome unknown, the database did not confirm the commit in time; resend it (a resend is deduplicated by event_id)"},
		{"rejected", errors.New("insert events: ERROR: value too long"), "error", "failed to persist watch event: database error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reason, text := persistFailure(tc.err, "watch event")
			if reason != tc.reason || text != tc.text {
				t.Errorf("persistFailure(%v) = %q, %q; want %q, %q", tc.err, reason, text, tc.reason, tc.text)
			}
		})
	}
}
