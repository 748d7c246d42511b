package ranking

import (
	"fmt"
	"testing"
)

// typicalSnapshot is a warm user: 50 history items, 10 neighbour lists of 50, 100 trending,
// 100 popular, 50 fresh, 500 watched, 100 impression counters, learned lists for 10 items.
func typicalSnapshot() *Snapshot {
	s := &Snapshot{UserID: "user-42", NowMs: now, Watched: map[string]bool{}, Impressions: map[string]ImpressionStat{},
		Neighbours: map[string][]Scored{}, Similar: map[string][]Scored{}, Items: map[string]ItemStats{}}
	id := func(i int) string { return fmt.Sprintf("item-%d", i) }
	for i := 0; i < 50; i++ {
		s.History = append(s.History, HistoryEntry{ItemID: id(i * 7), TsMs: now - int64(i)*60_000, Quality: 0.8})
	}
	for i := 0; i < 500; i++ {
		s.Watched[id(i*7)] = true
	}
	for i := 0; i < 100; i++ {
		s.Impressions[id(i*3)] = ImpressionStat{Count: int64(i % 6), LastTsMs: now - 3600_000}
	}
	for h := 0; h < 10; h++ {
		var l, m []Scored
		for j := 0; j < 50; j++ {
			l = append(l, Scored{ItemID: id((h*131 + j*17) % 5000), Score: float64(100 - j)})
			m = append(m, Scored{ItemID: id((h*71 + j*29) % 5000), Score: float64(50-j) / 100})
		}
		s.Neighbours[s.History[h].ItemID] = l
		s.Similar[s.History[h].ItemID] = m
	}
	for j := 0; j < 100; j++ {
		s.Trending = append(s.Trending, Scored{ItemID: id(j * 11 % 5000), Score: float64(1000 - j)})
		s.Popular = append(s.Popular, Scored{ItemID: id(j * 13 % 5000), Score: float64(5000 - j)})
	}
	for j := 0; j < 50; j++ {
		s.Fresh = append(s.Fresh, Scored{ItemID: id(5000 + j), Score: float64(now - int64(j)*1000)})
	}
	add := func(l []Scored) {
		for _, x := range l {
			s.Items[x.ItemID] = ItemStats{Impressions: 100, Watches: 20, SumPercent: 900, PercentCount: 12, Ended: 5,
				FirstSeenMs: now - 86_400_000, PopShort: 3, PopLong: 30}
		}
	}
	for _, l := range s.Neighbours {
		add(l)
	}
	for _, l := range s.Similar {
		add(l)
	}
	add(s.Trending)
	add(s.Popular)
	add(s.Fresh)
	return s
}

// BenchmarkRank measures ranking one typical warm Snapshot into a top 20.
func BenchmarkRank(b *testing.B) {
	s := typicalSnapshot()
	r := NewWeighted(DefaultConfig())
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_ = r.Rank(s, 20)
	}
}

// BenchmarkRankCold measures a cold user (global lists only).
func BenchmarkRankCold(b *testing.B) {
	s := typicalSnapshot()
	s.History, s.Neighbours, s.Similar, s.Watched, s.Impressions = nil, nil, nil, nil, nil
	r := NewWeighted(DefaultConfig())
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_ = r.Rank(s, 20)
	}
}

// BenchmarkRankFewWatched is a warm user whose watched set is its 50 history items (the
// typical snapshot's user watched 500): the shape of BenchmarkRecoHTTP's users.
func BenchmarkRankFewWatched(b *testing.B) {
	s := typicalSnapshot()
	s.Watched = map[string]bool{}
	for _, h := range s.History {
		s.Watched[h.ItemID] = true
	}
	r := NewWeighted(DefaultConfig())
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_ = r.Rank(s, 20)
	}
}
