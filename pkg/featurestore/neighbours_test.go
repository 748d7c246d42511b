package featurestore

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"recsys/pkg/features"
	"recsys/pkg/testutil"
)

func TestNeighbourBlobRoundTrip(t *testing.T) {
	cases := []struct {
		name string
		l    []scoredRow
	}{
		{"empty", nil},
		{"one", []scoredRow{{id: "a", w: 1.5}}},
		{"ordered with ties", []scoredRow{{id: "z", w: 3e150}, {id: "a", w: 1}, {id: "b", w: 1}, {id: "", w: 5e-320}}},
		{"utf8 and quotes", []scoredRow{{id: `é"x,{}`, w: 2}, {id: "item-0001", w: 0}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := decodeNeighbours(nil, appendNeighbours(nil, c.l))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, c.l) {
				t.Errorf("round trip %v, want %v", got, c.l)
			}
		})
	}
	// Out of order (only after a rebase underflow) is sorted on read.
	got, err := decodeNeighbours(nil, appendNeighbours(nil, []scoredRow{{id: "b", w: 1}, {id: "a", w: 2}}))
	if err != nil || got[0].id != "a" {
		t.Errorf("unsorted list read as %v, %v", got, err)
	}
	full := appendNeighbours(nil, []scoredRow{{id: "abc", w: 1}})
	for _, bad := range [][]byte{full[:3], full[:len(full)-1], append(slices.Clone(full), 0, 0, 0, 9)} {
		if _, err := decodeNeighbours(nil, bad); err == nil {
			t.Errorf("corrupt blob %x decoded", bad)
		}
	}
}

// mergePairs must give features.MemoryStore's lists, trims included, whatever the batch
// boundaries.
func TestMergePairsMatchesMemoryStore(t *testing.T) {
	// Short lists trim often; long ones move entries far (the bisection in add).
	for _, tc := range []struct{ m, tos, incs int }{{3, 25, 3000}, {40, 300, 30000}} {
		t.Run(fmt.Sprintf("m=%d", tc.m), func(t *testing.T) { testMergePairsMatchesMemoryStore(t, tc.m, tc.tos, tc.incs) })
	}
}

func testMergePairsMatchesMemoryStore(t *testing.T, m, tos, n int) {
	cfg := features.DefaultConfig()
	cfg.NeighboursPerItem = m
	mem := features.NewMemoryStore(cfg)
	r := rand.New(rand.NewPCG(7, 9))
	var incs []pairInc
	const ts = 1_700_000_000_000 // every increment at the landmark: Forward(w) == w
	for range n {
		// Skewed towards the first neighbours, so that some climb past many others.
		to := int(float64(tos) * math.Pow(r.Float64(), 2))
		p := pairInc{from: fmt.Sprintf("i%d", r.IntN(5)), to: fmt.Sprintf("n%03d", to), w: float64(1+r.IntN(4)) / 4}
		incs = append(incs, p)
		mem.ApplyDelta(features.Delta{TsMs: ts, Pairs: []features.PairIncrement{{From: p.from, To: p.to, Weight: p.w}}})
	}
	stored := map[string][]byte{}
	for start := 0; start < len(incs); {
		end := min(start+1+r.IntN(200*m/3), len(incs))
		lists := map[string]*nbList{}
		for j := start; j < end; j++ {
			from := incs[j].from
			if lists[from] == nil {
				n := &nbList{}
				if err := n.load(stored[from]); err != nil {
					t.Fatal(err)
				}
				lists[from] = n
			}
			incs[j].list = lists[from]
		}
		if err := mergePairs(incs[start:end], m); err != nil {
			t.Fatal(err)
		}
		for id, n := range lists {
			if len(n.l) > 2*m {
				t.Fatalf("list %s of %d entries after a batch, cap 2M=%d", id, len(n.l), 2*m)
			}
			if !slices.IsSortedFunc(n.l, cmpEntry) { // readers take the first N as the top N
				t.Fatalf("list %s not in reader order after a batch: %v", id, n.l)
			}
			stored[id] = n.appendTo(nil)
			if len(stored[id]) != n.encodedLen() {
				t.Fatalf("list %s: encodedLen %d, encoding %d bytes", id, n.encodedLen(), len(stored[id]))
			}
		}
		start = end
	}
	for i := range 5 {
		id := fmt.Sprintf("i%d", i)
		got, _ := decodeNeighbours(nil, stored[id])
		want := mem.Neighbours(id, ts, 2*m)
		if len(got) != len(want) {
			t.Fatalf("%s: %d neighbours, memory store %d", id, len(got), len(want))
		}
		for j := range want {
			if got[j].id != want[j].ItemID || math.Abs(got[j].w-want[j].Score) > 1e-9*want[j].Score {
				t.Errorf("%s[%d] = %+v, memory store %+v", id, j, got[j], want[j])
			}
		}
	}
}

// The migrations build and read the blobs in SQL (int4send || bytes || float8send): the
// format must stay byte-identical to appendNeighbours.
func TestNeighbourBlobMatchesSQL(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	l := []scoredRow{{id: "z", w: 3e150}, {id: "a", w: 1.25}, {id: `é"x`, w: 1.25}, {id: "tiny", w: 5e-320}}
	ids, ws := make([]string, len(l)), make([]float64, len(l))
	for i, x := range l {
		ids[i], ws[i] = x.id, x.w
	}
	var blob []byte
	err := pool.QueryRow(context.Background(), `SELECT string_agg(int4send(octet_length(id)) || convert_to(id, 'UTF8') || float8send(w),
  ''::bytea ORDER BY ord) FROM unnest($1::text[], $2::float8[]) WITH ORDINALITY AS v(id, w, ord)`, ids, ws).Scan(&blob)
	if err != nil {
		t.Fatal(err)
	}
	if want := appendNeighbours(nil, l); !bytes.Equal(blob, want) {
		t.Errorf("SQL blob %x, Go %x", blob, want)
	}
}

// BenchmarkMergeFullLists merges increments into lists that are full (M=100 kept, up to
// 2M while merging), as a long-running stream's are: the cost per increment of finding the
// neighbour and keeping reader order.
func BenchmarkMergeFullLists(b *testing.B) {
	const m, lists, items = 100, 50, 5000
	r := rand.New(rand.NewPCG(1, 2))
	zipf := func() string { return fmt.Sprintf("item-%06d", int(float64(items)*math.Pow(r.Float64(), 1.5))) }
	full := map[string][]byte{}
	for i := range lists {
		n := &nbList{}
		for range 4 * m {
			n.add(zipf(), r.Float64())
			if len(n.l) > 2*m {
				n.trim(m)
			}
		}
		full[fmt.Sprintf("from-%d", i)] = n.appendTo(nil)
	}
	incs := make([]pairInc, 20000)
	for i := range incs {
		incs[i] = pairInc{from: fmt.Sprintf("from-%d", r.IntN(lists)), to: zipf(), w: r.Float64() / 10}
	}
	b.ResetTimer()
	for range b.N {
		ls := make(map[string]*nbList, lists)
		for id, blob := range full {
			n := &nbList{}
			if err := n.load(blob); err != nil {
				b.Fatal(err)
			}
			ls[id] = n
		}
		for i := range incs {
			incs[i].list = ls[incs[i].from]
		}
		if err := mergePairs(incs, m); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(incs)), "ns/increment")
}
