package featurestore

import (
	"math"
	"strconv"
	"strings"

	"recsys/pkg/features"
)

// A user with only impressions in a batch (every served list's autolog) does not have its
// impression counters decoded into a map, raised, sorted and encoded again: that was three
// quarters of the consumer's apply time with the autolog running, for a document that keeps
// growing to features.Config.ImpressionMemory entries (~15 kB at 300). The batch's raises are
// summed per item (lazyImpressions) and merged into the stored document in one pass, copying
// the entries they do not touch (mergeImpressions). The result is byte for byte what Apply and
// encodeImpressions give; where the merge cannot promise that (a document not in
// encodeImpressions' form, or counters that reach the trim), the user's events are replayed
// through Apply instead.

// lazyImpressions are one user's impression counters as the batch raises them, not yet merged
// into the stored document.
type lazyImpressions struct {
	stored string                             // the base document as stored ("": not read)
	recent string                             // the overlay as stored (see overlay.go)
	inc    map[string]features.ImpressionStat // per item: raises, and the latest event time
	evs    []int                              // the user's events in the batch (Batch.Events indices)
}

// add records event i, whose counter raises features.ImpressionDeltaInto listed in items.
func (l *lazyImpressions) add(i int, tsMs int64, items []string) {
	l.evs = append(l.evs, i)
	if len(items) == 0 {
		return
	}
	if l.inc == nil {
		l.inc = make(map[string]features.ImpressionStat, len(items))
	}
	for _, it := range items {
		st, ok := l.inc[it]
		if !ok {
			st.LastTsMs = math.MinInt64
		}
		st.Count++
		st.LastTsMs = max(st.LastTsMs, tsMs)
		l.inc[it] = st
	}
}

// raise adds the batch's raises to the overlay alone (overlay.go), without reading or
// rewriting the base. ok is false when the user has no overlay yet, or when the counters may
// reach the trim or the overlay its limit: fold then rewrites the base. The overlay is not
// checked against the base, which is not read: a stale one (which every reader ignores) only
// grows until the next fold drops it.
func (l *lazyImpressions) raise(cfg features.Config, f ImpressionsFormat) (recent string, ok bool, err error) {
	o, has, err := parseOverlay(l.recent)
	if !has || err != nil {
		return "", false, err
	}
	deltas, n, err := addRaises(o.deltas, l.inc, sortedKeys(l.inc), f)
	if err != nil {
		return "", false, err
	}
	// The counters hold at most the base's entries and the overlay's: below the trim,
	// applying the events one by one trims nothing, so adding them later is exact.
	if n > overlayLimit(o.n) || (cfg.ImpressionMemory > 0 && o.n+n > cfg.ImpressionTrimAt()) {
		return "", false, nil
	}
	return l.recent[:len(l.recent)-len(o.deltas)] + deltas, true, nil
}

// fold returns the counters after the batch, in format f, as a new base (the stored one,
// l.stored, with the overlay and the batch added) and, with useOverlay, an empty overlay on
// it; without, the overlay is cleared ("").
func (l *lazyImpressions) fold(cfg features.Config, b *Batch, f ImpressionsFormat, useOverlay bool) (base, recent string, err error) {
	o, has, err := overlayOf(l.recent, func() uint32 { return baseSum(l.stored) })
	if err != nil {
		return "", "", err
	}
	stored := l.stored
	if has && o.deltas != "" {
		m, _, _, err := decodeEffectiveImpressions(l.stored, l.recent, false)
		if err != nil {
			return "", "", err
		}
		stored = f.encode(m, sortedKeys(m))
	}
	doc, n, err := l.document(cfg, b, f, stored)
	if err != nil || !useOverlay {
		return doc, "", err
	}
	return doc, encodeOverlay(doc, n, ""), nil
}

// document returns the counters stored (a whole document) after the batch, encoded in
// format f, and their number.
func (l *lazyImpressions) document(cfg features.Config, b *Batch, f ImpressionsFormat, stored string) (string, int, error) {
	trimAt := -1
	if cfg.ImpressionMemory > 0 {
		trimAt = cfg.ImpressionTrimAt()
	}
	if doc, n, ok := mergeImpressions(stored, l.inc, sortedKeys(l.inc), trimAt, f); ok {
		return doc, n, nil
	}
	m, err := DecodeImpressions(stored)
	if err != nil {
		return "", 0, err
	}
	st := features.UserState{ImpressionCounts: m}
	var d features.Delta
	for _, i := range l.evs {
		st = features.ApplyInto(cfg, st, b.Events[i].Interaction, &d)
	}
	return f.encode(st.ImpressionCounts, sortedKeys(st.ImpressionCounts)), len(st.ImpressionCounts), nil
}

// mergeImpressions adds inc (keys: its keys, increasing) to the counters document stored, in
// one pass, in format f, and returns the result's entry count. ok is false, and nothing is
// promised, unless stored is exactly what f's encoder writes and the result keeps at most
// trimAt entries (-1: no bound), so that no trim would have happened on the way.
func mergeImpressions(stored string, inc map[string]features.ImpressionStat, keys []string, trimAt int, f ImpressionsFormat) (doc string, entries int, ok bool) {
	open, closing, parse, _ := f.syntax(stored)
	if len(stored) < 2 || stored[0] != open || stored[len(stored)-1] != closing {
		return "", 0, false
	}
	b := make([]byte, 0, len(stored)+len(keys)*56)
	b = append(b, open)
	n, j := 0, 0
	entry := func(k string, st features.ImpressionStat) {
		if n > 0 {
			b = append(b, ',')
		}
		n++
		if f == ImpressionsArray {
			b = appendArrayEntry(b, k, st)
		} else {
			b = appendObjectEntry(b, k, st)
		}
	}
	fresh := func(k string) {
		st := inc[k]
		entry(k, features.ImpressionStat{Count: st.Count, LastTsMs: max(0, st.LastTsMs)})
	}
	s, prev, read := stored[1:len(stored)-1], "", false
	for len(s) > 0 {
		if read {
			if s[0] != ',' {
				return "", 0, false
			}
			s = s[1:]
		}
		key, count, ts, rest, ok := parse(s)
		if !ok || (read && key <= prev) {
			return "", 0, false
		}
		raw := s[:len(s)-len(rest)]
		s, prev, read = rest, key, true
		for j < len(keys) && keys[j] < key {
			fresh(keys[j])
			j++
		}
		if j < len(keys) && keys[j] == key {
			st := inc[key]
			entry(key, features.ImpressionStat{Count: count + st.Count, LastTsMs: max(ts, st.LastTsMs)})
			j++
			continue
		}
		if n > 0 {
			b = append(b, ',')
		}
		n++
		b = append(b, raw...)
	}
	for ; j < len(keys); j++ {
		fresh(keys[j])
	}
	if trimAt >= 0 && n > trimAt {
		return "", 0, false
	}
	return string(append(b, closing)), n, true
}

// decodeCanonical decodes a counters document in the exact form f's encoder writes (keys
// increasing), entry by entry without the general scanner: a third less time for a user at
// the 300-entry cap, decoded by /reco on nearly every request (the counters change after
// every served list). ok is false for any other form, which the general decoders read.
func decodeCanonical(s string, withKeys bool, f ImpressionsFormat) (m map[string]features.ImpressionStat, keys []string, ok bool) {
	open, closing, parse, n := f.syntax(s)
	if len(s) < 2 || s[0] != open || s[len(s)-1] != closing {
		return nil, nil, false
	}
	m = make(map[string]features.ImpressionStat, n)
	if withKeys {
		keys = make([]string, 0, n)
	}
	s, prev := s[1:len(s)-1], ""
	for i := 0; len(s) > 0; i++ {
		if i > 0 {
			if s[0] != ',' {
				return nil, nil, false
			}
			s = s[1:]
		}
		key, count, ts, rest, ok := parse(s)
		if !ok || (i > 0 && key <= prev) {
			return nil, nil, false
		}
		m[key] = features.ImpressionStat{Count: count, LastTsMs: ts}
		if withKeys {
			keys = append(keys, key)
		}
		s, prev = rest, key
	}
	return m, keys, true
}

// canonicalImpression reads one entry `"key":{"count":N,"last_ts_ms":T}` at the start of s,
// as encodeImpressions writes it (a key it writes unescaped, integers as strconv formats them).
func canonicalImpression(s string) (key string, count, ts int64, rest string, ok bool) {
	if key, s, ok = canonicalKey(s); !ok {
		return
	}
	var cut bool
	if s, cut = strings.CutPrefix(s, `:{"count":`); !cut {
		return "", 0, 0, "", false
	}
	if count, s, ok = canonicalInt(s); !ok {
		return
	}
	if s, cut = strings.CutPrefix(s, `,"last_ts_ms":`); !cut {
		return "", 0, 0, "", false
	}
	if ts, s, ok = canonicalInt(s); !ok {
		return
	}
	if s, cut = strings.CutPrefix(s, "}"); !cut {
		return "", 0, 0, "", false
	}
	return key, count, ts, s, true
}

// canonicalInt reads an integer at the start of s as strconv.AppendInt writes it.
func canonicalInt(s string) (v int64, rest string, ok bool) {
	i := 0
	if i < len(s) && s[i] == '-' {
		i++
	}
	d := i
	var u uint64
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		u = u*10 + uint64(s[i]-'0')
		i++
	}
	switch {
	case i == d, s[d] == '0' && (i-d > 1 || d > 0): // no digits, a leading zero, "-0"
		return 0, "", false
	case i-d > 18: // may have overflowed: let strconv decide
		x, err := strconv.ParseInt(s[:i], 10, 64)
		return x, s[i:], err == nil
	case d > 0:
		return -int64(u), s[i:], true
	}
	return int64(u), s[i:], true
}
