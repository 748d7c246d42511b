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
	tab.gen = ^uint32(0)
	tab.reset(10)
	if _, ok := tab.get("old"); ok {
		t.Fatal("stale entry visible after the generation wrapped")
	}
}
