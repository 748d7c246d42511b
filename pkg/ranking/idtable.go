package ranking

import "hash/maphash"

// idTable maps item ids to int32 values for one Rank call. Rank looks up or inserts every
// entry of every candidate list, and with a Go map that was half of its time: two hashes per
// new candidate and a clear proportional to the map's capacity. This table is open
// addressing with linear probing (one hash per lookup-or-insert) and is emptied in O(1) by
// bumping a generation stamp. A slot keeps its key, value, stamp and a tag of the key's hash
// together in 24 bytes: a probe touches one cache line, not several arrays (the table is cold
// at every request: ranking is memory-bound). The tag is compared before the key: ids of one
// catalogue mostly have the same length, so a probe passing a slot of another id would
// otherwise compare their bytes (reading the other id's string, often another cache miss).
type idTable struct {
	slots []idSlot
	gen   uint32 // 1..maxGen
	n     int
}

type idSlot struct {
	key string
	val int32
	// meta is the slot's generation (high 16 bits; the slot is used when it equals
	// idTable.gen) and the top 16 bits of the key's hash (low 16 bits).
	meta uint32
}

// maxGen is the last generation before the stamps wrap (16 bits of idSlot.meta).
const maxGen = 1<<16 - 1

func slotMeta(gen uint32, h uint64) uint32 { return gen<<16 | uint32(h>>48) }

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
	if t.gen > maxGen { // wrapped: every stamp is stale, but 0 must not look current
		for i := range t.slots {
			t.slots[i].meta = 0
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

// HashID is an item id's hash for this process: the id tables' and, outside ranking, any
// scan that compares hashes before ids.
func HashID(id string) uint64 { return maphash.String(idSeed, id) }

// probeHash returns the slot of id, whose hash is h (HashID(id)): where it is (found) or
// where it would be inserted.
func (t *idTable) probeHash(id string, h uint64) (slot int, found bool) {
	mask := len(t.slots) - 1
	want := slotMeta(t.gen, h)
	for i := int(h) & mask; ; i = (i + 1) & mask {
		sl := &t.slots[i]
		if sl.meta>>16 != t.gen {
			return i, false
		}
		if sl.meta == want && sl.key == id {
			return i, true
		}
	}
}

// insertAt stores id, whose hash is h, at a slot probeHash returned as not found; the table
// grows when half full.
func (t *idTable) insertAt(slot int, id string, h uint64, v int32) {
	if 2*(t.n+1) > len(t.slots) {
		t.grow()
		slot, _ = t.probeHash(id, h)
	}
	t.slots[slot] = idSlot{key: id, val: v, meta: slotMeta(t.gen, h)}
	t.n++
}

// put sets id to v.
func (t *idTable) put(id string, v int32) { t.putHash(id, HashID(id), v) }

// putHash is put with the hash of id given.
func (t *idTable) putHash(id string, h uint64, v int32) {
	if slot, found := t.probeHash(id, h); found {
		t.slots[slot].val = v
	} else {
		t.insertAt(slot, id, h, v)
	}
}

// get returns the value of id.
func (t *idTable) get(id string) (int32, bool) { return t.getHash(id, HashID(id)) }

// getHash is get with the hash of id given.
func (t *idTable) getHash(id string, h uint64) (int32, bool) {
	if slot, found := t.probeHash(id, h); found {
		return t.slots[slot].val, true
	}
	return 0, false
}

func (t *idTable) grow() {
	old, gen := t.slots, t.gen
	t.alloc(2 * len(old))
	for i := range old {
		if old[i].meta>>16 == gen {
			h := HashID(old[i].key)
			slot, _ := t.probeHash(old[i].key, h)
			t.slots[slot] = idSlot{key: old[i].key, val: old[i].val, meta: slotMeta(t.gen, h)}
			t.n++
		}
	}
}
