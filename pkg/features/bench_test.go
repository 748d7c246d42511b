package features

import (
	"fmt"
	"testing"

	"recsys/pkg/ranking"
)

// BenchmarkApply measures the pure feature update of one watch for a user with a full history
// and a full watched set (the consumer's per-event CPU cost before I/O), reusing the Delta as
// a batch applier does. Every watch is of an item new to the window: 20 pairs, both ways.
func BenchmarkApply(b *testing.B) {
	cfg := DefaultConfig()
	var u UserState
	for i := 0; i < cfg.HistorySize*2; i++ {
		u, _ = Apply(cfg, u, watch("u", fmt.Sprintf("item-%d", i), int64(i)*1000))
	}
	items := make([]string, 1024)
	for i := range items {
		items[i] = fmt.Sprintf("item-%d", i)
	}
	var d Delta
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		u = ApplyInto(cfg, u, Interaction{Kind: KindWatch, UserID: "u", ItemID: items[i%len(items)], TsMs: int64(1_000_000 + i)}, &d)
	}
}

// BenchmarkApplyImpression measures an impression of 20 items.
func BenchmarkApplyImpression(b *testing.B) {
	cfg := DefaultConfig()
	var u UserState
	items := make([]string, 2000)
	for i := range items {
		items[i] = fmt.Sprintf("item-%d", i)
	}
	var d Delta
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// 20 items per list, rotating through 2000 so the memory keeps trimming.
		start := (i * 20) % len(items)
		u = ApplyInto(cfg, u, Interaction{Kind: KindImpression, UserID: "u", Items: items[start : start+20], TsMs: int64(i)}, &d)
	}
}

// BenchmarkMemoryStoreApply measures Apply plus the in-memory Delta application over a stream
// of many users and items.
func BenchmarkMemoryStoreApply(b *testing.B) {
	evs := randomStream(200_000, 2000, 5000, 3)
	m := NewMemoryStore(DefaultConfig())
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m.Apply(evs[i%len(evs)])
	}
}

// BenchmarkSnapshot measures building a Snapshot in memory.
func BenchmarkSnapshot(b *testing.B) {
	evs := randomStream(200_000, 2000, 5000, 3)
	m := NewMemoryStore(DefaultConfig())
	for _, ev := range evs {
		m.Apply(ev)
	}
	opts := ranking.DefaultConfig().SnapshotOptions()
	now := evs[len(evs)-1].TsMs
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_ = m.Snapshot(fmt.Sprintf("u%d", i%2000), now, opts)
	}
}
