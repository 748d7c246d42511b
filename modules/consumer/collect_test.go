package consumer

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"recsys/pkg/features"
	"recsys/pkg/featurestore"
)

// collect lingers --consumer.impression-linger while the batch holds impressions only, and
// --consumer.linger once anything else joins it. The long waits here are an hour, so a batch
// cut early (the defect) shows as a short batch, never as a slow test.
func TestCollectLingersLongerForImpressionsOnly(t *testing.T) {
	of := func(k features.Kind) fetched {
		return fetched{ev: featurestore.Event{Interaction: features.Interaction{Kind: k}}}
	}
	imp, watch, legacy := of(features.KindImpression), of(features.KindWatch), of(features.KindLegacy)
	poison := fetched{err: errors.New("undecodable")}
	const gap = 30 * time.Millisecond // well past --consumer.linger (1 ms)
	tests := []struct {
		name             string
		impressionLinger time.Duration
		sends            []fetched // the first before collect starts, the others gap apart
		cancel           bool      // cancel ctx a gap after the last send (for batches that would wait an hour)
		want             int
	}{
		{name: "impressions keep collecting past linger, a watch ends the wait", impressionLinger: time.Hour,
			sends: []fetched{imp, imp, imp, watch}, want: 4},
		{name: "a legacy event ends the wait too", impressionLinger: time.Hour,
			sends: []fetched{imp, legacy}, want: 2},
		{name: "a batch with a watch waits linger only", impressionLinger: time.Hour,
			sends: []fetched{watch}, want: 1},
		{name: "impressions wait the impression linger, not linger", impressionLinger: time.Hour,
			sends: []fetched{imp, imp}, cancel: true, want: 2},
		{name: "poison does not hurry a batch", impressionLinger: time.Hour,
			sends: []fetched{poison, imp}, cancel: true, want: 2},
		{name: "impression linger 0 lingers like any batch", impressionLinger: 0,
			sends: []fetched{imp}, want: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := NewConfig()
			cfg.MaxInFlight, cfg.Linger, cfg.ImpressionLinger = 1, time.Millisecond, tt.impressionLinger
			c := &Consumer{cfg: cfg, outstanding: make([]atomic.Int32, 1), laneFree: make(chan struct{}, 1)}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			in := make(chan fetched, len(tt.sends))
			in <- tt.sends[0]
			type result struct {
				b  []fetched
				ok bool
			}
			done := make(chan result, 1)
			go func() {
				b, ok := c.collect(ctx, in, 0)
				done <- result{b, ok}
			}()
			for _, f := range tt.sends[1:] {
				time.Sleep(gap)
				in <- f
			}
			if tt.cancel {
				time.Sleep(gap)
				cancel()
			}
			select {
			case r := <-done:
				if !r.ok || len(r.b) != tt.want {
					t.Fatalf("collect returned %d messages (ok %v), want %d", len(r.b), r.ok, tt.want)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("collect did not return")
			}
		})
	}
}
