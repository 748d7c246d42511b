package ranking

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestIDTableMatchesMap: random puts and gets over several resets (growth, reuse, stale
// generations) agree with a Go map.
func TestIDTableMatchesMap(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	var tab idTable
	for round := 0; round < 200; round++ {
		hint := r.IntN(300)
		tab.reset(hint)
		ref := map[string]int32{}
		for op := 0; op < r.IntN(2000); op++ {
			id := fmt.Sprintf("item-%d", r.IntN(1500))
			if r.IntN(3) == 0 {
				v := int32(r.IntN(1000)) - 1
				tab.put(id, v)
				ref[id] = v
				continue
			}
			got, ok := tab.get(id)
			want, wok := ref[id]
			if ok != wok || got != want {
				t.Fatalf("round %d: get(%s) = %d,%v want %d,%v", round, id, got, ok, want, wok)
			}
		}
		if tab.n != len(ref) {
			t.Fatalf("round %d: %d entries, want %d", round, tab.n, len(ref))
		}
	}
	// A wrapped generation counter must not resurrect old entries.
	tab.reset(10)
	tab.put("old", 7)
	tab.gen = maxGen
	tab.reset(10)
	if _, ok := tab.get("old"); ok {
		t.Fatal("stale entry visible after the generation wrapped")
	}
}

// TestIDTableHashCollisions: ids whose hashes collide fully (same slot, same tag) or only in
// the slot bits stay distinct; the tag only short-cuts the key comparison.
func TestIDTableHashCollisions(t *testing.T) {
	var tab idTable
	tab.reset(8)
	const same = uint64(0xbeef)<<48 | 5
	cases := []struct {
		id string
		h  uint64
		v  int32
	}{
		{"item-0001", same, 1},
		{"item-0002", same, 2},                   // same slot and tag
		{"item-0003", uint64(0xbeee)<<48 | 5, 3}, // same slot, other tag
		{"item-0004", same + 1, 4},               // same tag, next slot (taken by a probe above)
		{"x", same, 5},                           // another length
	}
	for _, c := range cases {
		tab.putHash(c.id, c.h, c.v)
	}
	for _, c := range cases {
		if v, ok := tab.getHash(c.id, c.h); !ok || v != c.v {
			t.Fatalf("getHash(%s) = %d,%v want %d", c.id, v, ok, c.v)
		}
	}
	if _, ok := tab.getHash("item-0005", same); ok {
		t.Fatal("an absent id with a colliding hash was found")
	}
	if tab.n != len(cases) {
		t.Fatalf("%d entries, want %d", tab.n, len(cases))
	}
}
