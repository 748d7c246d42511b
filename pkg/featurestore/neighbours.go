package featurestore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"recsys/pkg/ranking"
)

// An item's co-visitation list is ONE row of feature_neighbours (migration 0009): its
// neighbours in one bytea, sorted by stored strength descending, then neighbour id ascending.
// Each entry is
//
//	uint32 big-endian length of the id, the id's bytes, float64 big-endian (IEEE 754 bits)
//
// which is what PostgreSQL's int4send(octet_length(id)) || convert_to(id, 'UTF8') ||
// float8send(weight) produce, so the migrations convert to and from the pair rows in SQL.
// A blob rather than text[]/float8[] arrays: PostgreSQL stores it without parsing a single
// element, and a whole batch of lists travels as one bytea[] parameter (arrays of arrays
// would have to be rectangular).

// errNeighbourBlob reports a list that does not decode.
var errNeighbourBlob = errors.New("corrupt neighbour list")

// appendNeighbours appends the encoding of l to dst.
func appendNeighbours(dst []byte, l []scoredRow) []byte {
	for _, x := range l {
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(x.id)))
		dst = append(dst, x.id...)
		dst = binary.BigEndian.AppendUint64(dst, math.Float64bits(x.w))
	}
	return dst
}

// decodeNeighbours decodes a list, appending to dst. A list that is not in reader order
// (possible only after a rebase underflowed strengths to equal values) is sorted.
func decodeNeighbours(dst []scoredRow, b []byte) ([]scoredRow, error) {
	start := len(dst)
	err := walkNeighbours(b, func(id string, w float64) { dst = append(dst, scoredRow{id: id, w: w}) })
	if err != nil {
		return dst, err
	}
	if l := dst[start:]; !slices.IsSortedFunc(l, cmpScored) {
		slices.SortFunc(l, cmpScored)
	}
	return dst, nil
}

// walkNeighbours calls f for each entry of a list, in stored order. The ids share one
// string (one allocation per list rather than per neighbour: a batch reads thousands).
func walkNeighbours(b []byte, f func(id string, w float64)) error {
	all := string(b)
	for off := 0; off < len(all); {
		if len(all)-off < 4 {
			return errNeighbourBlob
		}
		n := int(binary.BigEndian.Uint32(b[off:]))
		if n < 0 || n > len(all)-off-12 {
			return errNeighbourBlob
		}
		f(all[off+4:off+4+n], math.Float64frombits(binary.BigEndian.Uint64(b[off+4+n:])))
		off += 12 + n
	}
	return nil
}

// DecodeNeighbours decodes a feature_neighbours.neighbours value (for tests and tools
// reading the table directly), strongest first.
func DecodeNeighbours(b []byte) ([]ranking.Scored, error) {
	l, err := decodeNeighbours(nil, b)
	if err != nil {
		return nil, err
	}
	out := make([]ranking.Scored, len(l))
	for i, x := range l {
		out[i] = ranking.Scored{ItemID: x.id, Score: x.w}
	}
	return out, nil
}

// cmpScored is reader order: strength descending, then id ascending (byte order, as the "C"
// collation, Redis ZSET ties and features.MemoryStore).
func cmpScored(a, b scoredRow) int {
	switch {
	case a.w > b.w:
		return -1
	case a.w < b.w:
		return 1
	}
	return strings.Compare(a.id, b.id)
}

// nbList is one item's list while a batch merges its increments into it.
type nbList struct {
	l []nbEntry
	// hs[i] is ranking.HashID(l[i].id). add scans it before comparing ids: kept apart from
	// the entries, a full list's 200 hashes are 25 cache lines instead of 125
	// (BenchmarkMergeFullLists).
	hs      []uint64
	origLen int
	version int64    // as read (and locked); the batch writes version+1
	exists  bool     // the row was read (and locked)
	removed []string // neighbours trimmed away by the batch (maybe re-added later)
}

// nbEntry is a neighbour and whether the batch incremented it (it goes to Redis).
type nbEntry struct {
	scoredRow
	touched bool
}

// load sets the list from its stored blob.
func (n *nbList) load(b []byte) error {
	// Sized from a first pass over the lengths, with room for the batch's new neighbours:
	// appending from empty was the merge's largest share of allocation and copying (profile
	// of ApplyFromPrefilledTopic over 400,000 events, where the lists are full).
	count := 0
	for off := 0; off+4 <= len(b); count++ {
		off += 12 + int(binary.BigEndian.Uint32(b[off:]))
	}
	n.l = slices.Grow(n.l[:0], count+count/2+8)
	if err := walkNeighbours(b, func(id string, w float64) {
		n.l = append(n.l, nbEntry{scoredRow: scoredRow{id: id, w: w}})
	}); err != nil {
		return err
	}
	if !slices.IsSortedFunc(n.l, cmpEntry) {
		slices.SortFunc(n.l, cmpEntry)
	}
	n.hs = slices.Grow(n.hs[:0], cap(n.l))
	for _, x := range n.l {
		n.hs = append(n.hs, ranking.HashID(x.id))
	}
	n.origLen, n.exists = len(n.l), true
	return nil
}

func cmpEntry(a, b nbEntry) int { return cmpScored(a.scoredRow, b.scoredRow) }

// encodedLen is the length of the list's encoding.
func (n *nbList) encodedLen() int {
	size := 12 * len(n.l)
	for i := range n.l {
		size += len(n.l[i].id)
	}
	return size
}

// appendTo appends the list's encoding to dst.
func (n *nbList) appendTo(dst []byte) []byte {
	for _, x := range n.l {
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(x.id)))
		dst = append(dst, x.id...)
		dst = binary.BigEndian.AppendUint64(dst, math.Float64bits(x.w))
	}
	return dst
}

// add increments neighbour id by v and keeps the list in reader order, as
// features.MemoryStore does: strengths only grow, so the entry bubbles up.
//
// The scan compares hashes first: a watch-heavy batch merges every pair into lists of up to
// twice the kept neighbours, and comparing ids of equal length was most of the merge.
func (n *nbList) add(id string, v float64) {
	h := ranking.HashID(id)
	i := -1
	for j, x := range n.hs {
		if x == h && n.l[j].id == id {
			i = j
			break
		}
	}
	if i >= 0 {
		n.l[i].w += v
	} else {
		n.l = append(n.l, nbEntry{scoredRow: scoredRow{id: id, w: v}})
		n.hs = append(n.hs, h)
		i = len(n.l) - 1
	}
	n.l[i].touched = true
	e := n.l[i]
	if i == 0 || cmpEntry(e, n.l[i-1]) >= 0 {
		return // it keeps its place
	}
	// n.l[:i] is in reader order and the ids are distinct: the entry goes before the first
	// one it precedes, found by bisection (cmpEntry's order, written out: through the generic
	// search's comparator it cost twice as much). A walk from i compared it with every entry
	// it passed, and a popular neighbour of a full list passes dozens.
	j, hi := 0, i-1
	for j < hi {
		mid := int(uint(j+hi) >> 1)
		if x := &n.l[mid]; e.w > x.w || (e.w == x.w && e.id < x.id) {
			hi = mid
		} else {
			j = mid + 1
		}
	}
	copy(n.l[j+1:i+1], n.l[j:i])
	n.l[j] = e
	copy(n.hs[j+1:i+1], n.hs[j:i])
	n.hs[j] = h
}

// trim keeps the top keep neighbours.
func (n *nbList) trim(keep int) {
	if len(n.l) <= keep {
		return
	}
	for _, x := range n.l[keep:] {
		n.removed = append(n.removed, x.id)
	}
	n.l, n.hs = n.l[:keep], n.hs[:keep]
}

// redis returns the list's changes for the Redis mirror: the incremented neighbours, with
// their absolute strengths, and the neighbours the batch cut, including any incremented again
// after the cut: their strength started over, lower than the mirror's.
func (n *nbList) redis() (add []scoredRow, rem []string) {
	for _, x := range n.l {
		if x.touched {
			add = append(add, x.scoredRow)
		}
	}
	if len(n.removed) == 0 {
		return add, nil
	}
	slices.Sort(n.removed)
	return add, slices.Compact(n.removed)
}

// pairInc is one forward-decayed co-visitation increment, in event order.
type pairInc struct {
	from, to string
	w        float64
	list     *nbList // from's list
}

// mergePairs applies the increments to the lists in order, trimming a list back to the top
// m whenever it passes 2m (the result is independent of batch boundaries, like
// features.MemoryStore).
func mergePairs(incs []pairInc, m int) error {
	for _, p := range incs {
		n := p.list
		if n == nil {
			return fmt.Errorf("neighbour list of %q not loaded", p.from)
		}
		n.add(p.to, p.w)
		if len(n.l) > 2*m {
			n.trim(m)
		}
	}
	return nil
}
