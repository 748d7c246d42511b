// Package fstest holds test helpers for the feature store: a deterministic event generator
// and Snapshot and table comparisons with float tolerance.
package fstest

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/events"
	"recsys/pkg/featurestore"
	"recsys/pkg/ranking"
)

// GenConfig shapes a generated stream.
type GenConfig struct {
	Seed   uint64
	Users  int
	Items  int
	Events int
	// StartMs is the time of the first event; each user's events are strictly increasing in
	// time, users interleave.
	StartMs int64
	// StepMs is the mean gap between consecutive events of the stream.
	StepMs int64
	// Prefix makes ids unique across tests (event ids, users, items).
	Prefix string
	// DisjointImpressions draws impression items from a pool no watch uses, so the effect
	// of a user's impressions commutes with the user's watches (they travel on another topic,
	// whose interleaving with the watches topic is not defined).
	DisjointImpressions bool
	// NoLegacy leaves legacy events out.
	NoLegacy bool
	// ImpressionShare, when set, is the share of impressions in the stream (a feed's served
	// lists far outnumber its watches); otherwise 30 %.
	ImpressionShare float64
	// PerUserIDs numbers each user's events on its own, as clients that number events per
	// user or per device do: users' events share ids (api-contract §16.10).
	PerUserIDs bool
}

// Generate returns a stream of valid events, in time order.
func Generate(c GenConfig) []events.Any {
	r := rand.New(rand.NewPCG(c.Seed, c.Seed^0x9e3779b97f4a7c15))
	if c.StepMs <= 0 {
		c.StepMs = 1000
	}
	watchPool := c.Items
	impStart := 0
	if c.DisjointImpressions {
		watchPool = c.Items * 7 / 10
		impStart = watchPool
	}
	item := func(i int) string { return fmt.Sprintf("%sitem%04d", c.Prefix, i) }
	// Zipf-like popularity: low indexes are hot.
	pick := func(lo, hi int) int {
		n := hi - lo
		x := r.Float64()
		return lo + int(math.Floor(float64(n)*x*x))
	}
	out := make([]events.Any, 0, c.Events)
	ts := c.StartMs
	perUser := map[string]int{}
	for e := 0; e < c.Events; e++ {
		ts += 1 + r.Int64N(2*c.StepMs)
		user := fmt.Sprintf("%suser%03d", c.Prefix, r.IntN(c.Users))
		id := fmt.Sprintf("%sev%07d", c.Prefix, e)
		if c.PerUserIDs {
			perUser[user]++
			id = fmt.Sprintf("%sev%07d", c.Prefix, perUser[user])
		}
		if len(id) < 8 {
			id += "________"[:8-len(id)]
		}
		common := events.Common{EventID: id, UserID: user, SessionID: "s-" + user, RequestID: fmt.Sprintf("r%d", e/5),
			TsMs: ts, ServerReceivedTsMs: ts + 5}
		k := r.IntN(10)
		if c.ImpressionShare > 0 {
			k = 4 // a watch, or:
			if r.Float64() < c.ImpressionShare {
				k = 0
			}
		}
		switch {
		case k < 3 && c.Items-impStart >= 2:
			n := 2 + r.IntN(min(8, c.Items-impStart-1))
			seen := map[int]bool{}
			var items []events.ImpressionItem
			for len(items) < n {
				i := pick(impStart, c.Items)
				if seen[i] {
					continue
				}
				seen[i] = true
				items = append(items, events.ImpressionItem{ItemID: item(i), Position: int64(len(items))})
			}
			// Positions out of list order: the decoder must order by position.
			r.Shuffle(len(items), func(a, b int) { items[a], items[b] = items[b], items[a] })
			out = append(out, &events.Impression{Common: common, EventType: "impression", Items: items})
		case k == 3 && !c.NoLegacy:
			types := []string{events.LegacyView, events.LegacyClick, events.LegacyPurchase}
			out = append(out, &events.Legacy{EventID: id, UserID: user, ItemID: item(pick(0, watchPool)), EventType: types[r.IntN(3)], Ts: ts})
		default:
			w := &events.Watch{Common: common, EventType: "watch", ItemID: item(pick(0, watchPool)), WatchTimeSec: float64(r.IntN(300))}
			switch r.IntN(3) {
			case 0:
				p := float64(r.IntN(1001)) / 10
				w.PercentWatched = &p
			case 1:
				e := r.IntN(2) == 0
				w.Ended = &e
			}
			out = append(out, w)
		}
	}
	return out
}

// TB is the part of testing.TB the comparisons use.
type TB interface {
	Helper()
	Errorf(format string, args ...any)
}

// Close reports whether a and b agree to a relative 1e-9 (absolute 1e-12 near zero).
func Close(a, b float64) bool {
	if a == b {
		return true
	}
	d := math.Abs(a - b)
	return d <= 1e-12 || d <= 1e-9*math.Max(math.Abs(a), math.Abs(b))
}

// EqualSnapshots reports every difference between want and got: exact for user state and
// counters, float tolerance for decayed values. Fresh is compared as a set of (item,
// first-seen) because stores order first-seen ties differently.
func EqualSnapshots(t TB, name string, want, got ranking.Snapshot) bool {
	t.Helper()
	ok := true
	bad := func(format string, args ...any) {
		t.Helper()
		ok = false
		t.Errorf(name+": "+format, args...)
	}
	if want.UserID != got.UserID || want.NowMs != got.NowMs {
		bad("user/now %s/%d vs %s/%d", want.UserID, want.NowMs, got.UserID, got.NowMs)
	}
	if len(want.History) != len(got.History) {
		bad("history len %d vs %d", len(want.History), len(got.History))
	} else {
		for i := range want.History {
			if want.History[i] != got.History[i] {
				bad("history[%d] %+v vs %+v", i, want.History[i], got.History[i])
			}
		}
	}
	if len(want.Watched) != len(got.Watched) {
		bad("watched len %d vs %d", len(want.Watched), len(got.Watched))
	}
	for k := range want.Watched {
		if !got.Watched[k] {
			bad("watched %s missing", k)
		}
	}
	if len(want.Impressions) != len(got.Impressions) {
		bad("impressions len %d vs %d", len(want.Impressions), len(got.Impressions))
	}
	for k, v := range want.Impressions {
		if got.Impressions[k] != v {
			bad("impressions[%s] %+v vs %+v", k, v, got.Impressions[k])
		}
	}
	if len(want.Neighbours) != len(got.Neighbours) {
		bad("neighbour lists %d vs %d", len(want.Neighbours), len(got.Neighbours))
	}
	for k, w := range want.Neighbours {
		equalScored(bad, "neighbours["+k+"]", w, got.Neighbours[k])
	}
	equalScored(bad, "trending", want.Trending, got.Trending)
	equalScored(bad, "popular", want.Popular, got.Popular)
	sortFresh := func(l []ranking.Scored) []ranking.Scored {
		l = slices.Clone(l)
		slices.SortFunc(l, func(a, b ranking.Scored) int {
			if a.Score != b.Score {
				return cmp.Compare(b.Score, a.Score)
			}
			return strings.Compare(a.ItemID, b.ItemID)
		})
		return l
	}
	equalScored(bad, "fresh", sortFresh(want.Fresh), sortFresh(got.Fresh))
	if len(want.Items) != len(got.Items) {
		bad("items %d vs %d", len(want.Items), len(got.Items))
	}
	for k, w := range want.Items {
		g, found := got.Items[k]
		if !found {
			bad("item %s missing", k)
			continue
		}
		if w.Impressions != g.Impressions || w.Watches != g.Watches || w.PercentCount != g.PercentCount ||
			w.Ended != g.Ended || w.FirstSeenMs != g.FirstSeenMs || !Close(w.SumPercent, g.SumPercent) ||
			!Close(w.WatchTimeSec, g.WatchTimeSec) || !Close(w.PopShort, g.PopShort) || !Close(w.PopLong, g.PopLong) {
			bad("item %s %+v vs %+v", k, w, g)
		}
	}
	return ok
}

func equalScored(bad func(string, ...any), what string, want, got []ranking.Scored) {
	if len(want) != len(got) {
		bad("%s len %d vs %d: %v vs %v", what, len(want), len(got), want, got)
		return
	}
	for i := range want {
		if want[i].ItemID != got[i].ItemID || !Close(want[i].Score, got[i].Score) {
			bad("%s[%d] %+v vs %+v", what, i, want[i], got[i])
		}
	}
}

// Tables is the durable feature state of a database, for comparisons.
type Tables struct {
	Users   map[string]string // user -> history|watched|impressions (JSON)
	Items   map[string][]float64
	Covis   map[string]float64 // "item>neighbour" -> current strength at a fixed now
	Applied int
}

// ReadTables loads the feature tables; co-visitation strengths and popularity are converted
// to current values at nowMs so databases with different landmarks compare.
func ReadTables(ctx context.Context, pool *pgxpool.Pool, nowMs int64) (Tables, error) {
	t := Tables{Users: map[string]string{}, Items: map[string][]float64{}, Covis: map[string]float64{}}
	var lmS, lmL, lmC int64
	var hlS, hlL, hlC float64
	if err := pool.QueryRow(ctx, `SELECT lm_short_ms, lm_long_ms, lm_covis_ms, hl_short_ms, hl_long_ms, hl_covis_ms FROM feature_meta`).
		Scan(&lmS, &lmL, &lmC, &hlS, &hlL, &hlC); err != nil {
		return t, fmt.Errorf("read meta: %w", err)
	}
	at := func(v float64, lm int64, hl float64) float64 { return v * math.Exp2(-float64(nowMs-lm)/hl) }
	rows, err := pool.Query(ctx, `SELECT user_id, history, watched::jsonb::text, impressions, impressions_recent FROM feature_users`)
	if err != nil {
		return t, err
	}
	for rows.Next() {
		var id, h, w, i, r string
		if err := rows.Scan(&id, &h, &w, &i, &r); err != nil {
			return t, err
		}
		// The counters compare by value: one database may hold them in the other format, or
		// partly in their overlay.
		m, err := featurestore.DecodeImpressions(i)
		if err == nil {
			m, err = featurestore.ApplyImpressionsOverlay(m, featurestore.ImpressionsBaseSum(i), r)
		}
		if err != nil {
			return t, fmt.Errorf("user %s: %w", id, err)
		}
		ib, err := json.Marshal(m)
		if err != nil {
			return t, err
		}
		t.Users[id] = h + "|" + w + "|" + string(ib)
	}
	if err := rows.Err(); err != nil {
		return t, err
	}
	rows, err = pool.Query(ctx, `SELECT item_id, impressions, watches, sum_percent, percent_count, ended, watch_time_sec,
  first_seen_ms, pop_short, pop_long FROM feature_items`)
	if err != nil {
		return t, err
	}
	for rows.Next() {
		var id string
		var imp, wat, pn, end, fs int64
		var sp, wt, ps, pl float64
		if err := rows.Scan(&id, &imp, &wat, &sp, &pn, &end, &wt, &fs, &ps, &pl); err != nil {
			return t, err
		}
		t.Items[id] = []float64{float64(imp), float64(wat), sp, float64(pn), float64(end), wt, float64(fs), at(ps, lmS, hlS), at(pl, lmL, hlL)}
	}
	if err := rows.Err(); err != nil {
		return t, err
	}
	rows, err = pool.Query(ctx, `SELECT item_id, neighbours FROM feature_neighbours`)
	if err != nil {
		return t, err
	}
	for rows.Next() {
		var a string
		var blob []byte
		if err := rows.Scan(&a, &blob); err != nil {
			return t, err
		}
		l, err := featurestore.DecodeNeighbours(blob)
		if err != nil {
			return t, fmt.Errorf("item %s: %w", a, err)
		}
		for _, x := range l {
			t.Covis[a+">"+x.ItemID] = at(x.Score, lmC, hlC)
		}
	}
	if err := rows.Err(); err != nil {
		return t, err
	}
	err = pool.QueryRow(ctx, `SELECT count(*) FROM feature_applied`).Scan(&t.Applied)
	return t, err
}

// EqualTables reports every difference between two databases' feature state.
func EqualTables(t TB, want, got Tables) bool {
	t.Helper()
	ok := true
	bad := func(format string, args ...any) {
		t.Helper()
		ok = false
		t.Errorf(format, args...)
	}
	if want.Applied != got.Applied {
		bad("applied events %d vs %d", want.Applied, got.Applied)
	}
	if len(want.Users) != len(got.Users) {
		bad("users %d vs %d", len(want.Users), len(got.Users))
	}
	for _, k := range sortedKeys(want.Users) {
		if want.Users[k] != got.Users[k] {
			bad("user %s:\n want %s\n got  %s", k, want.Users[k], got.Users[k])
		}
	}
	if len(want.Items) != len(got.Items) {
		bad("items %d vs %d", len(want.Items), len(got.Items))
	}
	for _, k := range sortedKeys(want.Items) {
		w, g := want.Items[k], got.Items[k]
		if len(g) != len(w) {
			bad("item %s missing", k)
			continue
		}
		for i := range w {
			if !Close(w[i], g[i]) {
				bad("item %s field %d: %v vs %v", k, i, w[i], g[i])
				break
			}
		}
	}
	if len(want.Covis) != len(got.Covis) {
		bad("co-visitation pairs %d vs %d", len(want.Covis), len(got.Covis))
	}
	for _, k := range sortedKeys(want.Covis) {
		if g, found := got.Covis[k]; !found || !Close(want.Covis[k], g) {
			bad("pair %s: %v vs %v", k, want.Covis[k], g)
		}
	}
	return ok
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
