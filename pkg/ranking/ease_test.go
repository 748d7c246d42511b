package ranking

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

func TestInvertSPD(t *testing.T) {
	for _, workers := range []int{1, 3} {
		n := 300 // above the parallel threshold
		r := rand.New(rand.NewPCG(1, 2))
		// A symmetric matrix with a dominant positive diagonal is positive definite.
		a := make([]float64, n*n)
		for i := 0; i < n; i++ {
			for j := 0; j < i; j++ {
				v := r.Float64()
				a[i*n+j], a[j*n+i] = v, v
			}
			a[i*n+i] = float64(n)
		}
		inv := append([]float64(nil), a...)
		invertSPD(inv, n, workers)
		for i := 0; i < n; i += 37 {
			for j := 0; j < n; j += 41 {
				var s float64
				for k := 0; k < n; k++ {
					s += a[i*n+k] * inv[k*n+j]
				}
				want := 0.0
				if i == j {
					want = 1
				}
				if math.Abs(s-want) > 1e-9 {
					t.Fatalf("workers %d: (A·A⁻¹)[%d][%d] = %v, want %v", workers, i, j, s, want)
				}
			}
		}
	}
}

func TestTrainEASE(t *testing.T) {
	// Two disjoint groups of items that users consume together: each item's learned
	// neighbours are its own group, never the other.
	var users [][]string
	for u := 0; u < 60; u++ {
		g := u % 2
		var its []string
		for i := 0; i < 4; i++ {
			if (u+i)%5 != 0 { // everyone misses some item of the group
				its = append(its, fmt.Sprintf("g%d-%d", g, i))
			}
		}
		users = append(users, its)
	}
	m, err := TrainEASE(users, EASEOptions{Lambda: 1, MaxItems: 100, Neighbours: 10, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	if m.Len() != 8 {
		t.Fatalf("model has %d items, want 8", m.Len())
	}
	for g := 0; g < 2; g++ {
		for i := 0; i < 4; i++ {
			id := fmt.Sprintf("g%d-%d", g, i)
			ns := m.Neighbours(id)
			if len(ns) != 3 {
				t.Fatalf("%s neighbours %+v, want its 3 group mates", id, ns)
			}
			for _, n := range ns {
				if n.ItemID[:2] != id[:2] || n.ItemID == id || !(n.Score > 0) {
					t.Fatalf("%s neighbour %+v", id, n)
				}
			}
		}
	}
	// MaxItems keeps the most frequent items only.
	m, _ = TrainEASE(append(users, []string{"rare", "g0-1"}), EASEOptions{Lambda: 1, MaxItems: 8, Neighbours: 10, Workers: 1})
	if m.Neighbours("rare") != nil {
		t.Fatal("rare item beyond MaxItems must not be modelled")
	}
	sim := m.Similar([]HistoryEntry{{ItemID: "g0-1"}, {ItemID: "g1-1"}, {ItemID: "nope"}}, 1, 2)
	if len(sim) != 1 || len(sim["g0-1"]) != 2 {
		t.Fatalf("Similar = %+v, want g0-1's top 2 only", sim)
	}
	if _, err := TrainEASE(users, EASEOptions{}); err == nil {
		t.Fatal("zero options accepted")
	}
}
