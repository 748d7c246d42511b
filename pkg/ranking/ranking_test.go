package ranking

import (
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

const now = int64(1_700_000_000_000)

func noExplore() Config {
	c := DefaultConfig()
	c.ExplorationShare = 0
	return c
}

// snapshot builds a user who watched h1 (most recent) and h2, with co-visitation neighbours,
// global lists and fresh items.
func snapshot() *Snapshot {
	s := &Snapshot{
		UserID:  "u1",
		NowMs:   now,
		History: []HistoryEntry{{ItemID: "h1", TsMs: now - 1000, Quality: 1}, {ItemID: "h2", TsMs: now - 2000, Quality: 1}},
		Watched: map[string]bool{"h1": true, "h2": true, "w": true},
		Neighbours: map[string][]Scored{
			"h1": {{ItemID: "n1", Score: 9}, {ItemID: "h2", Score: 8}, {ItemID: "n2", Score: 5}, {ItemID: "w", Score: 4}},
			"h2": {{ItemID: "n3", Score: 20}, {ItemID: "n2", Score: 10}, {ItemID: "h1", Score: 7}},
		},
		Trending: []Scored{{ItemID: "t1", Score: 50}, {ItemID: "n2", Score: 30}, {ItemID: "w", Score: 20}},
		Popular:  []Scored{{ItemID: "p1", Score: 500}, {ItemID: "t1", Score: 400}},
		Fresh:    []Scored{{ItemID: "f1", Score: float64(now - 10)}, {ItemID: "f2", Score: float64(now - 20)}, {ItemID: "f3", Score: float64(now - 30)}},
		Items:    map[string]ItemStats{},
	}
	for _, id := range []string{"n1", "n2", "n3", "t1", "p1", "f1", "f2", "f3", "w"} {
		s.Items[id] = ItemStats{FirstSeenMs: now - 86_400_000}
	}
	return s
}

func TestRankExcludesAndNoDuplicates(t *testing.T) {
	r := NewWeighted(DefaultConfig())
	for k := 1; k <= 12; k++ {
		res := r.Rank(snapshot(), k)
		seen := map[string]bool{}
		for _, id := range res.Items {
			if id == "h1" || id == "h2" || id == "w" {
				t.Fatalf("k=%d: watched/history item %s returned: %v", k, id, res.Items)
			}
			if seen[id] {
				t.Fatalf("k=%d: duplicate %s in %v", k, id, res.Items)
			}
			seen[id] = true
		}
		// 8 recommendable items exist: n1 n2 n3 t1 p1 f1 f2 f3.
		if want := min(k, 8); len(res.Items) != want || len(res.Scores) != want {
			t.Fatalf("k=%d: %d items, %d scores, want %d", k, len(res.Items), len(res.Scores), want)
		}
	}
	if res := r.Rank(snapshot(), 0); len(res.Items) != 0 {
		t.Fatalf("k=0 returned %v", res.Items)
	}
}

func TestRankCovisOrder(t *testing.T) {
	cfg := noExplore()
	cfg.Weights = Weights{Covis: 1}
	cfg.HistoryDecay = 0.5
	res := NewWeighted(cfg).Rank(snapshot(), 3)
	// Hand-computed covis (per history item normalised by its top neighbour):
	//   h1 (weight 1):   n1 9/9 = 1, n2 5/9
	//   h2 (weight 0.5): n3 20/20 = 1 → 0.5, n2 10/20 → 0.25
	// n1 = 1, n2 = 0.5556 + 0.25 = 0.8056, n3 = 0.5.
	if want := []string{"n1", "n2", "n3"}; !slices.Equal(res.Items, want) {
		t.Fatalf("items %v, want %v", res.Items, want)
	}
	if res.Strategy != StrategyCovisHybrid || res.ModelVersion != ModelVersionWeighted {
		t.Fatalf("strategy %q model %q", res.Strategy, res.ModelVersion)
	}
	if d := res.Scores[1] - (5.0/9 + 0.25); d > 1e-9 || d < -1e-9 {
		t.Fatalf("score of n2 = %v", res.Scores[1])
	}
}

func TestRankFatigue(t *testing.T) {
	cfg := noExplore()
	cfg.Weights = Weights{Covis: 1, Fatigue: 2}
	s := snapshot()
	// n1 is the best co-visitation candidate but was shown 6 times recently without a watch.
	s.Impressions = map[string]ImpressionStat{"n1": {Count: 6, LastTsMs: now - 60_000}}
	res := NewWeighted(cfg).Rank(s, 3)
	if res.Items[0] == "n1" || slices.Index(res.Items, "n1") == 0 {
		t.Fatalf("fatigued n1 still first: %v", res.Items)
	}
	// Impressions older than FatigueMemory no longer count.
	s.Impressions["n1"] = ImpressionStat{Count: 6, LastTsMs: now - cfg.FatigueMemory.Milliseconds() - 1}
	if res := NewWeighted(cfg).Rank(s, 3); res.Items[0] != "n1" {
		t.Fatalf("old impressions still discount n1: %v", res.Items)
	}
	// Up to FatigueFree impressions are free.
	s.Impressions["n1"] = ImpressionStat{Count: cfg.FatigueFree, LastTsMs: now}
	if res := NewWeighted(cfg).Rank(s, 3); res.Items[0] != "n1" {
		t.Fatalf("free impressions discount n1: %v", res.Items)
	}
}

// Counters split between Impressions and ImpressionsAdded (the stored counters' overlay, as
// /reco passes them) rank exactly as the same counters in one map.
func TestRankReadsAddedImpressions(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	cfg := DefaultConfig()
	cfg.Weights.Fatigue = 2
	for trial := range 200 {
		whole := randomSnapshot(r, trial)
		split := *whole
		split.Impressions, split.ImpressionsAdded = map[string]ImpressionStat{}, map[string]ImpressionStat{}
		for k, v := range whole.Impressions {
			switch r.IntN(3) {
			case 0:
				split.Impressions[k] = v
			case 1:
				split.ImpressionsAdded[k] = v
			default: // part in each, the latest time in either
				c := r.Int64N(v.Count + 1)
				split.Impressions[k] = ImpressionStat{Count: c, LastTsMs: v.LastTsMs - r.Int64N(1000)}
				split.ImpressionsAdded[k] = ImpressionStat{Count: v.Count - c, LastTsMs: v.LastTsMs}
			}
		}
		want, got := NewWeighted(cfg).Rank(whole, 20), NewWeighted(cfg).Rank(&split, 20)
		if !slices.Equal(want.Items, got.Items) || !slices.Equal(want.Scores, got.Scores) {
			t.Fatalf("trial %d: split counters rank %v, one map %v", trial, got.Items, want.Items)
		}
	}
}

// TestRankLeavesBlockedItemsOut: a blocked item is never returned, whichever list names it
// (co-visitation, trending, popular, fresh for exploration), for a user with history and a
// cold one, with exploration on; the rest of the list is what it would be without the item.
func TestRankLeavesBlockedItemsOut(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ExplorationShare = 0.5
	r := NewWeighted(cfg)
	for _, cold := range []bool{false, true} {
		for _, blocked := range [][]string{{"n2"}, {"t1"}, {"p1"}, {"f1", "f2"}, {"n1", "n2", "n3", "t1", "p1", "f1", "f2", "f3"}, {"no-such-item"}} {
			s := snapshot()
			if cold {
				s.History, s.Watched, s.Neighbours = nil, nil, nil
			}
			s.Blocked = blocked
			res := r.Rank(s, 12)
			for _, id := range res.Items {
				if slices.Contains(blocked, id) {
					t.Fatalf("cold=%v blocked %v: %s returned in %v", cold, blocked, id, res.Items)
				}
			}
			// Without the blocked items, the same candidates remain.
			all := snapshot()
			if cold {
				all.History, all.Watched, all.Neighbours = nil, nil, nil
			}
			var want []string
			for _, id := range r.Rank(all, 12).Items {
				if !slices.Contains(blocked, id) {
					want = append(want, id)
				}
			}
			got := slices.Clone(res.Items)
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("cold=%v blocked %v: items %v, want the unblocked ones %v", cold, blocked, res.Items, want)
			}
		}
	}
}

func TestRankColdStart(t *testing.T) {
	s := snapshot()
	s.History, s.Watched, s.Neighbours = nil, nil, nil
	s.Items["t1"] = ItemStats{PopShort: 50, PopLong: 400}
	s.Items["p1"] = ItemStats{PopShort: 1, PopLong: 500}
	s.Items["n2"] = ItemStats{PopShort: 30, PopLong: 10}
	cfg := DefaultConfig()
	cfg.ExplorationShare = 0.2
	res := NewWeighted(cfg).Rank(s, 5)
	if res.Strategy != StrategyColdStart {
		t.Fatalf("strategy %q", res.Strategy)
	}
	if res.Items[0] != "t1" {
		t.Fatalf("cold start should lead with trending t1: %v", res.Items)
	}
	// 20% of 5 slots = 1 exploration slot from the fresh items, at the end.
	fresh := 0
	for _, id := range res.Items {
		if strings.HasPrefix(id, "f") {
			fresh++
		}
	}
	if fresh < 1 || !strings.HasPrefix(res.Items[4], "f") {
		t.Fatalf("want an exploration item in the last slot: %v", res.Items)
	}
}

func TestRankExplorationDeterministic(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ExplorationShare = 0.5
	r := NewWeighted(cfg)
	a := r.Rank(snapshot(), 4)
	b := r.Rank(snapshot(), 4)
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("same snapshot, different results: %v vs %v", a, b)
	}
	// Different seeds explore differently (over several seeds at least two distinct picks).
	picks := map[string]bool{}
	for seed := uint64(1); seed <= 20; seed++ {
		s := snapshot()
		s.Seed = seed
		res := r.Rank(s, 4)
		picks[strings.Join(res.Items[2:], ",")] = true
	}
	if len(picks) < 2 {
		t.Fatalf("exploration ignores the seed: %v", picks)
	}
	// Under-exposed means fewer than ExplorationMaxImpressions impressions.
	s := snapshot()
	for _, f := range []string{"f1", "f2", "f3"} {
		s.Items[f] = ItemStats{Impressions: cfg.ExplorationMaxImpressions}
	}
	for _, id := range r.Rank(s, 4).Items {
		if strings.HasPrefix(id, "f") {
			t.Fatalf("well-exposed fresh item %s explored", id)
		}
	}
}

func TestRankTiesByItemID(t *testing.T) {
	cfg := noExplore()
	cfg.Weights = Weights{Popular: 1}
	s := &Snapshot{UserID: "u", NowMs: now, Popular: []Scored{{ItemID: "c", Score: 1}, {ItemID: "a", Score: 1}, {ItemID: "b", Score: 1}},
		Items: map[string]ItemStats{"a": {PopLong: 1}, "b": {PopLong: 1}, "c": {PopLong: 1}}}
	if res := NewWeighted(cfg).Rank(s, 3); !slices.Equal(res.Items, []string{"a", "b", "c"}) {
		t.Fatalf("ties: %v", res.Items)
	}
}

func TestRankFeatureSignals(t *testing.T) {
	// Two otherwise equal cold candidates: the one with the better signal wins.
	tests := []struct {
		name    string
		weights Weights
		better  ItemStats
		worse   ItemStats
	}{
		{"watch rate", Weights{WatchRate: 1}, ItemStats{Impressions: 100, Watches: 50}, ItemStats{Impressions: 100, Watches: 5}},
		{"completion", Weights{Completion: 1}, ItemStats{SumPercent: 900, PercentCount: 10}, ItemStats{SumPercent: 100, PercentCount: 10}},
		{"ended without percent counts as complete", Weights{Completion: 1}, ItemStats{Ended: 10}, ItemStats{}},
		{"freshness", Weights{Freshness: 1}, ItemStats{FirstSeenMs: now - 1000}, ItemStats{FirstSeenMs: now - 30*86_400_000}},
		{"trending", Weights{Trending: 1}, ItemStats{PopShort: 5}, ItemStats{PopShort: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := noExplore()
			cfg.Weights = tc.weights
			s := &Snapshot{UserID: "u", NowMs: now, Popular: []Scored{{ItemID: "a", Score: 1}, {ItemID: "b", Score: 1}},
				Items: map[string]ItemStats{"a": tc.worse, "b": tc.better}}
			res := NewWeighted(cfg).Rank(s, 2)
			if res.Items[0] != "b" {
				t.Fatalf("%v (scores %v)", res.Items, res.Scores)
			}
		})
	}
}

func TestTopKMatchesSort(t *testing.T) {
	for n := 0; n < 40; n++ {
		for _, k := range []int{1, 3, 10, 50} {
			var c []cand
			for i := 0; i < n; i++ {
				c = append(c, cand{id: fmt.Sprintf("i%02d", i), score: float64((i * 7919) % 13)})
			}
			want := slices.Clone(c)
			slices.SortFunc(want, cmpCand)
			topK(c, k)
			m := min(k, n)
			for i := 0; i < m; i++ {
				if c[i].id != want[i].id {
					t.Fatalf("n=%d k=%d: position %d = %s, want %s", n, k, i, c[i].id, want[i].id)
				}
			}
		}
	}
}

func TestConfigValidate(t *testing.T) {
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	c := DefaultConfig()
	c.RegisterFlags(fs)
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	if err := fs.Parse([]string{"--ranking.exploration-share=0.9", "--ranking.weight-covis=-1"}); err != nil {
		t.Fatal(err)
	}
	err := c.Validate()
	for _, want := range []string{"--ranking.exploration-share must be between 0 and 0.5, got 0.9", "--ranking.weight-covis must be between 0 and 1000, got -1"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("error %v lacks %q", err, want)
		}
	}
}

// TestRankPruningIsExact: skipping candidates that cannot reach the top k must give exactly
// the exhaustive result, over random snapshots with overlapping lists, fatigue and ties.
func TestRankPruningIsExact(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for trial := 0; trial < 300; trial++ {
		s := randomSnapshot(r, trial)
		for _, k := range []int{1, 5, 10, 20} {
			cfg := trialConfig(trial)
			pruned := NewWeighted(cfg).Rank(s, k)
			full := NewWeighted(cfg)
			full.exhaustive = true
			want := full.Rank(s, k)
			if !reflect.DeepEqual(pruned, want) {
				t.Fatalf("trial %d k=%d: pruned %v %v\nexhaustive %v %v", trial, k, pruned.Items, pruned.Scores, want.Items, want.Scores)
			}
		}
	}
}

// TestRankHistoryNeighboursIsExact: the neighbour lists given by history position rank
// exactly like the same lists in the Neighbours map.
func TestRankHistoryNeighboursIsExact(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	for trial := 0; trial < 300; trial++ {
		s := randomSnapshot(r, trial)
		byPos := *s
		byPos.Neighbours = map[string][]Scored{"unread": {{ItemID: "i1", Score: 9}}} // ignored
		byPos.HistoryNeighbours = make([][]Scored, len(s.History))
		for i, h := range s.History {
			byPos.HistoryNeighbours[i] = s.Neighbours[h.ItemID]
		}
		if trial%4 == 3 && len(byPos.HistoryNeighbours) > 1 {
			// Shorter than the history: the rest have no lists, as in the map.
			byPos.HistoryNeighbours = byPos.HistoryNeighbours[:1]
			for _, h := range s.History[1:] {
				delete(s.Neighbours, h.ItemID)
			}
		}
		cfg := trialConfig(trial)
		for _, k := range []int{1, 5, 20} {
			want := NewWeighted(cfg).Rank(s, k)
			if got := NewWeighted(cfg).Rank(&byPos, k); !reflect.DeepEqual(got, want) {
				t.Fatalf("trial %d k=%d: by position %v %v\nby map %v %v", trial, k, got.Items, got.Scores, want.Items, want.Scores)
			}
		}
	}
}

// TestRankIntoReusesMemory: ranking into a Result that held another list (longer, shorter,
// none) gives what Rank gives, in the Result's own memory when it is large enough.
func TestRankIntoReusesMemory(t *testing.T) {
	r := rand.New(rand.NewPCG(15, 16))
	var reused Result
	for trial := 0; trial < 200; trial++ {
		s := randomSnapshot(r, trial)
		w := NewWeighted(trialConfig(trial))
		for _, k := range []int{20, 1, 0, 5, 30} {
			want := w.Rank(s, k)
			before := cap(reused.Items)
			w.RankInto(&reused, s, k)
			if !reflect.DeepEqual(reused, want) {
				t.Fatalf("trial %d k=%d: into a reused Result %+v\nRank %+v", trial, k, reused, want)
			}
			if k > 0 && before >= k && cap(reused.Items) != before {
				t.Fatalf("trial %d k=%d: capacity %d was enough, got a new slice", trial, k, before)
			}
		}
	}
}

// trialConfig varies the configuration over the random trials.
func trialConfig(trial int) Config {
	cfg := DefaultConfig()
	cfg.ExplorationShare = 0
	if trial%3 == 2 {
		// Exploration picks that are also ranked candidates leave slots for the
		// fill from the remaining candidates.
		cfg.ExplorationShare = 0.4
	}
	if trial%2 == 1 {
		cfg.Weights.Trending, cfg.Weights.Popular = 0.8, 0.6 // weaker pruning
	}
	return cfg
}

// TestRankPreparedIsExact: lists and statistics prepared once (PrepareList, Prepare at the
// snapshot's time, as a server's caches do) rank exactly like the same snapshot unprepared;
// statistics prepared by another ranker are not used.
func TestRankPreparedIsExact(t *testing.T) {
	for trial := 0; trial < 200; trial++ {
		cfg := trialConfig(trial)
		plain := randomSnapshot(rand.New(rand.NewPCG(uint64(trial), 5)), trial)
		prepared := randomSnapshot(rand.New(rand.NewPCG(uint64(trial), 5)), trial)
		other := randomSnapshot(rand.New(rand.NewPCG(uint64(trial), 5)), trial)
		r := NewWeighted(cfg)
		otherCfg := cfg
		otherCfg.Weights.WatchRate, otherCfg.Weights.Freshness = 0.9, 0.7
		prepareLists(r, prepared)
		prepareLists(NewWeighted(otherCfg), other)
		for _, k := range []int{1, 5, 20} {
			want := r.Rank(plain, k)
			if got := r.Rank(prepared, k); !reflect.DeepEqual(got, want) {
				t.Fatalf("trial %d k=%d: prepared %v %v\nplain %v %v", trial, k, got.Items, got.Scores, want.Items, want.Scores)
			}
			if got := r.Rank(other, k); !reflect.DeepEqual(got, want) {
				t.Fatalf("trial %d k=%d: prepared by another ranker %v %v\nplain %v %v", trial, k, got.Items, got.Scores, want.Items, want.Scores)
			}
		}
	}
}

// TestFreshnessIsEvaluatedAtNow: freshness is 2^(-age/half-life) at Snapshot.NowMs (age
// clamped at 0) whether or not the statistics were prepared, and the value does not depend
// on when they were prepared: a server that prepared them at load time used to score them
// at that time, so two servers, or two items loaded at different moments, disagreed.
func TestFreshnessIsEvaluatedAtNow(t *testing.T) {
	cfg := noExplore()
	cfg.Weights = Weights{Freshness: 1}
	hl := cfg.FreshnessHalfLife.Milliseconds()
	for _, tc := range []struct {
		name string
		age  int64
		want float64
	}{
		{"one half-life", hl, 0.5},
		{"two half-lives", 2 * hl, 0.25},
		{"new", 0, 1},
		{"first seen after now", -5000, 1},
		{"a third of a half-life", hl / 3, math.Exp2(-1.0 / 3)},
		{"ten and a bit half-lives", 10*hl + 12345, math.Exp2(-float64(10*hl+12345) / float64(hl))},
		{"ancient", 5000 * hl, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := NewWeighted(cfg)
			st := &ItemStats{FirstSeenMs: now - tc.age}
			s := &Snapshot{UserID: "u", NowMs: now, Trending: []Scored{{ItemID: "a", Score: 1, Stats: st}}}
			plain := r.Rank(s, 1).Scores[0]
			if math.Abs(plain-tc.want) > 1e-15 {
				t.Fatalf("freshness %v, want %v", plain, tc.want)
			}
			r.Prepare(st)
			if got := r.Rank(s, 1).Scores[0]; got != plain {
				t.Fatalf("prepared freshness %v, unprepared %v: want the same bits", got, plain)
			}
		})
	}
}

// TestEqualStatisticsTieByIDAtAnyTime: items with equal statistics score exactly alike at
// any request time and whichever of them was prepared (a server prepares statistics when it
// loads them), so they come out in id order; their popularity given as stored or decayed to
// NowMs ranks alike.
func TestEqualStatisticsTieByIDAtAnyTime(t *testing.T) {
	r := NewWeighted(noExplore())
	hl := DefaultConfig().FreshnessHalfLife.Milliseconds()
	for _, at := range []int64{now, now + 1, now + 999, now + hl/2 + 7, now + 3*hl - 1} {
		for _, prepared := range []string{"", "a", "b", "ab"} {
			stats := map[string]*ItemStats{}
			for _, id := range []string{"a", "b", "c"} {
				stats[id] = &ItemStats{Impressions: 40, Watches: 9, SumPercent: 700, PercentCount: 9,
					FirstSeenMs: now - 3*86_400_000 + 17, PopShort: 3.25e40, PopLong: 7.5e40}
				if strings.Contains(prepared, id) {
					r.Prepare(stats[id])
				}
			}
			stats["c"].PopShort = 3.5e40
			s := &Snapshot{UserID: "u", NowMs: at, Stored: true,
				Trending: []Scored{{ItemID: "c", Score: 3.5e40, Stats: stats["c"]}, {ItemID: "b", Score: 3.25e40, Stats: stats["b"]},
					{ItemID: "a", Score: 3.25e40, Stats: stats["a"]}},
				Popular: []Scored{{ItemID: "b", Score: 7.5e40, Stats: stats["b"]}, {ItemID: "a", Score: 7.5e40, Stats: stats["a"]}}}
			res := r.Rank(s, 3)
			if !slices.Equal(res.Items, []string{"c", "a", "b"}) || res.Scores[1] != res.Scores[2] {
				t.Fatalf("at %d, prepared %q: %v %v, want c then the tie a, b", at-now, prepared, res.Items, res.Scores)
			}
		}
	}
}

// randomSnapshot is a random warm user with overlapping lists, fatigue, ties, and statistics
// spread over Items, SharedItems and the lists' own Stats pointers.
func randomSnapshot(r *rand.Rand, trial int) *Snapshot {
	s := &Snapshot{UserID: fmt.Sprintf("u%d", trial), NowMs: now, Watched: map[string]bool{},
		Impressions: map[string]ImpressionStat{}, Neighbours: map[string][]Scored{}, Similar: map[string][]Scored{},
		Items: map[string]ItemStats{}}
	id := func() string { return fmt.Sprintf("i%d", r.IntN(400)) }
	for h := 0; h < 1+r.IntN(12); h++ {
		hid := fmt.Sprintf("h%d", h)
		s.History = append(s.History, HistoryEntry{ItemID: hid, TsMs: now - int64(h)*1000, Quality: 0.2 + 0.8*r.Float64()})
		var l, m []Scored
		for j := 0; j < r.IntN(60); j++ {
			l = append(l, Scored{ItemID: id(), Score: float64(r.IntN(20))}) // integer scores: many ties
			m = append(m, Scored{ItemID: id(), Score: r.Float64()})
		}
		slices.SortFunc(l, func(a, b Scored) int { return cmpFloatDesc(a.Score, b.Score) })
		slices.SortFunc(m, func(a, b Scored) int { return cmpFloatDesc(a.Score, b.Score) })
		s.Neighbours[hid], s.Similar[hid] = l, m
	}
	all := map[string]bool{}
	for j := 0; j < 6; j++ {
		s.Fresh = append(s.Fresh, Scored{ItemID: id(), Score: float64(now - int64(j))})
	}
	for j := 0; j < 100; j++ {
		s.Trending = append(s.Trending, Scored{ItemID: id(), Score: float64(100 - j)})
		s.Popular = append(s.Popular, Scored{ItemID: id(), Score: float64(1000 - j)})
	}
	for _, l := range [][]Scored{s.Trending, s.Popular} {
		for _, x := range l {
			all[x.ItemID] = true
		}
	}
	for _, l := range s.Neighbours {
		for _, x := range l {
			all[x.ItemID] = true
		}
	}
	// Statistics spread over Items, SharedItems and the lists' own Stats pointers (set on
	// every list entry of the item, as Scored.Stats requires).
	s.SharedItems = map[string]ItemStats{}
	carried := map[string]*ItemStats{}
	for _, it := range slices.Sorted(maps.Keys(all)) { // sorted: the same seed builds the same snapshot
		st := ItemStats{Impressions: int64(r.IntN(100)), Watches: int64(r.IntN(50)), PopShort: 100 * r.Float64(),
			PopLong: 1000 * r.Float64(), FirstSeenMs: now - int64(r.IntN(1e9)), SumPercent: float64(r.IntN(1000)), PercentCount: int64(r.IntN(20))}
		switch r.IntN(4) {
		case 0:
			s.Items[it] = st
		case 1:
			s.SharedItems[it] = st
		case 2:
			carried[it] = &st
		default:
			carried[it] = &st
			s.SharedItems[it] = st
		}
		if r.IntN(10) == 0 {
			s.Impressions[it] = ImpressionStat{Count: int64(r.IntN(8)), LastTsMs: now}
		}
		if r.IntN(20) == 0 {
			s.Watched[it] = true
		}
	}
	lists := [][]Scored{s.Trending, s.Popular}
	for _, l := range s.Neighbours {
		lists = append(lists, l)
	}
	for _, l := range s.Similar {
		lists = append(lists, l)
	}
	for _, l := range lists {
		for i := range l {
			l[i].Stats = carried[l[i].ItemID]
		}
	}
	return s
}

func cmpFloatDesc(a, b float64) int {
	switch {
	case a > b:
		return -1
	case a < b:
		return 1
	}
	return 0
}

// TestRankFillsFromListsBeyondTheirHeads: when the first TrendingN and PopularN entries of the
// global lists hold fewer eligible items than k (the lists overlap, the user watched some),
// the further entries the Snapshot carries fill the list: ranked behind the heads'
// candidates, ahead of the exploration slots, whose share stays what it is.
func TestRankFillsFromListsBeyondTheirHeads(t *testing.T) {
	// Trending and popular name the same 300 items in the same order; fresh items f0..f9.
	lists := func(watched int) *Snapshot {
		s := &Snapshot{UserID: "u", NowMs: now, Watched: map[string]bool{}, Items: map[string]ItemStats{}}
		for i := 0; i < 300; i++ {
			id := fmt.Sprintf("x%03d", i)
			s.Trending = append(s.Trending, Scored{ItemID: id, Score: float64(300 - i)})
			s.Popular = append(s.Popular, Scored{ItemID: id, Score: float64(3000 - i)})
			s.Items[id] = ItemStats{PopShort: float64(300 - i), PopLong: float64(3000 - i), FirstSeenMs: now - 1e9}
			if i < watched {
				s.Watched[id] = true
			}
		}
		for i := 0; i < 10; i++ {
			s.Fresh = append(s.Fresh, Scored{ItemID: fmt.Sprintf("f%d", i), Score: float64(now - int64(i))})
		}
		return s
	}
	for _, tc := range []struct {
		name     string
		watched  int
		k        int
		share    float64
		want     int // items
		explored int // of which fresh items
	}{
		{"heads suffice", 0, 100, 0, 100, 0},
		{"cold k=200", 0, 200, 0, 200, 0},
		{"cold k=200 with exploration", 0, 200, 0.05, 200, 10},
		{"watched most of the heads", 90, 50, 0, 50, 0},
		{"watched most of the heads, exploration", 90, 40, 0.05, 40, 2},
		{"lists run out: exploration fills the rest", 150, 200, 0, 160, 10},
		{"lists and fresh run out", 150, 200, 0.5, 160, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.ExplorationShare, cfg.ExplorationMaxImpressions = tc.share, 0
			cfg.FreshN = 10
			s := lists(tc.watched)
			res := NewWeighted(cfg).Rank(s, tc.k)
			if len(res.Items) != tc.want || len(res.Scores) != tc.want {
				t.Fatalf("%d items, %d scores, want %d: %v", len(res.Items), len(res.Scores), tc.want, res.Items)
			}
			seen := map[string]bool{}
			explored, lastRanked := 0, -1
			for i, id := range res.Items {
				if seen[id] || s.Watched[id] {
					t.Fatalf("duplicate or watched %s in %v", id, res.Items)
				}
				seen[id] = true
				if strings.HasPrefix(id, "f") {
					explored++
					continue
				}
				if explored > 0 {
					t.Fatalf("ranked item %s after an exploration item: %v", id, res.Items)
				}
				// The lists' order is the score order here: the heads' items come first.
				var n int
				fmt.Sscanf(id, "x%d", &n)
				if n <= lastRanked {
					t.Fatalf("%s at %d after x%03d: %v", id, i, lastRanked, res.Items)
				}
				lastRanked = n
			}
			if explored != tc.explored {
				t.Fatalf("%d exploration items, want %d: %v", explored, tc.explored, res.Items)
			}
		})
	}
}

// TestRankListLengthAndExclusions: over random snapshots and configurations (list heads
// shorter than the lists, zero weights, exploration shares, blocked and watched items), a
// list has min(k, eligible items) items, each eligible once, with a finite score. Eligible:
// an entry of the neighbour lists ranked (positive strength), of the trending and popular
// lists (all their entries), or of the exploration pool, that is not watched, in the
// history or blocked.
func TestRankListLengthAndExclusions(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	for trial := 0; trial < 600; trial++ {
		s := randomSnapshot(r, trial)
		s.Trending = s.Trending[:r.IntN(len(s.Trending)+1)]
		s.Popular = s.Popular[:r.IntN(len(s.Popular)+1)]
		s.Blocked = []string{"i1", "i2", "i3", s.History[0].ItemID}
		cfg := DefaultConfig()
		cfg.ExplorationShare = []float64{0, 0.05, 0.2, 0.5}[trial%4]
		cfg.TrendingN = []int{0, 5, 100}[trial%3]
		cfg.PopularN = []int{0, 7, 100}[(trial/3)%3]
		cfg.HistoryItems = []int{0, 3, 10}[(trial/9)%3]
		cfg.NeighboursPerItem = []int{1, 5, 50}[(trial/27)%3]
		switch trial % 5 {
		case 0:
			cfg.Weights = Weights{}
		case 1:
			cfg.Weights.Covis = 0
		}
		excluded := map[string]bool{}
		for _, h := range s.History {
			excluded[h.ItemID] = true
		}
		for _, id := range s.Blocked {
			excluded[id] = true
		}
		for id, w := range s.Watched {
			excluded[id] = excluded[id] || w
		}
		eligible := map[string]bool{}
		add := func(l []Scored, n int, positive bool) {
			for _, x := range l[:min(n, len(l))] {
				if !excluded[x.ItemID] && (!positive || x.Score > 0) {
					eligible[x.ItemID] = true
				}
			}
		}
		for _, h := range s.History[:min(cfg.HistoryItems, len(s.History))] {
			for _, l := range [][]Scored{s.Neighbours[h.ItemID], s.Similar[h.ItemID]} {
				if len(l) > 0 && l[0].Score > 0 {
					add(l, cfg.NeighboursPerItem, true)
				}
			}
		}
		add(s.Trending, len(s.Trending), false)
		add(s.Popular, len(s.Popular), false)
		for _, id := range NewWeighted(cfg).explorationPool(nil, s, func(x *Scored) bool { return excluded[x.ItemID] }) {
			eligible[id] = true
		}
		for _, k := range []int{1, 5, 20, 200, 1000} {
			res := NewWeighted(cfg).Rank(s, k)
			if want := min(k, len(eligible)); len(res.Items) != want || len(res.Scores) != want {
				t.Fatalf("trial %d k=%d: %d items, %d scores, want %d", trial, k, len(res.Items), len(res.Scores), want)
			}
			seen := map[string]bool{}
			for i, id := range res.Items {
				if seen[id] || !eligible[id] {
					t.Fatalf("trial %d k=%d: %s duplicate or not eligible: %v", trial, k, id, res.Items)
				}
				seen[id] = true
				if math.IsNaN(res.Scores[i]) || math.IsInf(res.Scores[i], 0) {
					t.Fatalf("trial %d k=%d: score %v of %s", trial, k, res.Scores[i], id)
				}
			}
		}
	}
}

// A NaN or infinite feature value (a corrupted stored field, a decay that overflowed) counts
// as 0, and a list entry with one as absent: one NaN made every score NaN, and NaN scores
// have no order, so the list came out in no defined order. Whatever the corruption, every
// score is finite, the ranked list is in order, pruning changes nothing, and where "counts as
// 0" has an equivalent snapshot, the result is that snapshot's.
func TestRankNonFiniteFeaturesCountAsZero(t *testing.T) {
	base := func() *Snapshot {
		s := snapshot()
		s.Similar = map[string][]Scored{"h1": {{ItemID: "n3", Score: 0.5}, {ItemID: "n1", Score: 0.2}}}
		for i, x := range s.Trending {
			st := s.Items[x.ItemID]
			st.PopShort, st.SumPercent, st.PercentCount = x.Score, float64(60+10*i), 1
			s.Items[x.ItemID] = st
		}
		for _, x := range s.Popular {
			st := s.Items[x.ItemID]
			st.PopLong = x.Score
			s.Items[x.ItemID] = st
		}
		return s
	}
	stat := func(id string, set func(*ItemStats, float64)) func(*Snapshot, float64) {
		return func(s *Snapshot, v float64) {
			st := s.Items[id]
			set(&st, v)
			s.Items[id] = st
		}
	}
	tests := []struct {
		name    string
		corrupt func(s *Snapshot, v float64)
		// same turns base into the snapshot the corrupted one must rank as (nil: none).
		same func(s *Snapshot)
	}{
		{name: "short popularity", corrupt: stat("n2", func(st *ItemStats, v float64) { st.PopShort = v })},
		{name: "long popularity", corrupt: stat("t1", func(st *ItemStats, v float64) { st.PopLong = v })},
		{name: "completion sum", corrupt: stat("n2", func(st *ItemStats, v float64) { st.SumPercent = v })},
		{name: "neighbour strength", corrupt: func(s *Snapshot, v float64) { s.Neighbours["h1"][2].Score = v },
			same: func(s *Snapshot) { s.Neighbours["h1"] = slices.Delete(s.Neighbours["h1"], 2, 3) }},
		{name: "strongest neighbour", corrupt: func(s *Snapshot, v float64) { s.Neighbours["h2"][0].Score = v },
			same: func(s *Snapshot) { s.Neighbours["h2"] = s.Neighbours["h2"][1:] }},
		{name: "similar strength", corrupt: func(s *Snapshot, v float64) { s.Similar["h1"][0].Score = v },
			same: func(s *Snapshot) { s.Similar["h1"] = s.Similar["h1"][1:] }},
		{name: "history quality", corrupt: func(s *Snapshot, v float64) { s.History[1].Quality = v },
			same: func(s *Snapshot) { s.History[1].Quality = 0 }},
		{name: "trending head", corrupt: func(s *Snapshot, v float64) {
			s.Trending[0].Score = v
			stat("t1", func(st *ItemStats, v float64) { st.PopShort = v })(s, v)
		}},
		{name: "popular head", corrupt: func(s *Snapshot, v float64) {
			s.Popular[0].Score = v
			stat("p1", func(st *ItemStats, v float64) { st.PopLong = v })(s, v)
		}},
	}
	for _, tc := range tests {
		if tc.same == nil {
			tc.same = func(s *Snapshot) { tc.corrupt(s, 0) }
		}
		for _, v := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
			t.Run(fmt.Sprintf("%s %v", tc.name, v), func(t *testing.T) {
				for _, k := range []int{2, 8} {
					s := base()
					tc.corrupt(s, v)
					got := NewWeighted(noExplore()).Rank(s, k)
					for i, sc := range got.Scores {
						if math.IsNaN(sc) || math.IsInf(sc, 0) {
							t.Fatalf("k=%d: score %v of %s (%v %v)", k, sc, got.Items[i], got.Items, got.Scores)
						}
						if i > 0 && sc > got.Scores[i-1] {
							t.Fatalf("k=%d: out of order: %v %v", k, got.Items, got.Scores)
						}
					}
					full := NewWeighted(noExplore())
					full.exhaustive = true
					if want := full.Rank(s, k); !reflect.DeepEqual(got, want) {
						t.Fatalf("k=%d: pruned %v %v, exhaustive %v %v", k, got.Items, got.Scores, want.Items, want.Scores)
					}
					if tc.name == "trending head" || tc.name == "popular head" {
						continue // a list entry stays a candidate: no snapshot without it ranks the same
					}
					z := base()
					tc.same(z)
					if want := NewWeighted(noExplore()).Rank(z, k); !reflect.DeepEqual(got, want) {
						t.Fatalf("k=%d: %v %v, want as if it were 0 / absent: %v %v", k, got.Items, got.Scores, want.Items, want.Scores)
					}
				}
			})
		}
	}
}
