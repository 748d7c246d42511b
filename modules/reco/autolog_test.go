package reco

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"recsys/pkg/events"
	"recsys/pkg/ingest"
)

func TestAutologEventMatchesServedList(t *testing.T) {
	for _, async := range []bool{true, false} {
		t.Run(fmt.Sprintf("async=%v", async), func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.AutologAsync = async })
			h.run()
			ua := strings.Repeat("é", 600) // 600 characters, 1200 bytes
			r := h.get("/reco?user_id=u9&session_id=sess-9&k=7", "User-Agent", ua, "X-Correlation-ID", "corr-12345")
			if r.code != 200 {
				t.Fatalf("code %d %v", r.code, r.body)
			}
			rid := r.body["request_id"].(string)
			if !async && h.writer.byRequest(rid) == nil {
				t.Fatal("sync mode answered before the impression was committed")
			}
			eventually(t, 5*time.Second, "impression persisted", func() bool { return h.writer.byRequest(rid) != nil })
			ev := h.writer.byRequest(rid)
			items := r.items()
			if ev.UserID != "u9" || ev.SessionID != "sess-9" || len(ev.EventID) != 32 || len(ev.Items) != len(items) {
				t.Fatalf("event %+v for items %v", ev, items)
			}
			for i, it := range ev.Items {
				if it.ItemID != items[i] || it.Position != int64(i) {
					t.Fatalf("item %d = %+v, want %s at %d", i, it, items[i], i)
				}
			}
			if ev.Context == nil || ev.Context.UserAgent == nil || *ev.Context.UserAgent != strings.Repeat("é", 512) {
				t.Fatalf("user agent not cut to 512 characters: %v", ev.Context)
			}
			if d := time.Since(time.UnixMilli(ev.TsMs)); d < 0 || d > time.Minute || ev.ServerReceivedTsMs != ev.TsMs {
				t.Fatalf("ts_ms %d server_received %d", ev.TsMs, ev.ServerReceivedTsMs)
			}
			h.writer.mu.Lock()
			corr := h.writer.corr[ev.EventID]
			h.writer.mu.Unlock()
			if corr != "corr-12345" {
				t.Fatalf("correlation id %q", corr)
			}
			// Autolog off: nothing is written.
			before := h.writer.count()
			h.get("/reco?user_id=u9&session_id=sess-9&k=7&x_autolog_impressions=false")
			h.get("/reco?user_id=u9&session_id=sess-9&k=7&x_autolog_impressions=no")
			time.Sleep(50 * time.Millisecond)
			if h.writer.count() != before {
				t.Fatal("x_autolog_impressions=false still logged")
			}
		})
	}
}

func TestAutologBackpressureDropAndSync(t *testing.T) {
	for _, mode := range []string{BackpressureDrop, BackpressureSync} {
		t.Run(mode, func(t *testing.T) {
			h := newHarness(t, func(c *Config) {
				c.AutologQueueSize = 3
				c.AutologBackpressure = mode
			})
			// Hold the background persists so the queue fills.
			h.writer.block = make(chan struct{})
			var rids []string
			var wg sync.WaitGroup
			var mu sync.Mutex
			for i := 0; i < 3; i++ {
				r := h.get(fmt.Sprintf("/reco?user_id=bp%d&session_id=s&k=3", i))
				rids = append(rids, r.body["request_id"].(string))
			}
			if got := h.r.autolog.Pending(); got != 3 {
				t.Fatalf("pending %d, want 3", got)
			}
			// The fourth request meets a full queue.
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := h.get("/reco?user_id=bp3&session_id=s&k=3")
				mu.Lock()
				rids = append(rids, r.body["request_id"].(string))
				mu.Unlock()
			}()
			if mode == BackpressureDrop {
				wg.Wait()
				if n := h.r.m.autologDropped[dropQueueFull].Get(); n != 1 {
					t.Fatalf("dropped %d, want 1", n)
				}
			} else {
				// Sync back-pressure: the request persists inline, so it waits for the writer.
				time.Sleep(50 * time.Millisecond)
				mu.Lock()
				n := len(rids)
				mu.Unlock()
				if n != 3 {
					t.Fatal("sync back-pressure answered before its inline commit")
				}
			}
			close(h.writer.block)
			wg.Wait()
			want := 4
			if mode == BackpressureDrop {
				want = 3
			}
			eventually(t, 5*time.Second, "persisted", func() bool { return h.writer.count() == want })
			if left := h.r.autolog.Shutdown(time.Second, nil); left != 0 {
				t.Fatalf("left %d", left)
			}
			expo := exposition(h)
			stage := map[string]string{BackpressureDrop: stageImpressionDrop, BackpressureSync: stageImpressionBPSync}[mode]
			if !strings.Contains(expo, `reco_stage_latency_ms_count{stage="`+stage+`"} 1`) {
				t.Fatalf("stage %s not counted once:\n%s", stage, grep(expo, "reco_stage_latency_ms_count"))
			}
		})
	}
}

func TestAutologBuffersWhilePostgresDownAndPersistsAfter(t *testing.T) {
	for _, async := range []bool{true, false} {
		t.Run(fmt.Sprintf("async=%v", async), func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.AutologAsync = async; c.BreakerFailures = 2 })
			h.run()
			h.writer.fail.Store(true)
			h.pgUp.Store(false)
			var rids []string
			for i := 0; i < 10; i++ {
				r := h.get(fmt.Sprintf("/reco?user_id=pgdown%d&session_id=s&k=4", i))
				if r.code != 200 || len(r.items()) != 4 {
					t.Fatalf("PostgreSQL down: /reco %d %v", r.code, r.body)
				}
				rids = append(rids, r.body["request_id"].(string))
			}
			eventually(t, 5*time.Second, "postgres breaker open", h.r.serving.pgBrk.IsOpen)
			if h.writer.count() != 0 || h.r.autolog.Pending() != 10 {
				t.Fatalf("persisted %d pending %d, want 0 and 10", h.writer.count(), h.r.autolog.Pending())
			}
			if !async && h.r.m.autologBuffered.Get() != 10 {
				t.Fatalf("buffered %d", h.r.m.autologBuffered.Get())
			}
			calls := h.writer.calls.Load()
			time.Sleep(100 * time.Millisecond)
			if c := h.writer.calls.Load(); c > calls+2 {
				t.Fatalf("%d writes while the breaker was open: the buffer must wait for PostgreSQL", c-calls)
			}
			h.writer.fail.Store(false)
			h.pgUp.Store(true)
			eventually(t, 5*time.Second, "buffered impressions persisted", func() bool { return h.writer.count() == 10 })
			for _, rid := range rids {
				if h.writer.byRequest(rid) == nil {
					t.Fatalf("request %s not persisted", rid)
				}
			}
			if d := h.r.m.droppedTotal(); d != 0 {
				t.Fatalf("dropped %d", d)
			}
		})
	}
}

func TestAutologShutdownDrainsAndCountsWhatIsLeft(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.AutologShutdownTimeout = 200 * time.Millisecond })
	stop := h.run()
	h.writer.block = make(chan struct{})
	for i := 0; i < 5; i++ {
		h.get(fmt.Sprintf("/reco?user_id=sd%d&session_id=s&k=2", i))
	}
	// Released during the shutdown wait: everything is persisted.
	go func() { time.Sleep(50 * time.Millisecond); close(h.writer.block) }()
	stop()
	if h.writer.count() != 5 || h.r.m.droppedTotal() != 0 {
		t.Fatalf("persisted %d dropped %d after drain", h.writer.count(), h.r.m.droppedTotal())
	}

	// Never released: the shutdown gives up after its timeout and counts the rest.
	h2 := newHarness(t, func(c *Config) { c.AutologShutdownTimeout = 100 * time.Millisecond })
	stop2 := h2.run()
	h2.writer.block = make(chan struct{})
	for i := 0; i < 4; i++ {
		h2.get(fmt.Sprintf("/reco?user_id=sd%d&session_id=s&k=2", i))
	}
	start := time.Now()
	stop2()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("shutdown took %s", d)
	}
	if n := h2.r.m.autologDropped[dropShutdown].Get(); n != 4 || h2.r.autolog.Pending() != 0 {
		t.Fatalf("dropped(shutdown) %d pending %d, want 4 and 0", n, h2.r.autolog.Pending())
	}
	// After shutdown an event is counted, not lost silently.
	h2.get("/reco?user_id=late&session_id=s&k=2")
	if n := h2.r.m.autologDropped[dropShutdown].Get(); n != 5 {
		t.Fatalf("late event: dropped %d, want 5", n)
	}
}

// An outage buffered impressions and PostgreSQL is back (before SIGTERM, or during the drain)
// while the next regular probe is far off: the drain keeps probing PostgreSQL, so the buffer is
// written instead of being dropped behind a breaker that nothing would close.
func TestAutologShutdownDrainWritesBufferOncePostgresIsBack(t *testing.T) {
	for _, tc := range []struct {
		name   string
		backIn time.Duration // after SIGTERM; 0: before it
	}{
		{"back before shutdown", 0},
		{"back during the drain", 300 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, func(c *Config) {
				c.BreakerFailures = 2
				c.ProbeInterval = time.Hour // the next regular probe is not due
				c.AutologShutdownTimeout = 3 * time.Second
			})
			stop := h.run()
			h.writer.fail.Store(true)
			h.pgUp.Store(false)
			for i := 0; i < 10; i++ {
				if r := h.get(fmt.Sprintf("/reco?user_id=sd%d&session_id=s&k=4", i)); r.code != 200 {
					t.Fatalf("%d %v", r.code, r.body)
				}
			}
			eventually(t, 5*time.Second, "postgres breaker open", h.r.serving.pgBrk.IsOpen)
			back := func() { h.writer.fail.Store(false); h.pgUp.Store(true) }
			if tc.backIn == 0 {
				back()
			} else {
				time.AfterFunc(tc.backIn, back)
			}
			start := time.Now()
			stop()
			if h.writer.count() != 10 || h.r.m.droppedTotal() != 0 {
				t.Fatalf("persisted %d dropped %d, want 10 and 0", h.writer.count(), h.r.m.droppedTotal())
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("drain took %s: it should end once the buffer is written", d)
			}
		})
	}
}

// closedWriter is a writer already closed by the shutdown.
type closedWriter struct{}

func (closedWriter) Write(context.Context, []events.Any, string) ([]ingest.Result, error) {
	return nil, fmt.Errorf("write impression: %w", ingest.ErrClosed)
}

// A synchronous write that races the shutdown (the writer already closed) is a shutdown drop,
// not a list the database refused.
func TestAutologSyncWriteAfterWriterClosedIsShutdownDrop(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.AutologAsync = false })
	h.r.autolog.w = closedWriter{}
	if r := h.get("/reco?user_id=late&session_id=s&k=2"); r.code != 200 {
		t.Fatalf("%d %v", r.code, r.body)
	}
	if s, rj := h.r.m.autologDropped[dropShutdown].Get(), h.r.m.autologDropped[dropRejected].Get(); s != 1 || rj != 0 {
		t.Fatalf("dropped shutdown %d rejected %d, want 1 and 0", s, rj)
	}
}

func exposition(h *harness) string {
	var b bytes.Buffer
	h.set.WritePrometheus(&b)
	return b.String()
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// An impression persisted only after failed writes is stamped received when it was written:
// the KPI roll-ups fold rows by receive time and never look back, so a row committed after an
// outage under its serve time would never be counted. Its ts_ms stays the serve time.
func TestAutologRetryStampsTheWriteTime(t *testing.T) {
	for _, async := range []bool{true, false} {
		t.Run(fmt.Sprintf("async=%v", async), func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.AutologAsync = async })
			h.run()
			h.writer.fail.Store(true)
			r := h.get("/reco?user_id=late&session_id=s&k=4")
			if r.code != 200 {
				t.Fatalf("/reco %d %v", r.code, r.body)
			}
			time.Sleep(300 * time.Millisecond)
			back := time.Now().UnixMilli()
			h.writer.fail.Store(false)
			rid := r.body["request_id"].(string)
			eventually(t, 5*time.Second, "the impression persisted", func() bool { return h.writer.byRequest(rid) != nil })
			ev := h.writer.byRequest(rid)
			if ev.ServerReceivedTsMs < back-50 || back-ev.TsMs < 300 {
				t.Fatalf("served at %d, stored with server_received_ts_ms %d ms after the serve time; PostgreSQL back %d ms after it",
					ev.TsMs, ev.ServerReceivedTsMs-ev.TsMs, back-ev.TsMs)
			}
		})
	}
}
