package eval

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// clusterStream: users u0..u39; even users rate 6 of the items a0..a9, odd users 6 of
// b0..b9 (a rotating window, so every item has the same number of ratings); one rating per
// minute, in user order.
func clusterStream() []Rating {
	var rs []Rating
	line := 0
	for u := range 40 {
		prefix := "a"
		if u%2 == 1 {
			prefix = "b"
		}
		for d := range 6 {
			line++
			rs = append(rs, Rating{User: fmt.Sprintf("u%d", u), Item: fmt.Sprintf("%s%d", prefix, (u/2+d)%10), TsMs: int64(line) * 60_000, Value: 4, Line: line})
		}
	}
	return rs
}

// TestBPRRanksClusterItemsFirst: the only signal is which cluster a user belongs to, so BPR
// must put the 4 items of the user's cluster the user has not rated first, and never an item
// the user rated.
func TestBPRRanksClusterItemsFirst(t *testing.T) {
	m := NewBPR(BPROptions{Factors: 8, Epochs: 200, LR: 0.05, Reg: 0.01, InitStd: 0.1, Seed: 1})
	rated := map[string][]string{}
	for _, r := range clusterStream() {
		m.Observe(r)
		rated[r.User] = append(rated[r.User], r.Item)
	}
	m.Train()
	for u := range 40 {
		user := fmt.Sprintf("u%d", u)
		prefix := "a"
		if u%2 == 1 {
			prefix = "b"
		}
		var want []string
		for i := range 10 {
			if it := fmt.Sprintf("%s%d", prefix, i); !slices.Contains(rated[user], it) {
				want = append(want, it)
			}
		}
		all := m.Recommend(user, 0, 20)
		if len(all) != 14 {
			t.Fatalf("%s: %d items recommended, want the 14 not rated: %v", user, len(all), all)
		}
		top := slices.Clone(all[:4])
		slices.Sort(top)
		if !slices.Equal(top, want) {
			t.Fatalf("%s (cluster %s) top 4 = %v, want the cluster's unrated %v (full list %v)", user, prefix, all[:4], want, all)
		}
	}
}

// TestBPRDefaultsLearnClusters: Gorse's defaults (tiny initial factors) also separate the
// clusters, so the tuned and default settings measure the same model.
func TestBPRDefaultsLearnClusters(t *testing.T) {
	o := DefaultBPROptions()
	o.RetrainEvery = 0
	m := NewBPR(o)
	for _, r := range clusterStream() {
		m.Observe(r)
	}
	m.Train()
	hits := 0
	for u := range 40 {
		for _, it := range m.Recommend(fmt.Sprintf("u%d", u), 0, 4) {
			if (u%2 == 0) == strings.HasPrefix(it, "a") {
				hits++
			}
		}
	}
	if hits != 160 {
		t.Fatalf("%d of 160 top-4 slots hold an item of the user's cluster", hits)
	}
}

// TestBPRDeterministic: the same stream and seed give the same factors and lists (the
// documented tables must reproduce exactly); another seed gives other factors.
func TestBPRDeterministic(t *testing.T) {
	run := func(seed uint64) *BPR {
		m := NewBPR(BPROptions{Factors: 8, Epochs: 20, LR: 0.05, Reg: 0.01, InitStd: 0.01, Seed: seed, RetrainEvery: 50})
		for _, r := range clusterStream() {
			m.Observe(r)
		}
		return m
	}
	a, b, c := run(7), run(7), run(8)
	if a.Trains != 4 {
		t.Fatalf("240 events with retrain-every 50: %d trainings, want 4", a.Trains)
	}
	if !reflect.DeepEqual(a.users, b.users) || !reflect.DeepEqual(a.items, b.items) {
		t.Fatal("same seed and stream, different factors")
	}
	if reflect.DeepEqual(a.items, c.items) {
		t.Fatal("another seed gave identical factors: the seed is not used")
	}
	for u := range 40 {
		user := fmt.Sprintf("u%d", u)
		if la, lb := a.Recommend(user, 0, 10), b.Recommend(user, 0, 10); !slices.Equal(la, lb) {
			t.Fatalf("%s: %v vs %v", user, la, lb)
		}
	}
}

// TestBPRUnknownUserFallsBackToPopular: a user who arrived after the last training has no
// factors (as every user before the first training) and gets the most popular items not
// rated, like Gorse's non-personalised fallback;
// items the user rated since the training are excluded for a known user too.
func TestBPRUnknownUserFallsBackToPopular(t *testing.T) {
	m := NewBPR(BPROptions{Factors: 4, Epochs: 10, LR: 0.05, Reg: 0.01, InitStd: 0.1, Seed: 1})
	for _, r := range []Rating{
		{User: "v1", Item: "p"}, {User: "v2", Item: "p"}, {User: "v3", Item: "p"},
		{User: "v1", Item: "q"}, {User: "v2", Item: "q"}, {User: "v1", Item: "r"},
	} {
		m.Observe(r)
	}
	if got := m.Recommend("v2", 0, 10); !slices.Equal(got, []string{"r"}) {
		t.Fatalf("before any training: %v, want the fallback [r]", got)
	}
	m.Train()
	m.Observe(Rating{User: "new", Item: "p"})
	if got := m.Recommend("new", 0, 2); !slices.Equal(got, []string{"q", "r"}) {
		t.Fatalf("untrained user: %v, want [q r] (most popular, p rated)", got)
	}
	m.Observe(Rating{User: "v3", Item: "q"})
	if got := m.Recommend("v3", 0, 10); !slices.Equal(got, []string{"r"}) {
		t.Fatalf("v3 rated p and q: %v, want [r]", got)
	}
	if got := m.Recommend("nobody", 0, 10); got != nil {
		t.Fatalf("user never seen: %v, want nothing", got)
	}
}

func TestBPRConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(c *Config)
		wantErr string
	}{
		{"defaults", func(*Config) {}, ""},
		{"zero factors", func(c *Config) { c.BPR.Factors = 0 }, "--bpr.*: factors"},
		{"negative lr", func(c *Config) { c.BPR.LR = -1 }, "lr must be > 0"},
		{"negative reg", func(c *Config) { c.BPR.Reg = -0.1 }, "reg must be >= 0"},
		{"zero init std", func(c *Config) { c.BPR.InitStd = 0 }, "init-std"},
		{"zero epochs", func(c *Config) { c.BPR.Epochs = 0 }, "epochs"},
		{"zero retrain-every", func(c *Config) { c.BPR.RetrainEvery = 0 }, "--bpr.retrain-every"},
		{"bpr options ignored when not run", func(c *Config) { c.BPR.Factors = 0; c.Methods = []string{MethodItemKNN} }, ""},
		{"unknown method lists bpr", func(c *Config) { c.Methods = []string{"als"} }, "item_knn, bpr"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Data = "x"
			tc.mod(&c)
			err := c.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
	if !slices.Contains(DefaultConfig().Methods, MethodBPR) {
		t.Fatal("bpr is not in the default methods")
	}
}
