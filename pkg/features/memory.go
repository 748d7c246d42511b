package features

import (
	"recsys/pkg/ranking"
)

// SnapshotOptions is the shape of what a Snapshot loads (shared with the Redis loader).
type SnapshotOptions = ranking.SnapshotOptions

// MemoryStore is an in-process feature store: it applies Deltas exactly like the serving
// stores are meant to (forward decay with moving landmarks, neighbour lists trimmed to the top
// M, incremental trending/popular top lists, a fresh-items list) and builds ranking.Snapshots
// of the same shape as the Redis loader. The evaluation harness and tests use it.
//
// Neighbour lists keep up to 2·M entries so a new neighbour has room to accumulate strength;
// when a list grows past 2·M it is trimmed to its top M (ties: smaller item id kept). Snapshots
// read the top NeighboursPerItem of the current list.
//
// A MemoryStore is not safe for concurrent use. A Snapshot shares the user's History, Watched
// and Impressions with the store: treat it as read-only and do not keep it across Apply.
type MemoryStore struct {
	cfg   Config
	users map[string]*memUser
	items map[string]*memItem
	nbrs  map[string]*nbrList

	started            bool
	short, long, covis Decay
	trending, popular  topList
	fresh              []string // newest first-seen first, at most FreshSize
	rebases            int
	model              *ranking.ItemModel
}

type memUser struct {
	st      UserState
	watched map[string]bool // mirror of st.Watched for Snapshots
}

type memItem struct {
	stats             ranking.ItemStats // PopShort/PopLong unused here: stored values below
	popShort, popLong float64           // forward-decayed stored values
	pos               [2]int32          // 1-based position in the trending / popular list, 0 = absent
}

// nbrList is one item's neighbours kept sorted by stored strength (descending, ties by id).
// Strengths only grow, so an increment bubbles the entry up instead of re-sorting the list for
// every Snapshot. Lists are short (≤ 2·M), so a linear scan finds an entry faster than a map
// that would also have to follow every swap. The scan compares the ids' hashes (hashes[i] is
// items[i]'s), and an id only when they match: comparing ids of equal length, which share a
// prefix, was 40 % of a mature stream's apply.
type nbrList struct {
	items  []ranking.Scored
	hashes []uint64
}

// NewMemoryStore returns an empty store; cfg must have passed Validate.
func NewMemoryStore(cfg Config) *MemoryStore {
	return &MemoryStore{
		cfg:      cfg,
		users:    make(map[string]*memUser),
		items:    make(map[string]*memItem),
		nbrs:     make(map[string]*nbrList),
		trending: topList{cap: cfg.TopListSize, slot: 0},
		popular:  topList{cap: cfg.TopListSize, slot: 1},
	}
}

// SetItemModel installs a learned item-item model (nil removes it); Snapshots then carry the
// model's neighbours of the history items in Snapshot.Similar, as the serving loader does with
// the lists a trainer published.
func (m *MemoryStore) SetItemModel(model *ranking.ItemModel) { m.model = model }

// Config returns the store's configuration.
func (m *MemoryStore) Config() Config { return m.cfg }

// Rebases returns how many landmark rebases the store performed (for tests).
func (m *MemoryStore) Rebases() int { return m.rebases }

// User returns the user's state (shared, read-only) and whether the user is known.
func (m *MemoryStore) User(userID string) (UserState, bool) {
	u, ok := m.users[userID]
	if !ok {
		return UserState{}, false
	}
	return u.st, true
}

// Apply applies one event: features.Apply on the user's state, then the Delta.
func (m *MemoryStore) Apply(ev Interaction) Delta {
	u := m.users[ev.UserID]
	if u == nil {
		if ev.UserID == "" {
			return Delta{}
		}
		u = &memUser{watched: map[string]bool{}}
		m.users[ev.UserID] = u
	}
	var d Delta
	u.st, d = Apply(m.cfg, u.st, ev)
	if (ev.Kind == KindWatch || ev.Kind == KindLegacy) && ev.ItemID != "" {
		u.watched[ev.ItemID] = true
		if len(u.watched) != len(u.st.Watched) {
			// The watched set was trimmed: rebuild the mirror (amortised, rare).
			u.watched = make(map[string]bool, len(u.st.Watched))
			for k := range u.st.Watched {
				u.watched[k] = true
			}
		}
	}
	m.ApplyDelta(d)
	return d
}

// ApplyDelta adds a Delta's global increments (the user part is in Apply's returned state).
func (m *MemoryStore) ApplyDelta(d Delta) {
	if d.Empty() {
		return
	}
	m.ensureLandmarks(d.TsMs)
	for _, id := range d.Items {
		it := m.item(id.ItemID, d.TsMs)
		s := &it.stats
		s.Impressions += id.Impressions
		s.Watches += id.Watches
		s.SumPercent += id.SumPercent
		s.PercentCount += id.PercentCount
		s.Ended += id.Ended
		s.WatchTimeSec += id.WatchTimeSec
	}
	for _, p := range d.Pop {
		it := m.item(p.ItemID, d.TsMs)
		it.popShort += m.short.Forward(p.Weight, d.TsMs)
		it.popLong += m.long.Forward(p.Weight, d.TsMs)
		m.trending.update(p.ItemID, it, it.popShort)
		m.popular.update(p.ItemID, it, it.popLong)
	}
	for _, p := range d.Pairs {
		if p.From == p.To {
			continue
		}
		l := m.nbrs[p.From]
		if l == nil {
			l = &nbrList{items: make([]ranking.Scored, 0, 4), hashes: make([]uint64, 0, 4)}
			m.nbrs[p.From] = l
		}
		l.add(p.To, m.covis.Forward(p.Weight, d.TsMs))
		if len(l.items) > 2*m.cfg.NeighboursPerItem {
			l.trim(m.cfg.NeighboursPerItem)
		}
	}
}

func (m *MemoryStore) item(id string, ts int64) *memItem {
	it := m.items[id]
	if it == nil {
		it = &memItem{stats: ranking.ItemStats{FirstSeenMs: ts}}
		m.items[id] = it
		m.addFresh(id, ts)
		return it
	}
	if ts < it.stats.FirstSeenMs {
		// A backfill revealed an earlier sighting; the fresh list keeps its position (it only
		// orders exploration candidates).
		it.stats.FirstSeenMs = ts
	}
	return it
}

func (m *MemoryStore) addFresh(id string, ts int64) {
	if m.cfg.FreshSize == 0 {
		return
	}
	// Newest first: find the first entry not newer than ts.
	i := 0
	for i < len(m.fresh) && m.items[m.fresh[i]].stats.FirstSeenMs > ts {
		i++
	}
	if i >= m.cfg.FreshSize {
		return
	}
	if len(m.fresh) < m.cfg.FreshSize {
		m.fresh = append(m.fresh, "")
	}
	copy(m.fresh[i+1:], m.fresh[i:])
	m.fresh[i] = id
}

// ensureLandmarks sets the landmarks at the first event and rebases a half-life whose exponent
// would exceed RebaseExponent.
func (m *MemoryStore) ensureLandmarks(ts int64) {
	if !m.started {
		m.started = true
		m.short = NewDecay(m.cfg.PopShortHalfLife, ts)
		m.long = NewDecay(m.cfg.PopLongHalfLife, ts)
		m.covis = NewDecay(m.cfg.CovisHalfLife, ts)
		return
	}
	if m.short.NeedsRebase(ts) {
		f, next := m.short.Rebase(ts)
		m.short = next
		for _, it := range m.items {
			it.popShort *= f
		}
		m.trending.scale(f)
		m.rebases++
	}
	if m.long.NeedsRebase(ts) {
		f, next := m.long.Rebase(ts)
		m.long = next
		for _, it := range m.items {
			it.popLong *= f
		}
		m.popular.scale(f)
		m.rebases++
	}
	if m.covis.NeedsRebase(ts) {
		f, next := m.covis.Rebase(ts)
		m.covis = next
		for _, l := range m.nbrs {
			for i := range l.items {
				l.items[i].Score *= f
			}
		}
		m.rebases++
	}
}

// Neighbours returns the top n co-visitation neighbours of item with current strengths at now.
func (m *MemoryStore) Neighbours(item string, nowMs int64, n int) []ranking.Scored {
	return m.neighbours(item, m.covis.At(1, nowMs), n)
}

// StoredNeighbours is Neighbours with the strengths as stored, relative to Landmarks().
func (m *MemoryStore) StoredNeighbours(item string, n int) []ranking.Scored {
	return m.neighbours(item, 1, n)
}

// Landmarks returns the landmarks of the stored values (ranking.Snapshot.Stored).
func (m *MemoryStore) Landmarks() ranking.Landmarks {
	return ranking.Landmarks{ShortMs: m.short.LandmarkMs, LongMs: m.long.LandmarkMs, CovisMs: m.covis.LandmarkMs}
}

// neighbours returns the top n neighbours of item with the stored strengths times f.
func (m *MemoryStore) neighbours(item string, f float64, n int) []ranking.Scored {
	l := m.nbrs[item]
	if l == nil {
		return nil
	}
	n = min(n, len(l.items))
	out := make([]ranking.Scored, n)
	for i := range out {
		out[i] = ranking.Scored{ItemID: l.items[i].ItemID, Score: l.items[i].Score * f}
	}
	return out
}

// ItemStats returns an item's statistics with popularity decayed to now.
func (m *MemoryStore) ItemStats(item string, nowMs int64) (ranking.ItemStats, bool) {
	return m.itemStats(item, m.short.At(1, nowMs), m.long.At(1, nowMs))
}

// StoredItemStats is ItemStats with popularity as stored, relative to Landmarks().
func (m *MemoryStore) StoredItemStats(item string) (ranking.ItemStats, bool) {
	return m.itemStats(item, 1, 1)
}

func (m *MemoryStore) itemStats(item string, fShort, fLong float64) (ranking.ItemStats, bool) {
	it := m.items[item]
	if it == nil {
		return ranking.ItemStats{}, false
	}
	s := it.stats
	s.PopShort = it.popShort * fShort
	s.PopLong = it.popLong * fLong
	return s, true
}

// NumItems is the number of items the store has seen.
func (m *MemoryStore) NumItems() int { return len(m.items) }

// Snapshot builds the ranking input for one user at now, loading what opts asks for: the
// history, watched set and impression counters, neighbour lists of the first
// opts.HistoryItems history items, trending/popular/fresh lists, and ItemStats for the union
// of every candidate. With opts.Stored the decayed values are as stored (ranking.Snapshot.Stored).
func (m *MemoryStore) Snapshot(userID string, nowMs int64, opts SnapshotOptions) ranking.Snapshot {
	s := ranking.Snapshot{
		UserID:     userID,
		NowMs:      nowMs,
		Neighbours: make(map[string][]ranking.Scored, opts.HistoryItems),
		Items:      make(map[string]ranking.ItemStats, 256),
	}
	if u := m.users[userID]; u != nil {
		s.History = u.st.History
		s.Watched = u.watched
		s.Impressions = u.st.ImpressionCounts
	}
	fShort, fLong, fCovis := m.short.At(1, nowMs), m.long.At(1, nowMs), m.covis.At(1, nowMs)
	short, long := func(v float64) float64 { return m.short.At(v, nowMs) }, func(v float64) float64 { return m.long.At(v, nowMs) }
	if opts.Stored {
		s.Stored, s.Landmarks = true, m.Landmarks()
		fShort, fLong, fCovis = 1, 1, 1
		short = func(v float64) float64 { return v }
		long = short
	}
	addStats := func(id string) {
		if _, ok := s.Items[id]; ok {
			return
		}
		if st, ok := m.itemStats(id, fShort, fLong); ok {
			s.Items[id] = st
		}
	}
	for i, h := range s.History {
		if i >= opts.HistoryItems {
			break
		}
		ns := m.neighbours(h.ItemID, fCovis, opts.NeighboursPerItem)
		if len(ns) == 0 {
			continue
		}
		s.Neighbours[h.ItemID] = ns
		for _, n := range ns {
			addStats(n.ItemID)
		}
	}
	if m.model != nil {
		s.Similar = m.model.Similar(s.History, opts.HistoryItems, opts.NeighboursPerItem)
		for _, l := range s.Similar {
			for _, n := range l {
				addStats(n.ItemID)
			}
		}
	}
	s.Trending = m.trending.top(opts.TrendingN, short)
	s.Popular = m.popular.top(opts.PopularN, long)
	for _, l := range [][]ranking.Scored{s.Trending, s.Popular} {
		for _, x := range l {
			addStats(x.ItemID)
		}
	}
	n := min(opts.FreshN, len(m.fresh))
	s.Fresh = make([]ranking.Scored, 0, n)
	for _, id := range m.fresh[:n] {
		s.Fresh = append(s.Fresh, ranking.Scored{ItemID: id, Score: float64(m.items[id].stats.FirstSeenMs)})
		addStats(id)
	}
	return s
}

func (l *nbrList) add(id string, v float64) {
	h := ranking.HashID(id)
	i := -1
	for j, x := range l.hashes {
		if x == h && l.items[j].ItemID == id {
			i = j
			break
		}
	}
	if i >= 0 {
		l.items[i].Score += v
	} else {
		l.items = append(l.items, ranking.Scored{ItemID: id, Score: v})
		l.hashes = append(l.hashes, h)
		i = len(l.items) - 1
	}
	e := l.items[i]
	j := i
	for j > 0 && before(e, l.items[j-1]) {
		j--
	}
	if j < i {
		copy(l.items[j+1:i+1], l.items[j:i])
		copy(l.hashes[j+1:i+1], l.hashes[j:i])
		l.items[j], l.hashes[j] = e, h
	}
}

func (l *nbrList) trim(keep int) {
	clear(l.items[keep:])
	l.items, l.hashes = l.items[:keep], l.hashes[:keep]
}

// before reports whether a ranks before b: higher score, then smaller id.
func before(a, b ranking.Scored) bool {
	if a.Score != b.Score {
		return a.Score > b.Score
	}
	return a.ItemID < b.ItemID
}

// topList is the exact top cap items by a stored value that only increases (forward-decayed
// sums with positive increments): an item outside the list can only enter by overtaking the
// last one, so incremental maintenance is exact. Ordered by value descending, ties by id.
// Each item remembers its own position (memItem.pos[slot]), so moving entries costs pointer
// writes rather than map updates.
type topList struct {
	cap   int
	slot  int // index into memItem.pos
	items []topEntry
}

type topEntry struct {
	ranking.Scored
	it *memItem
}

func (t *topList) update(id string, it *memItem, v float64) {
	e := topEntry{Scored: ranking.Scored{ItemID: id, Score: v}, it: it}
	i := int(it.pos[t.slot]) - 1
	switch {
	case i >= 0:
		t.items[i] = e
	case len(t.items) < t.cap:
		t.items = append(t.items, e)
		i = len(t.items) - 1
	default:
		last := len(t.items) - 1
		if !before(e.Scored, t.items[last].Scored) {
			return
		}
		t.items[last].it.pos[t.slot] = 0
		t.items[last] = e
		i = last
	}
	// Binary search the new place among items[:i] (sorted), then shift them down by one.
	lo, hi := 0, i
	for lo < hi {
		mid := (lo + hi) / 2
		if before(e.Scored, t.items[mid].Scored) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	if lo < i {
		copy(t.items[lo+1:i+1], t.items[lo:i])
		t.items[lo] = e
		for k := lo + 1; k <= i; k++ {
			t.items[k].it.pos[t.slot] = int32(k + 1)
		}
	}
	it.pos[t.slot] = int32(lo + 1)
}

func (t *topList) scale(f float64) {
	for i := range t.items {
		t.items[i].Score *= f
	}
}

func (t *topList) top(n int, now func(float64) float64) []ranking.Scored {
	n = min(n, len(t.items))
	out := make([]ranking.Scored, n)
	for i := range out {
		out[i] = ranking.Scored{ItemID: t.items[i].ItemID, Score: now(t.items[i].Score)}
	}
	return out
}
