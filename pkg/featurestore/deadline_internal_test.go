package featurestore

import (
	"context"
	"testing"
	"time"
)

// A rebase outlives its batch's deadline but not a cancellation (an operator's Ctrl-C of a
// rebuild or a replay).
func TestWithoutDeadline(t *testing.T) {
	for _, tc := range []struct {
		name      string
		end       func() (context.Context, func())
		cancelled bool
	}{
		{"deadline", func() (context.Context, func()) { return context.WithTimeout(context.Background(), time.Millisecond) }, false},
		{"cancel", func() (context.Context, func()) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx, func() {}
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := tc.end()
			defer cancel()
			<-ctx.Done()
			dctx, dcancel := withoutDeadline(ctx)
			defer dcancel()
			if _, ok := dctx.Deadline(); ok {
				t.Error("the detached context has a deadline")
			}
			select {
			case <-dctx.Done():
				if !tc.cancelled {
					t.Errorf("ended with its parent's deadline: %v", dctx.Err())
				}
			case <-time.After(100 * time.Millisecond):
				if tc.cancelled {
					t.Error("not cancelled with its parent")
				}
			}
		})
	}
}
