package eval

import (
	"cmp"
	"math"
	"slices"
	"strings"
)

// Method is a recommender under evaluation: it is asked for a user's top k at a time, and
// observes every rating after it was tested.
type Method interface {
	Name() string
	Recommend(user string, nowMs int64, k int) []string
	Observe(r Rating)
}

// Trainer is a Method with a batch model, retrained on everything observed so far.
type Trainer interface {
	Train()
}

// counter keeps items ordered by an integer count that only grows by one, in O(1) per
// increment: items of equal count form a block, and an incremented item swaps to the front of
// its block. Ties keep a deterministic order given the same input sequence.
type counter struct {
	order []string
	pos   map[string]int
	count map[string]int
	start map[int]int // first index of the block of each count
}

func newCounter() *counter {
	return &counter{pos: map[string]int{}, count: map[string]int{}, start: map[int]int{}}
}

func (c *counter) inc(item string) {
	p, ok := c.pos[item]
	if !ok {
		c.order = append(c.order, item)
		p = len(c.order) - 1
		c.pos[item] = p
		c.count[item] = 0
		if _, ok := c.start[0]; !ok {
			c.start[0] = p
		}
	}
	n := c.count[item]
	s := c.start[n]
	other := c.order[s]
	c.order[s], c.order[p] = item, other
	c.pos[item], c.pos[other] = s, p
	if s+1 < len(c.order) && c.count[c.order[s+1]] == n {
		c.start[n] = s + 1
	} else {
		delete(c.start, n)
	}
	c.count[item] = n + 1
	if _, ok := c.start[n+1]; !ok {
		c.start[n+1] = s
	}
}

// top returns the k most counted items not excluded.
func (c *counter) top(k int, exclude func(string) bool) []string {
	out := make([]string, 0, k)
	for _, it := range c.order {
		if len(out) == k {
			break
		}
		if exclude != nil && exclude(it) {
			continue
		}
		out = append(out, it)
	}
	return out
}

// MostPopular recommends the items with the most ratings so far that the user has not rated.
type MostPopular struct {
	pop  *counter
	seen map[string]map[string]bool
}

// NewMostPopular returns the most-popular-so-far baseline.
func NewMostPopular() *MostPopular {
	return &MostPopular{pop: newCounter(), seen: map[string]map[string]bool{}}
}

func (m *MostPopular) Name() string { return "most_popular" }

func (m *MostPopular) Recommend(user string, _ int64, k int) []string {
	seen := m.seen[user]
	return m.pop.top(k, func(it string) bool { return seen[it] })
}

func (m *MostPopular) Observe(r Rating) {
	m.pop.inc(r.Item)
	s := m.seen[r.User]
	if s == nil {
		s = map[string]bool{}
		m.seen[r.User] = s
	}
	s[r.Item] = true
}

// Original is the original service's rule (api-contract §16 item 22): co-visitation counts of
// consecutive events in arrival order (self-transitions included), a 20-event history that may
// repeat items, all-time popularity counts. Candidates are the co-visitation neighbours of the
// last 5 history items (candidate weight 1/(depth+1)) plus the OriginalPopularCandidates most
// popular items (candidate weight 0.1 × popularity); the final score is 1.5 × co-visitation
// count from the user's last item + 1.0 × all-time popularity count; the last 20 history
// items are excluded. Every candidate is scored (no candidate cut-off), ties by item id.
type Original struct {
	// ExcludeRated also excludes every item the user rated before, as the other methods do:
	// a MovieLens user never rates an item twice, so the faithful rule (last 20 excluded)
	// spends slots on certain misses, which measures its exclusion more than its ranking.
	ExcludeRated bool

	pop   *counter
	covis map[string]map[string]int
	hist  map[string][]string // most recent last, at most 20
	rated map[string]map[string]bool
}

// OriginalPopularCandidates is how many popular items the original rule adds as candidates.
const OriginalPopularCandidates = 100

// NewOriginal returns the original rule baseline.
func NewOriginal() *Original {
	return &Original{pop: newCounter(), covis: map[string]map[string]int{}, hist: map[string][]string{}, rated: map[string]map[string]bool{}}
}

func (o *Original) Name() string { return "original_rule" }

func (o *Original) Recommend(user string, _ int64, k int) []string {
	h := o.hist[user]
	recent := map[string]bool{}
	for _, it := range h {
		recent[it] = true
	}
	if o.ExcludeRated {
		for it := range o.rated[user] {
			recent[it] = true
		}
	}
	cands := map[string]bool{}
	for d := 0; d < 5 && d < len(h); d++ {
		for n := range o.covis[h[len(h)-1-d]] {
			if !recent[n] {
				cands[n] = true
			}
		}
	}
	for _, it := range o.pop.top(OriginalPopularCandidates, func(it string) bool { return recent[it] }) {
		cands[it] = true
	}
	var last map[string]int
	if len(h) > 0 {
		last = o.covis[h[len(h)-1]]
	}
	type sc struct {
		id string
		s  float64
	}
	all := make([]sc, 0, len(cands))
	for c := range cands {
		all = append(all, sc{c, 1.5*float64(last[c]) + float64(o.pop.count[c])})
	}
	slices.SortFunc(all, func(a, b sc) int {
		if a.s != b.s {
			return cmp.Compare(b.s, a.s)
		}
		return strings.Compare(a.id, b.id)
	})
	out := make([]string, 0, k)
	for _, x := range all {
		if len(out) == k {
			break
		}
		out = append(out, x.id)
	}
	return out
}

func (o *Original) Observe(r Rating) {
	if o.ExcludeRated {
		s := o.rated[r.User]
		if s == nil {
			s = map[string]bool{}
			o.rated[r.User] = s
		}
		s[r.Item] = true
	}
	o.pop.inc(r.Item)
	h := o.hist[r.User]
	if len(h) > 0 {
		prev := h[len(h)-1]
		o.addPair(prev, r.Item)
		o.addPair(r.Item, prev)
	}
	h = append(h, r.Item)
	if len(h) > 20 {
		h = h[len(h)-20:]
	}
	o.hist[r.User] = h
}

func (o *Original) addPair(a, b string) {
	m := o.covis[a]
	if m == nil {
		m = map[string]int{}
		o.covis[a] = m
	}
	m[b]++
}

// interactions keeps each user's distinct items in order (dense ids) for batch training.
type interactions struct {
	itemID  map[string]int32
	items   []string
	userIdx map[string]int
	users   [][]int32 // per user, distinct items, oldest first
	seen    []map[int32]bool
}

func newInteractions() *interactions {
	return &interactions{itemID: map[string]int32{}, userIdx: map[string]int{}}
}

func (x *interactions) add(user, item string) {
	id, ok := x.itemID[item]
	if !ok {
		id = int32(len(x.items))
		x.itemID[item] = id
		x.items = append(x.items, item)
	}
	u, ok := x.userIdx[user]
	if !ok {
		u = len(x.users)
		x.userIdx[user] = u
		x.users = append(x.users, nil)
		x.seen = append(x.seen, map[int32]bool{})
	}
	if !x.seen[u][id] {
		x.seen[u][id] = true
		x.users[u] = append(x.users[u], id)
	}
}

type nb struct {
	j int32
	s float32
}

// ItemKNN is item-based k-nearest neighbours with cosine similarity on the item co-occurrence
// counts (users who rated both / sqrt(users of i × users of j)), Neighbours per item. The
// model is retrained every RetrainEvery observations (prequential) and by Train; a user's
// score for j is Σ over the user's items i (the MaxProfile most recent) of sim(i, j).
type ItemKNN struct {
	Neighbours   int
	RetrainEvery int
	MaxProfile   int

	data    *interactions
	sims    [][]nb // by item id, strongest first
	pending int
	acc     []float32
}

// NewItemKNN returns the item-kNN baseline.
func NewItemKNN(neighbours, retrainEvery, maxProfile int) *ItemKNN {
	return &ItemKNN{Neighbours: neighbours, RetrainEvery: retrainEvery, MaxProfile: maxProfile, data: newInteractions()}
}

func (m *ItemKNN) Name() string { return "item_knn" }

func (m *ItemKNN) Observe(r Rating) {
	m.data.add(r.User, r.Item)
	m.pending++
	if m.RetrainEvery > 0 && m.pending >= m.RetrainEvery {
		m.Train()
	}
}

// Train recomputes the similarities from every observation so far.
func (m *ItemKNN) Train() {
	m.pending = 0
	m.sims = cosineNeighbours(m.data, m.Neighbours)
}

func (m *ItemKNN) Recommend(user string, _ int64, k int) []string {
	u, ok := m.data.userIdx[user]
	if !ok || m.sims == nil {
		return nil
	}
	prof := m.data.users[u]
	if m.MaxProfile > 0 && len(prof) > m.MaxProfile {
		prof = prof[len(prof)-m.MaxProfile:]
	}
	if len(m.acc) < len(m.data.items) {
		m.acc = make([]float32, len(m.data.items))
	}
	touched := make([]int32, 0, 256)
	for _, i := range prof {
		if int(i) >= len(m.sims) {
			continue
		}
		for _, n := range m.sims[i] {
			if m.acc[n.j] == 0 {
				touched = append(touched, n.j)
			}
			m.acc[n.j] += n.s
		}
	}
	seen := m.data.seen[u]
	type sc struct {
		j int32
		s float32
	}
	cands := make([]sc, 0, len(touched))
	for _, j := range touched {
		if !seen[j] {
			cands = append(cands, sc{j, m.acc[j]})
		}
		m.acc[j] = 0
	}
	slices.SortFunc(cands, func(a, b sc) int {
		if a.s != b.s {
			return cmp.Compare(b.s, a.s)
		}
		return strings.Compare(m.data.items[a.j], m.data.items[b.j])
	})
	out := make([]string, 0, k)
	for _, c := range cands {
		if len(out) == k {
			break
		}
		out = append(out, m.data.items[c.j])
	}
	return out
}

// cosineNeighbours computes, for every item, its top-k items by cosine of co-occurrence.
func cosineNeighbours(x *interactions, k int) [][]nb {
	n := len(x.items)
	// users of each item
	byItem := make([][]int32, n)
	for u, its := range x.users {
		for _, i := range its {
			byItem[i] = append(byItem[i], int32(u))
		}
	}
	out := make([][]nb, n)
	acc := make([]float32, n)
	touched := make([]int32, 0, n)
	for i := 0; i < n; i++ {
		touched = touched[:0]
		for _, u := range byItem[i] {
			for _, j := range x.users[u] {
				if j == int32(i) {
					continue
				}
				if acc[j] == 0 {
					touched = append(touched, j)
				}
				acc[j]++
			}
		}
		ni := float64(len(byItem[i]))
		row := make([]nb, 0, len(touched))
		for _, j := range touched {
			s := float64(acc[j]) / math.Sqrt(ni*float64(len(byItem[j])))
			row = append(row, nb{j, float32(s)})
			acc[j] = 0
		}
		out[i] = topNB(row, k)
	}
	return out
}

func nbBefore(a, b nb) bool {
	if a.s != b.s {
		return a.s > b.s
	}
	return a.j < b.j
}

// topNB returns the best k of row (by similarity, ties by item id), sorted, in a new slice:
// a bounded min-heap keeps selection O(n log k) instead of sorting every row.
func topNB(row []nb, k int) []nb {
	if len(row) <= k {
		out := slices.Clone(row)
		slices.SortFunc(out, func(a, b nb) int {
			if nbBefore(a, b) {
				return -1
			}
			if nbBefore(b, a) {
				return 1
			}
			return 0
		})
		return out
	}
	h := slices.Clone(row[:k])
	down := func(i int) {
		for {
			l := 2*i + 1
			if l >= len(h) {
				return
			}
			m := l
			if r := l + 1; r < len(h) && nbBefore(h[l], h[r]) {
				m = r
			}
			if !nbBefore(h[i], h[m]) {
				return
			}
			h[i], h[m] = h[m], h[i]
			i = m
		}
	}
	for i := k/2 - 1; i >= 0; i-- {
		down(i)
	}
	for _, x := range row[k:] {
		if nbBefore(x, h[0]) {
			h[0] = x
			down(0)
		}
	}
	return topNB(h, k)
}
