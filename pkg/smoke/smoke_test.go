package smoke_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"recsys/pkg/apikey/apikeytest"
	"recsys/pkg/smoke"
)

// fakeStack imitates the API with a consumer that applies watches after a delay: /reco
// excludes a user's applied watches and puts the co-visitation neighbours of those items
// first, then popular items.
type fakeStack struct {
	mu     sync.Mutex
	delay  time.Duration
	broken bool // the consumer never applies anything
	// seedsOnly: the catalogue is the seeded items alone (a small stack whose probes'
	// items never reach the users' lists).
	seedsOnly bool
	seen      map[string]bool
	watches   []watch
	recos     int
	dead      int
	outboxNil bool
}

type watch struct {
	user, item string
	at         time.Time
}

func newFake() *fakeStack { return &fakeStack{seen: map[string]bool{}, delay: 150 * time.Millisecond} }

func (f *fakeStack) applied() []watch {
	var out []watch
	for _, w := range f.watches {
		if !f.broken && time.Since(w.at) >= f.delay {
			out = append(out, w)
		}
	}
	return out
}

func (f *fakeStack) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	write := func(code int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(v)
	}
	switch r.URL.Path {
	case "/readyz":
		write(200, map[string]any{"ready": true})
	case "/event":
		var ev map[string]any
		_ = json.NewDecoder(r.Body).Decode(&ev)
		write(200, map[string]any{"status": "ok", "event_id": ev["event_id"]})
	case "/log/watch":
		var ev map[string]any
		_ = json.NewDecoder(r.Body).Decode(&ev)
		id, _ := ev["event_id"].(string)
		if f.seen[id] {
			write(200, map[string]any{"status": "duplicate"})
			return
		}
		f.seen[id] = true
		f.watches = append(f.watches, watch{user: ev["user_id"].(string), item: ev["item_id"].(string), at: time.Now()})
		write(200, map[string]any{"status": "ok"})
	case "/reco":
		f.recos++
		user := r.URL.Query().Get("user_id")
		ws := f.applied()
		mine := map[string]bool{}
		for _, x := range ws {
			if x.user == user {
				mine[x.item] = true
			}
		}
		var items []string
		add := func(it string) {
			if !mine[it] && !slices.Contains(items, it) {
				items = append(items, it)
			}
		}
		// Neighbours: items other users watched together with one of mine.
		for _, x := range ws {
			if f.seedsOnly {
				break
			}
			if !mine[x.item] || x.user == user {
				continue
			}
			for _, y := range ws {
				if y.user == x.user && y.item != x.item {
					add(y.item)
				}
			}
		}
		for _, x := range ws {
			if !f.seedsOnly {
				add(x.item)
			}
		}
		// A popular fallback catalogue, so a user who watched some items still gets a list
		// however slow the machine makes the test.
		for i := 0; i < 5; i++ {
			add(fmt.Sprintf("seed-item-%d", i))
		}
		write(200, map[string]any{"request_id": "r" + user, "items": items})
	case "/healthz":
		var outbox any = map[string]any{"pending": 0, "publishing": 0, "dead": f.dead}
		if f.outboxNil {
			outbox = nil
		}
		write(200, map[string]any{"status": "ok", "event_backbone": map[string]any{"mode": "transactional_outbox", "outbox": outbox}})
	case "/metrics/reco":
		write(200, map[string]any{"sample_size": f.recos})
	default:
		write(404, map[string]any{"detail": "Not Found"})
	}
}

func fastCfg(url string) smoke.Config {
	c := smoke.DefaultConfig()
	c.BaseURL, c.PollSec, c.ReadyTimeoutSec, c.OutboxTimeoutSec, c.ConsumerTimeoutSec = url, 0.05, 1, 1, 3
	return c
}

func TestSmokePassesAgainstAHealthyStack(t *testing.T) {
	f := newFake()
	srv := httptest.NewServer(f)
	defer srv.Close()
	r := smoke.Run(context.Background(), fastCfg(srv.URL))
	if !r.OK() {
		t.Fatalf("checks %v details %v", r.Checks, r.Details)
	}
	for _, c := range smoke.AllChecks {
		if r.Checks[c] != "pass" {
			t.Errorf("%s = %s", c, r.Checks[c])
		}
	}
	if r.SeedVisibleAfterMs == nil {
		t.Error("seed visibility not recorded")
	}
	if r.SeededEvents != 5*5*2 || r.Traffic.RecoOK != 30 || r.Traffic.WatchOK != 30 || *r.RecoMetricsSampleSize < 30 {
		t.Errorf("seeded %d traffic %+v samples %v", r.SeededEvents, r.Traffic, *r.RecoMetricsSampleSize)
	}
	p := r.Consumer
	if p == nil || !p.WatchedExcluded || p.NeighbourRank == nil || p.VisibleAfterMs == nil || *p.VisibleAfterMs < 100 {
		t.Fatalf("consumer probe %+v", p)
	}
	if slices.Contains(p.ListAfter, p.WatchedItem) || !slices.Contains(p.ListAfter, p.NeighbourItem) {
		t.Errorf("after the watch the list %v must exclude %s and contain %s", p.ListAfter, p.WatchedItem, p.NeighbourItem)
	}
	if !p.NeighbourAboveControl {
		t.Errorf("neighbour rank %v, control rank %v", p.NeighbourRank, p.ControlRank)
	}
	// The fake's lists carry every watched item, B included, for a user without history too:
	// the check must pass on B being raised, not on B being absent elsewhere.
	if p.BaselineUser == "" || p.NeighbourRankBaseline == nil || *p.NeighbourRank >= *p.NeighbourRankBaseline {
		t.Errorf("baseline %s: neighbour at %v, for the baseline at %v (list %v)", p.BaselineUser, p.NeighbourRank, p.NeighbourRankBaseline, p.BaselineList)
	}
	if d := r.Details[smoke.CheckConsumerApplied]; !strings.Contains(d, "before the watch") || !strings.Contains(d, "without history") {
		t.Errorf("consumer_applied detail %q does not say what was compared", d)
	}
	b, _ := json.Marshal(r)
	for _, k := range []string{`"timestamp_ms"`, `"checks"`, `"traffic"`, `"reco_ok"`, `"watch_ok"`, `"empty_reco"`, `"seeded_events"`, `"outbox_snapshot"`, `"reco_metrics_sample_size"`} {
		if !strings.Contains(string(b), k) {
			t.Errorf("report lacks the contract field %s", k)
		}
	}
}

func TestSmokeFailsWhenTheConsumerAppliesNothing(t *testing.T) {
	f := newFake()
	f.broken = true
	srv := httptest.NewServer(f)
	defer srv.Close()
	cfg := fastCfg(srv.URL)
	cfg.ConsumerTimeoutSec = 1
	r := smoke.Run(context.Background(), cfg)
	if r.OK() || r.Checks[smoke.CheckConsumerApplied] != "fail" {
		t.Fatalf("checks %v", r.Checks)
	}
	if !strings.Contains(r.Details[smoke.CheckConsumerApplied], "did not show in /reco") {
		t.Errorf("detail %q", r.Details[smoke.CheckConsumerApplied])
	}
	// Nothing is ever applied, so the traffic step sees only empty lists... except the
	// popular fallback item, which every list carries.
	if r.Checks[smoke.CheckRecoTraffic] != "pass" || r.Checks[smoke.CheckOutboxSettled] != "pass" {
		t.Errorf("unrelated checks failed: %v", r.Checks)
	}
}

// lostWatchAPI is a busy catalogue whose consumer has lost every watch: /reco has no per-user
// state, only 19 popular items, plus, once the probe's neighbour B (the item ending in "-b")
// has been watched, B as a fresh item in the exploration slot of the users explore picks.
type lostWatchAPI struct {
	mu      sync.Mutex
	explore func(user string) bool
	fresh   string
	seen    map[string]bool
}

func (f *lostWatchAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	write := func(v any) { w.Header().Set("Content-Type", "application/json"); _ = json.NewEncoder(w).Encode(v) }
	switch r.URL.Path {
	case "/readyz":
		write(map[string]any{"ready": true})
	case "/event":
		write(map[string]any{"status": "ok"})
	case "/log/watch":
		var ev map[string]any
		_ = json.NewDecoder(r.Body).Decode(&ev)
		if it, _ := ev["item_id"].(string); strings.HasSuffix(it, "-b") {
			f.fresh = it
		}
		id, _ := ev["event_id"].(string)
		st := map[bool]string{false: "ok", true: "duplicate"}[f.seen[id]]
		f.seen[id] = true
		write(map[string]any{"status": st})
	case "/reco":
		var items []string
		for i := 0; i < 19; i++ {
			items = append(items, fmt.Sprintf("popular-%d", i))
		}
		if f.fresh != "" && f.explore(r.URL.Query().Get("user_id")) {
			items = append(items, f.fresh)
		}
		write(map[string]any{"request_id": "r", "items": items})
	case "/healthz":
		write(map[string]any{"event_backbone": map[string]any{"outbox": map[string]any{"pending": 0, "publishing": 0, "dead": 0}}})
	case "/metrics/reco":
		write(map[string]any{"sample_size": 40})
	}
}

// consumer_applied must see an effect of the probe's watch. A list that ignores it can still
// lack the watched item A (never listed in a busy catalogue) and show the neighbour B through
// an exploration slot, for everyone or, seeded per user, for the probe user before and after
// the watch alike.
func TestConsumerAppliedFailsWhenTheWatchChangedNothing(t *testing.T) {
	for _, tc := range []struct {
		name    string
		explore func(user string) bool
	}{
		{"neighbour explored for every user", func(string) bool { return true }},
		// The probe user is smoke-<run>-user; the baseline user has another suffix.
		{"neighbour explored for the probe user only", func(u string) bool { return strings.HasSuffix(u, "-user") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(&lostWatchAPI{explore: tc.explore, seen: map[string]bool{}})
			defer srv.Close()
			cfg := fastCfg(srv.URL)
			cfg.ConsumerTimeoutSec = 1
			r := smoke.Run(context.Background(), cfg)
			p := r.Consumer
			if r.Checks[smoke.CheckConsumerApplied] != "fail" {
				t.Fatalf("consumer_applied %s (%s): before %v, after %v, baseline %v", r.Checks[smoke.CheckConsumerApplied],
					r.Details[smoke.CheckConsumerApplied], p.ListBeforeWatch, p.ListAfter, p.BaselineList)
			}
			if p.NeighbourRank == nil || !p.WatchedExcluded {
				t.Errorf("the fake must list B and not A for the probe user: %v", p.ListAfter)
			}
			if d := r.Details[smoke.CheckConsumerApplied]; !strings.Contains(d, "before the watch position 19") {
				t.Errorf("detail %q does not give B's positions", d)
			}
		})
	}
}

func TestSmokeOutboxChecks(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*fakeStack)
		want   string
	}{
		{"dead rows", func(f *fakeStack) { f.dead = 2 }, "dead=2"},
		{"no snapshot", func(f *fakeStack) { f.outboxNil = true }, "no event_backbone.outbox snapshot"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			tc.mutate(f)
			srv := httptest.NewServer(f)
			defer srv.Close()
			r := smoke.Run(context.Background(), fastCfg(srv.URL))
			if r.Checks[smoke.CheckOutboxSettled] != "fail" || !strings.Contains(r.Details[smoke.CheckOutboxSettled], tc.want) {
				t.Fatalf("outbox check %s: %s", r.Checks[smoke.CheckOutboxSettled], r.Details[smoke.CheckOutboxSettled])
			}
		})
	}
}

func TestSmokeReportsConnectionErrorsInsteadOfCrashing(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	start := time.Now()
	r := smoke.Run(context.Background(), fastCfg(url))
	if r.OK() || r.Status != "fail" {
		t.Fatal("a dead stack passed")
	}
	for _, c := range smoke.AllChecks {
		if r.Checks[c] != "fail" {
			t.Errorf("%s = %s, want fail", c, r.Checks[c])
		}
	}
	if !strings.Contains(r.Details[smoke.CheckReadyz], "connection refused") {
		t.Errorf("readyz detail %q does not name the connection error", r.Details[smoke.CheckReadyz])
	}
	if r.Details[smoke.CheckOutboxSettled] != "not run: readyz failed" {
		t.Errorf("outbox detail %q", r.Details[smoke.CheckOutboxSettled])
	}
	// The later steps do not wait out their own timeouts once readyz failed.
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("a dead stack took %s to report", el)
	}
}

func TestSmokeUnreadyStack(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(503)
		_, _ = w.Write([]byte(`{"detail": {"ready": false, "checks": {"db": false}}}`))
	}))
	defer srv.Close()
	r := smoke.Run(context.Background(), fastCfg(srv.URL))
	if r.Checks[smoke.CheckReadyz] != "fail" || !strings.Contains(r.Details[smoke.CheckReadyz], `status 503`) || !strings.Contains(r.Details[smoke.CheckReadyz], `"db":false`) {
		t.Fatalf("readyz %s: %s", r.Checks[smoke.CheckReadyz], r.Details[smoke.CheckReadyz])
	}
}

// TestSmokeRerunsAgainstASmallStack: smoke run again and again against one small stack (five
// seeded items, watched items excluded) still finds lists to watch: its traffic users are new
// each run, where the original's five fixed users had watched the whole catalogue by the
// third run and every answer came back empty.
func TestSmokeRerunsAgainstASmallStack(t *testing.T) {
	f := newFake()
	f.seedsOnly, f.delay = true, 0 // a watch is excluded from the next answer
	srv := httptest.NewServer(f)
	defer srv.Close()
	cfg := fastCfg(srv.URL)
	cfg.RecoRequests = 10 // two watches per traffic user and run
	for run := 1; run <= 3; run++ {
		r := smoke.Run(context.Background(), cfg)
		if r.Checks[smoke.CheckWatchTraffic] != "pass" || r.Traffic.EmptyReco != 0 {
			t.Fatalf("run %d: watch_traffic %s, %d empty answers of %d: %s", run, r.Checks[smoke.CheckWatchTraffic],
				r.Traffic.EmptyReco, r.Traffic.RecoOK, r.Details[smoke.CheckWatchTraffic])
		}
	}
}

func TestSmokeSendsTheAPIKey(t *testing.T) {
	const key = "sk-smoke-7f3a9c"
	both := map[string][]string{key: {"client", "ops"}}
	for _, tc := range []struct {
		name    string
		keys    map[string][]string
		apiKey  string
		pass    bool
		failing map[string]string // check -> text its detail must contain
	}{
		{name: "no authentication, no key", pass: true},
		{name: "key with both scopes", keys: both, apiKey: key, pass: true},
		{name: "key required but not given", keys: both, failing: map[string]string{
			smoke.CheckSeedEvents:  "the server requires an API key: --api-key / RECSYS_API_KEY",
			smoke.CheckRecoTraffic: "requires an API key", smoke.CheckRecoMetricsSamples: "requires an API key"}},
		{name: "wrong key", keys: both, apiKey: "sk-wrong-1", failing: map[string]string{smoke.CheckSeedEvents: "did not accept the API key"}},
		{name: "key without the ops scope", keys: map[string][]string{key: {"client"}}, apiKey: key, failing: map[string]string{
			smoke.CheckRecoMetricsSamples: "lacks the ops scope this path needs\"}: the API key lacks a scope"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &apikeytest.Gate{Next: newFake(), Keys: tc.keys}
			srv := httptest.NewServer(g)
			defer srv.Close()
			cfg := fastCfg(srv.URL)
			cfg.APIKey, cfg.ReadyTimeoutSec, cfg.ConsumerTimeoutSec, cfg.RecoRequests = tc.apiKey, 1, 1, 5
			r := smoke.Run(context.Background(), cfg)
			var buf strings.Builder
			if err := r.WriteJSON(&buf); err != nil {
				t.Fatal(err)
			}
			if r.OK() != tc.pass {
				t.Fatalf("status %s, want pass=%t: %s", r.Status, tc.pass, buf.String())
			}
			for check, want := range tc.failing {
				if r.Checks[check] != "fail" || !strings.Contains(r.Details[check], want) {
					t.Errorf("%s %s: %q, want a failure naming %q", check, r.Checks[check], r.Details[check], want)
				}
			}
			if tc.apiKey != "" && strings.Contains(buf.String(), tc.apiKey) {
				t.Errorf("the report contains the API key: %s", buf.String())
			}
			want := ""
			if tc.apiKey != "" {
				want = "Bearer " + tc.apiKey
			}
			seen := g.Requests()
			for i, req := range seen {
				if req.Authorization != want {
					t.Fatalf("request %d of %d (%s %s) had Authorization %q, want %q", i+1, len(seen), req.Method, req.Path, req.Authorization, want)
				}
			}
			if len(seen) < 10 {
				t.Fatalf("only %d requests seen", len(seen))
			}
		})
	}
}

// TestClampSeconds: a seconds setting below its minimum, NaN or infinite (which Go's max lets
// through, and which has no duration) is clamped to a usable value, as the original tool
// clamps the values below its minimums.
func TestClampSeconds(t *testing.T) {
	for _, tc := range []struct {
		in, want float64
	}{{0, 1}, {-5, 1}, {math.NaN(), 1}, {math.Inf(1), 86400}, {math.Inf(-1), 1}, {30, 30}} {
		c := smoke.DefaultConfig()
		c.ConsumerTimeoutSec, c.ReadyTimeoutSec = tc.in, tc.in
		c.Clamp()
		if c.ConsumerTimeoutSec != tc.want || c.ReadyTimeoutSec != tc.want {
			t.Errorf("clamp of %v: consumer %v ready %v, want %v", tc.in, c.ConsumerTimeoutSec, c.ReadyTimeoutSec, tc.want)
		}
	}
}

// popularityOnlyAPI applies every watch at once but has lost co-visitation: /reco lists the
// items by watch count (ties by id) without the user's own, under a few more popular ones.
type popularityOnlyAPI struct {
	mu      sync.Mutex
	watches map[string][]string // user -> items
	seen    map[string]bool
}

func (f *popularityOnlyAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	write := func(v any) { w.Header().Set("Content-Type", "application/json"); _ = json.NewEncoder(w).Encode(v) }
	switch r.URL.Path {
	case "/readyz":
		write(map[string]any{"ready": true})
	case "/event":
		write(map[string]any{"status": "ok"})
	case "/log/watch":
		var ev map[string]any
		_ = json.NewDecoder(r.Body).Decode(&ev)
		id, _ := ev["event_id"].(string)
		st := map[bool]string{false: "ok", true: "duplicate"}[f.seen[id]]
		if !f.seen[id] {
			u, it := ev["user_id"].(string), ev["item_id"].(string)
			f.watches[u] = append(f.watches[u], it)
		}
		f.seen[id] = true
		write(map[string]any{"status": st})
	case "/reco":
		count := map[string]int{}
		for i := 0; i < 5; i++ {
			count[fmt.Sprintf("popular-%d", i)] = 1000
		}
		for _, items := range f.watches {
			for _, it := range items {
				count[it]++
			}
		}
		mine := f.watches[r.URL.Query().Get("user_id")]
		var items []string
		for it := range count {
			if !slices.Contains(mine, it) {
				items = append(items, it)
			}
		}
		slices.SortFunc(items, func(a, b string) int {
			if count[a] != count[b] {
				return count[b] - count[a]
			}
			return strings.Compare(a, b)
		})
		write(map[string]any{"request_id": "r", "items": items[:min(20, len(items))]})
	case "/healthz":
		write(map[string]any{"event_backbone": map[string]any{"outbox": map[string]any{"pending": 0, "publishing": 0, "dead": 0}}})
	case "/metrics/reco":
		write(map[string]any{"sample_size": 40})
	}
}

// Excluding the watched item A moves every item ranked below it up one place: a stack that
// applies watches but lost co-visitation had B (ranked just below A, which has one watch
// more) one place higher than before the watch and than for a user without history, and
// passed consumer_applied. B must beat its positions in those lists with A left out.
func TestConsumerAppliedFailsWithoutCoVisitation(t *testing.T) {
	srv := httptest.NewServer(&popularityOnlyAPI{watches: map[string][]string{}, seen: map[string]bool{}})
	defer srv.Close()
	cfg := fastCfg(srv.URL)
	cfg.ConsumerTimeoutSec = 1
	r := smoke.Run(context.Background(), cfg)
	p := r.Consumer
	if r.Checks[smoke.CheckConsumerApplied] != "fail" {
		t.Fatalf("consumer_applied %s (%s): before %v, after %v, baseline %v", r.Checks[smoke.CheckConsumerApplied],
			r.Details[smoke.CheckConsumerApplied], p.ListBeforeWatch, p.ListAfter, p.BaselineList)
	}
	if !p.WatchedExcluded || p.NeighbourRank == nil {
		t.Errorf("the fake must list B and not A for the probe user: %v", p.ListAfter)
	}
}

// A base URL may carry a gateway's credentials (https://user:password@host); the report,
// which CI archives, named it with its password.
func TestReportHidesTheBaseURLPassword(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"detail":"down"}`, http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	cfg := smoke.DefaultConfig()
	cfg.BaseURL = strings.Replace(srv.URL, "http://", "http://ci:s3cret-pw@", 1)
	cfg.ReadyTimeoutSec, cfg.PollSec = 0.1, 0.05
	b, err := json.Marshal(smoke.Run(context.Background(), cfg))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "s3cret-pw") || !strings.Contains(string(b), "ci:REDACTED@") {
		t.Errorf("report: %s", b)
	}
}
