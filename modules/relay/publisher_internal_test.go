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
	want := []int{8, 32, 128, 512, 2048, 8192, 10_000}
	if len(p.writers) != len(want) {
		t.Fatalf("%d writers, want %v", len(p.writers), want)
	}
	for i, w := range p.writers {
		if w.BatchSize != want[i] || w.Transport != p.transport || p.transport == nil {
			t.Errorf("writer %d: BatchSize %d, shared transport %t; want %d and shared", i, w.BatchSize, w.Transport == p.transport, want[i])
		}
	}
	for _, tc := range []struct{ msgs, writer int }{{1, 0}, {8, 0}, {9, 1}, {128, 2}, {129, 3}, {8192, 5}, {8193, 6}, {10_000, 6}, {50_000, 6}} {
		if got := p.tier(tc.msgs); got != tc.writer {
			t.Errorf("%d messages go to writer %d, want %d", tc.msgs, got, tc.writer)
		}
	}
}
