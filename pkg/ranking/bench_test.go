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

// servingSnapshot is the shape /reco ranks in BenchmarkRecoHTTP: a user with 12 watches
// along a walk over 2000 items, 10 neighbour lists of 50 that overlap (nearby items), each
// entry carrying its statistics (the server's item cache), the global lists' statistics in
// SharedItems and their entries' Stats (the server's global snapshot), no learned lists, no
// impressions.
func servingSnapshot() *Snapshot {
	s := &Snapshot{UserID: "user-7", NowMs: now, Watched: map[string]bool{}, Impressions: map[string]ImpressionStat{},
		Neighbours: map[string][]Scored{}, SharedItems: map[string]ItemStats{}}
	// One string per item, as the server's item cache shares them between lists.
	ids := map[int]string{}
	id := func(i int) string {
		i = (i + 2000) % 2000
		if _, ok := ids[i]; !ok {
			ids[i] = fmt.Sprintf("item-%04d", i)
		}
		return ids[i]
	}
	stats := map[string]*ItemStats{}
	st := func(it string) *ItemStats {
		if p := stats[it]; p != nil {
			return p
		}
		n := 0
		fmt.Sscanf(it, "item-%d", &n)
		p := &ItemStats{Impressions: int64(50 + n%97), Watches: int64(5 + n%13), SumPercent: float64(300 + n%500), PercentCount: int64(5 + n%7),
			Ended: int64(n % 4), FirstSeenMs: now - int64(n)*3_600_000, PopShort: 1 / float64(1+n), PopLong: 10 / float64(1+n%500)}
		stats[it] = p
		return p
	}
	item := 700
	for w := 0; w < 12; w++ {
		item += 1 + (w*7)%20
		s.History = append([]HistoryEntry{{ItemID: id(item), TsMs: now - int64(12-w)*60_000, Quality: 0.3 + float64(w%5)/7}}, s.History...)
		s.Watched[id(item)] = true
	}
	for h := 0; h < 10; h++ {
		c := 0
		fmt.Sscanf(s.History[h].ItemID, "item-%d", &c)
		var l []Scored
		for j := 0; j < 50; j++ {
			var it string
			if j%5 == 4 {
				it = id(j * 3) // a popular jump
			} else {
				it = id(c + (j/2+1)*(1-2*(j%2)))
			}
			l = append(l, Scored{ItemID: it, Score: 40 / float64(1+j), Stats: st(it)})
		}
		s.Neighbours[s.History[h].ItemID] = l
	}
	for j := 0; j < 100; j++ {
		t, p := id(j*3), id(j*5)
		s.Trending = append(s.Trending, Scored{ItemID: t, Score: st(t).PopShort, Stats: st(t)})
		s.Popular = append(s.Popular, Scored{ItemID: p, Score: float64(100 - j), Stats: st(p)})
		s.SharedItems[t], s.SharedItems[p] = *st(t), *st(p)
	}
	for j := 0; j < 50; j++ {
		f := id(1999 - j)
		s.Fresh = append(s.Fresh, Scored{ItemID: f, Score: float64(now - int64(j)*1000), Stats: st(f)})
		s.SharedItems[f] = *st(f)
	}
	return s
}

// BenchmarkRankServing ranks the BenchmarkRecoHTTP shape into a top 20, with the statistics
// as loaded and as the server's item cache keeps them (prepared: Weighted.Prepare).
func BenchmarkRankServing(b *testing.B) {
	for _, prepared := range []bool{false, true} {
		b.Run(fmt.Sprintf("prepared=%v", prepared), func(b *testing.B) {
			s := servingSnapshot()
			r := NewWeighted(DefaultConfig())
			if prepared {
				prepareLists(r, s)
			}
			b.ReportAllocs()
			for b.Loop() {
				_ = r.Rank(s, 20)
			}
		})
	}
}

// prepareLists prepares the snapshot's lists and the statistics their entries point to.
func prepareLists(r *Weighted, s *Snapshot) {
	done := map[*ItemStats]bool{}
	each := func(l []Scored) {
		PrepareList(l)
		for i := range l {
			if st := l[i].Stats; st != nil && !done[st] {
				done[st] = true
				r.Prepare(st)
			}
		}
	}
	for _, l := range s.Neighbours {
		each(l)
	}
	for _, l := range s.Similar {
		each(l)
	}
	each(s.Trending)
	each(s.Popular)
	each(s.Fresh)
}

// BenchmarkRankServingWorld ranks users in turn over a world the size of BenchmarkRecoHTTP's
// (2000 items, each with a cached list of 50 neighbours; 5000 users with 12 history items
// along walks of nearby items), so that, as in the server, every request reads lists that
// are not in the CPU caches (the lists take megabytes; BenchmarkRankServing ranks one
// snapshot whose data stays cached). Statistics are one prepared copy per item, like the
// server's item cache and global snapshot keep them. Deterministic, for callgrind or
// cachegrind (simulate the 2 MB L2 as the last level: --cache-sim=yes --LL=2097152,16,64).
func BenchmarkRankServingWorld(b *testing.B) {
	const items, users, listLen = 2000, 5000, 50
	r := NewWeighted(DefaultConfig())
	ids := make([]string, items)
	stats := make([]*ItemStats, items)
	for i := range ids {
		ids[i] = fmt.Sprintf("item-%04d", i)
		stats[i] = &ItemStats{Impressions: int64(50 + i%97), Watches: int64(5 + i%13), SumPercent: float64(300 + i%500), PercentCount: int64(5 + i%7),
			Ended: int64(i % 4), FirstSeenMs: now - int64(i)*3_600_000, PopShort: 1 / float64(1+i), PopLong: 10 / float64(1+i%500)}
		r.Prepare(stats[i])
	}
	entry := func(i int, score float64) Scored {
		i = (i%items + items) % items
		return Scored{ItemID: ids[i], Score: score, Stats: stats[i]}
	}
	lists := make(map[string][]Scored, items)
	for i := range ids {
		l := make([]Scored, 0, listLen)
		for j := 0; j < listLen; j++ {
			if j%5 == 4 {
				l = append(l, entry((i*7+j*31)%items/3, 40/float64(1+j))) // a popular jump
			} else {
				l = append(l, entry(i+(j/2+1)*(1-2*(j%2)), 40/float64(1+j)))
			}
		}
		PrepareList(l)
		lists[ids[i]] = l
	}
	global := func(n int, f func(j int) (int, float64)) []Scored {
		var l []Scored
		for j := 0; j < n; j++ {
			i, sc := f(j)
			l = append(l, entry(i, sc))
		}
		PrepareList(l)
		return l
	}
	trending := global(100, func(j int) (int, float64) { return j * 3, stats[j*3].PopShort })
	popular := global(100, func(j int) (int, float64) { return j * 5, float64(100 - j) })
	fresh := global(50, func(j int) (int, float64) { return items - 1 - j, float64(now - int64(j)*1000) })
	snaps := make([]Snapshot, users)
	for u := range snaps {
		s := Snapshot{UserID: fmt.Sprintf("user-%d", u), NowMs: now, Watched: map[string]bool{}, Neighbours: map[string][]Scored{},
			Trending: trending, Popular: popular, Fresh: fresh}
		item := (u * 7919) % items
		for w := 0; w < 12; w++ {
			item = (item + 1 + (u*w)%20) % items
			s.History = append([]HistoryEntry{{ItemID: ids[item], TsMs: now - int64(12-w)*60_000, Quality: 0.3 + float64(w%5)/7}}, s.History...)
			s.Watched[ids[item]] = true
			s.Neighbours[ids[item]] = lists[ids[item]]
		}
		snaps[u] = s
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_ = r.Rank(&snaps[i%users], 20)
	}
}
