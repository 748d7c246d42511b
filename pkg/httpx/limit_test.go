package httpx

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/labstack/echo/v4"

	"recsys/pkg/testutil"
)

// limitedServer serves GET /x through l; each request blocks until release is closed or
// receives a value, and counts how many run at once.
type limitedServer struct {
	e              *echo.Echo
	release        chan struct{}
	running, peak  atomic.Int64
	started, calls atomic.Int64
}

func newLimitedServer(l *Limiter, log *slog.Logger) *limitedServer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &limitedServer{e: New(DefaultConfig(), log), release: make(chan struct{})}
	s.e.GET("/x", func(c echo.Context) error {
		n := s.running.Add(1)
		defer s.running.Add(-1)
		for p := s.peak.Load(); n > p && !s.peak.CompareAndSwap(p, n); p = s.peak.Load() {
		}
		s.started.Add(1)
		<-s.release
		s.calls.Add(1)
		return c.String(http.StatusOK, "ok")
	}, l.Middleware)
	return s
}

func (s *limitedServer) get() *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	s.e.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/x", nil))
	return rec
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func (l *Limiter) queued() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.waiting.Len()
}

func TestLimiterQueuesBeyondMaxAndAdmitsOnRelease(t *testing.T) {
	set := metrics.NewSet()
	l := NewLimiter("test", 2, 5*time.Second, set)
	s := newLimitedServer(l, nil)
	codes := make(chan int, 3)
	for range 3 {
		go func() { codes <- s.get().Code }()
	}
	waitFor(t, "two running and one queued", func() bool { return s.started.Load() == 2 && l.queued() == 1 })
	s.release <- struct{}{} // one finishes: the queued one takes its slot
	waitFor(t, "the queued request to start", func() bool { return s.started.Load() == 3 })
	close(s.release)
	for range 3 {
		if c := <-codes; c != http.StatusOK {
			t.Errorf("status %d, want 200", c)
		}
	}
	if p := s.peak.Load(); p != 2 {
		t.Errorf("peak concurrency %d, want 2", p)
	}
	if got := l.admittedAfterWait.Get(); got != 1 {
		t.Errorf("admitted after a wait: %d, want 1", got)
	}
	if l.running != 0 || l.queued() != 0 {
		t.Errorf("after the burst: running %d, queued %d, want 0 and 0", l.running, l.queued())
	}
}

func TestLimiterShedsWith503AfterTimeout(t *testing.T) {
	set := metrics.NewSet()
	l := NewLimiter("reco", 1, 30*time.Millisecond, set)
	var logs testutil.SyncBuffer
	s := newLimitedServer(l, slog.New(slog.NewJSONHandler(&logs, nil)))
	first := make(chan int, 1)
	go func() { first <- s.get().Code }()
	waitFor(t, "the first request to run", func() bool { return s.started.Load() == 1 })

	rec := s.get()
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503", rec.Code)
	}
	if ra := rec.Header().Get("Retry-After"); ra != "1" {
		t.Errorf("Retry-After %q, want 1", ra)
	}
	if rec.Header().Get(HeaderRequestID) == "" {
		t.Error("a shed response has no request ID")
	}
	var body struct{ Detail string }
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || !strings.Contains(body.Detail, "overloaded") || !strings.Contains(body.Detail, "reco serves 1 requests at once") {
		t.Errorf("body %s (%v), want a detail naming the overload and the limit", rec.Body, err)
	}
	if got := l.shed.Get(); got != 1 {
		t.Errorf("recsys_http_shed_total %d, want 1", got)
	}
	if s.started.Load() != 1 {
		t.Error("the shed request ran its handler")
	}
	close(s.release)
	if c := <-first; c != http.StatusOK {
		t.Errorf("the admitted request: status %d, want 200", c)
	}
	if l.running != 0 || l.queued() != 0 {
		t.Errorf("running %d, queued %d, want 0 and 0", l.running, l.queued())
	}
	// The refusal is logged as a request, not as a server error.
	if out := logs.String(); !strings.Contains(out, `"level":"INFO","msg":"http_request"`) || !strings.Contains(out, `"status_code":503`) || strings.Contains(out, `"level":"ERROR"`) {
		t.Errorf("access log of the shed request, want an INFO line with status 503 and no ERROR:\n%s", out)
	}
	var exposition strings.Builder
	set.WritePrometheus(&exposition)
	for _, m := range []string{`recsys_http_shed_total{limiter="reco"} 1`, `recsys_http_max_in_flight{limiter="reco"} 1`, `recsys_http_in_flight{limiter="reco"} 0`} {
		if !strings.Contains(exposition.String(), m) {
			t.Errorf("metrics lack %q:\n%s", m, exposition.String())
		}
	}
}

// The queue's order: first in first out while it drains, newest first once it has been
// non-empty for longer than the timeout.
func TestLimiterQueueOrder(t *testing.T) {
	for _, tc := range []struct {
		name string
		gap  time.Duration // between the arrivals of the three waiters
		want string
	}{
		{"burst: first in first out", time.Millisecond, "abc"},
		{"sustained overload: newest first", 20 * time.Second, "cba"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := NewLimiter("test", 1, 10*time.Second, nil)
			t0 := time.Now()
			if !l.acquire(nil, t0) {
				t.Fatal("the first acquire waited")
			}
			var mu sync.Mutex
			var order strings.Builder
			var wg sync.WaitGroup
			for i, name := range []string{"a", "b", "c"} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if !l.acquire(nil, t0.Add(time.Duration(i)*tc.gap)) {
						t.Errorf("%s timed out", name)
						return
					}
					mu.Lock()
					order.WriteString(name)
					mu.Unlock()
					l.release()
				}()
				waitFor(t, name+" to queue", func() bool { return l.queued() == i+1 })
			}
			l.release()
			wg.Wait()
			if got := order.String(); got != tc.want {
				t.Errorf("served %q, want %q", got, tc.want)
			}
		})
	}
}

func TestLimiterGivesUpWhenTheClientGoes(t *testing.T) {
	l := NewLimiter("test", 1, time.Minute, nil)
	if !l.acquire(nil, time.Now()) {
		t.Fatal("the first acquire waited")
	}
	gone := make(chan struct{})
	got := make(chan bool)
	go func() { got <- l.acquire(gone, time.Now()) }()
	waitFor(t, "the second to queue", func() bool { return l.queued() == 1 })
	close(gone)
	if <-got {
		t.Fatal("acquire succeeded after the client went")
	}
	if l.queued() != 0 {
		t.Errorf("queued %d after the client went, want 0", l.queued())
	}
	l.release()
	if !l.acquire(nil, time.Now()) {
		t.Error("the slot leaked")
	}
}

// A client that goes away while queued is answered 499, not shed: the 503 it used to get
// counted in every server-error rate although the server refused nothing.
func TestLimiterClientGoneIsNotShed(t *testing.T) {
	set := metrics.NewSet()
	l := NewLimiter("reco", 1, time.Minute, set)
	s := newLimitedServer(l, nil)
	first := make(chan int, 1)
	go func() { first <- s.get().Code }()
	waitFor(t, "the first request to run", func() bool { return s.started.Load() == 1 })
	ctx, cancel := context.WithCancel(context.Background())
	rec := httptest.NewRecorder()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.e.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/x", nil).WithContext(ctx))
	}()
	waitFor(t, "the second to queue", func() bool { return l.queued() == 1 })
	cancel()
	<-done
	if rec.Code != StatusClientClosedRequest {
		t.Errorf("status %d, want %d", rec.Code, StatusClientClosedRequest)
	}
	if got := l.shed.Get(); got != 0 {
		t.Errorf("recsys_http_shed_total %d, want 0", got)
	}
	close(s.release)
	if c := <-first; c != http.StatusOK {
		t.Errorf("the admitted request: status %d, want 200", c)
	}
}

// Many requests with short timeouts: slots handed over while their waiters time out must
// neither leak nor exceed the limit.
func TestLimiterUnderContention(t *testing.T) {
	for _, max := range []int{1, 4} {
		l := NewLimiter("test", max, 200*time.Microsecond, nil)
		var running, peak, served, shed atomic.Int64
		var wg sync.WaitGroup
		for range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 200 {
					if !l.acquire(nil, time.Now()) {
						shed.Add(1)
						continue
					}
					n := running.Add(1)
					for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
					}
					time.Sleep(20 * time.Microsecond)
					running.Add(-1)
					served.Add(1)
					l.release()
				}
			}()
		}
		wg.Wait()
		if p := peak.Load(); p > int64(max) {
			t.Errorf("max %d: %d ran at once", max, p)
		}
		if served.Load() == 0 || served.Load()+shed.Load() != 64*200 {
			t.Errorf("max %d: served %d + shed %d, want %d in all, some served", max, served.Load(), shed.Load(), 64*200)
		}
		if l.running != 0 || l.queued() != 0 {
			t.Errorf("max %d: left running %d, queued %d", max, l.running, l.queued())
		}
	}
}

func TestLimiterZeroAdmitsEverything(t *testing.T) {
	l := NewLimiter("test", 0, time.Millisecond, nil)
	s := newLimitedServer(l, nil)
	var wg sync.WaitGroup
	codes := make(chan int, 20)
	for range 20 {
		wg.Add(1)
		go func() { defer wg.Done(); codes <- s.get().Code }()
	}
	waitFor(t, "all 20 to run at once", func() bool { return s.running.Load() == 20 })
	close(s.release)
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != http.StatusOK {
			t.Errorf("status %d, want 200", c)
		}
	}
}
