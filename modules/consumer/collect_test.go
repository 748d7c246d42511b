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
			in := make(chan *fetched, len(tt.sends))
			in <- &tt.sends[0]
			type result struct {
				b  []fetched
				ok bool
			}
			done := make(chan result, 1)
			go func() {
				b, ok := c.collect(ctx, in, 0)
				done <- result{b, ok}
			}()
			for i := range tt.sends[1:] {
				time.Sleep(gap)
				in <- &tt.sends[1+i]
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

// With two lanes, one of them busy: a batch of impressions only keeps collecting until every
// lane is idle (it is to apply whole, in one transaction), a batch with a watch only needs
// the free lane.
func TestCollectImpressionsWaitForEveryLane(t *testing.T) {
	of := func(k features.Kind) fetched {
		return fetched{ev: featurestore.Event{Interaction: features.Interaction{Kind: k}}}
	}
	imp, watch := of(features.KindImpression), of(features.KindWatch)
	tests := []struct {
		name      string
		sends     []fetched
		waitsLane bool // collect returns only once the busy lane is free
		want      int
	}{
		{"impressions wait for the busy lane", []fetched{imp, imp, imp}, true, 3},
		{"a watch takes the free lane", []fetched{watch}, false, 1},
		{"a watch joining impressions stops the wait", []fetched{imp, imp, watch}, false, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := NewConfig()
			cfg.MaxInFlight, cfg.Linger, cfg.ImpressionLinger = 2, time.Millisecond, time.Millisecond
			c := &Consumer{cfg: cfg, outstanding: make([]atomic.Int32, 2), laneFree: make(chan struct{}, 1)}
			c.outstanding[1].Store(1) // lane 1 is applying a group
			in := make(chan *fetched, len(tt.sends))
			for i := range tt.sends {
				in <- &tt.sends[i]
			}
			done := make(chan []fetched, 1)
			go func() {
				b, _ := c.collect(context.Background(), in, 0)
				done <- b
			}()
			var b []fetched
			if tt.waitsLane {
				// Any return while the lane is busy is the defect; a slow machine only delays
				// returns, so the window cannot fail a correct collect.
				select {
				case b = <-done:
					t.Fatalf("collect returned %d messages while a lane was busy", len(b))
				case <-time.After(200 * time.Millisecond): // 200 lingers
				}
				c.outstanding[1].Store(0)
				c.laneFree <- struct{}{}
			}
			select {
			case b = <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("collect did not return (it waits for a lane it does not need, or for good)")
			}
			if len(b) != tt.want {
				t.Fatalf("collect returned %d messages, want %d", len(b), tt.want)
			}
		})
	}
}

// dispatch applies a group whole on lane 0 while every lane is idle when it is small or
// holds impressions only (up to --consumer.max-batch); otherwise it splits it by user.
func TestDispatchMergesImpressionOnlyGroups(t *testing.T) {
	groupOf := func(n int, kinds ...features.Kind) *group {
		g := &group{batch: make([]fetched, n)}
		for i := range g.batch {
			g.batch[i].ev.Kind = kinds[i%len(kinds)]
			g.batch[i].lane = i % 2
		}
		return g
	}
	tests := []struct {
		name   string
		g      *group
		merged bool
	}{
		{"small group with watches", groupOf(mergeBelow, features.KindWatch, features.KindImpression), true},
		{"larger group with watches", groupOf(mergeBelow+1, features.KindImpression, features.KindWatch), false},
		{"larger group of impressions", groupOf(1000, features.KindImpression), true},
		{"impressions over max-batch", groupOf(1001, features.KindImpression), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := NewConfig()
			cfg.MaxInFlight, cfg.MaxBatch = 2, 1000
			c := &Consumer{cfg: cfg, outstanding: make([]atomic.Int32, 2), mergedDone: make(chan struct{}, 1)}
			jobs := []chan laneJob{make(chan laneJob, 2), make(chan laneJob, 2)}
			seq := newSequencer(2)
			seq.reserve()
			c.dispatch(tt.g, make([][]*fetched, 2), jobs, seq)
			if tt.merged {
				if j := <-jobs[0]; !j.merged || len(j.items) != len(tt.g.batch) || len(jobs[1]) != 0 {
					t.Fatalf("lane 0 got %d events (merged %v), lane 1 %d jobs: want the whole group merged on lane 0", len(j.items), j.merged, len(jobs[1]))
				}
				return
			}
			if len(jobs[0]) != 1 || len(jobs[1]) != 1 {
				t.Fatalf("lanes got %d and %d jobs, want the group split over both", len(jobs[0]), len(jobs[1]))
			}
			if j := <-jobs[0]; j.merged {
				t.Fatal("a split share is marked merged")
			}
		})
	}
}
