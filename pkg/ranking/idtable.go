package ranking

import "hash/maphash"

// idTable maps item ids to int32 values for one Rank call. Rank looks up or inserts every
// entry of every candidate list, and with a Go map that was half of its time: two hashes per
// new candidate and a clear proportional to the map's capacity. This table is open
// addressing with linear probing (one hash per lookup-or-insert) and is emptied in O(1) by
// bumping a generation stamp. A slot keeps its key, value and stamp together: a probe touches
// one cache line, not three arrays (the table is cold at every request: ranking is
// memory-bound).
type idTable struct {
	slots []idSlot
	gen   uint32
	n     int
}

type idSlot struct {
	key string
	val int32
	gen uint32 // the slot is used when gen == idTable.gen
}

// reset empties the table and sizes it for about hint ids.
func (t *idTable) reset(hint int) {
	size := 64
	for size < 2*hint {
		size *= 2
	}
	if size > len(t.slots) {
		t.alloc(size)
		return
	}
	t.n = 0
	t.gen++
	if t.gen == 0 { // wrapped: every stamp is stale, but 0 must not look current
		for i := range t.slots {
			t.slots[i].gen = 0
		}
		t.gen = 1
	}
}

func (t *idTable) alloc(size int) {
	t.slots = make([]idSlot, size)
	t.gen, t.n = 1, 0
}

// idSeed seeds the hash of every table, so that a hash computed once when a list is loaded
// (PrepareList) is valid in every Rank call of the process.
var idSeed = maphash.MakeSeed()

func hashID(id string) uint64 { return maphash.String(idSeed, id) }

// probe returns the slot of id: where it is (found) or where it would be inserted.
func (t *idTable) probe(id string) (slot int, found bool) {
	return t.probeHash(id, hashID(id))
}

// probeHash is probe with the hash of id given (hashID(id)).
func (t *idTable) probeHash(id string, h uint64) (slot int, found bool) {
	mask := len(t.slots) - 1
	for i := int(h) & mask; ; i = (i + 1) & mask {
		sl := &t.slots[i]
		if sl.gen != t.gen {
			return i, false
		}
		if sl.key == id {
			return i, true
		}
	}
}

// insertAt stores id at a slot probe returned as not found; the table grows when half full.
func (t *idTable) insertAt(slot int, id string, v int32) {
	if 2*(t.n+1) > len(t.slots) {
		t.grow()
		slot, _ = t.probe(id)
	}
	t.slots[slot] = idSlot{key: id, val: v, gen: t.gen}
	t.n++
}

// put sets id to v.
func (t *idTable) put(id string, v int32) {
	if slot, found := t.probe(id); found {
		t.slots[slot].val = v
	} else {
		t.insertAt(slot, id, v)
	}
}

// get returns the value of id.
func (t *idTable) get(id string) (int32, bool) {
	if slot, found := t.probe(id); found {
		return t.slots[slot].val, true
	}
	return 0, false
}

func (t *idTable) grow() {
	old, gen := t.slots, t.gen
	t.alloc(2 * len(old))
	for i := range old {
		if old[i].gen == gen {
			slot, _ := t.probe(old[i].key)
			t.slots[slot] = idSlot{key: old[i].key, val: old[i].val, gen: t.gen}
			t.n++
		}
	}
}
