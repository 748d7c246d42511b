package features

import (
	"math"
	"slices"
)

// UserState is one user's feature state. The zero value is a new user.
type UserState struct {
	// History holds distinct items, most recent first (by TsMs; an older event is inserted at
	// its place in time), at most Config.HistorySize.
	History []HistoryEntry `json:"history"`
	// Watched maps every remembered watched item to its latest watch time (ms). It holds at
	// most Config.WatchedCap items after trimming: eviction is amortised — when it grows past
	// WatchedCap + max(WatchedCap/4, 16) the oldest are evicted down to WatchedCap (ties:
	// larger item id first), so a store sees one bulk removal instead of one per event.
	Watched map[string]int64 `json:"watched"`
	// ImpressionCounts counts, per item, the impressions shown to this user since the user's
	// last watch of it (a watch deletes the entry). Bounded by Config.ImpressionMemory with
	// the same amortised eviction, least recently shown first.
	ImpressionCounts map[string]ImpressionStat `json:"impression_counts"`
}

// ItemDelta are increments of one item's global statistics (ranking.ItemStats). A store also
// sets the item's first-seen time to min(first-seen, Delta.TsMs).
type ItemDelta struct {
	ItemID       string
	Impressions  int64
	Watches      int64
	SumPercent   float64
	PercentCount int64
	Ended        int64
	WatchTimeSec float64
}

// PopIncrement is a raw popularity weight observed at Delta.TsMs. The store adds
// Decay.Forward(Weight, Delta.TsMs) with its short and its long half-life Decay to the item's
// two popularity values (and top lists).
type PopIncrement struct {
	ItemID string
	Weight float64
}

// PairIncrement is a raw co-visitation weight observed at Delta.TsMs for From → To. Apply
// emits both directions (the later → earlier one scaled by CovisBackwardWeight, omitted when
// that is 0). The store adds Decay.Forward(Weight, Delta.TsMs) with its
// CovisHalfLife Decay to From's neighbour To, then trims From's list (see MemoryStore).
type PairIncrement struct {
	From, To string
	Weight   float64
}

// Delta are the global increments one event causes. Weights are RAW (not forward-decayed):
// Apply is independent of any store's landmark, and each store forward-decays them at TsMs
// with its own Decay. Applying the same Delta twice double counts: exactly-once is the
// caller's job.
type Delta struct {
	UserID string
	TsMs   int64
	Items  []ItemDelta
	Pop    []PopIncrement
	Pairs  []PairIncrement
	// UserImpressions are the items whose per-user impression counter went up by one (already
	// reflected in the returned UserState).
	UserImpressions []string
}

// Empty reports whether the Delta changes nothing global.
func (d *Delta) Empty() bool {
	return len(d.Items) == 0 && len(d.Pop) == 0 && len(d.Pairs) == 0 && len(d.UserImpressions) == 0
}

// Apply applies one event to a user's state and returns the new state and the global Delta.
// It is deterministic and does no I/O. It takes ownership of user: its slices and maps are
// updated in place and returned, so callers must use only the returned state afterwards.
// Events of one user must be applied in a single order (e.g. per Kafka partition); events of
// different users are independent.
//
// Rules:
//   - Impression: every distinct item in ev.Items gets +1 global impression and +1 on the
//     user's counter (fatigue).
//   - Watch / legacy: +1 watch (with percent, ended, watch time clamped to
//     [0, MaxWatchTimeSec]) and popularity weight
//     Quality(ev); the item moves to the front of the history (distinct) and into the watched
//     set; its impression counter is cleared (the user did watch it).
//   - Re-watch of an item already in the history: counted again in popularity and item stats,
//     never duplicated in history; it forms co-visitation pairs only when it was not already
//     within the last CovisWindow history items (those pairs were counted when it was watched).
//   - Co-visitation: the watched item a is paired with each history item b within CovisWindow
//     positions of where a lands in the history (older and, for a late event, newer ones),
//     weight w = q_a·q_b·CovisDistanceDecay^(d−1)·2^(−|t_a−t_b|/CovisGapHalfLife): the
//     earlier → later direction gets w, the reverse w·CovisBackwardWeight (no increment when
//     that is 0). Self-pairs are never counted.
//   - Invalid events (no user, no item, unknown kind) change nothing.
func Apply(cfg Config, user UserState, ev Interaction) (UserState, Delta) {
	var d Delta
	user = ApplyInto(cfg, user, ev, &d)
	return user, d
}

// ApplyInto is Apply writing the Delta into d, reusing d's slices (their previous contents
// are overwritten), so a consumer applying a batch allocates nothing per event in steady state.
func ApplyInto(cfg Config, user UserState, ev Interaction, d *Delta) UserState {
	*d = Delta{UserID: ev.UserID, TsMs: ev.TsMs, Items: d.Items[:0], Pop: d.Pop[:0], Pairs: d.Pairs[:0], UserImpressions: d.UserImpressions[:0]}
	if ev.UserID == "" {
		return user
	}
	switch ev.Kind {
	case KindImpression:
		applyImpression(cfg, &user, ev, d)
	case KindWatch, KindLegacy:
		if ev.ItemID == "" {
			return user
		}
		applyWatch(cfg, &user, ev, d)
	}
	return user
}

func applyImpression(cfg Config, u *UserState, ev Interaction, d *Delta) {
	if len(ev.Items) == 0 {
		return
	}
	if u.ImpressionCounts == nil && cfg.ImpressionMemory > 0 {
		u.ImpressionCounts = make(map[string]ImpressionStat, len(ev.Items))
	}
	impressionDelta(cfg, ev, d)
	for _, it := range d.UserImpressions {
		st := u.ImpressionCounts[it]
		st.Count++
		st.LastTsMs = max(st.LastTsMs, ev.TsMs)
		u.ImpressionCounts[it] = st
	}
	if cfg.ImpressionMemory > 0 && len(u.ImpressionCounts) > cfg.ImpressionTrimAt() {
		trimOldest(u.ImpressionCounts, cfg.ImpressionMemory, func(s ImpressionStat) int64 { return s.LastTsMs })
	}
}

// impressionDelta appends an impression's global increments to d: +1 impression for each
// distinct item, which is also each item whose per-user counter goes up.
func impressionDelta(cfg Config, ev Interaction, d *Delta) {
	for i, it := range ev.Items {
		if it == "" || containsBefore(ev.Items, i, it) {
			continue
		}
		d.Items = append(d.Items, ItemDelta{ItemID: it, Impressions: 1})
		if cfg.ImpressionMemory > 0 {
			d.UserImpressions = append(d.UserImpressions, it)
		}
	}
}

// ImpressionDeltaInto is ApplyInto for an impression event of a user whose counters the
// caller keeps itself (a store that merges them into the stored document): d gets the event's
// Delta, and d.UserImpressions names the counters ApplyInto would raise by one, to ev.TsMs at
// least. ApplyInto also trims the counters once they pass Config.ImpressionTrimAt entries;
// such a caller must not let them get there.
func ImpressionDeltaInto(cfg Config, ev Interaction, d *Delta) {
	*d = Delta{UserID: ev.UserID, TsMs: ev.TsMs, Items: d.Items[:0], Pop: d.Pop[:0], Pairs: d.Pairs[:0], UserImpressions: d.UserImpressions[:0]}
	if ev.UserID == "" || ev.Kind != KindImpression {
		return
	}
	impressionDelta(cfg, ev, d)
}

// containsBefore reports whether s[:i] contains v; impression lists are short (k ≤ 100), so a
// scan beats allocating a set.
func containsBefore(s []string, i int, v string) bool {
	for _, x := range s[:i] {
		if x == v {
			return true
		}
	}
	return false
}

func applyWatch(cfg Config, u *UserState, ev Interaction, d *Delta) {
	item := ev.ItemID
	q := Quality(ev)
	id := ItemDelta{ItemID: item, Watches: 1, WatchTimeSec: clampWatchTime(ev.WatchTimeSec)}
	if ev.PercentWatched != nil {
		id.SumPercent = clamp01(*ev.PercentWatched/100) * 100
		id.PercentCount = 1
	}
	if ev.Ended != nil && *ev.Ended {
		id.Ended = 1
	}
	d.Items = append(d.Items, id)
	d.Pop = append(d.Pop, PopIncrement{ItemID: item, Weight: q})

	// Position of a previous watch of the item, and where the new entry lands (by time).
	old := -1
	for i, h := range u.History {
		if h.ItemID == item {
			old = i
			break
		}
	}
	pos := 0
	for pos < len(u.History) && (u.History[pos].TsMs > ev.TsMs || pos == old) {
		pos++
	}
	// pos counts entries strictly newer than ev (skipping the old copy); adjust to an index in
	// the history without the old copy.
	if old >= 0 && old < pos {
		pos--
	}
	formPairs := cfg.CovisWindow > 0 && (old < 0 || old >= cfg.CovisWindow)
	if old >= 0 && u.History[old].TsMs > ev.TsMs {
		// A late duplicate of a watch we already have with a newer time: the history keeps the
		// newer entry and no pairs are formed again.
		formPairs = false
		pos = -1
	}

	if pos >= 0 {
		if old >= 0 {
			u.History = append(u.History[:old], u.History[old+1:]...)
		}
		if formPairs {
			d.Pairs = pairsFor(d.Pairs, cfg, u.History, pos, item, q, ev.TsMs)
		}
		u.History = insertAt(u.History, pos, HistoryEntry{ItemID: item, TsMs: ev.TsMs, Quality: q})
		if len(u.History) > cfg.HistorySize {
			u.History = u.History[:cfg.HistorySize]
		}
	}

	if u.Watched == nil {
		u.Watched = make(map[string]int64, 16)
	}
	if t, ok := u.Watched[item]; !ok || ev.TsMs > t {
		u.Watched[item] = ev.TsMs
	}
	if len(u.Watched) > cfg.WatchedCap+trimSlack(cfg.WatchedCap) {
		trimOldest(u.Watched, cfg.WatchedCap, func(t int64) int64 { return t })
	}
	delete(u.ImpressionCounts, item)
}

// pairsFor appends to out the co-visitation increments of item (landing at index pos of hist, which
// does not contain item) with its CovisWindow neighbours on each side.
func pairsFor(out []PairIncrement, cfg Config, hist []HistoryEntry, pos int, item string, q float64, ts int64) []PairIncrement {
	w := cfg.CovisWindow
	lo, hi := max(pos-w, 0), min(pos+w, len(hist))
	if hi <= lo {
		return out
	}
	gap := float64(cfg.CovisGapHalfLife.Milliseconds())
	// decay[d-1] = CovisDistanceDecay^(d-1), by multiplication instead of math.Pow per pair.
	var decayBuf [64]float64
	decay := decayBuf[:0]
	if w > len(decayBuf) {
		decay = make([]float64, 0, w)
	}
	for d, f := 0, 1.0; d < w; d++ {
		decay = append(decay, f)
		f *= cfg.CovisDistanceDecay
	}
	for j := lo; j < hi; j++ {
		h := hist[j]
		if h.ItemID == item {
			continue
		}
		dist := pos - j // newer entries: 1..w
		if j >= pos {
			dist = j - pos + 1 // older entries: 1..w
		}
		dt := math.Abs(float64(ts - h.TsMs))
		wt := q * h.Quality * decay[dist-1] * math.Exp2(-dt/gap)
		if !(wt > 0) {
			continue
		}
		// The direction that follows time order (earlier → later) gets the full weight, the
		// reverse CovisBackwardWeight of it: "watched after" predicts better than "before".
		fwd, back := wt, wt*cfg.CovisBackwardWeight
		if j < pos { // h is newer than item
			fwd, back = back, fwd
		}
		// fwd is h → item, back is item → h.
		if back > 0 {
			out = append(out, PairIncrement{From: item, To: h.ItemID, Weight: back})
		}
		if fwd > 0 {
			out = append(out, PairIncrement{From: h.ItemID, To: item, Weight: fwd})
		}
	}
	return out
}

func insertAt(h []HistoryEntry, i int, e HistoryEntry) []HistoryEntry {
	h = append(h, HistoryEntry{})
	copy(h[i+1:], h[i:])
	h[i] = e
	return h
}

// ImpressionTrimAt is the number of impression counters past which Apply trims a user's back
// to ImpressionMemory.
func (c Config) ImpressionTrimAt() int { return c.ImpressionMemory + trimSlack(c.ImpressionMemory) }

// trimSlack is how far a bounded per-user map may grow past its cap before it is trimmed back:
// a trim then runs once per max(cap/4, 16) new entries instead of on every event.
func trimSlack(limit int) int { return max(limit/4, 16) }

// trimOldest removes the oldest entries of m until keep remain; ties on time evict the larger
// key first, so the result does not depend on map iteration order. Selection is O(len(m)).
func trimOldest[V any](m map[string]V, keep int, ts func(V) int64) {
	all := make([]stamped, 0, len(m))
	for k, v := range m {
		all = append(all, stamped{k, ts(v)})
	}
	selectNewest(all, keep)
	for _, e := range all[keep:] {
		delete(m, e.k)
	}
}

type stamped struct {
	k string
	t int64
}

// newer orders newest first, then smaller key first.
func newer(a, b stamped) bool {
	if a.t != b.t {
		return a.t > b.t
	}
	return a.k < b.k
}

// selectNewest partially orders s so that s[:keep] holds its keep newest entries
// (quickselect; after too many rounds it falls back to sorting, so it is never quadratic).
func selectNewest(s []stamped, keep int) {
	if keep <= 0 || keep >= len(s) {
		return
	}
	lo, hi := 0, len(s)-1
	for rounds := 0; lo < hi; rounds++ {
		if rounds > 64 {
			slices.SortFunc(s[lo:hi+1], func(a, b stamped) int {
				if newer(a, b) {
					return -1
				}
				if newer(b, a) {
					return 1
				}
				return 0
			})
			return
		}
		// Median of three as pivot, moved to hi.
		mid := lo + (hi-lo)/2
		if newer(s[mid], s[lo]) {
			s[mid], s[lo] = s[lo], s[mid]
		}
		if newer(s[hi], s[lo]) {
			s[hi], s[lo] = s[lo], s[hi]
		}
		if newer(s[mid], s[hi]) {
			s[mid], s[hi] = s[hi], s[mid]
		}
		p := s[hi]
		i := lo
		for j := lo; j < hi; j++ {
			if newer(s[j], p) {
				s[i], s[j] = s[j], s[i]
				i++
			}
		}
		s[i], s[hi] = s[hi], s[i]
		// s[lo:i] are newer than the pivot, s[i] is the pivot, s[i+1:hi+1] older.
		switch {
		case i == keep || i == keep-1:
			return
		case i > keep:
			hi = i - 1
		default:
			lo = i + 1
		}
	}
}
