package featurestore

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"recsys/pkg/features"
)

// A repopulation of thousands of users with large documents must be split into round trips
// small enough for the 1 s Redis I/O timeout, without losing or reordering anything.
func TestPlanBoundsRoundTrips(t *testing.T) {
	cfg := features.DefaultConfig()
	s := New(nil, nil, "p:", cfg, nil)
	big := strings.Repeat(`"item-000000":1700000000000,`, 700) // ~20 KB, like 500+ watched items
	cases := []struct {
		name        string
		users, docB int
		nb          int
	}{
		{"5000 large users", 5000, len(big), 0},
		{"small users and neighbours", 3000, 40, 500},
		{"one huge user", 1, 600 << 10, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := &redisWrite{}
			for i := range c.users {
				w.users = append(w.users, userRow{id: fmt.Sprintf("u%05d", i), version: int64(i), h: "[]", w: big[:min(c.docB, len(big))] + strings.Repeat("x", max(0, c.docB-len(big))), i: "{}"})
			}
			for i := range c.nb {
				w.nb = append(w.nb, nbWrite{item: fmt.Sprintf("i%05d", i), version: 1, add: []scoredRow{{id: "n1", w: 1}, {id: "n2", w: 2}}})
			}
			trips := s.plan("1", w)
			var users, nbs []string
			for _, trip := range trips {
				if len(trip) == 0 || len(trip) > tripCalls {
					t.Fatalf("trip of %d calls", len(trip))
				}
				tb := 0
				for _, e := range trip {
					cb := 0
					for _, a := range e.Args {
						cb += len(a)
					}
					nu, _ := strconv.Atoi(e.Args[3])
					ni, _ := strconv.Atoi(e.Args[4])
					nn, _ := strconv.Atoi(e.Args[5])
					if ni != 0 || len(e.Keys) != 5+nu+2*nn {
						t.Fatalf("call with %d keys for %d users, %d items, %d neighbour lists", len(e.Keys), nu, ni, nn)
					}
					// A call passes callBytes by at most its last entry; one entry alone may be larger.
					if nu+nn > 1 && cb > callBytes+c.docB+1024 {
						t.Fatalf("call of %d entries carries %d bytes", nu+nn, cb)
					}
					for _, k := range e.Keys[5 : 5+nu] {
						users = append(users, strings.TrimPrefix(k, "p:u:"))
					}
					for j := 5 + nu; j < len(e.Keys); j += 2 { // a list, then its item's hash
						item := strings.TrimPrefix(e.Keys[j], "p:nb:")
						if e.Keys[j+1] != "p:i:"+item {
							t.Fatalf("list %s with item key %s", e.Keys[j], e.Keys[j+1])
						}
						nbs = append(nbs, item)
					}
					tb += cb
				}
				if len(trip) > 1 && tb > tripBytes+64*len(trip) { // 64: the call headers
					t.Fatalf("trip of %d calls carries %d bytes", len(trip), tb)
				}
			}
			if len(users) != c.users || len(nbs) != c.nb {
				t.Fatalf("planned %d users, %d lists; want %d, %d", len(users), len(nbs), c.users, c.nb)
			}
			for i, u := range users {
				if u != w.users[i].id {
					t.Fatalf("user %d is %s, want %s", i, u, w.users[i].id)
				}
			}
			if c.docB > 10<<10 && c.users > 1 && len(trips) < c.users*c.docB/tripBytes {
				t.Fatalf("%d trips for %d bytes", len(trips), c.users*c.docB)
			}
		})
	}
}

// A batch's item write carries the fields it changed; a row read whole (only 0) carries all
// nine. First seen never goes alone: a row whose first seen moved is written whole.
func TestPlanSendsChangedItemFields(t *testing.T) {
	s := New(nil, nil, "p:", features.DefaultConfig(), nil)
	cases := []struct {
		name string
		acc  itemAcc
		row  itemRow
		want []string
	}{
		{"impressions", itemAcc{imp: 3}, itemRow{id: "a", imp: 40, fs: 7}, []string{"a", "0", "1", "imp", "40"}},
		{"watch", itemAcc{imp: 1, wat: 1, sp: 0.5, pn: 1, wt: 12, ps: 1, pl: 1, fs: 9},
			itemRow{id: "b", imp: 5, wat: 2, sp: 1.5, pn: 2, wt: 30, fs: 7, ps: 2, pl: 3},
			[]string{"b", "0", "7", "imp", "5", "wat", "2", "sp", "1.5", "pn", "2", "wt", "30", "ps", "2", "pl", "3"}},
		{"whole", itemAcc{}, itemRow{id: "c", imp: 1, fs: 7, fresh: true},
			[]string{"c", "1", "9", "imp", "1", "wat", "0", "sp", "0", "pn", "0", "end", "0", "wt", "0", "fs", "7", "ps", "0", "pl", "0"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if !c.row.fresh {
				c.row.only = c.acc.changed()
			}
			trips := s.plan("1", &redisWrite{items: []itemRow{c.row}})
			if len(trips) != 1 || len(trips[0]) != 1 {
				t.Fatalf("%d trips", len(trips))
			}
			got := trips[0][0].Args[10:] // after the header
			if strings.Join(got, " ") != strings.Join(c.want, " ") {
				t.Errorf("item args %q, want %q", got, c.want)
			}
		})
	}
}
