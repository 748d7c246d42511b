package features

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"recsys/pkg/ranking"
)

// TestStoredRanksLikeDecayedToNow: /reco ranks values as stored (relative to the landmarks,
// so a score does not depend on when a replica cached it), which is exact only while every
// decayed input is used as a ratio to a maximum of values with the same half-life. For
// random worlds, request times from just after the landmark to far into a landmark period
// (stored values up to ~2^400), normalise-neighbours on and off and random weights, ranking
// values as stored gives the same list as values decayed to NowMs, with scores equal to
// rounding. A constant added to a decayed value (a prior, a threshold) fails it.
func TestStoredRanksLikeDecayedToNow(t *testing.T) {
	const day = int64(86_400_000)
	for trial := 0; trial < 12; trial++ {
		rng := rand.New(rand.NewPCG(uint64(trial), 9))
		cfg := DefaultConfig()
		m := NewMemoryStore(cfg)
		t0 := int64(1_700_000_000_000)
		// Events spread over ~400 short half-lives (24 h): stored values reach ~2^400.
		span := int64(400) * day
		if trial%2 == 0 {
			span = day
		}
		nEv := 3000
		for i := 0; i < nEv; i++ {
			ts := t0 + span*int64(i)/int64(nEv)
			u := fmt.Sprintf("u%d", rng.IntN(60))
			it := fmt.Sprintf("i%d", rng.IntN(80))
			p := float64(rng.IntN(100))
			if i%3 == 0 {
				m.Apply(Interaction{EventID: fmt.Sprintf("e%d", i), UserID: u, Items: []string{it, fmt.Sprintf("i%d", rng.IntN(80))}, TsMs: ts, Kind: KindImpression})
				continue
			}
			m.Apply(Interaction{EventID: fmt.Sprintf("e%d", i), UserID: u, ItemID: it, TsMs: ts, Kind: KindWatch, PercentWatched: &p})
		}
		for _, norm := range []bool{true, false} {
			rc := ranking.DefaultConfig()
			rc.NormaliseNeighbours = norm
			rc.ExplorationShare = 0
			rc.Weights = ranking.Weights{Covis: rng.Float64(), Trending: rng.Float64(), Popular: rng.Float64(),
				WatchRate: rng.Float64() / 4, Completion: rng.Float64() / 4, Freshness: rng.Float64() / 4, Fatigue: rng.Float64()}
			if err := rc.Validate(); err != nil {
				t.Fatal(err)
			}
			w := ranking.NewWeighted(rc)
			opts := rc.SnapshotOptions()
			now := t0 + span + int64(rng.IntN(int(time.Hour.Milliseconds())))
			for u := 0; u < 60; u++ {
				uid := fmt.Sprintf("u%d", u)
				a := m.Snapshot(uid, now, opts)
				so := opts
				so.Stored = true
				b := m.Snapshot(uid, now, so)
				ra, rb := w.Rank(&a, 20), w.Rank(&b, 20)
				if !slices.Equal(ra.Items, rb.Items) {
					// Allow swaps of rounding-level ties only.
					for i := range ra.Items {
						if ra.Items[i] != rb.Items[i] && math.Abs(ra.Scores[i]-rb.Scores[i]) > 1e-12 {
							t.Fatalf("trial %d norm=%v user %s: decayed %v %v\nstored %v %v", trial, norm, uid, ra.Items, ra.Scores, rb.Items, rb.Scores)
						}
					}
				}
				for i := range ra.Scores {
					if math.Abs(ra.Scores[i]-rb.Scores[i]) > 1e-12 {
						t.Fatalf("trial %d norm=%v user %s pos %d: score %v vs %v", trial, norm, uid, i, ra.Scores[i], rb.Scores[i])
					}
				}
			}
		}
	}
}
