package reco

import (
	"sync/atomic"
	"time"
)

// breaker is a small circuit breaker in front of one store. Requests only ever open it
// (after `threshold` consecutive failures); a background probe closes it when the store
// answers again. While it is open no request touches the store, so an outage costs the
// requests in flight when it starts plus nothing more: never one timeout per request.
// The closed-state checks are single atomic loads, cheap enough for every request.
type breaker struct {
	threshold int32
	open      atomic.Bool
	failures  atomic.Int32
	openedAt  atomic.Int64 // unix ns of the last opening
	opens     atomic.Int64 // times opened, for metrics
	onChange  func(open bool)
}

func newBreaker(threshold int, onChange func(open bool)) *breaker {
	if threshold < 1 {
		threshold = 1
	}
	return &breaker{threshold: int32(threshold), onChange: onChange}
}

// Allow reports whether requests may use the store.
func (b *breaker) Allow() bool { return !b.open.Load() }

// IsOpen reports whether the breaker is open.
func (b *breaker) IsOpen() bool { return b.open.Load() }

// Success resets the consecutive failure count after a request succeeded.
func (b *breaker) Success() {
	if b.failures.Load() != 0 {
		b.failures.Store(0)
	}
}

// Failure records a failed request and opens the breaker at the threshold.
func (b *breaker) Failure() {
	if b.failures.Add(1) >= b.threshold {
		b.Trip()
	}
}

// Trip opens the breaker now (a failed probe does this: the store is known to be down).
func (b *breaker) Trip() {
	if b.open.CompareAndSwap(false, true) {
		b.openedAt.Store(time.Now().UnixNano())
		b.opens.Add(1)
		if b.onChange != nil {
			b.onChange(true)
		}
	}
}

// Reset closes the breaker after a successful probe.
func (b *breaker) Reset() {
	b.failures.Store(0)
	if b.open.CompareAndSwap(true, false) {
		if b.onChange != nil {
			b.onChange(false)
		}
	}
}

// State names the state for health output.
func (b *breaker) State() string {
	if b.open.Load() {
		return "open"
	}
	return "closed"
}

// OpenFor returns how long the breaker has been open (0 when closed).
func (b *breaker) OpenFor() time.Duration {
	if !b.open.Load() {
		return 0
	}
	return time.Since(time.Unix(0, b.openedAt.Load()))
}
