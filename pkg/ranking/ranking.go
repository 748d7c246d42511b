// Package ranking turns one user's feature Snapshot into a ranked list of items. It is pure:
// no I/O, no clocks, no global state, so /reco, the evaluation harness and tests run exactly
// the same code and get exactly the same answer for the same Snapshot.
//
// The plain feature types shared with pkg/features (HistoryEntry, ImpressionStat, ItemStats,
// Scored) live here, because features imports ranking (its MemoryStore builds Snapshots) and
// ranking must not import features.
package ranking

// HistoryEntry is one distinct item of a user's recent history.
type HistoryEntry struct {
	ItemID string `json:"item_id"`
	// TsMs is the time of the latest watch of the item, Unix milliseconds.
	TsMs int64 `json:"ts_ms"`
	// Quality is the watch-quality weight of the latest watch, in (0, 1] (see features.Quality).
	Quality float64 `json:"quality"`
}

// ImpressionStat counts how often an item was shown to one user since the user last watched
// it (a watch resets it), for impression fatigue.
type ImpressionStat struct {
	Count    int64 `json:"count"`
	LastTsMs int64 `json:"last_ts_ms"`
}

// ItemStats are the global per-item statistics ranking scores with.
type ItemStats struct {
	Impressions int64 `json:"impressions"`
	Watches     int64 `json:"watches"`
	// SumPercent is the sum of percent_watched (0–100) over the PercentCount watches that
	// reported it; mean completion = SumPercent / PercentCount.
	SumPercent   float64 `json:"sum_percent"`
	PercentCount int64   `json:"percent_count"`
	// Ended counts watches with ended=true.
	Ended        int64   `json:"ended"`
	WatchTimeSec float64 `json:"watch_time_sec"`
	// FirstSeenMs is the earliest event time of any impression or watch of the item.
	FirstSeenMs int64 `json:"first_seen_ms"`
	// PopShort and PopLong are the popularity values with the short and the long half-life:
	// CURRENT (decayed to Snapshot.NowMs), or as stored when Snapshot.Stored (see there).
	PopShort float64 `json:"pop_short"`
	PopLong  float64 `json:"pop_long"`

	// prior caches the user-independent terms of one Weighted ranker (priorBy, its id) for
	// these statistics, and freshM the item's part of its freshness term: see
	// Weighted.Prepare.
	prior   float64
	freshM  float64
	priorBy uint64
}

// Scored is an item with a score. In a Snapshot the score is the CURRENT decayed value (the
// loader multiplies the stored forward-decayed value by 2^(-(now-landmark)/halfLife)), or the
// stored value itself when Snapshot.Stored, except Snapshot.Fresh whose score is the item's
// first-seen time in milliseconds.
type Scored struct {
	ItemID string  `json:"item_id"`
	Score  float64 `json:"score"`
	// Stats optionally points at the item's statistics when the loader has them at hand (a
	// server's cached neighbour list carries its neighbours'), sparing the ranker a lookup in
	// Snapshot.Items per candidate. Read-only; nil means look the item up with Snapshot.Stats.
	// A loader that sets it for an item sets it on every list entry of that item, or also has
	// the item in Items or SharedItems, so the statistics never depend on which list was read.
	Stats *ItemStats `json:"-"`
	// hash is HashID(ItemID) when set by PrepareList (0: compute it).
	hash uint64
}

// PrepareList stores in each entry of l what Rank would otherwise compute from its ItemID on
// every request (the hash Rank deduplicates candidates with). A server that keeps lists for
// many requests calls it once when it loads them; ItemID must not change afterwards.
func PrepareList(l []Scored) {
	for i := range l {
		l[i].hash = HashID(l[i].ItemID)
	}
}

// Snapshot is everything ranking needs for one user at one instant. The serving side loads it
// in one Redis round trip (a server-side script); features.MemoryStore builds the same shape
// in process for the evaluation harness and tests.
type Snapshot struct {
	UserID string `json:"user_id"`
	NowMs  int64  `json:"now_ms"`
	// Stored says the decayed values (ItemStats.PopShort and PopLong, neighbour strengths,
	// Trending and Popular scores) are the store's forward-decayed sums relative to Landmarks,
	// as stored, instead of their values at NowMs (SnapshotOptions.Stored). Ranking uses these
	// values only through ratios of values with the same half-life (each is normalised by a
	// maximum), so both give the same ranking; stored values are what a server caching item
	// features for many requests must use, because their decayed values depend on when they
	// were loaded. All values of one half-life in a Snapshot must be relative to one time.
	Stored    bool      `json:"stored,omitempty"`
	Landmarks Landmarks `json:"landmarks,omitzero"`
	// Seed makes the exploration slots deterministic. When 0, Rank derives it from UserID and
	// the NowMs time bucket (Config.ExplorationBucket); /reco may set it from the request id.
	Seed uint64 `json:"seed,omitempty"`

	// History is the user's recent distinct items, most recent first.
	History []HistoryEntry `json:"history"`
	// Watched is the bounded set of items the user watched; they are never recommended.
	Watched map[string]bool `json:"watched"`
	// Blocked are items nobody is recommended (taken down), whatever list they come from.
	// Read-only: a server shares one slice between requests.
	Blocked []string `json:"blocked,omitempty"`
	// Impressions are the per-item impression counts of this user since the last watch.
	// ImpressionsAdded, when set, holds raises not included in Impressions (the stored
	// counters' overlay, which /reco does not copy into a map it shares): read a counter with
	// Impression.
	Impressions      map[string]ImpressionStat `json:"impressions"`
	ImpressionsAdded map[string]ImpressionStat `json:"impressions_added,omitempty"`

	// Neighbours maps each of the first SnapshotOptions.HistoryItems history items to its
	// co-visitation neighbours (current decayed strength), strongest first.
	Neighbours map[string][]Scored `json:"neighbours"`
	// HistoryNeighbours, when not nil, holds the same lists by position: HistoryNeighbours[i]
	// is History[i]'s (nil when it has none), and Neighbours is not read. A server that has
	// the lists in its own cache fills it instead of building a map for every request.
	HistoryNeighbours [][]Scored `json:"-"`
	// Similar maps history items to learned item-item neighbours (e.g. an EASE model), strongest
	// first. Optional: nil when no learned model is loaded.
	Similar map[string][]Scored `json:"similar,omitempty"`
	// Trending is the global top list by short half-life popularity, Popular by the long one,
	// highest first, current decayed scores.
	Trending []Scored `json:"trending"`
	Popular  []Scored `json:"popular"`
	// Fresh lists the most recently first-seen items (Score = first-seen ms), newest first; the
	// ranker keeps the under-exposed ones (few impressions) for exploration.
	Fresh []Scored `json:"fresh"`

	// Items holds ItemStats for the union of every candidate above (and may hold more), except
	// those whose Scored.Stats is set. A candidate found in neither Items, SharedItems nor
	// Scored.Stats is scored with zero statistics.
	Items map[string]ItemStats `json:"items"`
	// SharedItems is a read-only statistics map consulted for items missing from Items: a
	// server shares one between requests (the global lists' statistics) instead of copying
	// hundreds of entries into Items per request.
	SharedItems map[string]ItemStats `json:"-"`
}

// Impression returns the user's impression counter of item id: Impressions[id] with
// ImpressionsAdded[id] added (counts summed, the latest time).
func (s *Snapshot) Impression(id string) (ImpressionStat, bool) {
	im, ok := s.Impressions[id]
	if add, ok2 := s.ImpressionsAdded[id]; ok2 {
		im.Count += add.Count
		im.LastTsMs = max(im.LastTsMs, add.LastTsMs)
		ok = true
	}
	return im, ok
}

// hasImpressions reports whether the user has any impression counter.
func (s *Snapshot) hasImpressions() bool {
	return len(s.Impressions) > 0 || len(s.ImpressionsAdded) > 0
}

// Stats returns the statistics of item id from Items, else from SharedItems.
func (s *Snapshot) Stats(id string) (ItemStats, bool) {
	if st, ok := s.Items[id]; ok {
		return st, true
	}
	st, ok := s.SharedItems[id]
	return st, ok
}

// impressionsOf returns the impressions of a list entry's item (0 when unknown) without
// copying its statistics.
func (s *Snapshot) impressionsOf(x *Scored) int64 {
	if x.Stats != nil {
		return x.Stats.Impressions
	}
	st, _ := s.Stats(x.ItemID)
	return st.Impressions
}

// Landmarks are the forward-decay landmarks (Unix ms) of a store's stored values, by
// half-life: two Snapshots with Stored values can be combined only when they are equal (the
// store moves a landmark when it rebases, multiplying every stored value of that half-life).
type Landmarks struct {
	ShortMs int64 `json:"short_ms"`
	LongMs  int64 `json:"long_ms"`
	CovisMs int64 `json:"covis_ms"`
}

// SnapshotOptions says how much a Snapshot loader fetches. Config.SnapshotOptions derives it
// from the ranking configuration, so the loader and the ranker agree.
type SnapshotOptions struct {
	// HistoryItems is how many of the most recent history items get their neighbour lists.
	HistoryItems int
	// NeighboursPerItem caps each neighbour list.
	NeighboursPerItem int
	// TrendingN, PopularN and FreshN cap the global lists.
	TrendingN int
	PopularN  int
	FreshN    int
	// Stored asks for the decayed values as stored (Snapshot.Stored), with the landmarks.
	Stored bool
}

// Result is a ranked list.
type Result struct {
	Items []string `json:"items"`
	// Scores[i] is the final score of Items[i]. Ranked items come first, best first; then,
	// best first, the entries beyond the global lists' heads that fill a list the ranked
	// candidates cannot (Weighted); exploration items follow with score 0 (they were not
	// chosen for their score).
	Scores []float64 `json:"scores"`
	// Strategy names what produced the list, e.g. StrategyCovisHybrid.
	Strategy string `json:"strategy"`
	// ModelVersion names the model and its parameters' version, e.g. ModelVersionWeighted.
	ModelVersion string `json:"model_version"`
}

// Strategy and model names reported in Result.
const (
	// StrategyCovisHybrid: the user has history; co-visitation neighbours mixed with trending,
	// popular and exploration. The contract's value (api-contract §2.4), so clients and
	// dashboards filtering on the original's strategy match the normal path.
	StrategyCovisHybrid = "co_vis_popularity_hybrid"
	// StrategyColdStart: no usable history; trending and popular with exploration.
	StrategyColdStart = "cold_start_trending"
	// ModelVersionWeighted is the Weighted ranker's version.
	ModelVersionWeighted = "recsys-weighted-v1"
)

// Ranker ranks one Snapshot. Implementations must be deterministic for a given Snapshot and
// safe for concurrent use; they must never return a watched item or a duplicate, and return
// at most k items (fewer only when there are not enough candidates).
type Ranker interface {
	Rank(s *Snapshot, k int) Result
}

// Preparer is implemented by rankers that can compute the user-independent part of an item's
// score once per loaded ItemStats instead of once per request. A server that keeps item
// statistics for many requests (an in-process cache) calls Prepare on its own copy before
// sharing it; Rank then reads the stored value. Statistics prepared by another ranker, or not
// at all, are scored from scratch, with exactly the same result.
type Preparer interface {
	// Prepare stores in st the terms that depend only on st (none depends on the time: a
	// score must not depend on when a server loaded the statistics). st must not be in use
	// by a concurrent Rank.
	Prepare(st *ItemStats)
}
