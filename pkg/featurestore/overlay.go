package featurestore

import (
	"fmt"
	"hash/crc32"
	"maps"
	"strconv"
	"strings"
	"unsafe"

	"recsys/pkg/features"
)

// A user's impression counters can be kept as a base document (column impressions, Redis
// field "i") and an overlay of what the batches since added to it (column
// impressions_recent, field "r"; Store.SetImpressionsOverlay). At a feed's steady state the
// counters hold ImpressionMemory (300) entries and every served list raises about 20 of them:
// rewriting the whole document after every list was most of what a list cost PostgreSQL
// (TOAST and WAL), Redis and the API's decode (docs/performance-log.md, sessions 19 and 20). With the
// overlay a list rewrites the overlay only, and the base is rewritten when the overlay is
// folded into it: when the counters may reach the trim (ImpressionTrimAt, where applying the
// events one by one would drop the oldest entries) or the overlay grows past a share of the
// base. Readers add the overlay to the base; the base rarely changes, so /reco keeps it
// decoded between requests.
//
// The overlay is `SSSSSSSSN:D`: S the CRC-32C of the base it was written against (8 hex
// digits), N the base's entry count, D the raises since in an impression counters form
// (keys increasing; the count is the raises' sum and the time their latest, so overlays
// add up). Readers ignore an overlay whose checksum is not the base's: a consumer of a
// release before the overlay rewrites the base alone, and its overlay is then stale.

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// baseSum is the checksum that binds an overlay to its base.
func baseSum(base string) uint32 {
	// The base is read, not kept: no copy of a ~10 kB document per request.
	return crc32.Checksum(unsafe.Slice(unsafe.StringData(base), len(base)), castagnoli)
}

// overlay is a parsed overlay.
type overlay struct {
	sum    uint32
	n      int    // entries of the base it was written against
	deltas string // raises since, in a counters form
}

// parseOverlay reads r; an empty r has no overlay (ok false, no error).
func parseOverlay(r string) (o overlay, ok bool, err error) {
	if r == "" {
		return o, false, nil
	}
	colon := strings.IndexByte(r, ':')
	if colon < 9 {
		return o, false, fmt.Errorf("impression overlay %.40q: no checksum and count", r)
	}
	sum, err1 := strconv.ParseUint(r[:8], 16, 32)
	n, err2 := strconv.Atoi(r[8:colon])
	if err1 != nil || err2 != nil || n < 0 {
		return o, false, fmt.Errorf("impression overlay %.40q: bad checksum or count", r)
	}
	return overlay{sum: uint32(sum), n: n, deltas: r[colon+1:]}, true, nil
}

// encodeOverlay writes the overlay of deltas (in a counters form) on a base of n entries.
func encodeOverlay(base string, n int, deltas string) string {
	b := make([]byte, 0, 16+len(deltas))
	b = fmt.Appendf(b, "%08x%d:", baseSum(base), n)
	return string(append(b, deltas...))
}

// addOverlay adds the raises of an overlay to counters m decoded from its base, and returns
// the keys it inserted. A raise of an item the base lacks starts from a zero counter, as
// features.ApplyInto does.
func addOverlay(m map[string]features.ImpressionStat, deltas map[string]features.ImpressionStat) (added []string) {
	for k, d := range deltas {
		st, ok := m[k]
		if !ok {
			added = append(added, k)
		}
		st.Count += d.Count
		st.LastTsMs = max(st.LastTsMs, d.LastTsMs)
		m[k] = st
	}
	return added
}

// overlayOf returns overlay r if it applies to the base whose checksum sum returns: none when
// r is empty or stale (sum is only called for a non-empty r).
func overlayOf(r string, sum func() uint32) (overlay, bool, error) {
	o, ok, err := parseOverlay(r)
	if !ok || err != nil {
		return o, false, err
	}
	if o.sum != sum() {
		return o, false, nil
	}
	return o, true, nil
}

// ImpressionsOverlay decodes the raises held in overlay r of a base whose checksum is sum
// (ImpressionsBaseSum): nil when there are none, or when r was written against another base.
// A counter is the base's with the overlay's added (counts summed, the latest time).
func ImpressionsOverlay(sum uint32, r string) (map[string]features.ImpressionStat, error) {
	o, ok, err := overlayOf(r, func() uint32 { return sum })
	if !ok || err != nil || o.deltas == "" {
		return nil, err
	}
	d, err := DecodeImpressions(o.deltas)
	if err != nil {
		return nil, fmt.Errorf("impression overlay: %w", err)
	}
	return d, nil
}

// ApplyImpressionsOverlay returns the counters of base (decoded as m, with checksum sum,
// see ImpressionsBaseSum) with overlay r added. m itself is returned when r adds nothing,
// otherwise a copy: m may be shared.
func ApplyImpressionsOverlay(m map[string]features.ImpressionStat, sum uint32, r string) (map[string]features.ImpressionStat, error) {
	d, err := ImpressionsOverlay(sum, r)
	if len(d) == 0 || err != nil {
		return m, err
	}
	out := maps.Clone(m)
	if out == nil {
		out = make(map[string]features.ImpressionStat, len(d))
	}
	addOverlay(out, d)
	return out, nil
}

// ImpressionsBaseSum is the checksum ApplyImpressionsOverlay needs of a base document.
func ImpressionsBaseSum(base string) uint32 { return baseSum(base) }

// decodeEffectiveImpressions decodes base with overlay r added; keys (with withKeys) are
// the base's keys increasing, and added the keys the overlay inserted (unordered).
func decodeEffectiveImpressions(base, r string, withKeys bool) (m map[string]features.ImpressionStat, keys, added []string, err error) {
	if m, keys, err = decodeImpressionsKeys(base, withKeys); err != nil {
		return nil, nil, nil, err
	}
	o, ok, err := overlayOf(r, func() uint32 { return baseSum(base) })
	if !ok || err != nil || o.deltas == "" {
		return m, keys, nil, err
	}
	d, err := DecodeImpressions(o.deltas)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("impression overlay: %w", err)
	}
	return m, keys, addOverlay(m, d), nil
}

// addRaises returns counters document deltas ("" for none) with the batch's raises inc (keys:
// its keys increasing) added, in form f, and its entry count.
func addRaises(deltas string, inc map[string]features.ImpressionStat, keys []string, f ImpressionsFormat) (string, int, error) {
	if deltas == "" {
		open, closing, _, _ := f.syntax("")
		deltas = string([]byte{open, closing})
	}
	if doc, n, ok := mergeImpressions(deltas, inc, keys, -1, f); ok {
		return doc, n, nil
	}
	m, err := DecodeImpressions(deltas) // another form, or not as the encoder writes it
	if err != nil {
		return "", 0, fmt.Errorf("impression overlay: %w", err)
	}
	addOverlay(m, inc)
	return f.encode(m, sortedKeys(m)), len(m), nil
}

// overlayLimit is how many entries an overlay on a base of n entries may reach before it is
// folded: at the cap (n ~ 300) the trim bound folds it first, every three or four lists;
// smaller bases fold at 64 entries or half their size, which keeps the rewritten bytes
// per list near their minimum (the overlay grows by a list's items every list, the base is
// rewritten once per fold) and the overlay that /reco decodes per request small.
func overlayLimit(n int) int { return max(64, n/2) }
