package ranking

import (
	"math"
	"slices"
	"sync"
)

// Weighted is the default Ranker: a linear score over normalised features, with weights from
// Config. Candidates come from the co-visitation neighbours of the user's recent history (each
// history item weighted by its watch quality and HistoryDecay^position), learned similar items
// when loaded, trending and popular lists; a share of the slots goes to fresh or under-exposed
// items chosen pseudo-randomly from a deterministic seed.
//
// Features of a candidate c (each in [0,1]):
//
//	covis      Σ_h w_h · s(h,c)/max_c' s(h,c')  divided by its maximum over candidates
//	           (without NormaliseNeighbours: Σ_h w_h · s(h,c), then divided by the maximum)
//	similar    the same over Snapshot.Similar
//	trending   PopShort(c) / max PopShort over candidates
//	popular    PopLong(c) / max PopLong over candidates
//	watchRate  min(1, (watches+a)/(impressions+b))
//	completion smoothed mean percent watched / 100 (ended counts as 100 when percent is absent)
//	freshness  2^(-(now-firstSeen)/FreshnessHalfLife)
//	fatigue    clamp((shown-FatigueFree)/FatigueSaturation, 0, 1) over impressions of this user
//	           in the last FatigueMemory since the last watch (subtracted)
//
// Per-history-item normalisation keeps one very popular history item from drowning the others.
// Weighted is immutable and safe for concurrent use.
type Weighted struct {
	cfg Config
	// exhaustive scores every candidate fully (tests compare it with the pruned path).
	exhaustive bool
}

// NewWeighted returns a Weighted ranker; cfg must have passed Validate.
func NewWeighted(cfg Config) *Weighted { return &Weighted{cfg: cfg} }

// Config returns the ranker's configuration.
func (w *Weighted) Config() Config { return w.cfg }

type cand struct {
	id         string
	covis, sim float64
	personal   float64 // normalised covis and similar terms, weighted
	score      float64
	scored     bool       // score is the full score (else it is still personal)
	st         *ItemStats // the statistics carried by a list entry (Scored.Stats), if any
}

// norms are the per-request normalisers of the features.
type norms struct{ covis, sim, short, long float64 }

// scratch is per-call working memory, pooled because Rank runs on every request.
type scratch struct {
	idx     idTable // item id -> index in cands, or -1: excluded
	chosen  idTable // items already in the result
	cands   []cand
	explore []string
}

var scratchPool = sync.Pool{New: func() any { return &scratch{cands: make([]cand, 0, 1024)} }}

// Rank implements Ranker.
func (w *Weighted) Rank(s *Snapshot, k int) Result {
	cfg := w.cfg
	res := Result{ModelVersion: ModelVersionWeighted, Strategy: StrategyColdStart}
	if k <= 0 {
		return res
	}
	sc := scratchPool.Get().(*scratch)
	defer func() {
		sc.cands = sc.cands[:0]
		clear(sc.explore) // the ids belong to the caller's snapshot: do not keep them alive
		sc.explore = sc.explore[:0]
		scratchPool.Put(sc)
	}()
	idx := &sc.idx
	listed := min(len(s.History), cfg.HistoryItems)*cfg.NeighboursPerItem*(1+min(len(s.Similar), 1)) + cfg.TrendingN + cfg.PopularN
	// The watched set is checked once per new candidate; when it is much smaller than the
	// lists, entering it in the index up front is cheaper (a typical user has watched tens of
	// items, and the lists hold hundreds; iterating a map costs about two lookups per entry).
	preWatched := 4*len(s.Watched) <= listed
	hint := len(s.History) + listed
	if preWatched {
		hint += len(s.Watched)
	}
	idx.reset(hint)
	cands := sc.cands
	// Items already in the user's history are excluded even if the bounded watched set has
	// forgotten them: they enter the index as excluded (-1).
	for _, h := range s.History {
		idx.put(h.ItemID, -1)
	}
	if preWatched {
		for id, w := range s.Watched {
			if w {
				idx.put(id, -1)
			}
		}
	}
	get := func(x *Scored) *cand {
		slot, found := idx.probe(x.ItemID)
		if found {
			i := idx.slots[slot].val
			if i < 0 {
				return nil
			}
			c := &cands[i]
			if c.st == nil {
				c.st = x.Stats
			}
			return c
		}
		if !preWatched && s.Watched[x.ItemID] {
			idx.insertAt(slot, x.ItemID, -1)
			return nil
		}
		idx.insertAt(slot, x.ItemID, int32(len(cands)))
		cands = append(cands, cand{id: x.ItemID, st: x.Stats})
		return &cands[len(cands)-1]
	}
	excluded := func(id string) bool {
		if i, ok := idx.get(id); ok && i < 0 {
			return true
		}
		return s.Watched[id]
	}
	hasPersonal := false
	addNeighbours := func(lists map[string][]Scored, set func(c *cand, v float64)) {
		if len(lists) == 0 {
			return
		}
		pw := 1.0
		for i, h := range s.History {
			if i >= cfg.HistoryItems {
				break
			}
			hw := h.Quality * pw
			pw *= cfg.HistoryDecay
			ns := lists[h.ItemID]
			if len(ns) == 0 || hw <= 0 {
				continue
			}
			top := 1.0
			if cfg.NormaliseNeighbours {
				top = ns[0].Score // lists are strongest first (Snapshot.Neighbours)
				if top <= 0 {
					continue
				}
			}
			for j := range ns {
				n := &ns[j]
				if j >= cfg.NeighboursPerItem {
					break
				}
				// A list naming its own item needs no check: history items are excluded in idx.
				if n.Score <= 0 {
					continue
				}
				c := get(n)
				if c == nil {
					continue
				}
				set(c, hw*n.Score/top)
				hasPersonal = true
			}
		}
	}
	addNeighbours(s.Neighbours, func(c *cand, v float64) { c.covis += v })
	addNeighbours(s.Similar, func(c *cand, v float64) { c.sim += v })
	addList := func(l []Scored, n int) {
		for i := range l {
			if i >= n {
				break
			}
			get(&l[i])
		}
	}
	globalsIn := false
	addGlobals := func() {
		if globalsIn {
			return
		}
		globalsIn = true
		// Scoring reorders cands: point the index at the current positions first.
		for i := range cands {
			idx.put(cands[i].id, int32(i))
		}
		addList(s.Trending, cfg.TrendingN)
		addList(s.Popular, cfg.PopularN)
	}
	// A candidate only in the global lists has no personal term, so its full score is at most
	// the bound of the non-personal weights. When the personal candidates alone already hold k
	// full scores above that bound, the global lists cannot enter the top k: rank without
	// them (for a warm user that skips a few hundred candidates per request). The result is
	// exactly the one with them: covis and similar maxima come from personal candidates, and
	// popularity is normalised by the lists' heads, not by the candidates.
	var nm norms
	canSkip := !w.exhaustive && len(cands) >= k && len(s.Trending) > 0 && s.Trending[0].Score > 0 &&
		len(s.Popular) > 0 && s.Popular[0].Score > 0
	if canSkip {
		nm = w.scoreCandidates(s, cands, k)
		if cands[k-1].score <= w.bound() {
			addGlobals()
			nm = w.scoreCandidates(s, cands, k)
		}
	} else {
		addGlobals()
		nm = w.scoreCandidates(s, cands, k)
	}
	sc.cands = cands // keep the grown buffer for the next call

	if hasPersonal {
		res.Strategy = StrategyCovisHybrid
	}
	// floor: a 5% share gives 1 slot of 20 and none of 10.
	nExplore := int(math.Floor(float64(k)*cfg.ExplorationShare + 1e-9))
	explore := w.explorationPool(sc.explore[:0], s, excluded)
	sc.explore = explore
	nExplore = min(nExplore, len(explore))
	nMain := min(k-nExplore, len(cands))
	// Exploration also fills the slots the ranked candidates cannot.
	nExplore = min(k-nMain, len(explore))
	res.Items = make([]string, 0, k)
	res.Scores = make([]float64, 0, k)
	chosen := &sc.chosen
	chosen.reset(k)
	for _, c := range cands[:nMain] {
		res.Items = append(res.Items, c.id)
		res.Scores = append(res.Scores, c.score)
		chosen.put(c.id, 1)
	}
	var picks []string
	if nExplore > 0 {
		seed := s.Seed
		if seed == 0 {
			bucket := s.NowMs / max(cfg.ExplorationBucket.Milliseconds(), 1)
			seed = hash64(s.UserID, uint64(bucket))
		}
		rng := splitmix(seed)
		// Partial Fisher–Yates over the pool: deterministic for a given seed and pool order.
		for i := 0; i < len(explore) && len(picks) < nExplore; i++ {
			j := i + int(rng.next()%uint64(len(explore)-i))
			explore[i], explore[j] = explore[j], explore[i]
			if _, dup := chosen.get(explore[i]); dup {
				continue
			}
			chosen.put(explore[i], 1)
			picks = append(picks, explore[i])
		}
	}
	// Fill from the remaining ranked candidates when exploration found too few items, so
	// ranked items stay ahead of the exploration ones.
	if len(res.Items)+len(picks) < k && !globalsIn {
		addGlobals()
		sc.cands = cands
	}
	if len(res.Items)+len(picks) < k && nMain < len(cands) {
		rest := cands[nMain:]
		for i := range rest {
			if !rest[i].scored {
				w.fullScore(s, &rest[i], nm)
			}
		}
		slices.SortFunc(rest, cmpCand)
		for _, c := range rest {
			if len(res.Items)+len(picks) >= k {
				break
			}
			if _, dup := chosen.get(c.id); !dup {
				chosen.put(c.id, 1)
				res.Items = append(res.Items, c.id)
				res.Scores = append(res.Scores, c.score)
			}
		}
	}
	for _, id := range picks {
		res.Items = append(res.Items, id)
		res.Scores = append(res.Scores, 0)
	}
	return res
}

// scoreCandidates computes the full scores needed to rank the best k candidates and leaves
// them at the front of cands, in order.
//
// Only the personal terms (co-visitation, learned similarity) are computed for every
// candidate; the others (popularity, watch rate, completion, freshness) are each at most
// their weight, and fatigue only subtracts. So a candidate whose personal part plus that
// bound cannot beat the k-th best full score is never looked up: most trending and popular
// candidates of a warm user are pruned without touching Snapshot.Items. Popularity is
// normalised by the global maxima, Trending[0] and Popular[0], which need no scan.
func (w *Weighted) scoreCandidates(s *Snapshot, cands []cand, k int) norms {
	wt := w.cfg.Weights
	var nm norms
	for i := range cands {
		nm.covis = max(nm.covis, cands[i].covis)
		nm.sim = max(nm.sim, cands[i].sim)
	}
	if len(s.Trending) > 0 {
		nm.short = s.Trending[0].Score
	}
	if len(s.Popular) > 0 {
		nm.long = s.Popular[0].Score
	}
	if nm.short <= 0 || nm.long <= 0 {
		// No global list to normalise by: take the maxima over the candidates (needs every
		// candidate's statistics, so no pruning).
		for i := range cands {
			st := cands[i].stats(s)
			if len(s.Trending) == 0 {
				nm.short = max(nm.short, st.PopShort)
			}
			if len(s.Popular) == 0 {
				nm.long = max(nm.long, st.PopLong)
			}
		}
	}
	for i := range cands {
		c := &cands[i]
		c.personal = 0
		if nm.covis > 0 {
			c.personal += wt.Covis * c.covis / nm.covis
		}
		if nm.sim > 0 {
			c.personal += wt.Similar * c.sim / nm.sim
		}
		c.score, c.scored = c.personal, false
	}
	head := max(4*k, 32)
	if len(cands) <= head+head/2 || w.exhaustive {
		for i := range cands {
			w.fullScore(s, &cands[i], nm)
		}
		topK(cands, k)
		return nm
	}
	bound := w.bound()
	// The best head by personal score first, fully scored; its k-th best full score is the
	// bar the others must be able to reach. (Which candidates form the head only changes how
	// many get scored, never the result.)
	head = selectHead(cands, head)
	for i := range cands[:head] {
		w.fullScore(s, &cands[i], nm)
	}
	topK(cands[:head], k)
	bar := cands[k-1].score
	n := head
	for i := head; i < len(cands); i++ {
		if cands[i].personal+bound < bar {
			continue
		}
		w.fullScore(s, &cands[i], nm)
		cands[n], cands[i] = cands[i], cands[n]
		n++
	}
	topK(cands[:n], k)
	return nm
}

// selectHead moves n candidates whose personal scores are the n largest to the front and
// returns n (or len(c) when it is smaller). It finds the n-th
// largest score with a heap of floats and partitions once, instead of heap-ordering the
// candidates themselves, which moved 72-byte structs a few thousand times per request.
func selectHead(c []cand, n int) int {
	h := make([]float64, 0, 128)[:0]
	for i := range c {
		p := c[i].personal
		switch {
		case len(h) < n:
			h = append(h, p)
			for j := len(h) - 1; j > 0; { // sift up: min-heap
				parent := (j - 1) / 2
				if h[parent] <= h[j] {
					break
				}
				h[parent], h[j] = h[j], h[parent]
				j = parent
			}
		case p > h[0]:
			h[0] = p
			for j := 0; ; { // sift down
				l, m := 2*j+1, j
				if l < n && h[l] < h[m] {
					m = l
				}
				if r := l + 1; r < n && h[r] < h[m] {
					m = r
				}
				if m == j {
					break
				}
				h[j], h[m] = h[m], h[j]
				j = m
			}
		}
	}
	if len(h) < n {
		return len(c)
	}
	threshold, moved := h[0], 0
	for i := range c {
		if c[i].personal > threshold {
			c[moved], c[i] = c[i], c[moved]
			moved++
		}
	}
	// Then ties at the threshold until there are n (a cold user's candidates all tie at 0).
	for i := moved; i < len(c) && moved < n; i++ {
		if c[i].personal == threshold {
			c[moved], c[i] = c[i], c[moved]
			moved++
		}
	}
	return moved
}

// stats returns the candidate's statistics (zero when unknown).
func (c *cand) stats(s *Snapshot) ItemStats {
	if c.st != nil {
		return *c.st
	}
	st, _ := s.Stats(c.id)
	return st
}

// bound is the most the non-personal terms can add to a candidate's score.
func (w *Weighted) bound() float64 {
	wt := w.cfg.Weights
	return wt.Trending + wt.Popular + wt.WatchRate + wt.Completion + wt.Freshness
}

// fullScore sets c.score to the full linear score.
func (w *Weighted) fullScore(s *Snapshot, c *cand, nm norms) {
	cfg := w.cfg
	wt := cfg.Weights
	st := c.stats(s)
	f := c.personal
	if nm.short > 0 {
		f += wt.Trending * min(1, st.PopShort/nm.short)
	}
	if nm.long > 0 {
		f += wt.Popular * min(1, st.PopLong/nm.long)
	}
	if wt.WatchRate > 0 {
		f += wt.WatchRate * min(1, (float64(st.Watches)+cfg.WatchRatePriorWatches)/(float64(st.Impressions)+cfg.WatchRatePriorImpressions))
	}
	if wt.Completion > 0 {
		f += wt.Completion * completion(&st, cfg)
	}
	if wt.Freshness > 0 && st.FirstSeenMs > 0 {
		age := float64(max(s.NowMs-st.FirstSeenMs, 0))
		f += wt.Freshness * math.Exp2(-age/float64(cfg.FreshnessHalfLife.Milliseconds()))
	}
	if wt.Fatigue > 0 {
		f -= wt.Fatigue * fatigue(s, c.id, cfg)
	}
	c.score, c.scored = f, true
}

func completion(st *ItemStats, cfg Config) float64 {
	sum, n := st.SumPercent, float64(st.PercentCount)
	// Watches without a percentage but with ended=true count as complete; without either they
	// carry no completion evidence.
	if extra := st.Ended - st.PercentCount; extra > 0 {
		sum += 100 * float64(extra)
		n += float64(extra)
	}
	den := n + cfg.CompletionPrior
	if den <= 0 {
		return cfg.CompletionPriorMean / 100
	}
	return min(1, max(0, (sum+cfg.CompletionPrior*cfg.CompletionPriorMean)/den/100))
}

func fatigue(s *Snapshot, id string, cfg Config) float64 {
	im, ok := s.Impressions[id]
	if !ok || s.NowMs-im.LastTsMs > cfg.FatigueMemory.Milliseconds() {
		return 0
	}
	over := im.Count - cfg.FatigueFree
	if over <= 0 {
		return 0
	}
	return min(1, float64(over)/float64(cfg.FatigueSaturation))
}

// explorationPool lists fresh, under-exposed items the user has not watched, newest first, in a
// stable order (the seed then picks from it).
func (w *Weighted) explorationPool(pool []string, s *Snapshot, excluded func(string) bool) []string {
	cfg := w.cfg
	for i, f := range s.Fresh {
		if i >= cfg.FreshN {
			break
		}
		if excluded(f.ItemID) {
			continue
		}
		if st, ok := s.stats(&s.Fresh[i]); ok && st.Impressions >= cfg.ExplorationMaxImpressions && cfg.ExplorationMaxImpressions > 0 {
			continue
		}
		if fatigue(s, f.ItemID, cfg) > 0 {
			continue
		}
		pool = append(pool, f.ItemID)
	}
	return pool
}

func candBefore(a, b *cand) bool {
	if a.score != b.score {
		return a.score > b.score
	}
	return a.id < b.id
}

// topK moves the best k candidates to the front of c, in order; the rest stay unordered
// behind them. Selection (quickselect-like partial heap) is O(n log k) instead of a full sort.
func topK(c []cand, k int) {
	if k >= len(c) {
		slices.SortFunc(c, cmpCand)
		return
	}
	// Min-heap of the best k seen so far at c[:k]; its root is the worst of them.
	h := c[:k]
	for i := k/2 - 1; i >= 0; i-- {
		siftDown(h, i)
	}
	for i := k; i < len(c); i++ {
		if candBefore(&c[i], &h[0]) {
			h[0], c[i] = c[i], h[0]
			siftDown(h, 0)
		}
	}
	slices.SortFunc(h, cmpCand)
}

func cmpCand(a, b cand) int {
	if candBefore(&a, &b) {
		return -1
	}
	if candBefore(&b, &a) {
		return 1
	}
	return 0
}

// siftDown restores the min-heap (root = worst candidate) below i.
func siftDown(h []cand, i int) {
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		m := l
		if r := l + 1; r < len(h) && candBefore(&h[l], &h[r]) {
			m = r
		}
		if !candBefore(&h[i], &h[m]) {
			return
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
}

// hash64 is FNV-1a over the string followed by the 8 bytes of n.
func hash64(s string, n uint64) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	for i := 0; i < 8; i++ {
		h ^= (n >> (8 * i)) & 0xff
		h *= 1099511628211
	}
	return h
}

// splitmix is SplitMix64: tiny, fast, and fully determined by its seed.
type splitmix uint64

func (r *splitmix) next() uint64 {
	*r += 0x9e3779b97f4a7c15
	z := uint64(*r)
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}
