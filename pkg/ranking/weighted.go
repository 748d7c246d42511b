package ranking

import (
	"math"
	"slices"
	"sync"
	"sync/atomic"
)

// Weighted is the default Ranker: a linear score over normalised features, with weights from
// Config. Candidates come from the co-visitation neighbours of the user's recent history (each
// history item weighted by its watch quality and HistoryDecay^position), learned similar items
// when loaded, trending and popular lists; a share of the slots goes to fresh, under-exposed
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
//	freshness  2^(-(now-firstSeen)/FreshnessHalfLife), age clamped at 0 (see freshClock)
//	fatigue    clamp((shown-FatigueFree)/FatigueSaturation, 0, 1) over impressions of this user
//	           in the last FatigueMemory since the last watch (subtracted)
//
// Per-history-item normalisation keeps one very popular history item from drowning the others.
// A non-finite input (NaN or ±Inf: a corrupted stored value, a decay that overflowed) counts
// as 0, or, for a co-visitation or similarity list entry, as absent (a trending or popular
// entry stays a candidate: its score only normalises, as its list's first finite one): one
// such value made every score NaN, and NaN scores have no order, so the list came out in an
// arbitrary order with NaN scores.
// Every decayed input (covis, trending, popular) enters only as a ratio to a maximum of values
// with the same half-life, so a Snapshot may hold them decayed to NowMs or as stored
// (Snapshot.Stored): the score depends only on the stored features, NowMs and the
// configuration, never on when a server loaded them, and equal scores are ordered by item id.
// Weighted is immutable and safe for concurrent use.
type Weighted struct {
	cfg Config
	// exhaustive scores every candidate fully (tests compare it with the pruned path).
	exhaustive bool
	// id marks the ItemStats this ranker prepared (0: use no prepared value).
	id uint64
	// freshHL is FreshnessHalfLife in milliseconds, freshInv its inverse.
	freshHL  int64
	freshInv float64
}

var weightedIDs atomic.Uint64

// NewWeighted returns a Weighted ranker; cfg must have passed Validate.
func NewWeighted(cfg Config) *Weighted {
	hl := max(cfg.FreshnessHalfLife.Milliseconds(), 1)
	return &Weighted{cfg: cfg, id: weightedIDs.Add(1), freshHL: hl, freshInv: 1 / float64(hl)}
}

// Prepare implements Preparer: it stores the weighted watch rate and completion terms of st
// and the item's part of its freshness (freshClock), the same values Rank computes for
// unprepared statistics. Why: these terms (a division, a smoothed mean and an exp2) were
// recomputed for about a hundred candidates per request, while an item's statistics change
// every few seconds at most. Freshness itself is evaluated at Snapshot.NowMs: evaluated at
// the load time, two servers (or one, for two items loaded at different moments) gave items
// with equal statistics scores a hair apart, and ordered them by load time, not by id.
func (w *Weighted) Prepare(st *ItemStats) {
	st.prior = w.prior(st)
	st.freshM = w.freshItem(st.FirstSeenMs)
	st.priorBy = w.id
}

// Config returns the ranker's configuration.
func (w *Weighted) Config() Config { return w.cfg }

type cand struct {
	id         string
	h          uint64 // HashID(id)
	covis, sim float64
	personal   float64 // normalised covis and similar terms, weighted
	score      float64
	scored     bool       // score is the full score (else it is still personal)
	top        bool       // among the best k (scoreCandidates' scratch mark)
	st         *ItemStats // the statistics carried by a list entry (Scored.Stats), if any
}

// norms are the per-request normalisers of the features, and the request's part of freshness.
type norms struct {
	covis, sim, short, long float64
	fresh                   freshClock
}

// scratch is per-call working memory, pooled because Rank runs on every request.
type scratch struct {
	idx     idTable // item id -> index in cands, or -1: excluded
	chosen  idTable // items already in the result
	cands   []cand
	explore []string
	heap    []int32
	best    []cand // scoreCandidates' best k, in order
}

var scratchPool = sync.Pool{New: func() any { return &scratch{cands: make([]cand, 0, 1024)} }}

// Rank implements Ranker.
func (w *Weighted) Rank(s *Snapshot, k int) Result {
	var res Result
	w.RankInto(&res, s, k)
	return res
}

// RankInto is Rank into res, reusing the memory of its Items and Scores: a server that pools
// its Results saves the list's two allocations (a tenth of the bytes a /reco without autolog
// leaves to the collector). Every field of res is overwritten.
func (w *Weighted) RankInto(res *Result, s *Snapshot, k int) {
	cfg := w.cfg
	items, scores := res.Items[:0], res.Scores[:0]
	*res = Result{ModelVersion: ModelVersionWeighted, Strategy: StrategyColdStart}
	if k <= 0 {
		return
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
	hint := len(s.History) + len(s.Blocked) + listed
	if preWatched {
		hint += len(s.Watched)
	}
	idx.reset(hint)
	cands := sc.cands
	// Items already in the user's history are excluded even if the bounded watched set has
	// forgotten them: they enter the index as excluded (-1), as blocked items do.
	for _, h := range s.History {
		idx.put(h.ItemID, -1)
	}
	for _, id := range s.Blocked {
		idx.put(id, -1)
	}
	if preWatched {
		for id, w := range s.Watched {
			if w {
				idx.put(id, -1)
			}
		}
	}
	// insert adds x, whose hash is h, at the slot a probe found free: as a candidate, or as
	// excluded (nil).
	insert := func(x *Scored, h uint64, slot int) *cand {
		if !preWatched && s.Watched[x.ItemID] {
			idx.insertAt(slot, x.ItemID, h, -1)
			return nil
		}
		idx.insertAt(slot, x.ItemID, h, int32(len(cands)))
		cands = append(cands, cand{id: x.ItemID, h: h, st: x.Stats})
		return &cands[len(cands)-1]
	}
	get := func(x *Scored) *cand {
		h := x.hash
		if h == 0 {
			h = HashID(x.ItemID)
		}
		slot, found := idx.probeHash(x.ItemID, h)
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
		return insert(x, h, slot)
	}
	excluded := func(x *Scored) bool {
		h := x.hash
		if h == 0 {
			h = HashID(x.ItemID)
		}
		if i, ok := idx.getHash(x.ItemID, h); ok && i < 0 {
			return true
		}
		return !preWatched && s.Watched[x.ItemID]
	}
	hasPersonal := false
	addNeighbours := func(lists map[string][]Scored, byPos [][]Scored, similar bool) {
		if len(lists) == 0 && byPos == nil {
			return
		}
		pw := 1.0
		for i, h := range s.History {
			if i >= cfg.HistoryItems {
				break
			}
			hw := h.Quality * pw
			pw *= cfg.HistoryDecay
			var ns []Scored
			if byPos != nil {
				if i < len(byPos) {
					ns = byPos[i]
				}
			} else {
				ns = lists[h.ItemID]
			}
			if len(ns) == 0 || !(hw > 0 && hw <= math.MaxFloat64) {
				continue
			}
			top := 1.0
			if cfg.NormaliseNeighbours {
				top = listHead(ns) // lists are strongest first (Snapshot.Neighbours)
				if top <= 0 {
					continue
				}
			}
			f := hw / top // one division per list, not per entry
			for j := range ns[:min(len(ns), cfg.NeighboursPerItem)] {
				n := &ns[j]
				// A list naming its own item needs no check: history items are excluded in idx.
				if !(n.Score > 0 && n.Score <= math.MaxFloat64) {
					continue
				}
				// get, inline: most entries are candidates already seen (the lists of a
				// user's recent items overlap).
				var c *cand
				hash := n.hash
				if hash == 0 {
					hash = HashID(n.ItemID)
				}
				if slot, found := idx.probeHash(n.ItemID, hash); found {
					i := idx.slots[slot].val
					if i < 0 {
						continue
					}
					c = &cands[i]
					if c.st == nil {
						c.st = n.Stats
					}
				} else if c = insert(n, hash, slot); c == nil {
					continue
				}
				if similar {
					c.sim += f * n.Score
				} else {
					c.covis += f * n.Score
				}
				hasPersonal = true
			}
		}
	}
	addNeighbours(s.Neighbours, s.HistoryNeighbours, false)
	addNeighbours(s.Similar, nil, true)
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
			idx.putHash(cands[i].id, cands[i].h, int32(i))
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
	canSkip := !w.exhaustive && len(cands) >= k && listHead(s.Trending) > 0 && listHead(s.Popular) > 0
	if canSkip {
		nm = w.scoreCandidates(s, sc, cands, k)
		if cands[k-1].score <= w.bound() {
			addGlobals()
			nm = w.scoreCandidates(s, sc, cands, k)
		}
	} else {
		addGlobals()
		nm = w.scoreCandidates(s, sc, cands, k)
	}
	sc.cands = cands // keep the grown buffer for the next call

	if len(cands) < k && (len(s.Trending) > cfg.TrendingN || len(s.Popular) > cfg.PopularN) {
		// The heads of the global lists hold fewer eligible items than k (a large k, or a user
		// who watched much of them): the entries a Snapshot carries beyond them fill the list,
		// ranked behind the candidates, ahead of exploration. Without this a cold user asking
		// for 200 items got the ~130 distinct items of two overlapping top-100 lists although
		// the store holds hundreds more. With fewer than k candidates, scoreCandidates has
		// scored them all and put them in order; it moved them, so point the index at them
		// first.
		for i := range cands {
			idx.putHash(cands[i].id, cands[i].h, int32(i))
		}
		from := len(cands)
		if len(s.Trending) > cfg.TrendingN {
			addList(s.Trending[cfg.TrendingN:], len(s.Trending))
		}
		if len(s.Popular) > cfg.PopularN {
			addList(s.Popular[cfg.PopularN:], len(s.Popular))
		}
		fill := cands[from:]
		for i := range fill {
			w.fullScore(s, &fill[i], nm)
		}
		slices.SortFunc(fill, cmpCand)
		sc.cands = cands
	}
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
	if cap(items) < k {
		items = make([]string, 0, k)
	}
	if cap(scores) < k {
		scores = make([]float64, 0, k)
	}
	res.Items, res.Scores = items, scores
	chosen := &sc.chosen
	chosen.reset(k)
	for _, c := range cands[:nMain] {
		res.Items = append(res.Items, c.id)
		res.Scores = append(res.Scores, c.score)
		chosen.putHash(c.id, c.h, 1)
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
			if _, dup := chosen.getHash(c.id, c.h); !dup {
				chosen.putHash(c.id, c.h, 1)
				res.Items = append(res.Items, c.id)
				res.Scores = append(res.Scores, c.score)
			}
		}
	}
	for _, id := range picks {
		res.Items = append(res.Items, id)
		res.Scores = append(res.Scores, 0)
	}
}

// scoreCandidates computes the full scores needed to rank the best k candidates and leaves
// them at the front of cands, in order.
//
// Only the personal terms (co-visitation, learned similarity) are computed for every
// candidate; the others (popularity, watch rate, completion, freshness) are each at most
// their weight, and fatigue only subtracts. So the candidates stream through a heap of the k
// best full scores so far, and one whose personal part plus that bound cannot beat the
// heap's worst is never scored: its statistics are not even read. Candidates come in list
// order (the most recent history item's strongest neighbours first), so the heap holds good
// scores early and most of the rest is skipped. Popularity is normalised by the global
// maxima, Trending[0] and Popular[0], which need no scan.
func (w *Weighted) scoreCandidates(s *Snapshot, sc *scratch, cands []cand, k int) norms {
	wt := w.cfg.Weights
	var nm norms
	if wt.Freshness > 0 {
		nm.fresh = w.freshClock(s.NowMs)
	}
	for i := range cands {
		nm.covis = max(nm.covis, cands[i].covis)
		nm.sim = max(nm.sim, cands[i].sim)
	}
	nm.short, nm.long = listHead(s.Trending), listHead(s.Popular)
	if nm.short <= 0 || nm.long <= 0 {
		// No global list to normalise by: take the maxima over the candidates (needs every
		// candidate's statistics, so no pruning).
		for i := range cands {
			st := cands[i].stats(s)
			if len(s.Trending) == 0 && finite(st.PopShort) {
				nm.short = max(nm.short, st.PopShort)
			}
			if len(s.Popular) == 0 && finite(st.PopLong) {
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
		c.score, c.scored, c.top = c.personal, false, false
	}
	if w.exhaustive {
		for i := range cands {
			w.fullScore(s, &cands[i], nm)
		}
		topK(cands, k)
		return nm
	}
	// The slack covers rounding: a sum of terms each at most its weight may round a hair
	// above the rounded sum of the weights.
	bound := w.bound() * (1 + 1e-9)
	h := sc.heap[:0] // min-heap of candidate indices, root = worst of the best k so far
	for i := range cands {
		c := &cands[i]
		if len(h) == k {
			if c.personal+bound < cands[h[0]].score {
				continue
			}
			w.fullScore(s, c, nm)
			if candBefore(c, &cands[h[0]]) {
				h[0] = int32(i)
				siftDownIdx(cands, h, 0)
			}
			continue
		}
		w.fullScore(s, c, nm)
		h = append(h, int32(i))
		for j := len(h) - 1; j > 0; { // sift up
			parent := (j - 1) / 2
			if !candBefore(&cands[h[parent]], &cands[h[j]]) {
				break
			}
			h[parent], h[j] = h[j], h[parent]
			j = parent
		}
	}
	sc.heap = h
	// The best k in order: popping the heap yields them worst first, comparing through
	// indices (sorting the structs themselves copied two of them per comparison).
	best := sc.best[:0]
	for _, i := range h {
		cands[i].top = true
		best = append(best, cand{})
	}
	for len(h) > 0 {
		best[len(h)-1] = cands[h[0]]
		h[0] = h[len(h)-1]
		h = h[:len(h)-1]
		siftDownIdx(cands, h, 0)
	}
	// The best k to the front (moving each struct at most once), then overwritten in order.
	n := 0
	for i := range cands {
		if cands[i].top {
			if i != n {
				cands[i], cands[n] = cands[n], cands[i]
			}
			n++
		}
	}
	copy(cands, best)
	clear(best) // the ids and statistics belong to the caller's snapshot
	sc.best = best[:0]
	return nm
}

// siftDownIdx restores the min-heap h of indices into c (root = worst candidate) below i.
func siftDownIdx(c []cand, h []int32, i int) {
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		m := l
		if r := l + 1; r < len(h) && candBefore(&c[h[l]], &c[h[r]]) {
			m = r
		}
		if !candBefore(&c[h[i]], &c[h[m]]) {
			return
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
}

// stats returns the candidate's statistics (zero when unknown).
func (c *cand) stats(s *Snapshot) ItemStats {
	if c.st != nil {
		return *c.st
	}
	st, _ := s.Stats(c.id)
	return st
}

// prior is the weighted sum of the terms that depend only on the item's statistics: watch
// rate and completion (see Prepare).
func (w *Weighted) prior(st *ItemStats) float64 {
	cfg := &w.cfg
	wt := &cfg.Weights
	var f float64
	if wt.WatchRate > 0 {
		f += wt.WatchRate * min(1, (float64(st.Watches)+cfg.WatchRatePriorWatches)/(float64(st.Impressions)+cfg.WatchRatePriorImpressions))
	}
	if wt.Completion > 0 {
		f += wt.Completion * completion(st, cfg)
	}
	return f
}

// freshClock is the request's part of the freshness term. Freshness 2^(-(now-firstSeen)/h)
// is a product of a part of the item and a part of the request, so it costs one exp2 per
// request rather than per candidate, and its value, bit for bit, depends only on firstSeen,
// now and h (not on when the item's part was computed): with firstSeen = qi·h + ri and
// now = qn·h + rn (q = periods(t), r = t - q·h),
//
//	2^(-(now-firstSeen)/h) = 2^(ri/h) · 2^(-rn/h) · 2^(qi-qn)
//
// where the last factor, a power of two, scales exactly.
type freshClock struct {
	q int64
	m float64 // 2^(-rn/h)
	w float64 // Weights.Freshness
}

// periods is about ms/h, whole half-lives: a cheap deterministic function of ms (ranking
// computes it per candidate) whose rest ms - q·h is within [-h, 2h) (the product above holds
// for any q; the rest only has to keep the parts far from overflow).
func (w *Weighted) periods(ms int64) int64 { return int64(float64(ms) * w.freshInv) }

func (w *Weighted) freshClock(nowMs int64) freshClock {
	q := w.periods(nowMs)
	return freshClock{q: q, m: math.Exp2(-float64(nowMs-q*w.freshHL) * w.freshInv), w: w.cfg.Weights.Freshness}
}

// freshItem returns the item's part of the weighted freshness term,
// Weights.Freshness·2^(ri/h), or 0 when the item has no freshness term.
func (w *Weighted) freshItem(firstSeenMs int64) float64 {
	if w.cfg.Weights.Freshness <= 0 || firstSeenMs <= 0 {
		return 0
	}
	r := firstSeenMs - w.periods(firstSeenMs)*w.freshHL
	return w.cfg.Weights.Freshness * math.Exp2(float64(r)*w.freshInv)
}

// fresh is the weighted freshness term of an item first seen at firstSeenMs, whose part is
// m (freshItem, not 0), with the age clamped at 0.
func (w *Weighted) fresh(c *freshClock, m float64, firstSeenMs int64) float64 {
	k := w.periods(firstSeenMs) - c.q
	if k < -1020 {
		return 0 // older than a thousand half-lives
	}
	// The parts' product (without the weight) is in (1/8, 8): k capped at 3 still makes
	// anything first seen after now at least 1, clamped to the weight below.
	f := m * c.m * math.Float64frombits(uint64(1023+min(k, 3))<<52)
	if f > c.w {
		return c.w
	}
	return f
}

// bound is the most the non-personal terms can add to a candidate's score.
func (w *Weighted) bound() float64 {
	wt := w.cfg.Weights
	return wt.Trending + wt.Popular + wt.WatchRate + wt.Completion + wt.Freshness
}

// fullScore sets c.score to the full linear score.
func (w *Weighted) fullScore(s *Snapshot, c *cand, nm norms) {
	wt := &w.cfg.Weights
	st := c.st
	if st == nil {
		v, _ := s.Stats(c.id)
		st = &v
	}
	f := c.personal
	if nm.short > 0 && finite(st.PopShort) {
		f += wt.Trending * min(1, st.PopShort/nm.short)
	}
	if nm.long > 0 && finite(st.PopLong) {
		f += wt.Popular * min(1, st.PopLong/nm.long)
	}
	if w.id != 0 && st.priorBy == w.id {
		f += st.prior
		if st.freshM != 0 {
			f += w.fresh(&nm.fresh, st.freshM, st.FirstSeenMs)
		}
	} else {
		f += w.prior(st)
		if fm := w.freshItem(st.FirstSeenMs); fm != 0 {
			f += w.fresh(&nm.fresh, fm, st.FirstSeenMs)
		}
	}
	if wt.Fatigue > 0 && s.hasImpressions() {
		f -= wt.Fatigue * fatigue(s, c.id, &w.cfg)
	}
	if !finite(f) {
		// Finite inputs whose sums overflowed (co-visitation strengths near the float
		// limit): the order must stay total.
		f = 0
	}
	c.score, c.scored = f, true
}

// finite reports whether x is neither NaN nor ±Inf.
func finite(x float64) bool { return math.Abs(x) <= math.MaxFloat64 }

// listHead is the score a list is normalised by: its first finite score (lists are highest
// first, so normally its first), or 0 when that is not positive or there is none.
func listHead(l []Scored) float64 {
	for i := range l {
		if v := l[i].Score; finite(v) {
			return max(v, 0)
		}
	}
	return 0
}

func completion(st *ItemStats, cfg *Config) float64 {
	sum, n := st.SumPercent, float64(st.PercentCount)
	if !finite(sum) {
		sum = 0
	}
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

func fatigue(s *Snapshot, id string, cfg *Config) float64 {
	im, ok := s.Impression(id)
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
func (w *Weighted) explorationPool(pool []string, s *Snapshot, excluded func(*Scored) bool) []string {
	cfg := &w.cfg
	for i := range s.Fresh {
		if i >= cfg.FreshN {
			break
		}
		f := &s.Fresh[i]
		if excluded(f) {
			continue
		}
		if cfg.ExplorationMaxImpressions > 0 && s.impressionsOf(f) >= cfg.ExplorationMaxImpressions {
			continue
		}
		if s.hasImpressions() && fatigue(s, f.ItemID, cfg) > 0 {
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
