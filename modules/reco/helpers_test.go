package reco

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/labstack/echo/v4"

	"recsys/pkg/events"
	"recsys/pkg/features"
	"recsys/pkg/httpx"
	"recsys/pkg/ingest"
	"recsys/pkg/ranking"
)

// memSource serves Snapshots from a features.MemoryStore, optionally failing like a store
// that is down.
type memSource struct {
	mu    sync.Mutex
	st    *features.MemoryStore
	calls atomic.Int64
	fail  atomic.Bool
}

var errDown = errors.New("connection refused")

func (m *memSource) Snapshot(ctx context.Context, userID string, nowMs int64, opts ranking.SnapshotOptions) (ranking.Snapshot, error) {
	m.calls.Add(1)
	if m.fail.Load() {
		return ranking.Snapshot{}, errDown
	}
	if err := ctx.Err(); err != nil {
		return ranking.Snapshot{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st.Snapshot(userID, nowMs, opts), nil
}

// Neighbours and Stats make memSource an itemReader for the per-item cache.
func (m *memSource) Neighbours(ctx context.Context, items []string, n int) (map[string][]ranking.Scored, ranking.Landmarks, error) {
	m.calls.Add(1)
	if m.fail.Load() {
		return nil, ranking.Landmarks{}, errDown
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string][]ranking.Scored{}
	for _, id := range items {
		if l := m.st.StoredNeighbours(id, n); len(l) > 0 {
			out[id] = l
		}
	}
	return out, m.st.Landmarks(), nil
}

func (m *memSource) Stats(ctx context.Context, items []string, out map[string]ranking.ItemStats) (ranking.Landmarks, error) {
	m.calls.Add(1)
	if m.fail.Load() {
		return ranking.Landmarks{}, errDown
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, id := range items {
		if st, ok := m.st.StoredItemStats(id); ok {
			out[id] = st
		}
	}
	return m.st.Landmarks(), nil
}

func (m *memSource) apply(ev features.Interaction) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.st.Apply(ev)
}

// fakeWriter stands in for pkg/ingest's Writer: it validates like the real one, stores
// events idempotently by event_id and can be made unavailable.
type fakeWriter struct {
	mu    sync.Mutex
	byID  map[string]*events.Impression
	corr  map[string]string
	order []string
	fail  atomic.Bool
	calls atomic.Int64
	block chan struct{} // when non-nil, Write waits for it (or ctx)
}

func newFakeWriter() *fakeWriter {
	return &fakeWriter{byID: map[string]*events.Impression{}, corr: map[string]string{}}
}

func (w *fakeWriter) Write(ctx context.Context, evs []events.Any, corr string) ([]ingest.Result, error) {
	w.calls.Add(1)
	for _, ev := range evs {
		if err := events.Validate(ev); err != nil {
			return nil, err
		}
	}
	if b := w.block; b != nil {
		select {
		case <-b:
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for commit: %w: %w", ingest.ErrUnavailable, ctx.Err())
		}
	}
	if w.fail.Load() {
		return nil, fmt.Errorf("insert events: %w: connection refused", ingest.ErrUnavailable)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]ingest.Result, len(evs))
	for i, ev := range evs {
		imp := ev.(*events.Impression)
		if _, dup := w.byID[imp.EventID]; dup {
			out[i] = ingest.Result{Status: ingest.StatusDuplicate}
			continue
		}
		w.byID[imp.EventID] = imp
		w.corr[imp.EventID] = corr
		w.order = append(w.order, imp.EventID)
		out[i] = ingest.Result{Status: ingest.StatusOK, Rows: len(imp.Items), OutboxEnqueued: true}
	}
	return out, nil
}

func (w *fakeWriter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.byID)
}

func (w *fakeWriter) byRequest(requestID string) *events.Impression {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, ev := range w.byID {
		if ev.RequestID == requestID {
			return ev
		}
	}
	return nil
}

// fixture is a small world: users who watch "a" mostly go on to "b", some to "c"; a set of
// popular items p00..p29 watched by many; recent fresh items f0..f4 seen once.
func fixture(t testing.TB) *memSource {
	t.Helper()
	st := features.NewMemoryStore(features.DefaultConfig())
	now := time.Now().UnixMilli()
	ts := now - 2*3600_000
	n := 0
	watch := func(user, item string, pct float64) {
		ts += 500
		n++
		st.Apply(features.Interaction{Kind: features.KindWatch, EventID: fmt.Sprintf("w%06d", n), UserID: user, TsMs: ts, ItemID: item, PercentWatched: &pct})
	}
	for u := 0; u < 40; u++ {
		user := fmt.Sprintf("pop-user-%d", u)
		for i := 0; i < 30; i++ {
			if (u+i)%3 == 0 || i < 5 {
				watch(user, fmt.Sprintf("p%02d", i), 60)
			}
		}
	}
	for u := 0; u < 10; u++ {
		user := fmt.Sprintf("ab-user-%d", u)
		watch(user, "a", 90)
		watch(user, "b", 90)
	}
	for u := 0; u < 8; u++ {
		user := fmt.Sprintf("ac-user-%d", u)
		watch(user, "a", 90)
		watch(user, "c", 90)
	}
	for i := 0; i < 5; i++ {
		watch(fmt.Sprintf("fresh-user-%d", i), fmt.Sprintf("f%d", i), 50)
	}
	return &memSource{st: st}
}

// harness is a Reco on fakes behind the real echo setup of pkg/httpx.
type harness struct {
	t             *testing.T
	r             *Reco
	e             *echo.Echo
	redis         *memSource
	pg            *memSource
	writer        *fakeWriter
	set           *metrics.Set
	redisUp, pgUp atomic.Bool
	marker        atomic.Bool
}

func newHarness(t *testing.T, mut func(*Config)) *harness {
	t.Helper()
	h := &harness{t: t, writer: newFakeWriter(), set: metrics.NewSet()}
	h.redis = fixture(t)
	h.pg = fixture(t)
	h.redisUp.Store(true)
	h.pgUp.Store(true)
	h.marker.Store(true)
	cfg := NewConfig()
	cfg.ProbeInterval = 20 * time.Millisecond
	cfg.GlobalRefresh = 20 * time.Millisecond
	cfg.AutologRetryMax = 20 * time.Millisecond
	if mut != nil {
		mut(cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	// Redis is read like in production: the user live, per-item features through the cache.
	var redis snapshotSource = h.redis
	if cfg.ItemCacheTTL > 0 {
		redis = &cachedSource{full: h.redis, user: h.redis, items: newItemCache(h.redis, cfg.ItemCacheTTL, cfg.ItemCacheMax)}
	}
	h.r = newReco(cfg, slog.New(slog.DiscardHandler), h.set, parts{
		redis: redis, pg: h.pg, writer: h.writer,
		probeRedis: func(ctx context.Context) (bool, error) {
			if !h.redisUp.Load() {
				return false, errDown
			}
			return h.marker.Load(), nil
		},
		probePG: func(ctx context.Context) error {
			if !h.pgUp.Load() {
				return errDown
			}
			return nil
		},
	})
	// Without Run the probe has not read the marker yet; tests that run the module see the
	// probe set it.
	h.r.serving.readyMarker.Store(true)
	h.e = httpx.New(httpx.DefaultConfig(), slog.New(slog.DiscardHandler))
	h.r.RegisterRoutes(h.e)
	return h
}

// run starts the module and stops it (waiting for Run to return) when the test ends.
func (h *harness) run() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					h.t.Errorf("Run returned %v", err)
				}
			case <-time.After(30 * time.Second):
				h.t.Errorf("Run did not return")
			}
		})
	}
	h.t.Cleanup(stop)
	return stop
}

type response struct {
	code   int
	body   map[string]any
	header http.Header
}

func (h *harness) get(path string, hdr ...string) response {
	h.t.Helper()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	h.e.ServeHTTP(rec, req)
	var body map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		h.t.Fatalf("GET %s: %d, body %q is not a JSON object: %v", path, rec.Code, rec.Body.String(), err)
	}
	return response{code: rec.Code, body: body, header: rec.Header()}
}

func (r response) items() []string {
	raw, _ := r.body["items"].([]any)
	out := make([]string, len(raw))
	for i, v := range raw {
		out[i], _ = v.(string)
	}
	return out
}

func indexOf(items []string, id string) int {
	for i, x := range items {
		if x == id {
			return i
		}
	}
	return -1
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
