package httpx

import (
	"container/list"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/labstack/echo/v4"
)

// Limiter is admission control for a group of routes: at most Max requests run at once,
// the rest wait in a queue for at most Timeout and are then answered 503 with Retry-After,
// so an overloaded process keeps serving what it admits within its latency instead of
// sharing its cores among ever more requests until every one is late (an open feed's
// clients keep arriving whatever the server's pace).
//
// The queue is first in, first out while it drains; once it has not been empty for Timeout
// (sustained overload, where first in first out would serve only requests that already
// waited Timeout) it serves the newest first, and the oldest time out. This is the adaptive
// LIFO of Facebook's "Fail at Scale" (ACM Queue, 2015): in a burst nobody is reordered, in
// overload the requests served are the fresh ones, whose clients are still waiting.
type Limiter struct {
	name    string
	max     int
	timeout time.Duration

	mu      sync.Mutex
	running int
	waiting list.List // of *waiter; Front is served next
	since   time.Time // when the queue last became non-empty

	shed, admittedAfterWait *metrics.Counter
}

// shedKey marks a request the limiter refused, for the access log: an expected, counted
// answer under overload, logged as a request (info) rather than as a server error, which
// would write a line per refused request at every log level just when the cores are short.
const shedKey = "httpx.shed"

type waiter struct {
	ready chan struct{} // closed when the slot is handed over
	elem  *list.Element
}

// NewLimiter returns a limiter named name (the label of its metrics) admitting max requests
// at once with a queue wait of at most timeout; max 0 admits everything (no limiter).
func NewLimiter(name string, max int, timeout time.Duration, set *metrics.Set) *Limiter {
	l := &Limiter{name: name, max: max, timeout: timeout}
	if max <= 0 {
		return l
	}
	if set == nil {
		set = metrics.NewSet()
	}
	lbl := `{limiter=` + strconv.Quote(name) + `}`
	l.shed = set.NewCounter(`recsys_http_shed_total` + lbl)
	l.admittedAfterWait = set.NewCounter(`recsys_http_admitted_after_wait_total` + lbl)
	set.NewGauge(`recsys_http_in_flight`+lbl, func() float64 {
		l.mu.Lock()
		defer l.mu.Unlock()
		return float64(l.running)
	})
	set.NewGauge(`recsys_http_queued`+lbl, func() float64 {
		l.mu.Lock()
		defer l.mu.Unlock()
		return float64(l.waiting.Len())
	})
	set.NewGauge(`recsys_http_max_in_flight`+lbl, func() float64 { return float64(max) })
	return l
}

// StatusClientClosedRequest (nginx's 499) answers a request whose client closed its
// connection before an answer was made. Nobody reads it; it keeps such requests out of the
// server-error (5xx) counts that error rates and release guardrails read.
const StatusClientClosedRequest = 499

// Middleware admits each request through the limiter.
func (l *Limiter) Middleware(next echo.HandlerFunc) echo.HandlerFunc {
	if l.max <= 0 {
		return next
	}
	return func(c echo.Context) error {
		if !l.acquire(c.Request().Context().Done(), time.Now()) {
			if c.Request().Context().Err() != nil {
				// The client went away while queued: nobody reads the answer, and a 503 would
				// count a refusal the server never made in every error rate.
				return echo.NewHTTPError(StatusClientClosedRequest, "client closed the request while it waited for a turn")
			}
			l.shed.Inc()
			c.Set(shedKey, true)
			c.Response().Header().Set("Retry-After", "1")
			return echo.NewHTTPError(http.StatusServiceUnavailable, "overloaded: no turn within "+l.timeout.String()+
				" ("+l.name+" serves "+strconv.Itoa(l.max)+" requests at once); retry later")
		}
		defer l.release()
		return next(c)
	}
}

// acquire takes a slot, waiting for at most the limiter's timeout; false when none came in
// time or done (the client went away) closed first.
func (l *Limiter) acquire(done <-chan struct{}, now time.Time) bool {
	l.mu.Lock()
	if l.running < l.max && l.waiting.Len() == 0 {
		l.running++
		l.mu.Unlock()
		return true
	}
	if l.waiting.Len() == 0 {
		l.since = now
	}
	w := &waiter{ready: make(chan struct{})}
	if now.Sub(l.since) > l.timeout {
		w.elem = l.waiting.PushFront(w) // sustained overload: newest first
	} else {
		w.elem = l.waiting.PushBack(w)
	}
	l.mu.Unlock()

	t := time.NewTimer(l.timeout)
	defer t.Stop()
	select {
	case <-w.ready:
		l.admittedAfterWait.Inc()
		return true
	case <-t.C:
	case <-done:
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-w.ready: // handed a slot while timing out: give it on
		l.handOver()
		return false
	default:
	}
	l.waiting.Remove(w.elem)
	return false
}

// release frees the caller's slot: to the next waiter, if any.
func (l *Limiter) release() {
	l.mu.Lock()
	l.handOver()
	l.mu.Unlock()
}

// handOver passes a running slot to the front waiter, or frees it; l.mu is held.
func (l *Limiter) handOver() {
	front := l.waiting.Front()
	if front == nil {
		l.running--
		return
	}
	l.waiting.Remove(front)
	close(front.Value.(*waiter).ready)
}
