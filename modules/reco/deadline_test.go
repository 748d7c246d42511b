package reco

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestSharedDeadline(t *testing.T) {
	for _, tc := range []struct {
		timeout, grain time.Duration
	}{
		{250 * time.Millisecond, 10 * time.Millisecond}, // the default --reco.redis-timeout
		{100 * time.Millisecond, 5 * time.Millisecond},
		{5 * time.Millisecond, time.Millisecond},
		{time.Minute, 10 * time.Millisecond},
	} {
		d := newSharedDeadline(tc.timeout)
		if d.grain != tc.grain {
			t.Fatalf("timeout %v: grain %v, want %v", tc.timeout, d.grain, tc.grain)
		}
		now := time.Now()
		a := d.context(now)
		dl, ok := a.Deadline()
		if !ok || dl.Before(now.Add(tc.timeout)) || dl.After(now.Add(tc.timeout+tc.grain)) {
			t.Fatalf("timeout %v: deadline %v after now, want within [%v, %v]", tc.timeout, dl.Sub(now), tc.timeout, tc.timeout+tc.grain)
		}
		// Within the grain every request shares it; after it, a new one that still leaves
		// the whole timeout.
		if b := d.context(now.Add(tc.grain - time.Nanosecond)); b != a {
			t.Fatalf("timeout %v: a request within the grain got another context", tc.timeout)
		}
		later := now.Add(tc.grain)
		c := d.context(later)
		if c == a {
			t.Fatalf("timeout %v: a request after the grain got the old context", tc.timeout)
		}
		if dl, _ := c.Deadline(); dl.Before(later.Add(tc.timeout)) {
			t.Fatalf("timeout %v: the next context leaves %v, want at least the timeout", tc.timeout, dl.Sub(later))
		}
	}
}

// TestSharedDeadlineExpires: the shared context ends by itself (its timer), so a hung Redis
// read still returns.
func TestSharedDeadlineExpires(t *testing.T) {
	ctx := newSharedDeadline(2 * time.Millisecond).context(time.Now())
	select {
	case <-ctx.Done():
		if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			t.Fatalf("ended with %v, want the deadline", ctx.Err())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the shared context did not expire")
	}
}
