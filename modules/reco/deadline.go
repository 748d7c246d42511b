package reco

import (
	"context"
	"sync/atomic"
	"time"
)

// sharedDeadline hands out a context that expires between timeout and timeout+grain from
// now, one shared by every request of the same grain. A context.WithTimeout per request
// under the request's context (a cancel context, a timer, the parent's children map, a done
// channel) was ~900 bytes of each /reco's ~8 KB for the collector, and /reco's tail at
// 10,000 req/s is the collector's cycles (docs/performance-log.md, sessions 27 and 28).
//
// The context does not derive from the request's: a client that goes away no longer cuts
// its Redis read short, which then runs to its end (a millisecond, or the timeout when Redis
// hangs, as before). Nothing else is lost: the request's values are not read below it.
type sharedDeadline struct {
	timeout, grain time.Duration
	cur            atomic.Pointer[grainCtx]
}

type grainCtx struct {
	ctx   context.Context
	until time.Time // hand it out until then
}

func newSharedDeadline(timeout time.Duration) *sharedDeadline {
	// A grain of a twentieth of the budget (within 1 ms and 10 ms) keeps every deadline within
	// 5 % of it while a new context is made at most a thousand times a second.
	return &sharedDeadline{timeout: timeout, grain: min(max(timeout/20, time.Millisecond), 10*time.Millisecond)}
}

// context returns a context that expires no sooner than timeout after now.
func (d *sharedDeadline) context(now time.Time) context.Context {
	if g := d.cur.Load(); g != nil && now.Before(g.until) {
		return g.ctx
	}
	// The context cancels itself at its deadline, which releases its timer: nothing to call
	// earlier, since requests may still hold it until then.
	ctx, cancel := context.WithDeadline(context.Background(), now.Add(d.timeout+d.grain))
	_ = cancel
	d.cur.Store(&grainCtx{ctx: ctx, until: now.Add(d.grain)})
	return ctx
}
