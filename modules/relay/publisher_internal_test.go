package relay

import (
	"testing"

	"recsys/pkg/kafka"
)

// Each call goes to the smallest writer that holds it whole; all writers share one transport.
func TestTieredPublisherTiers(t *testing.T) {
	cfg := NewConfig()
	cfg.BatchEvents = 10_000
	kc := kafka.DefaultConfig()
	kc.Brokers = []string{"127.0.0.1:1"}
	p := NewPublisher(kafka.New(kc), cfg).(*tieredPublisher)
	defer p.Close()
	want := []int{64, 256, 1024, 4096, 10_000}
	if len(p.writers) != len(want) {
		t.Fatalf("%d writers, want %v", len(p.writers), want)
	}
	for i, w := range p.writers {
		if w.BatchSize != want[i] || w.Transport != p.transport || p.transport == nil {
			t.Errorf("writer %d: BatchSize %d, shared transport %t; want %d and shared", i, w.BatchSize, w.Transport == p.transport, want[i])
		}
	}
	for _, tc := range []struct{ msgs, writer int }{{1, 0}, {64, 0}, {65, 1}, {1024, 2}, {1025, 3}, {9_999, 4}, {10_000, 4}, {50_000, 4}} {
		if got := p.tier(tc.msgs); got != tc.writer {
			t.Errorf("%d messages go to writer %d, want %d", tc.msgs, got, tc.writer)
		}
	}
}
