package eval

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestMetricsHandComputed(t *testing.T) {
	list := []string{"a", "b", "c", "d"}
	tests := []struct {
		item     string
		rank     int
		wantNDCG float64
	}{
		{"a", 1, 1},
		{"b", 2, 1 / math.Log2(3)},
		{"d", 4, 1 / math.Log2(5)},
		{"z", 0, 0},
	}
	var acc Acc
	for _, tc := range tests {
		r := Rank(list, tc.item)
		if r != tc.rank {
			t.Fatalf("Rank(%s) = %d, want %d", tc.item, r, tc.rank)
		}
		if got := NDCG(r); math.Abs(got-tc.wantNDCG) > 1e-12 {
			t.Fatalf("NDCG(%d) = %v, want %v", r, got, tc.wantNDCG)
		}
		acc.Add(r)
	}
	// 3 hits of 4; NDCG mean = (1 + 0.63093 + 0.43068 + 0)/4.
	if acc.HR() != 0.75 {
		t.Fatalf("HR = %v, want 0.75", acc.HR())
	}
	want := (1 + 1/math.Log2(3) + 1/math.Log2(5)) / 4
	if math.Abs(acc.MeanNDCG()-want) > 1e-12 {
		t.Fatalf("NDCG = %v, want %v", acc.MeanNDCG(), want)
	}
	if (Acc{}).HR() != 0 || (Acc{}).MeanNDCG() != 0 {
		t.Fatal("empty accumulator must report 0")
	}
}

func TestParseFormatsAndOrder(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  []string // user:item in replay order
	}{
		{"u.data tab separated, unordered, ties by line", "1\t10\t5\t300\n2\t20\t3\t100\n3\t30\t4\t100\n", []string{"2:20", "3:30", "1:10"}},
		{"ratings.csv with header", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.0,964981247\n", []string{"1:3", "1:1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rs, err := Parse(strings.NewReader(tc.input))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range rs {
				got = append(got, r.User+":"+r.Item)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("order %v, want %v", got, tc.want)
			}
		})
	}
	if rs, _ := Parse(strings.NewReader("1\t10\t5\t300\n")); rs[0].TsMs != 300_000 || rs[0].Value != 5 || rs[0].Line != 1 {
		t.Fatalf("parsed %+v", rs[0])
	}
	for _, bad := range []string{"", "1\t2\t3\n", "1\t2\tx\t4\n", "1,2,3,4\n5,6,7,notatime\n"} {
		if _, err := Parse(strings.NewReader(bad)); err == nil {
			t.Fatalf("Parse(%q) accepted bad input", bad)
		}
	}
}

func TestCounterMatchesBruteForce(t *testing.T) {
	c := newCounter()
	counts := map[string]int{}
	seq := "abacabadabacabaeefgggggggghh"
	for _, ch := range seq {
		it := string(ch)
		c.inc(it)
		counts[it]++
		for i := 1; i < len(c.order); i++ {
			if counts[c.order[i-1]] < counts[c.order[i]] {
				t.Fatalf("order %v not by count %v", c.order, counts)
			}
		}
		for it, n := range counts {
			if c.count[it] != n {
				t.Fatalf("count %s = %d, want %d", it, c.count[it], n)
			}
		}
	}
	if got := c.top(2, func(s string) bool { return s == "a" }); !slices.Equal(got, []string{"g", "b"}) {
		t.Fatalf("top excluding a: %v", got)
	}
}

func TestOriginalRuleHandExample(t *testing.T) {
	o := NewOriginal()
	ts := int64(0)
	add := func(u, it string) {
		ts += 1000
		o.Observe(Rating{User: u, Item: it, TsMs: ts})
	}
	// Popularity: p watched by 4 users; covis a–x consecutive twice.
	for _, u := range []string{"v1", "v2", "v3", "v4"} {
		add(u, "p")
	}
	add("w1", "a")
	add("w1", "x")
	add("w2", "a")
	add("w2", "x")
	add("me", "a")
	// Scores for "me" (last item a): x = 1.5·2 + 2 (pop) = 5, p = 0 + 4 = 4, a excluded.
	if got := o.Recommend("me", ts, 3); !slices.Equal(got, []string{"x", "p"}) {
		t.Fatalf("original rule: %v, want [x p]", got)
	}
}

// TestSyntheticStream: users watch items in fixed sequences (a→b→c→d, e→f→g→h) while a
// few popular items are watched by everyone. After learning, the next item of a user's
// sequence must be in the product's top 3, and its HR must beat most-popular.
func TestSyntheticStream(t *testing.T) {
	var rs []Rating
	ts := int64(1_600_000_000_000)
	line := 0
	add := func(u, it string) {
		ts += 60_000
		line++
		rs = append(rs, Rating{User: u, Item: it, TsMs: ts, Value: 4, Line: line})
	}
	seqs := [][]string{{"a", "b", "c", "d"}, {"e", "f", "g", "h"}}
	for u := 0; u < 40; u++ {
		user := fmt.Sprintf("u%d", u)
		add(user, fmt.Sprintf("pop%d", u%3))
		for _, it := range seqs[u%2] {
			add(user, it)
		}
	}
	c := DefaultConfig()
	c.Product.Ranking.ExplorationShare = 0
	prod := NewProduct("recsys", c.Product)
	mp := NewMostPopular()
	res, err := Prequential(context.Background(), rs, []Method{prod, mp}, PrequentialOptions{K: 3, Windows: 2, HoldoutFrom: 0.5, CurvePoints: 4})
	if err != nil {
		t.Fatal(err)
	}
	// A new user who just watched a and b must get c first.
	add("new", "a")
	add("new", "b")
	for _, r := range rs[len(rs)-2:] {
		prod.Observe(r)
	}
	if got := prod.Recommend("new", ts+1, 3); len(got) == 0 || got[0] != "c" {
		t.Fatalf("after a, b the product recommends %v, want c first", got)
	}
	p, m := Find(res, "recsys"), Find(res, "most_popular")
	if p == nil || m == nil {
		t.Fatalf("results %+v", res)
	}
	// 3 of every user's 5 events follow deterministically from the previous one; the first
	// (a popular item) and its successor are guesses, so ~0.8 is the ceiling.
	if !(p.Holdout.HR > 0.7) || !(p.Holdout.HR > 1.5*m.Holdout.HR) {
		t.Fatalf("held-out HR@3 product %.3f most-popular %.3f", p.Holdout.HR, m.Holdout.HR)
	}
	if len(p.Windows) != 2 || len(p.Curve) != 4 || p.Windows[0].Metrics.N+p.Windows[1].Metrics.N != len(rs)-2 {
		t.Fatalf("windows %+v curve %v", p.Windows, p.Curve)
	}
}

func TestItemKNNLeaveLastOut(t *testing.T) {
	// Items co-occur in groups (x_g, y_g, z_g); each user's last rating completes its group,
	// which item-kNN must find from the other users.
	var rs []Rating
	line := 0
	for u := 0; u < 30; u++ {
		g := []string{fmt.Sprintf("x%d", u%5), fmt.Sprintf("y%d", u%5), fmt.Sprintf("z%d", u%5)}
		if u%2 == 1 {
			slices.Reverse(g)
		}
		for _, it := range g {
			line++
			rs = append(rs, Rating{User: fmt.Sprintf("u%d", u), Item: it, TsMs: int64(line) * 1000, Line: line})
		}
	}
	res, err := LeaveLastOut(context.Background(), rs, []Method{NewItemKNN(10, 0, 0)}, LeaveLastOutOptions{K: 1})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Overall.N != 30 || res[0].Overall.HR < 0.8 {
		t.Fatalf("item-kNN leave-last-out: %+v", res[0].Overall)
	}
}

func TestPlotSVG(t *testing.T) {
	h := Metrics{HR: 0.25}
	svg := PlotSVG("t <&>", 0.8, []MethodResult{{Method: "a", Curve: []float64{0.1, 0.2, 0.3}, Holdout: &h}, {Method: "b", Curve: []float64{0, 0.05, 0.1}}})
	if !strings.HasPrefix(svg, "<svg") || strings.Count(svg, "<polyline") != 2 || !strings.Contains(svg, "t &lt;&amp;&gt;") || !strings.Contains(svg, "a (held-out 0.250)") || !strings.Contains(svg, "stroke-dasharray") {
		t.Fatalf("svg:\n%s", svg)
	}
}

func datasetPath(t *testing.T, rel string) string {
	t.Helper()
	dir := os.Getenv("RECSYS_DATASETS")
	if dir == "" {
		dir = filepath.Join("..", "..", "..", "shared", "datasets")
	}
	p := filepath.Join(dir, rel)
	if _, err := os.Stat(p); err != nil {
		// The data sets are never committed (their licence forbids it): a clone without them
		// skips, saying so; scripts/test-verdict.sh lets this skip, and only it, pass.
		t.Skipf("data set absent: MovieLens data not found at %s (set RECSYS_DATASETS to the datasets folder): %v", p, err)
	}
	return p
}

// TestIntegrationML100K runs the whole `recsys eval` flow on ml-100k: the report and plot are
// written and the product beats most-popular in both protocols.
func TestIntegrationML100K(t *testing.T) {
	if testing.Short() {
		t.Skip("short mode")
	}
	c := DefaultConfig()
	c.Data = datasetPath(t, "ml-100k/u.data")
	c.Methods = []string{MethodProduct, MethodMostPopular}
	c.TestEvery = 4 // every event is still applied
	events := 100000
	if raceEnabled {
		// Same checks on the first 20,000 ratings, so -race stays within the test timeout.
		c.MaxEvents, c.TestEvery, events = 20000, 8, 20000
	}
	dir := t.TempDir()
	c.OutputJSON = filepath.Join(dir, "report.json")
	c.OutputSVG = filepath.Join(dir, "plot.svg")
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	rep, err := Run(context.Background(), c, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(c.OutputJSON)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("report is not JSON: %v", err)
	}
	if back.Events != events || back.Users == 0 || back.Items == 0 || len(back.Prequential) != 2 || len(back.LeaveLastOut) != 2 {
		t.Fatalf("report header %+v", back)
	}
	if !raceEnabled && (back.Users != 943 || back.Items != 1682) {
		t.Fatalf("ml-100k has 943 users and 1682 items, report says %d and %d", back.Users, back.Items)
	}
	svg, err := os.ReadFile(c.OutputSVG)
	if err != nil || !strings.Contains(string(svg), "<polyline") {
		t.Fatalf("plot: %v", err)
	}
	for _, proto := range [][]MethodResult{rep.Prequential, rep.LeaveLastOut} {
		p, m := Find(proto, MethodProduct), Find(proto, MethodMostPopular)
		if !(p.Overall.HR > 1.5*m.Overall.HR) {
			t.Fatalf("product HR@10 %.4f does not beat most-popular %.4f by 1.5x", p.Overall.HR, m.Overall.HR)
		}
	}
	var sb strings.Builder
	if err := rep.WriteTable(&sb); err != nil || !strings.Contains(sb.String(), "leave-last-out") {
		t.Fatalf("table: %v\n%s", err, sb.String())
	}
	t.Log("\n" + sb.String())
}

// spy is a Method that records, at every Recommend, which ratings it had observed.
type spy struct {
	observed []string
	seenAt   map[string][]string // "user@ts" → observed items of that user then
}

func (s *spy) Name() string { return "spy" }

func (s *spy) Recommend(user string, nowMs int64, _ int) []string {
	if s.seenAt == nil {
		s.seenAt = map[string][]string{}
	}
	var mine []string
	for _, o := range s.observed {
		if u, it, _ := strings.Cut(o, ":"); u == user {
			mine = append(mine, it)
		}
	}
	s.seenAt[fmt.Sprintf("%s@%d", user, nowMs)] = mine
	return nil
}

func (s *spy) Observe(r Rating) { s.observed = append(s.observed, r.User+":"+r.Item) }

// TestProtocolsHideSimultaneousRatings: ratings sharing a timestamp (a page of MovieLens
// ratings saved in one second, in the file's line order) must not be the history a test of
// one of them is ranked from, or an order-aware method learns the file's order.
func TestProtocolsHideSimultaneousRatings(t *testing.T) {
	rs := []Rating{
		{User: "u", Item: "a", TsMs: 1000, Line: 1},
		{User: "u", Item: "b", TsMs: 2000, Line: 2},
		{User: "u", Item: "c", TsMs: 2000, Line: 3},
		{User: "v", Item: "x", TsMs: 2000, Line: 4},
		{User: "u", Item: "d", TsMs: 3000, Line: 5},
		{User: "w", Item: "p", TsMs: 5000, Line: 6},
		{User: "w", Item: "q", TsMs: 5000, Line: 7},
	}
	tests := []struct {
		name     string
		run      func(m Method) error
		at       string
		wantSeen []string
	}{
		{"prequential, first of a tie", func(m Method) error {
			_, err := Prequential(context.Background(), rs, []Method{m}, PrequentialOptions{K: 10})
			return err
		}, "u@2000", []string{"a"}},
		{"prequential, after the tie", func(m Method) error {
			_, err := Prequential(context.Background(), rs, []Method{m}, PrequentialOptions{K: 10})
			return err
		}, "u@3000", []string{"a", "b", "c"}},
		{"leave-last-out, held-out in a tie", func(m Method) error {
			_, err := LeaveLastOut(context.Background(), rs, []Method{m}, LeaveLastOutOptions{K: 10})
			return err
		}, "w@5000", nil},
		{"leave-last-out, no tie", func(m Method) error {
			_, err := LeaveLastOut(context.Background(), rs, []Method{m}, LeaveLastOutOptions{K: 10})
			return err
		}, "u@3000", []string{"a", "b", "c"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := &spy{}
			if err := tc.run(s); err != nil {
				t.Fatal(err)
			}
			got, ok := s.seenAt[tc.at]
			if !ok {
				t.Fatalf("no test at %s: %v", tc.at, s.seenAt)
			}
			if !slices.Equal(got, tc.wantSeen) {
				t.Fatalf("at %s the method had seen %v of the user, want %v", tc.at, got, tc.wantSeen)
			}
		})
	}
	// Every rating is still applied exactly once, in replay order.
	s := &spy{}
	if _, err := Prequential(context.Background(), rs, []Method{s}, PrequentialOptions{K: 10, TestEvery: 3}); err != nil {
		t.Fatal(err)
	}
	if want := []string{"u:a", "u:b", "u:c", "v:x", "u:d", "w:p", "w:q"}; !slices.Equal(s.observed, want) {
		t.Fatalf("observed %v, want %v", s.observed, want)
	}
}

// TestOriginalRuleExcludeRated: the faithful rule excludes only the last 20 history items, so
// an item rated earlier comes back; with ExcludeRated it is excluded like in the other methods.
func TestOriginalRuleExcludeRated(t *testing.T) {
	tests := []struct {
		excludeRated bool
		want         []string
	}{
		{false, []string{"p", "q"}},
		{true, []string{"q"}},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint("exclude-rated=", tc.excludeRated), func(t *testing.T) {
			o := NewOriginal()
			o.ExcludeRated = tc.excludeRated
			ts := int64(0)
			add := func(u, it string) {
				ts += 1000
				o.Observe(Rating{User: u, Item: it, TsMs: ts})
			}
			for _, u := range []string{"v1", "v2", "v3"} {
				add(u, "p")
			}
			add("v1", "q")
			add("me", "p")
			for i := range 20 {
				add("me", fmt.Sprintf("h%02d", i))
			}
			// p (popularity 4) left me's 20-item history; q has popularity 1; every h has 1
			// and is excluded as recent.
			if got := o.Recommend("me", ts, 2); !slices.Equal(got, tc.want) {
				t.Fatalf("recommended %v, want %v", got, tc.want)
			}
		})
	}
}

// Leave-last-out asks the product at a user's held-out time after every other event has been
// applied, years later in ml-latest-small. Read back that far, the trending popularity (24 h
// half-life) was +Inf, every score NaN and the top k in arbitrary order.
func TestProductAskedBeforeItsLastEvent(t *testing.T) {
	const day = int64(86_400_000)
	t0 := int64(830_000_000_000) // 1996
	line := 0
	rating := func(u, it string, ts int64) Rating {
		line++
		return Rating{User: u, Item: it, TsMs: ts, Value: 4, Line: line}
	}
	c := DefaultConfig()
	c.Product.Ranking.ExplorationShare = 0
	prod := NewProduct("recsys", c.Product)
	prod.Observe(rating("old", "a", t0))
	later := t0 + 5*365*day // 2^1825 overflows a float64
	for u := range 30 {
		user := fmt.Sprintf("u%d", u)
		prod.Observe(rating(user, "a", later+int64(u)*60_000))
		prod.Observe(rating(user, "b", later+int64(u)*60_000+1000))
		prod.Observe(rating(user, fmt.Sprintf("p%d", u%4), later+int64(u)*60_000+2000))
	}
	prod.Train()
	res := prod.rank("old", t0+1000, 3)
	for i, s := range res.Scores {
		if math.IsNaN(s) || math.IsInf(s, 0) {
			t.Fatalf("score %d of %v is %v: %v", i, res.Items, s, res.Scores)
		}
	}
	if len(res.Items) == 0 || res.Items[0] != "b" {
		t.Fatalf("after a the product recommends %v (%v), want b first", res.Items, res.Scores)
	}
}
