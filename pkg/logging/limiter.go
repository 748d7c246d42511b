package logging

import (
	"sync/atomic"
	"time"
)

// Limiter lets a line through at most once a second, with the number of occurrences since
// the last one that went through: a failure that every request or batch repeats (an outage,
// an overload) must not turn into a log flood just when the process and its log pipeline can
// least afford it. The zero value is ready; it is safe for concurrent use.
type Limiter struct {
	last, count atomic.Int64
}

// Do calls f with the occurrences counted since its last call, unless it was called less
// than a second ago.
func (l *Limiter) Do(f func(n int64)) {
	l.count.Add(1)
	now := time.Now().UnixNano()
	last := l.last.Load()
	if now-last < int64(time.Second) || !l.last.CompareAndSwap(last, now) {
		return
	}
	f(l.count.Swap(0))
}
