package ranking

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/pflag"
)

// Weights are the coefficients of the Weighted ranker's linear score over normalised features
// (every feature is in [0, 1] before weighting; see Weighted for the definitions).
type Weights struct {
	// Covis weighs the co-visitation strength from the user's history.
	Covis float64
	// Similar weighs the learned item-item similarity (Snapshot.Similar), when present.
	Similar float64
	// Trending and Popular weigh the short and long half-life popularity.
	Trending float64
	Popular  float64
	// WatchRate weighs the smoothed watch rate (watches+a)/(impressions+b).
	WatchRate float64
	// Completion weighs the smoothed mean completion (percent watched, ended).
	Completion float64
	// Freshness weighs 2^(-age/FreshnessHalfLife) of the item's first-seen time.
	Freshness float64
	// Fatigue is subtracted times the fatigue feature (items shown repeatedly, not watched).
	Fatigue float64
}

// Config configures the Weighted ranker and the Snapshot it needs.
type Config struct {
	Weights Weights

	// HistoryItems is how many recent history items seed co-visitation candidates.
	HistoryItems int
	// HistoryDecay multiplies the weight of each older history position (1 = no recency).
	HistoryDecay float64
	// NormaliseNeighbours divides each history item's neighbour strengths by that list's top
	// strength, so one strongly connected item does not drown the others.
	NormaliseNeighbours bool
	// NeighboursPerItem caps each loaded neighbour list.
	NeighboursPerItem int
	// TrendingN, PopularN, FreshN cap the global candidate lists ranked. A Snapshot may carry
	// longer trending and popular lists: their further entries only fill a list the ranked
	// candidates cannot (Weighted).
	TrendingN int
	PopularN  int
	FreshN    int

	// ExplorationShare is the fraction of slots given to fresh, under-exposed items.
	ExplorationShare float64
	// ExplorationMaxImpressions: a fresh item is under-exposed below this many impressions (0:
	// every fresh item is).
	ExplorationMaxImpressions int64
	// ExplorationBucket is the time bucket of the default exploration seed: the same user gets
	// the same exploration items within one bucket.
	ExplorationBucket time.Duration

	// WatchRatePriorWatches (a) and WatchRatePriorImpressions (b) smooth the watch rate:
	// (watches + a) / (impressions + b).
	WatchRatePriorWatches     float64
	WatchRatePriorImpressions float64
	// CompletionPrior is the pseudo-count of watches at CompletionPriorMean completion.
	CompletionPrior     float64
	CompletionPriorMean float64
	// FreshnessHalfLife is the age at which the freshness feature is 0.5.
	FreshnessHalfLife time.Duration

	// FatigueFree is how many impressions without a watch are tolerated before discounting.
	FatigueFree int64
	// FatigueSaturation is the impressions beyond FatigueFree at which fatigue reaches 1.
	FatigueSaturation int64
	// FatigueMemory: impressions whose last showing is older than this are ignored.
	FatigueMemory time.Duration
}

// DefaultConfig returns the tuned defaults (see docs/evaluation.md).
func DefaultConfig() Config {
	return Config{
		Weights: Weights{
			Covis:      1.0,
			Similar:    0.25,
			Trending:   0.1,
			Popular:    0.05,
			WatchRate:  0.05,
			Completion: 0.05,
			Freshness:  0.02,
			Fatigue:    0.5,
		},
		HistoryItems:              10,
		HistoryDecay:              0.85,
		NormaliseNeighbours:       true,
		NeighboursPerItem:         50,
		TrendingN:                 100,
		PopularN:                  100,
		FreshN:                    50,
		ExplorationShare:          0.05,
		ExplorationMaxImpressions: 50,
		ExplorationBucket:         time.Hour,
		WatchRatePriorWatches:     1,
		WatchRatePriorImpressions: 10,
		CompletionPrior:           5,
		CompletionPriorMean:       50,
		FreshnessHalfLife:         7 * 24 * time.Hour,
		FatigueFree:               2,
		FatigueSaturation:         5,
		FatigueMemory:             7 * 24 * time.Hour,
	}
}

// RegisterFlags adds the ranking.* flags.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	w := &c.Weights
	fs.Float64Var(&w.Covis, "ranking.weight-covis", w.Covis, "weight of the normalised co-visitation strength from the user's history")
	fs.Float64Var(&w.Similar, "ranking.weight-similar", w.Similar, "weight of the normalised learned item-item similarity (when a model is loaded)")
	fs.Float64Var(&w.Trending, "ranking.weight-trending", w.Trending, "weight of the normalised short half-life popularity")
	fs.Float64Var(&w.Popular, "ranking.weight-popular", w.Popular, "weight of the normalised long half-life popularity")
	fs.Float64Var(&w.WatchRate, "ranking.weight-watch-rate", w.WatchRate, "weight of the smoothed watch rate (watches per impression)")
	fs.Float64Var(&w.Completion, "ranking.weight-completion", w.Completion, "weight of the smoothed mean completion")
	fs.Float64Var(&w.Freshness, "ranking.weight-freshness", w.Freshness, "weight of item freshness (first-seen age)")
	fs.Float64Var(&w.Fatigue, "ranking.weight-fatigue", w.Fatigue, "penalty weight of impression fatigue (shown repeatedly without a watch)")
	fs.IntVar(&c.HistoryItems, "ranking.history-items", c.HistoryItems, "recent history items whose co-visitation neighbours are candidates")
	fs.Float64Var(&c.HistoryDecay, "ranking.history-decay", c.HistoryDecay, "weight multiplier per older history position (0-1]")
	fs.BoolVar(&c.NormaliseNeighbours, "ranking.normalise-neighbours", c.NormaliseNeighbours, "divide each history item's neighbour strengths by its strongest neighbour")
	fs.IntVar(&c.NeighboursPerItem, "ranking.neighbours-per-item", c.NeighboursPerItem, "neighbours loaded per history item")
	fs.IntVar(&c.TrendingN, "ranking.trending-candidates", c.TrendingN, "trending (short half-life) candidates ranked (/reco reads the list at least 2k long: the entries beyond fill a list these cannot)")
	fs.IntVar(&c.PopularN, "ranking.popular-candidates", c.PopularN, "popular (long half-life) candidates ranked (/reco reads the list at least 2k long: the entries beyond fill a list these cannot)")
	fs.IntVar(&c.FreshN, "ranking.fresh-candidates", c.FreshN, "fresh items loaded for exploration")
	fs.Float64Var(&c.ExplorationShare, "ranking.exploration-share", c.ExplorationShare, "fraction of slots given to fresh, under-exposed items the user is not tired of [0,0.5], rounded down (0.05: 1 of 20); they also fill slots no ranked item is left for")
	fs.Int64Var(&c.ExplorationMaxImpressions, "ranking.exploration-max-impressions", c.ExplorationMaxImpressions, "a fresh item is under-exposed below this many impressions (0: whatever its impressions)")
	fs.DurationVar(&c.ExplorationBucket, "ranking.exploration-bucket", c.ExplorationBucket, "time bucket of the exploration seed (same user, same bucket: same exploration items)")
	fs.Float64Var(&c.WatchRatePriorWatches, "ranking.watch-rate-prior-watches", c.WatchRatePriorWatches, "prior watches a in (watches+a)/(impressions+b)")
	fs.Float64Var(&c.WatchRatePriorImpressions, "ranking.watch-rate-prior-impressions", c.WatchRatePriorImpressions, "prior impressions b in (watches+a)/(impressions+b)")
	fs.Float64Var(&c.CompletionPrior, "ranking.completion-prior", c.CompletionPrior, "pseudo-count of watches at the prior mean completion")
	fs.Float64Var(&c.CompletionPriorMean, "ranking.completion-prior-mean", c.CompletionPriorMean, "prior mean completion, percent 0-100")
	fs.DurationVar(&c.FreshnessHalfLife, "ranking.freshness-half-life", c.FreshnessHalfLife, "item age at which the freshness feature is 0.5")
	fs.Int64Var(&c.FatigueFree, "ranking.fatigue-free-impressions", c.FatigueFree, "impressions without a watch tolerated before the fatigue discount starts")
	fs.Int64Var(&c.FatigueSaturation, "ranking.fatigue-saturation", c.FatigueSaturation, "impressions beyond the free ones at which fatigue is maximal")
	fs.DurationVar(&c.FatigueMemory, "ranking.fatigue-memory", c.FatigueMemory, "impressions last shown longer ago than this cause no fatigue")
}

// Validate reports every invalid setting.
func (c Config) Validate() error {
	var errs []error
	bad := func(flag, want string, got any) {
		errs = append(errs, fmt.Errorf("--ranking.%s must be %s, got %v", flag, want, got))
	}
	for _, w := range []struct {
		flag string
		v    float64
	}{
		{"weight-covis", c.Weights.Covis}, {"weight-similar", c.Weights.Similar},
		{"weight-trending", c.Weights.Trending}, {"weight-popular", c.Weights.Popular},
		{"weight-watch-rate", c.Weights.WatchRate}, {"weight-completion", c.Weights.Completion},
		{"weight-freshness", c.Weights.Freshness}, {"weight-fatigue", c.Weights.Fatigue},
	} {
		if !(w.v >= 0 && w.v <= 1000) { // also rejects NaN
			bad(w.flag, "between 0 and 1000", w.v)
		}
	}
	if c.HistoryItems < 0 || c.HistoryItems > 200 {
		bad("history-items", "between 0 and 200", c.HistoryItems)
	}
	if !(c.HistoryDecay > 0 && c.HistoryDecay <= 1) {
		bad("history-decay", "in (0,1]", c.HistoryDecay)
	}
	if c.NeighboursPerItem < 1 || c.NeighboursPerItem > 1000 {
		bad("neighbours-per-item", "between 1 and 1000", c.NeighboursPerItem)
	}
	if c.TrendingN < 0 || c.TrendingN > 10000 {
		bad("trending-candidates", "between 0 and 10000", c.TrendingN)
	}
	if c.PopularN < 0 || c.PopularN > 10000 {
		bad("popular-candidates", "between 0 and 10000", c.PopularN)
	}
	if c.FreshN < 0 || c.FreshN > 10000 {
		bad("fresh-candidates", "between 0 and 10000", c.FreshN)
	}
	if !(c.ExplorationShare >= 0 && c.ExplorationShare <= 0.5) {
		bad("exploration-share", "between 0 and 0.5", c.ExplorationShare)
	}
	if c.ExplorationMaxImpressions < 0 {
		bad("exploration-max-impressions", ">= 0", c.ExplorationMaxImpressions)
	}
	if c.ExplorationBucket <= 0 {
		bad("exploration-bucket", "> 0", c.ExplorationBucket)
	}
	if !(c.WatchRatePriorWatches >= 0) {
		bad("watch-rate-prior-watches", ">= 0", c.WatchRatePriorWatches)
	}
	if !(c.WatchRatePriorImpressions > 0) || c.WatchRatePriorImpressions < c.WatchRatePriorWatches {
		bad("watch-rate-prior-impressions", "> 0 and >= --ranking.watch-rate-prior-watches", c.WatchRatePriorImpressions)
	}
	if !(c.CompletionPrior >= 0) {
		bad("completion-prior", ">= 0", c.CompletionPrior)
	}
	if !(c.CompletionPriorMean >= 0 && c.CompletionPriorMean <= 100) {
		bad("completion-prior-mean", "between 0 and 100", c.CompletionPriorMean)
	}
	if c.FreshnessHalfLife <= 0 {
		bad("freshness-half-life", "> 0", c.FreshnessHalfLife)
	}
	if c.FatigueFree < 0 {
		bad("fatigue-free-impressions", ">= 0", c.FatigueFree)
	}
	if c.FatigueSaturation < 1 {
		bad("fatigue-saturation", ">= 1", c.FatigueSaturation)
	}
	if c.FatigueMemory <= 0 {
		bad("fatigue-memory", "> 0", c.FatigueMemory)
	}
	return errors.Join(errs...)
}

// SnapshotOptions is what a Snapshot loader must fetch for this configuration.
func (c Config) SnapshotOptions() SnapshotOptions {
	return SnapshotOptions{
		HistoryItems:      c.HistoryItems,
		NeighboursPerItem: c.NeighboursPerItem,
		TrendingN:         c.TrendingN,
		PopularN:          c.PopularN,
		FreshN:            c.FreshN,
	}
}
