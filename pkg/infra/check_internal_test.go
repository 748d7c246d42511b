package infra

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A probe storm makes one check per checkTTL, not one per probe: the probes that find the
// result expired while a check runs wait for its outcome (a storm of unauthenticated
// /healthz was a storm of PostgreSQL pings and Kafka dials at every expiry). A probe whose
// client goes away neither fails the check nor leaves that failure cached for the others.
func TestCachedCheckIsSharedByConcurrentProbes(t *testing.T) {
	var calls atomic.Int32
	slowPing := func(ctx context.Context) error {
		calls.Add(1)
		select {
		case <-time.After(50 * time.Millisecond):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	in := &Infra{cached: map[string]checkResult{}}
	var wg sync.WaitGroup
	for range 100 {
		wg.Go(func() {
			if err := in.cachedCheck(context.Background(), "postgres", slowPing); err != nil {
				t.Errorf("check: %v", err)
			}
		})
	}
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Errorf("100 concurrent probes ran the check %d times, want 1", n)
	}

	in = &Infra{cached: map[string]checkResult{}}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(10*time.Millisecond, cancel) // the probe's client goes away mid-check
	_ = in.cachedCheck(ctx, "postgres", slowPing)
	if err := in.cachedCheck(context.Background(), "postgres", slowPing); err != nil {
		t.Errorf("the next probe, after one whose client went away: %v", err)
	}
}
