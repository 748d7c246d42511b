package ranking

import "hash/maphash"

// idTable maps item ids to int32 values for one Rank call. Rank looks up or inserts every
// entry of every candidate list, and with a Go map that was half of its time: two hashes per
// new candidate and a clear proportional to the map's capacity. This table is open
// addressing with linear probing (one hash per lookup-or-insert) and is emptied in O(1) by
// bumping a generation stamp.
type idTable struct {
	seed maphash.Seed
	keys []string
	vals []int32
	gens []uint32 // a slot is used when gens[i] == gen
	gen  uint32
	n    int
}

// reset empties the table and sizes it for about hint ids.
func (t *idTable) reset(hint int) {
	size := 64
	for size < 2*hint {
		size *= 2
	}
	if size > len(t.keys) {
		t.alloc(size)
		return
	}
	t.n = 0
	t.gen++
	if t.gen == 0 { // wrapped: every stamp is stale, but 0 must not look current
		clear(t.gens)
		t.gen = 1
	}
}

func (t *idTable) alloc(size int) {
	if t.seed == (maphash.Seed{}) {
		t.seed = maphash.MakeSeed()
	}
	t.keys, t.vals, t.gens = make([]string, size), make([]int32, size), make([]uint32, size)
	t.gen, t.n = 1, 0
}

// probe returns the slot of id: where it is (found) or where it would be inserted.
func (t *idTable) probe(id string) (slot int, found bool) {
	mask := len(t.keys) - 1
	for i := int(maphash.String(t.seed, id)) & mask; ; i = (i + 1) & mask {
		if t.gens[i] != t.gen {
			return i, false
		}
		if t.keys[i] == id {
			return i, true
		}
	}
}

// insertAt stores id at a slot probe returned as not found; the table grows when half full.
func (t *idTable) insertAt(slot int, id string, v int32) {
	if 2*(t.n+1) > len(t.keys) {
		t.grow()
		slot, _ = t.probe(id)
	}
	t.keys[slot], t.vals[slot], t.gens[slot] = id, v, t.gen
	t.n++
}

// put sets id to v.
func (t *idTable) put(id string, v int32) {
	if slot, found := t.probe(id); found {
		t.vals[slot] = v
	} else {
		t.insertAt(slot, id, v)
	}
}

// get returns the value of id.
func (t *idTable) get(id string) (int32, bool) {
	if slot, found := t.probe(id); found {
		return t.vals[slot], true
	}
	return 0, false
}

func (t *idTable) grow() {
	keys, vals, gens, gen := t.keys, t.vals, t.gens, t.gen
	t.alloc(2 * len(keys))
	for i := range keys {
		if gens[i] == gen {
			slot, _ := t.probe(keys[i])
			t.keys[slot], t.vals[slot], t.gens[slot] = keys[i], vals[i], t.gen
			t.n++
		}
	}
}
