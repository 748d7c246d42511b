package reco

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"recsys/pkg/events"
	"recsys/pkg/ingest"
	"recsys/pkg/logging"
)

// impressionWriter is the durable write path of /log/impression (pkg/ingest's group-commit
// Writer): one call is stored atomically, idempotently by event_id.
type impressionWriter interface {
	Write(ctx context.Context, evs []events.Any, correlationID string) ([]ingest.Result, error)
}

// submitter is implemented by pkg/ingest's Writer: the event is validated and encoded on the
// request's goroutine (a fresh persist goroutine grew its stack inside the encoder, ~2.8 % of
// the API's CPU at 5,000 lists/s in session 17), then queued with Submit, whose callback
// reports the commit: no goroutine waits on each served list. Only a failed write gets a
// persist goroutine, to retry with back-off.
type submitter interface {
	Prepare(evs []events.Any, correlationID string) (*ingest.Prepared, error)
	WritePrepared(ctx context.Context, p *ingest.Prepared) ([]ingest.Result, error)
	Submit(p *ingest.Prepared, maxWait time.Duration, done func([]ingest.Result, error)) error
}

// autolog persists the impressions /reco serves through the ingest writer.
//
// Modes (api-contract §2.4, without its losses):
//   - async: the event is handed to a background persist bounded by capacity
//     (RECO_MAX_BACKGROUND_TASKS); /reco answers without waiting for the commit. When the
//     bound is reached, back-pressure "sync" persists inline, "drop" drops (counted).
//   - not async: /reco waits for the group commit (bounded by the write timeout).
//
// Either way, an event whose write fails because PostgreSQL is unavailable is not lost: it
// stays in the bounded set of background persists, which retry with back-off (not at all
// while the PostgreSQL breaker is open) until the write succeeds. Retrying is safe because the
// writer is idempotent by event_id: a write that timed out but committed answers "duplicate".
// At shutdown the module waits up to the shutdown timeout for every background persist; the
// retries still waiting then are counted as dropped with reason "shutdown", and the events
// queued in the writer are committed by its close and counted by their outcome. A retry cut
// short in the middle of its write may still commit although counted dropped (the counts can
// under-report what was stored, never over-report it). An event written after a failed attempt
// is restamped: its server_received_ts_ms becomes the time of that write, when the server could
// take it durably (its ts_ms stays the serve time). A list the writer did not take within the
// write timeout (PostgreSQL slow rather than down) counts as such a failed write: the writer
// answers it unavailable, unwritten, and it is retried restamped. The KPI roll-ups (modules/analytics) fold
// rows by receive time, --analytics.commit-margin behind the clock, and never look back: a row
// committed after an outage under its serve time would never be counted. Nothing is dropped silently:
// every event is persisted or counted in recsys_reco_autolog_dropped_total. A crash (kill -9)
// loses the background persists in flight: that is the price of async mode, and why
// --reco.autolog-async=false exists.
type autolog struct {
	w        impressionWriter
	async    bool
	drop     bool
	capacity int64
	timeout  time.Duration
	retryMax time.Duration
	pg       *breaker
	m        *recoMetrics
	log      *slog.Logger
	warn     logging.Limiter

	inflight  atomic.Int64 // accepted, not yet persisted or dropped
	submitted atomic.Int64 // of which queued with Submit, awaiting its callback
	mu        sync.RWMutex
	closed    bool           // no new events (Shutdown started)
	noRetry   bool           // Shutdown's wait is over: a failed commit is dropped, not retried
	aborted   bool           // Shutdown gave up: callbacks still to come were counted as dropped
	wg        sync.WaitGroup // persist goroutines
	abortCtx  context.Context
	abort     context.CancelFunc
}

func newAutolog(cfg *Config, w impressionWriter, pg *breaker, m *recoMetrics, log *slog.Logger) *autolog {
	ctx, cancel := context.WithCancel(context.Background())
	return &autolog{w: w, async: cfg.AutologAsync, drop: cfg.AutologBackpressure == BackpressureDrop,
		capacity: int64(cfg.AutologQueueSize), timeout: cfg.AutologWriteTimeout, retryMax: cfg.AutologRetryMax,
		pg: pg, m: m, log: log, abortCtx: ctx, abort: cancel}
}

// Pending is the number of events accepted but not yet persisted (or dropped).
func (a *autolog) Pending() int64 { return a.inflight.Load() }

// Capacity is the bound of Pending.
func (a *autolog) Capacity() int64 { return a.capacity }

// Log persists one served impression according to the mode. It returns once the event is
// committed (inline) or handed to a background persist.
func (a *autolog) Log(ctx context.Context, ev *events.Impression, correlationID string) {
	if !a.async {
		a.inline(ctx, ev, correlationID)
		return
	}
	switch a.background(ev, correlationID) {
	case started:
		a.m.autologEnqueued.Inc()
		a.m.stage(stageImpressionSched, 0)
		return
	case stopped:
		a.m.dropped(dropShutdown, 1)
		return
	case refused:
		return
	}
	if a.drop {
		a.m.stage(stageImpressionDrop, 0)
		a.m.dropped(dropQueueFull, 1)
		a.warn.Do(func(n int64) {
			a.log.WarnContext(ctx, "autolog queue full, impressions dropped", "dropped", n, "capacity", a.capacity)
		})
		return
	}
	a.m.stage(stageImpressionBPSync, 0)
	a.inline(ctx, ev, correlationID)
}

// inline writes the event and waits for the commit; when PostgreSQL is unavailable the event
// is buffered for a background retry instead of failing the request.
func (a *autolog) inline(ctx context.Context, ev *events.Impression, correlationID string) {
	if a.pg.IsOpen() {
		// PostgreSQL is known to be down: do not spend a timeout to learn it again.
		a.buffer(ctx, ev, correlationID)
		return
	}
	start := time.Now()
	// The client going away does not cancel the write: the list was computed and may have
	// been delivered; persisting it is the safe side.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.timeout)
	_, err := a.w.Write(wctx, []events.Any{ev}, correlationID)
	cancel()
	a.m.stage(stageImpressionLog, time.Since(start))
	switch {
	case err == nil:
		a.m.autologPersisted.Inc()
		a.pg.Success()
	case errors.Is(err, ingest.ErrClosed):
		a.m.dropped(dropShutdown, 1) // the write raced the shutdown
	case transient(err):
		a.pg.Failure()
		a.buffer(ctx, restamped(ev), correlationID)
	default:
		a.rejected(ctx, ev, correlationID, err)
	}
}

// restamped is ev received now (see autolog): for a write after a failed one.
func restamped(ev *events.Impression) *events.Impression {
	cp := *ev // the items are shared, never written
	cp.ServerReceivedTsMs = time.Now().UnixMilli()
	return &cp
}

func (a *autolog) buffer(ctx context.Context, ev *events.Impression, correlationID string) {
	switch a.background(ev, correlationID) {
	case started:
		a.m.autologBuffered.Inc()
		return
	case stopped:
		a.m.dropped(dropShutdown, 1)
		return
	case refused:
		return
	}
	a.m.dropped(dropDBDown, 1)
	a.warn.Do(func(n int64) {
		a.log.WarnContext(ctx, "postgres unavailable and autolog buffer full, impressions dropped", "dropped", n, "capacity", a.capacity)
	})
}

// rejected counts and logs an impression the database refused. The line carries the IDs of the
// /reco request that served the list: a background write has no request context of its own.
func (a *autolog) rejected(ctx context.Context, ev *events.Impression, correlationID string, err error) {
	a.m.dropped(dropRejected, 1)
	if _, ok := logging.IDsFrom(ctx); !ok {
		ctx = logging.WithIDs(ctx, logging.IDs{RequestID: ev.RequestID, CorrelationID: correlationID})
	}
	a.log.ErrorContext(ctx, "autolog impression rejected by the database", "err", err, "event_id", ev.EventID)
}

type startResult int

const (
	started startResult = iota
	full
	stopped
	refused // the writer refused the event (counted dropped as rejected): neither queued nor buffered
)

// background starts a background persist unless the bound is reached or the module stopped.
func (a *autolog) background(ev *events.Impression, correlationID string) startResult {
	a.mu.RLock()
	defer a.mu.RUnlock()
	if a.closed {
		return stopped
	}
	if a.inflight.Add(1) > a.capacity {
		a.inflight.Add(-1)
		return full
	}
	write := func(ctx context.Context) error {
		_, err := a.w.Write(ctx, []events.Any{ev}, correlationID)
		return err
	}
	if sw, ok := a.w.(submitter); ok {
		p, err := sw.Prepare([]events.Any{ev}, correlationID)
		if err != nil {
			a.inflight.Add(-1)
			a.rejected(context.Background(), ev, correlationID, err)
			return refused
		}
		write = func(ctx context.Context) error {
			_, err := sw.WritePrepared(ctx, p)
			return err
		}
		if !a.pg.IsOpen() {
			start := time.Now()
			a.submitted.Add(1)
			// Bounded by the write timeout, as an inline write's queue wait is: the event
			// carries its serve time as its receive time, and a list that waited longer is
			// retried restamped (see autolog).
			if sw.Submit(p, a.timeout, func(_ []ingest.Result, err error) { a.committed(ev, correlationID, start, err) }) == nil {
				return started
			}
			// The writer's queue is full (or it closed): a persist goroutine waits for room.
			a.submitted.Add(-1)
		}
	}
	a.wg.Add(1)
	go a.persist(ev, correlationID, write)
	return started
}

// committed is the Submit callback of an event: it counts the outcome, or hands a failed write
// to a persist goroutine. It runs on the writer's goroutine and must not block.
func (a *autolog) committed(ev *events.Impression, correlationID string, start time.Time, err error) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	if a.aborted {
		return // Shutdown counted it as dropped
	}
	a.submitted.Add(-1)
	a.m.stage(stageImpressionLog, time.Since(start))
	switch {
	case err == nil:
		a.m.autologPersisted.Inc()
		a.pg.Success()
	case errors.Is(err, ingest.ErrClosed):
		a.m.dropped(dropShutdown, 1)
	case !transient(err):
		a.rejected(context.Background(), ev, correlationID, err)
	case a.noRetry:
		a.m.dropped(dropShutdown, 1) // the shutdown's writer close failed to commit it
	default:
		a.pg.Failure()
		a.m.autologRetries.Inc()
		a.wg.Add(1)
		go a.persist(ev, correlationID, nil)
		return
	}
	a.inflight.Add(-1)
}

// persist writes until the event is stored, rejected, or the shutdown gives up on it. first is
// the first write (the event as prepared when served); nil means a first write failed already,
// so it backs off before writing. Every later write restamps the event.
func (a *autolog) persist(ev *events.Impression, correlationID string, first func(context.Context) error) {
	defer a.wg.Done()
	defer a.inflight.Add(-1)
	backoff := 20 * time.Millisecond
	again := func(ctx context.Context) error {
		_, err := a.w.Write(ctx, []events.Any{restamped(ev)}, correlationID)
		return err
	}
	write, skip := first, first == nil
	for {
		if !skip && !a.pg.IsOpen() {
			start := time.Now()
			ctx, cancel := context.WithTimeout(a.abortCtx, a.timeout)
			err := write(ctx)
			cancel()
			a.m.stage(stageImpressionLog, time.Since(start))
			switch {
			case err == nil:
				a.m.autologPersisted.Inc()
				a.pg.Success()
				return
			case a.abortCtx.Err() != nil || errors.Is(err, ingest.ErrClosed):
				a.m.dropped(dropShutdown, 1)
				return
			case !transient(err):
				a.rejected(context.Background(), ev, correlationID, err)
				return
			}
			a.pg.Failure()
			a.m.autologRetries.Inc()
		}
		// From here on the event has waited (a write failed, or the breaker was open).
		skip, write = false, again
		// Full jitter keeps a thousand waiting events from retrying in lock step.
		wait := time.Duration(rand.Int64N(int64(backoff))) + time.Millisecond
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-a.abortCtx.Done():
			t.Stop()
			a.m.dropped(dropShutdown, 1)
			return
		}
		backoff = min(backoff*2, a.retryMax)
	}
}

// Shutdown stops accepting events and waits up to timeout for the background persists; the
// persist goroutines still retrying then are abandoned and count their events as dropped.
// closeWriter (nil for a writer without one) then closes the writer, which commits the events
// still queued in it: their callbacks count each as persisted, or as dropped when the commit
// fails, so no event is counted dropped and then committed. It returns how many events were
// dropped.
func (a *autolog) Shutdown(timeout time.Duration, closeWriter func()) int64 {
	before := a.m.autologDropped[dropShutdown].Get()
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	// A callback may still start a retry goroutine, so the wait watches the count of pending
	// events rather than the WaitGroup (which must not grow while waited on).
	for deadline := time.Now().Add(timeout); a.inflight.Load() > 0 && time.Now().Before(deadline); {
		time.Sleep(2 * time.Millisecond)
	}
	a.mu.Lock()
	a.noRetry = true // from here on the WaitGroup does not grow
	a.mu.Unlock()
	a.abort() // the persist goroutines count their events as dropped
	a.wg.Wait()
	if closeWriter != nil {
		closeWriter()
	}
	a.mu.Lock()
	a.aborted = true
	if n := a.submitted.Swap(0); n > 0 {
		// A writer without a close (or one whose callbacks never came): what it still holds
		// is counted here, and a callback that comes after changes no count.
		a.m.dropped(dropShutdown, int(n))
		a.inflight.Add(-n)
	}
	a.mu.Unlock()
	return int64(a.m.autologDropped[dropShutdown].Get() - before)
}

// transient reports whether a write error may succeed on retry: the database was unreachable
// or too slow, or the wait was cut short.
func transient(err error) bool {
	return errors.Is(err, ingest.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, context.Canceled)
}
