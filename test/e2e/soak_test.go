package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/featurestore/fstest"
	"recsys/pkg/testutil"
)

// The whole promise at once: "nothing accepted is ever lost or applied twice", through every
// hop (API → one PostgreSQL transaction into the raw tables and event_outbox → relay → Kafka
// → consumer → features in PostgreSQL, served from Redis), while each hop fails in turn under
// a steady load: a relay and a consumer are killed (-9) and restarted, an API is stopped
// (SIGTERM) and restarted while its clients resend what failed with the same event ids,
// PostgreSQL stops for a few seconds, and the Redis serving copy restarts empty. Each fault has its own focused test; this one checks
// that they hold together. Once the load stops and the pipeline drains:
//  1. every event answered 2xx is in the raw tables exactly once, none answered 4xx is;
//  2. every list /reco served is in the impressions exactly once (or counted dropped);
//  3. the consumers' durable state equals `features rebuild --from-events` (nothing lost or
//     applied twice between the outbox and the features);
//  4. `features verify` finds the Redis copy equal to PostgreSQL.
//
// Users are split so that each one's effect does not depend on how the two topics interleave
// (which is not defined): watch users only watch, impression users only send impressions,
// /reco users only get auto-logged impressions. Each user's events come from one client in
// time order, as the rebuild applies them.
func TestPipelineUnderFaultsLosesNothingAndAppliesOnce(t *testing.T) {
	start := time.Now()
	// A private PostgreSQL: the test stops it for a few seconds.
	pg := testutil.StartPrivate(t, "pg")
	dsn := pg.URL
	testutil.MigrateUp(t, dsn)
	pool := testutil.Pool(t, dsn)
	rd := testutil.StartPrivate(t, "redis")
	env := StackEnv(t, dsn)
	for i, kv := range env {
		if strings.HasPrefix(kv, "ONLINE_CACHE_REDIS_URL=") {
			env[i] = "ONLINE_CACHE_REDIS_URL=" + rd.URL
		}
	}

	// The relays and consumers first: they create the topics.
	relays := []*Process{Start(t, env, "relay"), Start(t, env, "relay")}
	consumers := []*Process{Start(t, env, "consume"), Start(t, env, "consume")}
	apis := []*Process{Start(t, env, "serve", "--roles", "api"), Start(t, env, "serve", "--roles", "api")}
	for _, p := range slices.Concat(relays, consumers, apis) {
		p.WaitReadyz(t, 200, 90*time.Second)
	}
	t.Logf("stack ready after %s", time.Since(start).Round(time.Millisecond))

	l := newSoakLoad(apis)
	l.run(6, 3)
	t.Cleanup(l.stop) // a fatal failure meanwhile leaves no client running
	loadStart := time.Now()
	at := func(d time.Duration) { time.Sleep(time.Until(loadStart.Add(d))) } // the schedule, not a wait for a result

	// A relay killed mid-batch: what it published but did not mark goes out again after its
	// lease (30 s), and the consumers must apply it once.
	restartRelay := func(i int) {
		killMidBatch(t, pool, relays[i])
		relays[i] = Start(t, env, "relay")
	}
	// A consumer killed under load, maybe between its PostgreSQL commit and its offset commit:
	// the batch comes again, to whichever member the rebalance gives the partitions.
	restartConsumer := func(i int) {
		consumers[i].stop(t, syscall.SIGKILL)
		consumers[i] = Start(t, env, "consume")
	}
	// An API stopped as at a rollout: its queued autolog lists are committed (or counted
	// dropped) before it exits, and its clients resend to the other one.
	dropped := 0
	restartAPI := func(i int) {
		dropped += l.dropped(t, apis[i])
		apis[i].stop(t, syscall.SIGTERM)
		dropped += shutdownDropped(apis[i].String())
		apis[i] = Start(t, env, "serve", "--roles", "api")
		l.setAPI(i, apis[i])
	}
	at(4 * time.Second)
	restartRelay(0)
	at(10 * time.Second)
	restartConsumer(0)
	// PostgreSQL down for 3 s: the APIs answer writes 503 (the clients resend) and buffer the
	// auto-logged lists, the relays and consumers retry; none of it may be lost or doubled.
	at(12 * time.Second)
	pg.Stop()
	at(15 * time.Second)
	pg.Start()
	at(16 * time.Second)
	restartAPI(0)
	at(22 * time.Second)
	restartRelay(1)
	// The serving copy restarts empty (no persistence): the consumers heal it from PostgreSQL.
	at(27 * time.Second)
	rd.Stop()
	at(30 * time.Second)
	rd.Start()
	at(35 * time.Second)
	restartConsumer(1)
	at(40 * time.Second)
	restartAPI(1)
	at(45 * time.Second)
	l.stop()
	t.Logf("load: %s", l.summary())
	// /reco answers 200 with the best list it can through every outage here (Redis down: from
	// PostgreSQL; PostgreSQL down: from Redis, the lists buffered): 5xx only when no list at
	// all can be made, and here one always can. Refused connections are an API restarting.
	for why, n := range l.recoFailed {
		if strings.HasPrefix(why, "5") {
			t.Errorf("/reco answered %s %d times during the faults", why, n)
		}
	}
	if l.unresolved.Load() > 0 {
		t.Errorf("%d requests got no definite answer within their retries", l.unresolved.Load())
	}
	if len(l.accepted) == 0 || len(l.rejected) == 0 || len(l.served) == 0 {
		t.Fatalf("load did not exercise the pipeline: %s", l.summary())
	}

	// Drained: nothing left to publish, every stored event applied, no consumer behind.
	ctx := context.Background()
	drainStart := time.Now()
	drained := waitUntil(60*time.Second, func() bool {
		var unpublished, unapplied int
		if err := pool.QueryRow(ctx, `SELECT
  (SELECT count(*) FROM event_outbox WHERE status IN ('pending', 'publishing')),
  (SELECT count(*) FROM (SELECT event_id, user_id FROM watches UNION SELECT event_id, user_id FROM impression_events) e
     WHERE NOT EXISTS (SELECT 1 FROM feature_applied a WHERE a.event_id = e.event_id AND a.user_id = e.user_id))`).
			Scan(&unpublished, &unapplied); err != nil {
			t.Logf("drain query: %v", err)
			return false
		}
		return unpublished == 0 && unapplied == 0 && consumerLag(consumers) == 0
	})
	t.Logf("drain: %v after %s", drained, time.Since(drainStart).Round(time.Millisecond))

	for _, p := range apis {
		dropped += l.dropped(t, p)
	}
	var dead, dlq int
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM event_outbox WHERE status = 'dead'), (SELECT count(*) FROM feature_dlq)`).Scan(&dead, &dlq); err != nil {
		t.Fatal(err)
	}
	if dead != 0 || dlq != 0 {
		t.Errorf("%d dead outbox rows and %d dead letters, want none", dead, dlq)
	}
	if !drained {
		reportUndrained(t, pool, consumers)
	}

	// 1. The raw tables hold every accepted event once and no rejected one.
	stored := storedEvents(t, pool)
	checkStored(t, l, stored)
	// 2. Every served list was logged once, unless counted dropped.
	checkServed(t, l, stored, dropped)
	// 4. The Redis copy equals PostgreSQL (the copy emptied by the restart was repopulated).
	verifyDeadline := time.Now().Add(30 * time.Second)
	for attempt := 1; ; attempt++ {
		out, _, code := toolEnv(t, time.Minute, env, "features", "verify", "--sample", "5000", "--grace", "1s")
		if code == 0 {
			t.Logf("features verify passed at attempt %d", attempt)
			break
		}
		if time.Now().After(verifyDeadline) {
			t.Errorf("features verify still fails 30 s after the drain:\n%.3000s", out)
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	// How much the faults made the pipeline redo (the running processes' counts: the killed
	// ones took theirs along).
	t.Logf("faults: %v expired leases requeued, %v duplicates skipped by the consumers",
		scrape(relays, "recsys_relay_reaped_total", `outcome="requeued"`),
		scrape(consumers, "reco_feature_consumer_processed_total", `status="duplicate"`))
	// 3. The consumers' state is the rebuild's: stopped first, so nothing changes it meanwhile.
	for _, c := range consumers {
		c.stop(t, syscall.SIGTERM)
	}
	nowMs := time.Now().UnixMilli()
	got, err := fstest.ReadTables(ctx, pool, nowMs)
	if err != nil {
		t.Fatal(err)
	}
	if out, _, code := toolEnv(t, time.Minute, env, "features", "rebuild", "--from-events"); code != 0 {
		t.Fatalf("features rebuild --from-events: exit %d %s", code, out)
	}
	want, err := fstest.ReadTables(ctx, pool, nowMs)
	if err != nil {
		t.Fatal(err)
	}
	if want.Applied != len(stored) {
		t.Errorf("the rebuild applied %d events, the raw tables hold %d", want.Applied, len(stored))
	}
	lt := &limitedTB{t: t, max: 30}
	if !fstest.EqualTables(lt, want, got) {
		t.Errorf("the consumers' feature state differs from the rebuild from the raw events (%d differences)", lt.n)
	}
	t.Logf("state: %d users, %d items, %d pairs, %d events applied; test took %s",
		len(got.Users), len(got.Items), len(got.Covis), got.Applied, time.Since(start).Round(time.Millisecond))
}

// stop sends sig and waits for the process to exit.
func (p *Process) stop(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
	select {
	case <-p.exited:
	case <-time.After(40 * time.Second):
		t.Fatalf("recsys still runs 40 s after %v:\n%s", sig, p.tail())
	}
}

// killMidBatch kills a relay (-9) as soon as it is seen holding claimed rows (a batch may
// still complete before the signal lands), or after 3 s without seeing it so.
func killMidBatch(t *testing.T, pool *pgxpool.Pool, relay *Process) {
	t.Helper()
	var owner string
	for _, line := range strings.Split(relay.String(), "\n") {
		var l struct{ Message, Owner string }
		if json.Unmarshal([]byte(line), &l) == nil && l.Message == "relay starting" {
			owner = l.Owner
		}
	}
	if owner == "" {
		t.Fatalf("no \"relay starting\" line with the lease owner:\n%s", relay.tail())
	}
	held := false
	for deadline := time.Now().Add(3 * time.Second); !held && time.Now().Before(deadline); {
		if err := pool.QueryRow(context.Background(),
			`SELECT EXISTS (SELECT 1 FROM event_outbox WHERE status = 'publishing' AND lease_owner = $1)`, owner).Scan(&held); err != nil {
			t.Fatal(err)
		}
	}
	relay.stop(t, syscall.SIGKILL)
	t.Logf("relay %s killed, claimed rows seen just before: %v", owner, held)
}

// waitUntil polls cond until it holds (true) or timeout passes (false).
func waitUntil(timeout time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(timeout); ; time.Sleep(200 * time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// soakEvent is what the client knows of one event it sent.
type soakEvent struct {
	kind  string // watch | impression
	items int    // shown items of an impression
}

// soakLoad is the test's clients: writers that log watches and impressions, each for users
// of its own, one request at a time, resending what failed with the same event ids; readers
// that ask /reco with the autolog on and keep every request_id served.
type soakLoad struct {
	mu      sync.Mutex
	bases   []string
	next    atomic.Uint64
	client  *http.Client
	ts      atomic.Int64 // event times: increasing, so each user's events are in time order
	stopped chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
	runID   string

	accepted, rejected map[string]soakEvent // user \x00 event_id
	served             map[string]string    // request_id -> user
	requests, retries  atomic.Int64
	unresolved         atomic.Int64
	recoFailed         map[string]int // why a /reco gave no list: its status, or "no answer"
	strategies         map[string]int // of the lists served: which path made them
	status             map[int]int
}

func newSoakLoad(apis []*Process) *soakLoad {
	l := &soakLoad{client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 32}},
		stopped: make(chan struct{}), runID: testutil.Unique(""),
		accepted: map[string]soakEvent{}, rejected: map[string]soakEvent{}, served: map[string]string{}, status: map[int]int{},
		recoFailed: map[string]int{}, strategies: map[string]int{}}
	for _, p := range apis {
		l.bases = append(l.bases, p.Base)
	}
	l.ts.Store(time.Now().Add(-2 * time.Minute).UnixMilli())
	return l
}

func (l *soakLoad) setAPI(i int, p *Process) {
	l.mu.Lock()
	l.bases[i] = p.Base
	l.mu.Unlock()
}

// base is the API for a request's attempt: round robin, a resend goes to the next one.
func (l *soakLoad) base(first uint64, attempt int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.bases[(first+uint64(attempt))%uint64(len(l.bases))]
}

const (
	soakItems       = 60
	soakWriterRate  = 25 // requests per second and writer
	soakReaderRate  = 20
	soakUsersPerCli = 15
)

func (l *soakLoad) run(writers, readers int) {
	for w := range writers {
		l.wg.Add(1)
		go l.writer(w)
	}
	for r := range readers {
		l.wg.Add(1)
		go l.reader(r)
	}
}

// stop ends the load and waits for the requests in flight, with their resends.
func (l *soakLoad) stop() {
	l.once.Do(func() { close(l.stopped) })
	l.wg.Wait()
}

func (l *soakLoad) tick(every time.Duration, f func(i int)) {
	defer l.wg.Done()
	tk := time.NewTicker(every)
	defer tk.Stop()
	for i := 0; ; i++ {
		select {
		case <-l.stopped:
			return
		case <-tk.C:
		}
		f(i)
	}
}

func (l *soakLoad) writer(w int) {
	r := rand.New(rand.NewPCG(uint64(w), 7))
	seq := 0
	user := func() string { return fmt.Sprintf("soak-w%d-u%d", w, r.IntN(soakUsersPerCli)) }
	item := func() string { x := r.Float64(); return fmt.Sprintf("soak-i%02d", int(x*x*soakItems)) }
	watch := func(u string, valid bool) (map[string]any, string) {
		seq++
		id := fmt.Sprintf("%s-w%d-%d", l.runID, w, seq)
		pct := float64(r.IntN(101))
		if !valid {
			pct = 150 // out of 0-100: 422
		}
		return map[string]any{"event_type": "watch", "event_id": id, "user_id": u, "session_id": "s-" + u,
			"request_id": "soak-req", "ts_ms": l.ts.Add(1), "item_id": item(), "watch_time_sec": r.IntN(600),
			"percent_watched": pct, "ended": r.IntN(2) == 0}, u + "\x00" + id
	}
	l.tick(time.Second/soakWriterRate, func(i int) {
		if i%3 != 2 {
			ev, key := watch(user(), i%40 != 39)
			l.record(l.post("/log/watch", ev), soakEvent{kind: "watch"}, key)
			return
		}
		// A batch: watches of several users and an impression of the writer's impression
		// user; now and then one invalid event, which makes the whole batch a 422.
		var evs []any
		var keys []string
		var kinds []soakEvent
		for range 4 {
			ev, key := watch(user(), true)
			evs, keys, kinds = append(evs, ev), append(keys, key), append(kinds, soakEvent{kind: "watch"})
		}
		seq++
		u, id := fmt.Sprintf("soak-w%d-imp", w), fmt.Sprintf("%s-i%d-%d", l.runID, w, seq)
		var items []map[string]any
		for p, x := range r.Perm(soakItems)[:5] {
			items = append(items, map[string]any{"item_id": fmt.Sprintf("soak-i%02d", x), "position": p})
		}
		evs = append(evs, map[string]any{"event_type": "impression", "event_id": id, "user_id": u, "session_id": "s-" + u,
			"request_id": "soak-req", "ts_ms": l.ts.Add(1), "items": items})
		keys, kinds = append(keys, u+"\x00"+id), append(kinds, soakEvent{kind: "impression", items: 5})
		if i%30 == 29 {
			ev, key := watch(user(), false)
			evs, keys, kinds = append(evs, ev), append(keys, key), append(kinds, soakEvent{kind: "watch"})
		}
		code := l.post("/log/batch", map[string]any{"events": evs})
		for j := range keys {
			l.record(code, kinds[j], keys[j])
		}
	})
}

// post sends body to path until an answer that a resend would not change: a success or a
// client error. Network errors, 5xx and 429 are resent, with the same body (the same event
// ids), to the next API, for up to a minute; 0 means no definite answer.
func (l *soakLoad) post(path string, body any) int {
	b, _ := json.Marshal(body)
	first := l.next.Add(1)
	deadline := time.Now().Add(time.Minute)
	backoff := 20 * time.Millisecond
	for attempt := 0; ; attempt++ {
		l.requests.Add(1)
		if attempt > 0 {
			l.retries.Add(1)
		}
		code, err := l.do(http.MethodPost, l.base(first, attempt)+path, b)
		if err == nil && code < 500 && code != http.StatusTooManyRequests {
			return code
		}
		if time.Now().After(deadline) {
			l.unresolved.Add(1)
			return 0
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

func (l *soakLoad) do(method, u string, body []byte) (int, error) {
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := l.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, err
}

func (l *soakLoad) record(code int, ev soakEvent, key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.status[code]++
	switch {
	case code >= 200 && code < 300:
		l.accepted[key] = ev
	case code >= 400 && code < 500:
		l.rejected[key] = ev
	}
}

func (l *soakLoad) reader(rn int) {
	r := rand.New(rand.NewPCG(uint64(rn), 11))
	l.tick(time.Second/soakReaderRate, func(int) {
		u := fmt.Sprintf("soak-r%d-u%d", rn, r.IntN(soakUsersPerCli))
		q := url.Values{"user_id": {u}, "session_id": {"s-" + u}, "k": {"10"}, "x_autolog_impressions": {"true"}}
		req, _ := http.NewRequest(http.MethodGet, l.base(l.next.Add(1), 0)+"/reco?"+q.Encode(), nil)
		l.requests.Add(1)
		resp, err := l.client.Do(req)
		if err != nil {
			why := "no answer"
			if errors.Is(err, syscall.ECONNREFUSED) {
				why = "refused" // an API restarting
			} else if errors.Is(err, context.DeadlineExceeded) || os.IsTimeout(err) {
				why = "timeout"
			}
			l.recoFailure(why)
			return
		}
		defer resp.Body.Close()
		var body recoBody
		if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&body) != nil || body.RequestID == "" {
			l.recoFailure(strconv.Itoa(resp.StatusCode))
			return
		}
		if body.Strategy != "" {
			l.mu.Lock()
			l.strategies[body.Strategy]++
			l.mu.Unlock()
		}
		if len(body.Items) > 0 { // an empty list is not logged
			l.mu.Lock()
			l.served[body.RequestID] = u
			l.mu.Unlock()
		}
	})
}

// dropped is the autolog's dropped count of a running API (its metrics).
func (l *soakLoad) dropped(t *testing.T, p *Process) int {
	t.Helper()
	resp, err := l.client.Get(p.Base + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	return int(sumMetric(string(b), "recsys_reco_autolog_dropped_total"))
}

// shutdownDropped is the count of the API's "impressions dropped" shutdown line, if any.
func shutdownDropped(out string) int {
	n := 0
	for _, line := range strings.Split(out, "\n") {
		var l struct {
			Message string `json:"message"`
			Dropped int    `json:"dropped"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && strings.Contains(l.Message, "impressions dropped") {
			n += l.Dropped
		}
	}
	return n
}

func (l *soakLoad) recoFailure(why string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recoFailed[why]++
}

func (l *soakLoad) summary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprintf("%d requests (%d resends, %d unresolved), statuses %v, %d events accepted, %d rejected, %d lists served by %v (failed: %v)",
		l.requests.Load(), l.retries.Load(), l.unresolved.Load(), l.status, len(l.accepted), len(l.rejected), len(l.served), l.strategies, l.recoFailed)
}

// sumMetric adds up every series of the metric name in a Prometheus exposition.
func sumMetric(exposition, name string) float64 {
	var sum float64
	for _, line := range strings.Split(exposition, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}

// consumerLag is the consumers' summed partition lag (-1 when a metrics read fails).
func consumerLag(consumers []*Process) float64 {
	return scrape(consumers, "reco_feature_consumer_partition_lag", "")
}

// scrape sums the series of metric name whose line contains filter over the processes'
// metrics (-1 when a read fails).
func scrape(ps []*Process, name, filter string) float64 {
	var sum float64
	for _, p := range ps {
		resp, err := http.Get(p.Base + "/metrics")
		if err != nil {
			return -1
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return -1
		}
		var lines []string
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, filter) {
				lines = append(lines, line)
			}
		}
		sum += sumMetric(strings.Join(lines, "\n"), name)
	}
	return sum
}

// storedRow is one raw event of the raw tables.
type storedRow struct {
	kind      string
	rows      int // rows with this (user, event_id): 1 unless stored twice
	items     int
	requestID string
}

// storedEvents reads every raw event by user \x00 event_id.
func storedEvents(t *testing.T, pool *pgxpool.Pool) map[string]storedRow {
	t.Helper()
	rows, err := pool.Query(context.Background(), `
SELECT 'watch', user_id, event_id, count(*), 0, min(request_id) FROM watches GROUP BY user_id, event_id
UNION ALL
SELECT 'impression', user_id, event_id, count(*), max(cardinality(item_ids)), min(request_id) FROM impression_events GROUP BY user_id, event_id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]storedRow{}
	for rows.Next() {
		var r storedRow
		var user, id string
		if err := rows.Scan(&r.kind, &user, &id, &r.rows, &r.items, &r.requestID); err != nil {
			t.Fatal(err)
		}
		out[user+"\x00"+id] = r
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func checkStored(t *testing.T, l *soakLoad, stored map[string]storedRow) {
	t.Helper()
	bad := &limitedTB{t: t, max: 20}
	for key, ev := range l.accepted {
		s, ok := stored[key]
		switch {
		case !ok:
			bad.Errorf("accepted %s %q is not in the raw tables", ev.kind, key)
		case s.rows != 1 || s.kind != ev.kind || s.items != ev.items:
			bad.Errorf("accepted %s %q stored as %+v, want once with %d items", ev.kind, key, s, ev.items)
		}
	}
	for key, ev := range l.rejected {
		if s, ok := stored[key]; ok {
			bad.Errorf("rejected %s %q is in the raw tables: %+v", ev.kind, key, s)
		}
	}
	for key, s := range stored {
		if _, ok := l.accepted[key]; !ok && !strings.HasPrefix(key, "soak-r") && l.unresolved.Load() == 0 {
			bad.Errorf("%q is in the raw tables (%+v) but no request was answered 2xx for it", key, s)
		}
	}
	if bad.n > 0 {
		t.Errorf("%d raw table differences", bad.n)
	}
}

func checkServed(t *testing.T, l *soakLoad, stored map[string]storedRow, dropped int) {
	t.Helper()
	logged := map[string]int{} // request_id -> impression events of /reco users
	for key, s := range stored {
		if strings.HasPrefix(key, "soak-r") {
			logged[s.requestID] += s.rows
		}
	}
	missing := 0
	bad := &limitedTB{t: t, max: 20}
	for rid, user := range l.served {
		switch n := logged[rid]; {
		case n == 0:
			missing++
		case n > 1:
			bad.Errorf("served list %s of %s logged %d times", rid, user, n)
		}
	}
	t.Logf("autolog: %d lists served, %d logged (lists also logged whose answer was lost), %d missing, %d counted dropped",
		len(l.served), len(logged), missing, dropped)
	if missing > dropped {
		t.Errorf("%d served lists are not in the impressions, and only %d were counted dropped", missing, dropped)
	}
}

// reportUndrained says what is still in flight when the drain did not finish.
func reportUndrained(t *testing.T, pool *pgxpool.Pool, consumers []*Process) {
	t.Helper()
	var states, missing string
	_ = pool.QueryRow(context.Background(), `SELECT coalesce(string_agg(status || '=' || n, ' '), '') FROM
  (SELECT status, count(*) n FROM event_outbox GROUP BY status) s`).Scan(&states)
	_ = pool.QueryRow(context.Background(), `SELECT count(*) || ' unapplied, e.g. ' || coalesce(min(user_id || '/' || event_id), '') FROM
  (SELECT event_id, user_id FROM watches UNION SELECT event_id, user_id FROM impression_events) e
  WHERE NOT EXISTS (SELECT 1 FROM feature_applied a WHERE a.event_id = e.event_id AND a.user_id = e.user_id)`).Scan(&missing)
	t.Errorf("the pipeline did not drain within 60 s: outbox %s; %s; consumer lag %v", states, missing, consumerLag(consumers))
}

// limitedTB reports the first max differences and counts the rest.
type limitedTB struct {
	t   *testing.T
	max int
	n   int
}

func (l *limitedTB) Helper() {}

func (l *limitedTB) Errorf(format string, args ...any) {
	l.n++
	if l.n <= l.max {
		msg := fmt.Sprintf(format, args...)
		if len(msg) > 600 {
			msg = msg[:600] + "..."
		}
		l.t.Error(msg)
	}
}
