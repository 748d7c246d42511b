package features

import (
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"recsys/pkg/ranking"
)

func ptr[T any](v T) *T { return &v }

func watch(user, item string, ts int64) Interaction {
	return Interaction{Kind: KindWatch, UserID: user, ItemID: item, TsMs: ts}
}

func TestQuality(t *testing.T) {
	tests := []struct {
		name string
		ev   Interaction
		want float64
	}{
		{"no depth info", Interaction{Kind: KindWatch}, 0.5},
		{"percent 0", Interaction{Kind: KindWatch, PercentWatched: ptr(0.0)}, 0.2},
		{"percent 50", Interaction{Kind: KindWatch, PercentWatched: ptr(50.0)}, 0.6},
		{"percent 100", Interaction{Kind: KindWatch, PercentWatched: ptr(100.0)}, 1},
		{"percent above 100 clamps", Interaction{Kind: KindWatch, PercentWatched: ptr(250.0)}, 1},
		{"percent NaN counts as 0", Interaction{Kind: KindWatch, PercentWatched: ptr(math.NaN())}, 0.2},
		{"percent wins over watch time", Interaction{Kind: KindWatch, PercentWatched: ptr(25.0), WatchTimeSec: 1000}, 0.4},
		{"watch time half reference", Interaction{Kind: KindWatch, WatchTimeSec: ReferenceWatchSec / 2}, 0.6},
		{"watch time beyond reference", Interaction{Kind: KindWatch, WatchTimeSec: 10 * ReferenceWatchSec}, 1},
		{"ended raises to 1", Interaction{Kind: KindWatch, PercentWatched: ptr(10.0), Ended: ptr(true)}, 1},
		{"ended false keeps percent", Interaction{Kind: KindWatch, PercentWatched: ptr(50.0), Ended: ptr(false)}, 0.6},
		{"legacy view", Interaction{Kind: KindLegacy, LegacyType: "view"}, 0.1},
		{"legacy click", Interaction{Kind: KindLegacy, LegacyType: "click"}, 0.3},
		{"legacy purchase", Interaction{Kind: KindLegacy, LegacyType: "purchase"}, 1},
		{"impression is not a watch", Interaction{Kind: KindImpression}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Quality(tc.ev); math.Abs(got-tc.want) > 1e-12 {
				t.Fatalf("Quality = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestDecayMath(t *testing.T) {
	h := time.Hour
	d := NewDecay(h, 1_000_000)
	// Two increments: weight 2 at L+1h, weight 1 at L+3h; value at L+5h is
	// 2·2^-4 + 1·2^-2 = 0.125 + 0.25.
	l := d.LandmarkMs
	stored := d.Forward(2, l+3600_000) + d.Forward(1, l+3*3600_000)
	if got, want := d.At(stored, l+5*3600_000), 0.375; math.Abs(got-want) > 1e-12 {
		t.Fatalf("At = %v, want %v", got, want)
	}
	// Rebasing preserves current values.
	f, next := d.Rebase(l + 4*3600_000)
	if math.Abs(f-1.0/16) > 1e-15 || next.LandmarkMs != l+4*3600_000 {
		t.Fatalf("Rebase factor %v landmark %d", f, next.LandmarkMs)
	}
	if got := next.At(stored*f, l+5*3600_000); math.Abs(got-0.375) > 1e-12 {
		t.Fatalf("after rebase At = %v, want 0.375", got)
	}
	if d.NeedsRebase(l + 400*3600_000) {
		t.Fatal("exponent 400 must not need a rebase")
	}
	if !d.NeedsRebase(l + 501*3600_000) {
		t.Fatal("exponent 501 must need a rebase")
	}
}

func testConfig() Config {
	c := DefaultConfig()
	c.HistorySize = 5
	c.WatchedCap = 8
	c.ImpressionMemory = 8
	c.CovisWindow = 2
	c.CovisDistanceDecay = 0.5
	c.CovisBackwardWeight = 1             // symmetric here; TestApplyCovisBackwardWeight covers the rest
	c.CovisGapHalfLife = 1000 * time.Hour // gaps in these tests are negligible
	c.NeighboursPerItem = 3
	return c
}

func pairsOf(d Delta) []string {
	var out []string
	for _, p := range d.Pairs {
		out = append(out, fmt.Sprintf("%s>%s:%.3f", p.From, p.To, p.Weight))
	}
	slices.Sort(out)
	return out
}

func histIDs(u UserState) string {
	var ids []string
	for _, h := range u.History {
		ids = append(ids, h.ItemID)
	}
	return strings.Join(ids, ",")
}

func TestApplyWatchHistoryAndPairs(t *testing.T) {
	cfg := testConfig()
	type step struct {
		ev        Interaction
		history   string
		pairs     []string
		watchedSz int
	}
	// Quality of a plain watch is 0.5, so a pair at distance 1 weighs 0.25 and at distance 2
	// 0.125 (CovisDistanceDecay 0.5).
	tests := []struct {
		name  string
		steps []step
	}{
		{"window pairs both directions, not only consecutive", []step{
			{watch("u", "a", 1000), "a", nil, 1},
			{watch("u", "b", 2000), "b,a", []string{"a>b:0.250", "b>a:0.250"}, 2},
			{watch("u", "c", 3000), "c,b,a", []string{"a>c:0.125", "b>c:0.250", "c>a:0.125", "c>b:0.250"}, 3},
			{watch("u", "d", 4000), "d,c,b,a", []string{"b>d:0.125", "c>d:0.250", "d>b:0.125", "d>c:0.250"}, 4},
		}},
		{"re-watch within the window: moves to front, no new pairs, no duplicate", []step{
			{watch("u", "a", 1000), "a", nil, 1},
			{watch("u", "b", 2000), "b,a", []string{"a>b:0.250", "b>a:0.250"}, 2},
			{watch("u", "a", 3000), "a,b", nil, 2},
		}},
		{"re-watch outside the window pairs again with the recent items", []step{
			{watch("u", "a", 1000), "a", nil, 1},
			{watch("u", "b", 2000), "b,a", []string{"a>b:0.250", "b>a:0.250"}, 2},
			{watch("u", "c", 3000), "c,b,a", []string{"a>c:0.125", "b>c:0.250", "c>a:0.125", "c>b:0.250"}, 3},
			{watch("u", "a", 4000), "a,c,b", []string{"a>b:0.125", "a>c:0.250", "b>a:0.125", "c>a:0.250"}, 3},
		}},
		{"late event lands in time order and pairs with neighbours on both sides", []step{
			{watch("u", "a", 1000), "a", nil, 1},
			{watch("u", "c", 3000), "c,a", []string{"a>c:0.250", "c>a:0.250"}, 2},
			{watch("u", "b", 2000), "c,b,a", []string{"a>b:0.250", "b>a:0.250", "b>c:0.250", "c>b:0.250"}, 3},
		}},
		{"late duplicate of a newer watch changes no history and forms no pairs", []step{
			{watch("u", "a", 1000), "a", nil, 1},
			{watch("u", "b", 5000), "b,a", []string{"a>b:0.250", "b>a:0.250"}, 2},
			{watch("u", "b", 2000), "b,a", nil, 2},
		}},
		{"history is capped at HistorySize, watched set keeps more", []step{
			{watch("u", "a", 1), "a", nil, 1},
			{watch("u", "b", 2), "b,a", []string{"a>b:0.250", "b>a:0.250"}, 2},
			{watch("u", "c", 3), "c,b,a", []string{"a>c:0.125", "b>c:0.250", "c>a:0.125", "c>b:0.250"}, 3},
			{watch("u", "d", 4), "d,c,b,a", []string{"b>d:0.125", "c>d:0.250", "d>b:0.125", "d>c:0.250"}, 4},
			{watch("u", "e", 5), "e,d,c,b,a", []string{"c>e:0.125", "d>e:0.250", "e>c:0.125", "e>d:0.250"}, 5},
			{watch("u", "f", 6), "f,e,d,c,b", []string{"d>f:0.125", "e>f:0.250", "f>d:0.125", "f>e:0.250"}, 6},
		}},
		{"invalid events change nothing", []step{
			{watch("u", "a", 1000), "a", nil, 1},
			{watch("u", "", 2000), "a", nil, 1},
			{Interaction{Kind: 99, UserID: "u", ItemID: "x", TsMs: 3000}, "a", nil, 1},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var u UserState
			for i, s := range tc.steps {
				var d Delta
				u, d = Apply(cfg, u, s.ev)
				if got := histIDs(u); got != s.history {
					t.Fatalf("step %d: history %q, want %q", i, got, s.history)
				}
				if got := pairsOf(d); !slices.Equal(got, s.pairs) {
					t.Fatalf("step %d: pairs %v, want %v", i, got, s.pairs)
				}
				if len(u.Watched) != s.watchedSz {
					t.Fatalf("step %d: watched %d items, want %d", i, len(u.Watched), s.watchedSz)
				}
				for j := 1; j < len(u.History); j++ {
					if u.History[j-1].TsMs < u.History[j].TsMs {
						t.Fatalf("step %d: history not most recent first: %+v", i, u.History)
					}
				}
			}
		})
	}
}

func TestApplyWatchDelta(t *testing.T) {
	cfg := testConfig()
	ev := Interaction{Kind: KindWatch, UserID: "u", ItemID: "a", TsMs: 5, WatchTimeSec: 42, PercentWatched: ptr(80.0), Ended: ptr(true)}
	_, d := Apply(cfg, UserState{}, ev)
	want := Delta{
		UserID: "u", TsMs: 5,
		Items: []ItemDelta{{ItemID: "a", Watches: 1, SumPercent: 80, PercentCount: 1, Ended: 1, WatchTimeSec: 42}},
		Pop:   []PopIncrement{{ItemID: "a", Weight: 1}},
	}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("delta %+v\nwant  %+v", d, want)
	}
	// A re-watch counts again in the item stats and popularity.
	u, _ := Apply(cfg, UserState{}, watch("u", "a", 1))
	_, d = Apply(cfg, u, watch("u", "a", 2))
	if len(d.Items) != 1 || d.Items[0].Watches != 1 || len(d.Pop) != 1 || d.Pop[0].Weight != 0.5 {
		t.Fatalf("re-watch delta %+v", d)
	}
}

// Any watch time the contract accepts (≥ 0, no upper bound) adds a finite amount to the item
// statistics, so that their sums stay storable.
func TestApplyWatchTimeIsClamped(t *testing.T) {
	cfg := testConfig()
	for _, tc := range []struct {
		name    string
		sec     float64
		wantSec float64
	}{
		{"ordinary", 42, 42},
		{"zero", 0, 0},
		{"negative", -5, 0},
		{"at the cap", MaxWatchTimeSec, MaxWatchTimeSec},
		{"huge", 1e308, MaxWatchTimeSec},
		{"infinite", math.Inf(1), MaxWatchTimeSec},
		{"nan", math.NaN(), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, d := Apply(cfg, UserState{}, Interaction{Kind: KindWatch, UserID: "u", ItemID: "a", TsMs: 5, WatchTimeSec: tc.sec})
			if len(d.Items) != 1 || d.Items[0].WatchTimeSec != tc.wantSec {
				t.Fatalf("item deltas %+v, want watch time %v", d.Items, tc.wantSec)
			}
		})
	}
}

func TestApplyImpressionsAndFatigueReset(t *testing.T) {
	cfg := testConfig()
	var u UserState
	var d Delta
	u, d = Apply(cfg, u, Interaction{Kind: KindImpression, UserID: "u", TsMs: 10, Items: []string{"a", "b", "a", ""}})
	if got := len(d.Items); got != 2 || d.Items[0] != (ItemDelta{ItemID: "a", Impressions: 1}) || d.Items[1] != (ItemDelta{ItemID: "b", Impressions: 1}) {
		t.Fatalf("impression item deltas %+v (duplicates and empty ids must be dropped)", d.Items)
	}
	if !slices.Equal(d.UserImpressions, []string{"a", "b"}) || len(d.Pop) != 0 || len(d.Pairs) != 0 {
		t.Fatalf("impression delta %+v", d)
	}
	u, _ = Apply(cfg, u, Interaction{Kind: KindImpression, UserID: "u", TsMs: 20, Items: []string{"a"}})
	if got := u.ImpressionCounts["a"]; got != (ImpressionStat{Count: 2, LastTsMs: 20}) {
		t.Fatalf("impression stat a = %+v", got)
	}
	if len(u.History) != 0 || len(u.Watched) != 0 {
		t.Fatal("impressions must not touch history or watched")
	}
	u, _ = Apply(cfg, u, watch("u", "a", 30))
	if _, ok := u.ImpressionCounts["a"]; ok {
		t.Fatal("a watch must reset the item's impression counter")
	}
	if got := u.ImpressionCounts["b"]; got.Count != 1 {
		t.Fatalf("b counter %+v", got)
	}
}

func TestApplyBoundsAreAmortisedAndDeterministic(t *testing.T) {
	cfg := testConfig() // WatchedCap 8, slack max(8/4, 16) = 16: trimmed when above 24
	var u UserState
	for i := 0; i < 24; i++ {
		u, _ = Apply(cfg, u, watch("u", fmt.Sprintf("i%02d", i), int64(i)))
	}
	if len(u.Watched) != 24 {
		t.Fatalf("watched %d, want 24 (not yet trimmed)", len(u.Watched))
	}
	u, _ = Apply(cfg, u, watch("u", "i24", 24))
	if len(u.Watched) != cfg.WatchedCap {
		t.Fatalf("watched %d, want trimmed to %d", len(u.Watched), cfg.WatchedCap)
	}
	for i := 17; i <= 24; i++ {
		if _, ok := u.Watched[fmt.Sprintf("i%02d", i)]; !ok {
			t.Fatalf("newest i%02d evicted: %v", i, u.Watched)
		}
	}
	// Ties on time evict the larger id first, independent of map order.
	for run := 0; run < 5; run++ {
		var v UserState
		for i := 0; i < 25; i++ {
			v, _ = Apply(cfg, v, Interaction{Kind: KindImpression, UserID: "u", TsMs: 7, Items: []string{fmt.Sprintf("x%02d", i)}})
		}
		var keys []string
		for k := range v.ImpressionCounts {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		if want := []string{"x00", "x01", "x02", "x03", "x04", "x05", "x06", "x07"}; !slices.Equal(keys, want) {
			t.Fatalf("run %d: kept %v, want %v", run, keys, want)
		}
	}
}

func TestSelectNewestMatchesSort(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for n := 0; n < 200; n += 7 {
		for _, spread := range []int{1, 3, 1000} { // many ties, some, few
			var s []stamped
			for i := 0; i < n; i++ {
				s = append(s, stamped{fmt.Sprintf("k%03d", r.IntN(1000)), int64(r.IntN(spread))})
			}
			want := slices.Clone(s)
			slices.SortFunc(want, func(a, b stamped) int {
				if newer(a, b) {
					return -1
				}
				if newer(b, a) {
					return 1
				}
				return 0
			})
			for _, keep := range []int{0, 1, n / 3, n - 1} {
				got := slices.Clone(s)
				selectNewest(got, keep)
				if keep <= 0 || keep >= n {
					continue
				}
				top := slices.Clone(got[:keep])
				slices.SortFunc(top, func(a, b stamped) int {
					if newer(a, b) {
						return -1
					}
					if newer(b, a) {
						return 1
					}
					return 0
				})
				if !slices.Equal(top, want[:keep]) {
					t.Fatalf("n=%d spread=%d keep=%d: %v, want %v", n, spread, keep, top, want[:keep])
				}
			}
		}
	}
}

func TestApplyDeterministic(t *testing.T) {
	cfg := DefaultConfig()
	evs := randomStream(2000, 20, 60, 42)
	run := func() (map[string]UserState, []Delta) {
		users := map[string]UserState{}
		var ds []Delta
		for _, ev := range evs {
			var d Delta
			users[ev.UserID], d = Apply(cfg, users[ev.UserID], ev)
			ds = append(ds, d)
		}
		return users, ds
	}
	u1, d1 := run()
	u2, d2 := run()
	if !reflect.DeepEqual(u1, u2) || !reflect.DeepEqual(d1, d2) {
		t.Fatal("Apply is not deterministic")
	}
	for _, d := range d1 {
		for _, p := range d.Pairs {
			if p.From == p.To {
				t.Fatalf("self pair %+v", p)
			}
			if !(p.Weight > 0 && p.Weight <= 1) {
				t.Fatalf("pair weight %v out of (0,1]", p.Weight)
			}
		}
	}
}

// randomStream makes a reproducible mix of watches (mostly in time order, some late) and
// impressions.
func randomStream(n, users, items int, seed uint64) []Interaction {
	r := rand.New(rand.NewPCG(seed, seed))
	evs := make([]Interaction, 0, n)
	ts := int64(1_700_000_000_000)
	for i := 0; i < n; i++ {
		ts += int64(r.IntN(600_000))
		u := fmt.Sprintf("u%d", r.IntN(users))
		t := ts
		if r.IntN(10) == 0 {
			t -= int64(r.IntN(86_400_000)) // a late event
		}
		if r.IntN(4) == 0 {
			k := 1 + r.IntN(5)
			var its []string
			for j := 0; j < k; j++ {
				its = append(its, fmt.Sprintf("i%d", r.IntN(items)))
			}
			evs = append(evs, Interaction{Kind: KindImpression, UserID: u, TsMs: t, Items: its})
			continue
		}
		evs = append(evs, Interaction{Kind: KindWatch, UserID: u, ItemID: fmt.Sprintf("i%d", r.IntN(items)), TsMs: t,
			PercentWatched: ptr(float64(r.IntN(101)))})
	}
	return evs
}

// TestMemoryStoreMatchesBruteForce checks the incremental structures (forward decay, rebases,
// top lists, neighbour lists) against sums recomputed from the Deltas.
func TestMemoryStoreMatchesBruteForce(t *testing.T) {
	cfg := DefaultConfig()
	cfg.PopShortHalfLife = time.Minute // forces many rebases over the stream
	cfg.NeighboursPerItem = 1000       // no pruning, so neighbour lists are exact sums
	cfg.TopListSize = 10
	m := NewMemoryStore(cfg)
	evs := randomStream(3000, 15, 40, 7)
	type pop struct{ short, long float64 }
	var deltas []Delta
	for _, ev := range evs {
		deltas = append(deltas, m.Apply(ev))
	}
	if m.Rebases() == 0 {
		t.Fatal("expected the short half-life to force rebases")
	}
	now := evs[len(evs)-1].TsMs + 60_000
	want := map[string]*pop{}
	wantN := map[string]map[string]float64{}
	watches := map[string]int64{}
	for _, d := range deltas {
		for _, p := range d.Pop {
			if want[p.ItemID] == nil {
				want[p.ItemID] = &pop{}
			}
			age := float64(now - d.TsMs)
			want[p.ItemID].short += p.Weight * math.Exp2(-age/float64(cfg.PopShortHalfLife.Milliseconds()))
			want[p.ItemID].long += p.Weight * math.Exp2(-age/float64(cfg.PopLongHalfLife.Milliseconds()))
		}
		for _, p := range d.Pairs {
			if wantN[p.From] == nil {
				wantN[p.From] = map[string]float64{}
			}
			wantN[p.From][p.To] += p.Weight * math.Exp2(-float64(now-d.TsMs)/float64(cfg.CovisHalfLife.Milliseconds()))
		}
		for _, it := range d.Items {
			watches[it.ItemID] += it.Watches
		}
	}
	close := func(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }
	for id, p := range want {
		st, ok := m.ItemStats(id, now)
		if !ok || !close(st.PopShort, p.short) || !close(st.PopLong, p.long) || st.Watches != watches[id] {
			t.Fatalf("item %s: stats %+v, want short %v long %v watches %d", id, st, p.short, p.long, watches[id])
		}
	}
	for from, ns := range wantN {
		got := m.Neighbours(from, now, 1000)
		if len(got) != len(ns) {
			t.Fatalf("neighbours of %s: %d, want %d", from, len(got), len(ns))
		}
		for i, g := range got {
			if !close(g.Score, ns[g.ItemID]) {
				t.Fatalf("neighbour %s>%s = %v, want %v", from, g.ItemID, g.Score, ns[g.ItemID])
			}
			if i > 0 && before(g, got[i-1]) {
				t.Fatalf("neighbours of %s not ordered: %+v", from, got)
			}
		}
	}
	// Top lists equal the brute-force order.
	type kv struct {
		id string
		v  float64
	}
	var all []kv
	for id, p := range want {
		all = append(all, kv{id, p.long})
	}
	slices.SortFunc(all, func(a, b kv) int {
		if a.v != b.v {
			if a.v > b.v {
				return -1
			}
			return 1
		}
		return strings.Compare(a.id, b.id)
	})
	s := m.Snapshot("u1", now, ranking.SnapshotOptions{HistoryItems: 3, NeighboursPerItem: 5, TrendingN: 10, PopularN: 10, FreshN: 5})
	if len(s.Popular) != 10 {
		t.Fatalf("popular has %d items, want 10", len(s.Popular))
	}
	for i, p := range s.Popular {
		if p.ItemID != all[i].id || !close(p.Score, all[i].v) {
			t.Fatalf("popular[%d] = %+v, want %+v", i, p, all[i])
		}
	}
}

func TestMemoryStoreNeighbourTrimKeepsTopM(t *testing.T) {
	cfg := DefaultConfig()
	cfg.NeighboursPerItem = 2 // lists hold up to 4, trimmed to the top 2
	m := NewMemoryStore(cfg)
	d := Delta{UserID: "u", TsMs: 1}
	for i, w := range []float64{5, 1, 4, 2, 3} {
		d.Pairs = append(d.Pairs, PairIncrement{From: "a", To: fmt.Sprintf("n%d", i), Weight: w})
	}
	m.ApplyDelta(d)
	got := m.Neighbours("a", 1, 10)
	if len(got) != 2 || got[0].ItemID != "n0" || got[1].ItemID != "n2" {
		t.Fatalf("after trim: %+v, want n0, n2", got)
	}
	// A new neighbour enters a trimmed list and can overtake by accumulating.
	m.ApplyDelta(Delta{UserID: "u", TsMs: 1, Pairs: []PairIncrement{{From: "a", To: "z", Weight: 3}, {From: "a", To: "z", Weight: 3}}})
	got = m.Neighbours("a", 1, 10)
	if got[0].ItemID != "z" || got[0].Score != 6 {
		t.Fatalf("accumulated neighbour: %+v", got)
	}
}

func TestMemoryStoreSnapshot(t *testing.T) {
	cfg := DefaultConfig()
	m := NewMemoryStore(cfg)
	base := int64(1_700_000_000_000)
	// Two users watch a then b then c; u3 watches a only and was shown x twice.
	for i, u := range []string{"u1", "u2"} {
		for j, it := range []string{"a", "b", "c"} {
			m.Apply(watch(u, it, base+int64(i*10+j)*1000))
		}
	}
	m.Apply(watch("u3", "a", base+100_000))
	m.Apply(Interaction{Kind: KindImpression, UserID: "u3", TsMs: base + 101_000, Items: []string{"x", "b"}})
	m.Apply(Interaction{Kind: KindImpression, UserID: "u3", TsMs: base + 102_000, Items: []string{"x"}})
	now := base + 200_000
	s := m.Snapshot("u3", now, ranking.DefaultConfig().SnapshotOptions())
	if s.UserID != "u3" || s.NowMs != now {
		t.Fatalf("snapshot ids %q %d", s.UserID, s.NowMs)
	}
	if len(s.History) != 1 || s.History[0].ItemID != "a" || !s.Watched["a"] {
		t.Fatalf("history %+v watched %v", s.History, s.Watched)
	}
	if got := s.Impressions["x"]; got.Count != 2 {
		t.Fatalf("impressions %+v", s.Impressions)
	}
	ns := s.Neighbours["a"]
	if len(ns) != 2 || ns[0].ItemID != "b" || ns[1].ItemID != "c" || !(ns[0].Score > ns[1].Score) {
		t.Fatalf("neighbours of a: %+v, want b before c", ns)
	}
	for _, id := range []string{"a", "b", "c", "x"} {
		if _, ok := s.Items[id]; !ok {
			t.Fatalf("item stats of %s missing: %v", id, s.Items)
		}
	}
	if st := s.Items["b"]; st.Watches != 2 || st.Impressions != 1 || st.FirstSeenMs != base+1000 || !(st.PopShort > 0) {
		t.Fatalf("stats of b: %+v", st)
	}
	if s.Trending[0].ItemID != "a" || s.Popular[0].ItemID != "a" {
		t.Fatalf("trending %+v popular %+v: a has 3 watches", s.Trending, s.Popular)
	}
	if len(s.Fresh) == 0 || s.Fresh[0].ItemID != "x" {
		t.Fatalf("fresh %+v: x is the newest item", s.Fresh)
	}
	// An unknown user gets the global lists only.
	cold := m.Snapshot("nobody", now, ranking.DefaultConfig().SnapshotOptions())
	if len(cold.History) != 0 || len(cold.Trending) == 0 {
		t.Fatalf("cold snapshot %+v", cold)
	}
}

func TestConfigValidateAndFlags(t *testing.T) {
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	c := DefaultConfig()
	c.RegisterFlags(fs, "features.")
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	if err := fs.Parse([]string{"--features.history-size=0", "--features.covis-distance-decay=1.5"}); err != nil {
		t.Fatal(err)
	}
	err := c.Validate()
	if err == nil {
		t.Fatal("want errors")
	}
	for _, want := range []string{"--features.history-size must be between 1 and 1000, got 0", "--features.covis-distance-decay must be in (0,1], got 1.5"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q lacks %q", err, want)
		}
	}
}

func TestApplyCovisBackwardWeight(t *testing.T) {
	cfg := testConfig()
	cfg.CovisBackwardWeight = 0.5
	// ac is a user who watched a then c (Apply takes ownership, so build it afresh each time).
	ac := func() UserState {
		u, _ := Apply(cfg, UserState{}, watch("u", "a", 1000))
		u, _ = Apply(cfg, u, watch("u", "c", 3000))
		return u
	}
	u, _ := Apply(cfg, UserState{}, watch("u", "a", 1000))
	_, d := Apply(cfg, u, watch("u", "c", 3000))
	// Earlier → later (a → c) keeps the full weight 0.25, c → a gets half.
	if got, want := pairsOf(d), []string{"a>c:0.250", "c>a:0.125"}; !slices.Equal(got, want) {
		t.Fatalf("pairs %v, want %v", got, want)
	}
	// A late event b (between a and c): a → b and b → c are time-ordered.
	_, d = Apply(cfg, ac(), watch("u", "b", 2000))
	if got, want := pairsOf(d), []string{"a>b:0.250", "b>a:0.125", "b>c:0.250", "c>b:0.125"}; !slices.Equal(got, want) {
		t.Fatalf("late pairs %v, want %v", got, want)
	}
	cfg.CovisBackwardWeight = 0
	_, d = Apply(cfg, ac(), watch("u", "b", 2000))
	if got, want := pairsOf(d), []string{"a>b:0.250", "b>c:0.250"}; !slices.Equal(got, want) {
		t.Fatalf("forward-only pairs %v, want %v", got, want)
	}
}
