package reco

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"recsys/pkg/features"
	"recsys/pkg/httpx"
	"recsys/pkg/ranking"
)

func watchEv(user, item string, ts int64, id string) features.Interaction {
	pct := 95.0
	return features.Interaction{Kind: features.KindWatch, EventID: id, UserID: user, TsMs: ts, ItemID: item, PercentWatched: &pct}
}

func TestRecoExcludesWatchedAndRanksNeighboursFirst(t *testing.T) {
	h := newHarness(t, nil)
	h.redis.apply(watchEv("u1", "a", time.Now().UnixMilli(), "u1-a"))
	r := h.get("/reco?user_id=u1&session_id=s1&k=10")
	if r.code != 200 {
		t.Fatalf("code %d body %v", r.code, r.body)
	}
	items := r.items()
	if indexOf(items, "a") >= 0 {
		t.Fatalf("watched item a recommended: %v", items)
	}
	if len(items) < 2 || items[0] != "b" || items[1] != "c" {
		t.Fatalf("items %v: want a's co-visitation neighbours b then c first", items)
	}
	if r.body["strategy"] != ranking.StrategyCovisHybrid || r.body["model_version"] != ranking.ModelVersionWeighted {
		t.Fatalf("strategy %v model %v", r.body["strategy"], r.body["model_version"])
	}
	if r.body["request_id"] != r.header.Get("X-Request-ID") || r.body["request_id"] == "" {
		t.Fatalf("request_id %v, header %q", r.body["request_id"], r.header.Get("X-Request-ID"))
	}
}

func TestImpressionFatigueDemotesItemsShownWithoutWatch(t *testing.T) {
	h := newHarness(t, nil)
	now := time.Now().UnixMilli()
	h.redis.apply(watchEv("f1", "a", now-60_000, "f1-a"))
	before := h.get("/reco?user_id=f1&session_id=s&k=10&x_autolog_impressions=false").items()
	if indexOf(before, "b") != 0 {
		t.Fatalf("before fatigue b should lead: %v", before)
	}
	for i := 0; i < 8; i++ {
		h.redis.apply(features.Interaction{Kind: features.KindImpression, EventID: fmt.Sprintf("imp-%d", i), UserID: "f1",
			TsMs: now - 50_000 + int64(i)*1000, Items: []string{"b"}})
	}
	after := h.get("/reco?user_id=f1&session_id=s&k=10&x_autolog_impressions=false").items()
	if ib := indexOf(after, "b"); ib == 0 || (ib >= 0 && ib <= indexOf(after, "c")) {
		t.Fatalf("after 8 impressions without a watch b should fall behind c: before %v after %v", before, after)
	}
}

func TestColdStartUsesTrendingPopularAndExploration(t *testing.T) {
	// The five newest items are f0..f4: exploration picks among them.
	h := newHarness(t, func(c *Config) { c.Ranking.FreshN, c.Ranking.ExplorationShare = 5, 0.1 })
	r := h.get("/reco?user_id=brand-new-user&session_id=s&k=20")
	if r.code != 200 || r.body["strategy"] != ranking.StrategyColdStart {
		t.Fatalf("code %d strategy %v", r.code, r.body["strategy"])
	}
	items := r.items()
	if len(items) != 20 {
		t.Fatalf("got %d items, want 20: %v", len(items), items)
	}
	popular, fresh := 0, 0
	for _, it := range items {
		switch {
		case strings.HasPrefix(it, "p"):
			popular++
		case strings.HasPrefix(it, "f"):
			fresh++
		}
	}
	if popular < 10 {
		t.Fatalf("cold start should be mostly popular/trending items, got %v", items)
	}
	if fresh != 2 {
		t.Fatalf("cold start should give 2 of 20 slots (exploration share 0.1) to fresh items, got %v", items)
	}
}

func TestKBoundsNoDuplicatesAndDeterminism(t *testing.T) {
	h := newHarness(t, nil)
	h.redis.apply(watchEv("u2", "a", time.Now().UnixMilli(), "u2-a"))
	for _, k := range []int{1, 2, 5, 20, 37, 200} {
		for _, user := range []string{"u2", "brand-new"} {
			q := fmt.Sprintf("/reco?user_id=%s&session_id=s&k=%d&x_autolog_impressions=0", user, k)
			r1, r2 := h.get(q), h.get(q)
			a, b := r1.items(), r2.items()
			if r1.code != 200 || len(a) == 0 || len(a) > k {
				t.Fatalf("%s: code %d, %d items", q, r1.code, len(a))
			}
			// The catalog has 38 items (u2 watched one): a short list only when it runs out.
			if want := min(k, 38); user == "brand-new" && len(a) != want {
				t.Fatalf("%s: %d items, want %d", q, len(a), want)
			}
			seen := map[string]bool{}
			for _, it := range a {
				if seen[it] {
					t.Fatalf("%s: duplicate %q in %v", q, it, a)
				}
				seen[it] = true
			}
			if fmt.Sprint(a) != fmt.Sprint(b) {
				t.Fatalf("%s: not deterministic:\n%v\n%v", q, a, b)
			}
		}
	}
	if got := h.get("/recommend?user_id=u2").items(); len(got) != 10 {
		t.Fatalf("/recommend default k: %d items, want 10", len(got))
	}
}

func TestValidationIs422NamingTheField(t *testing.T) {
	h := newHarness(t, nil)
	long := strings.Repeat("u", 200)
	cases := []struct {
		query, field, typ string
	}{
		{"user_id=" + long + "&session_id=s", "user_id", "string_too_long"},
		{"user_id=u&session_id=" + strings.Repeat("s", 129), "session_id", "string_too_long"},
		{"user_id=&session_id=s", "user_id", "string_too_short"},
		{"user_id=u&session_id=", "session_id", "string_too_short"},
		{"session_id=s", "user_id", "missing"},
		{"user_id=u", "session_id", "missing"},
		{"user_id=" + url.QueryEscape("a b") + "&session_id=s", "user_id", "string_pattern_mismatch"},
		{"user_id=" + url.QueryEscape("x\x00y") + "&session_id=s", "user_id", "string_pattern_mismatch"},
		{"user_id=u&session_id=" + url.QueryEscape(`s"1`), "session_id", "string_pattern_mismatch"},
		{"user_id=%FF&session_id=s", "user_id", "string_unicode"},
		{"user_id=u&session_id=s&k=0", "k", "greater_than_equal"},
		{"user_id=u&session_id=s&k=201", "k", "less_than_equal"},
		{"user_id=u&session_id=s&k=99999999999999999999999", "k", "less_than_equal"},
		{"user_id=u&session_id=s&k=abc", "k", "int_parsing"},
		{"user_id=u&session_id=s&k=1.5", "k", "int_parsing"},
		{"user_id=u&session_id=s&x_autolog_impressions=maybe", "x_autolog_impressions", "bool_parsing"},
		// A value that cannot be decoded names its field, never "Field required" or a default.
		{"user_id=%zz&session_id=s", "user_id", "value_error"},
		{"user_id=a;b&session_id=s", "user_id", "value_error"},
		{"user_id=u&user_id=%&session_id=s", "user_id", "value_error"},
		{"user%5Fid=%zz&session_id=s", "user_id", "value_error"},
		{"user_id=u&session_id=s%2", "session_id", "value_error"},
		{"user_id=u&session_id=s&k=1;2", "k", "value_error"},
		{"user_id=u&session_id=s&x_autolog_impressions=%zz", "x_autolog_impressions", "value_error"},
	}
	for _, c := range cases {
		r := h.get("/reco?" + c.query)
		if r.code != 422 {
			t.Errorf("%s: code %d, want 422 (%v)", c.query, r.code, r.body)
			continue
		}
		detail, _ := r.body["detail"].([]any)
		found := false
		for _, d := range detail {
			m, _ := d.(map[string]any)
			loc, _ := m["loc"].([]any)
			if len(loc) == 2 && loc[0] == "query" && loc[1] == c.field && m["type"] == c.typ && m["msg"] != "" {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: detail %v does not name %s with type %s", c.query, detail, c.field, c.typ)
		}
	}
	// Accepted forms.
	for _, q := range []string{
		"user_id=user@example.com&session_id=sess:1/2&k=+5&x_autolog_impressions=YES",
		"user_id=" + url.QueryEscape("ユーザー42") + "&session_id=s&k=%2010%20&x_autolog_impressions=off",
		"user_id=" + strings.Repeat("u", 128) + "&session_id=s&k=1&k=3",
	} {
		if r := h.get("/reco?" + q); r.code != 200 {
			t.Errorf("%s: code %d %v", q, r.code, r.body)
		}
	}
	// The last repeated value wins, as in Starlette.
	if n := len(h.get("/reco?user_id=u&session_id=s&k=1&k=3&x_autolog_impressions=false").items()); n != 3 {
		t.Errorf("k=1&k=3 gave %d items, want 3", n)
	}
	if r := h.get("/recommend?user_id=" + long); r.code != 422 {
		t.Errorf("/recommend long user_id: %d", r.code)
	}
	// 4xx are counted in the window but are not errors.
	w := h.get("/metrics/reco")
	sc := w.body["status_counts"].(map[string]any)
	if sc["4xx"].(float64) < float64(len(cases)) || w.body["error_rate_pct"].(float64) != 0 {
		t.Errorf("window after 4xx: %v", w.body)
	}
}

// The original (Starlette) kept a badly escaped value as text and the last value of a
// repeated parameter won, so an undecodable pair followed by a good one served the good one;
// ours refused the whole request because the undecodable pair made its parameter "bad" for
// good. Only the last pair naming a parameter decides, and other parameters are untouched.
func TestUndecodablePairOverriddenByALaterOne(t *testing.T) {
	h := newHarness(t, nil)
	const base = "user_id=u&session_id=s&x_autolog_impressions=false"
	for _, c := range []struct {
		path  string
		code  int
		items int    // the list length when code is 200
		field string // the 422's field otherwise
	}{
		{"/reco?" + base + "&k=%zz&k=5", 200, 5, ""},
		{"/reco?" + base + "&k=1;2&k=4", 200, 4, ""},
		{"/reco?" + base + "&k=%&k=%zz&k=3", 200, 3, ""},
		{"/reco?user_id=%zz&user_id=u&session_id=s&x_autolog_impressions=false&k=2", 200, 2, ""},
		{"/reco?user_id=u&session_id=a;b&session_id=s&x_autolog_impressions=false&k=2", 200, 2, ""},
		{"/reco?user_id=u&session_id=s&x_autolog_impressions=%zz&x_autolog_impressions=false&k=2", 200, 2, ""},
		{"/reco?x=%zz&" + base + "&k=3", 200, 3, ""},
		{"/reco?%zz=1&" + base + "&k=3&y=a;b", 200, 3, ""},
		{"/recommend?user_id=u&k=%zz&k=4", 200, 4, ""},
		{"/recommend?user_id=%2&user_id=u&k=2", 200, 2, ""},
		// The last pair decides the other way too: a bad last value is a 422 naming it.
		{"/reco?" + base + "&k=5&k=%zz", 422, 0, "k"},
		{"/recommend?user_id=u&k=4&k=%zz", 422, 0, "k"},
		{"/reco?user_id=u&user_id=%zz&session_id=s", 422, 0, "user_id"},
	} {
		r := h.get(c.path)
		if r.code != c.code {
			t.Errorf("%s: code %d, want %d (%v)", c.path, r.code, c.code, r.body)
			continue
		}
		if c.code == 200 {
			if n := len(r.items()); n != c.items {
				t.Errorf("%s: %d items, want %d", c.path, n, c.items)
			}
			continue
		}
		detail, _ := r.body["detail"].([]any)
		if len(detail) != 1 || fmt.Sprint(detail[0].(map[string]any)["loc"]) != "[query "+c.field+"]" {
			t.Errorf("%s: detail %v, want one entry naming %s", c.path, detail, c.field)
		}
	}
}

func TestRecommendLegacyShape(t *testing.T) {
	h := newHarness(t, nil)
	h.redis.apply(watchEv("u3", "a", time.Now().UnixMilli(), "u3-a"))
	r := h.get("/recommend?user_id=u3&k=5")
	if r.code != 200 || r.body["user_id"] != "u3" || len(r.items()) != 5 {
		t.Fatalf("%d %v", r.code, r.body)
	}
	reason, _ := r.body["reason"].(map[string]any)
	srcs := fmt.Sprint(reason["sources"])
	if reason["type"] != "hybrid" || !strings.Contains(srcs, "co_visitation") || !strings.Contains(srcs, "trending") {
		t.Fatalf("reason %v", reason)
	}
	if h.writer.calls.Load() != 0 {
		t.Fatal("/recommend must not log impressions")
	}
}

type panicRanker struct{}

func (panicRanker) Rank(*ranking.Snapshot, int) ranking.Result { panic("ranker bug") }

func TestPanicIsA500InTheWindow(t *testing.T) {
	h := newHarness(t, nil)
	h.r.ranker = panicRanker{}
	r := h.get("/reco?user_id=u&session_id=s")
	if r.code != 500 || r.header.Get("X-Request-ID") == "" {
		t.Fatalf("%d %v %v", r.code, r.body, r.header)
	}
	w := h.get("/metrics/reco").body
	if sc := w["status_counts"].(map[string]any); sc["5xx"].(float64) != 1 || w["error_rate_pct"].(float64) != 100 {
		t.Fatalf("window %v", w)
	}
}

// A client that closes its connection before a list is made is answered 499 and counted as
// 4xx: a 503 put it in the 5xx share that error rates and the release guardrail read,
// although nothing failed on the server.
func TestClientGoneIsNotAServerError(t *testing.T) {
	// Redis is down, so the request waits on PostgreSQL, whose read sees the client go.
	h := newHarness(t, func(c *Config) { c.ItemCacheTTL, c.CacheGlobalLists = 0, false })
	h.redis.fail.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rec := httptest.NewRecorder()
	h.e.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/reco?user_id=u&session_id=s", nil).WithContext(ctx))
	if rec.Code != httpx.StatusClientClosedRequest {
		t.Fatalf("status %d (%s), want %d", rec.Code, rec.Body, httpx.StatusClientClosedRequest)
	}
	w := h.get("/metrics/reco").body
	if sc := w["status_counts"].(map[string]any); sc["5xx"].(float64) != 0 || sc["4xx"].(float64) != 1 {
		t.Errorf("window %v, want the abandoned request as a 4xx", w)
	}
}

// blockingRanker holds every Rank until release is closed, to keep requests in flight.
type blockingRanker struct {
	ranking.Ranker
	entered chan struct{}
	release chan struct{}
}

func (b blockingRanker) Rank(s *ranking.Snapshot, k int) ranking.Result {
	b.entered <- struct{}{}
	<-b.release
	return b.Ranker.Rank(s, k)
}

func TestOverloadIsA503WithRetryAfterInTheWindow(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxInFlight, c.QueueTimeout = 1, 20*time.Millisecond })
	br := blockingRanker{Ranker: h.r.ranker, entered: make(chan struct{}, 1), release: make(chan struct{})}
	h.r.ranker = br
	first := make(chan response, 1)
	go func() { first <- h.get("/reco?user_id=u1&session_id=s") }()
	<-br.entered // the one slot is taken

	for _, path := range []string{"/reco?user_id=u2&session_id=s", "/recommend?user_id=u2"} {
		r := h.get(path)
		if d, _ := r.body["detail"].(string); r.code != 503 || r.header.Get("Retry-After") != "1" || !strings.Contains(d, "overloaded") {
			t.Errorf("GET %s while the slot is taken: %d %v %v, want 503 overloaded with Retry-After", path, r.code, r.body, r.header)
		}
	}
	close(br.release)
	if r := <-first; r.code != 200 || len(r.items()) == 0 {
		t.Fatalf("the admitted request: %d %v", r.code, r.body)
	}
	if r := h.get("/reco?user_id=u3&session_id=s"); r.code != 200 {
		t.Errorf("after the overload: %d %v", r.code, r.body)
	}
	w := h.get("/metrics/reco").body
	if sc := w["status_counts"].(map[string]any); sc["5xx"].(float64) != 1 || sc["2xx"].(float64) != 2 {
		t.Errorf("window %v, want the shed /reco as its one 5xx", w)
	}
	var exposition strings.Builder
	h.set.WritePrometheus(&exposition)
	if !strings.Contains(exposition.String(), `recsys_http_shed_total{limiter="reco"} 2`) {
		t.Errorf("metrics lack the 2 shed requests:\n%s", exposition.String())
	}
}

// Every /reco request is recorded, whatever its method (api-contract §2.1: the middleware acts
// on the path /reco with any method, a 405 counted as 4xx), in the Prometheus counter and
// histogram and in the /metrics/reco window (§9.2: one sample per /reco request); the answers
// stay the router's. /recommend and other paths are not recorded; /reco/ is redirected to /reco
// before it reaches the route.
func TestEveryMethodOnRecoIsRecorded(t *testing.T) {
	h := newHarness(t, nil)
	tests := []struct {
		method, path string
		code         int
		allow        string
		recorded     bool
	}{
		{http.MethodGet, "/reco?user_id=m1&session_id=s&k=2", 200, "", true},
		{http.MethodPost, "/reco", 405, "GET", true},
		{http.MethodHead, "/reco", 405, "GET", true},
		{http.MethodPut, "/reco?user_id=m1", 405, "GET", true},
		{http.MethodOptions, "/reco", 405, "GET", true},
		{"PURGE", "/reco", 405, "GET", true},
		{http.MethodPost, "/recommend", 405, "GET", false},
		{http.MethodGet, "/reco/", 307, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			before := h.r.window.Snapshot(time.Now()).SampleSize
			rec := httptest.NewRecorder()
			h.e.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, nil))
			if rec.Code != tc.code || rec.Header().Get("Allow") != tc.allow {
				t.Fatalf("%d Allow %q, want %d %q (body %q)", rec.Code, rec.Header().Get("Allow"), tc.code, tc.allow, rec.Body.String())
			}
			if tc.code == 405 && tc.method != http.MethodHead && rec.Body.String() != `{"detail":"Method Not Allowed"}`+"\n" {
				t.Fatalf("405 body %q", rec.Body.String())
			}
			if got := h.r.window.Snapshot(time.Now()).SampleSize - before; got != map[bool]int64{true: 1, false: 0}[tc.recorded] {
				t.Fatalf("window grew by %d, recorded=%v", got, tc.recorded)
			}
		})
	}
	expo := exposition(h)
	for _, want := range []string{`reco_api_requests_total{status_family="2xx"} 1`, `reco_api_requests_total{status_family="4xx"} 5`, "reco_api_latency_ms_count 6"} {
		if !strings.Contains(expo, want) {
			t.Errorf("exposition lacks %s:\n%s", want, grep(expo, "reco_api_"))
		}
	}
}

// OPTIONS /reco is a method /reco does not serve: 405, a 4xx in /metrics/reco's window, not a
// 2xx that would dilute its latency and error rates.
func TestOptionsOnRecoCountsAs4xx(t *testing.T) {
	h := newHarness(t, nil)
	rec := httptest.NewRecorder()
	h.e.ServeHTTP(rec, httptest.NewRequest(http.MethodOptions, "/reco", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Fatalf("OPTIONS /reco = %d %q, want 405", rec.Code, rec.Body.String())
	}
	w := h.get("/metrics/reco").body
	if sc := w["status_counts"].(map[string]any); sc["4xx"].(float64) != 1 || sc["2xx"].(float64) != 0 {
		t.Errorf("window %v, want OPTIONS /reco as its one 4xx", w)
	}
}

// TestLargeKIsFilledFromTheStoresLists: a catalog of hundreds of items, a cold user asking
// for k=200. The top-100 trending and popular lists overlap (the same items are popular over
// both half-lives), so their union held ~140 items and the list came back short whatever the
// store held; the stores' lists are read long enough for k, on every serving path.
func TestLargeKIsFilledFromTheStoresLists(t *testing.T) {
	for _, tc := range []struct {
		name     string
		mut      func(*Config)
		degrade  func(*harness)
		strategy string
	}{
		{"redis with the cached global lists", nil, nil, ranking.StrategyColdStart},
		{"redis full read", func(c *Config) { c.CacheGlobalLists = false }, nil, ranking.StrategyColdStart},
		{"postgresql", nil, func(h *harness) { h.r.serving.readyMarker.Store(false) }, ranking.StrategyColdStart + "_pg_fallback"},
		{"postgresql full read", func(c *Config) { c.CacheGlobalLists = false }, func(h *harness) { h.r.serving.readyMarker.Store(false) },
			ranking.StrategyColdStart + "_pg_fallback"},
		{"global snapshot", nil, func(h *harness) { h.redis.fail.Store(true); h.pg.fail.Store(true) }, ranking.StrategyColdStart + "_global_snapshot"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.mut)
			now := time.Now().UnixMilli()
			for i := 0; i < 400; i++ {
				for u := 0; u <= i%7; u++ {
					ev := watchEv(fmt.Sprintf("cat-%d", u), fmt.Sprintf("x%03d", i), now-int64(400-i)*1000, fmt.Sprintf("c%d-%d", i, u))
					h.redis.apply(ev)
					h.pg.apply(ev)
				}
			}
			if err := h.r.serving.refreshGlobal(context.Background()); err != nil {
				t.Fatal(err)
			}
			if tc.degrade != nil {
				tc.degrade(h)
			}
			for _, k := range []int{20, 150, 200} {
				r := h.get(fmt.Sprintf("/reco?user_id=newbie&session_id=s&k=%d&x_autolog_impressions=false", k))
				items := r.items()
				if r.code != 200 || r.body["strategy"] != tc.strategy {
					t.Fatalf("k=%d: code %d strategy %v", k, r.code, r.body["strategy"])
				}
				if len(items) != k {
					t.Fatalf("k=%d: %d items for a catalog of 438: %v", k, len(items), items)
				}
				seen := map[string]bool{}
				for _, it := range items {
					if seen[it] {
						t.Fatalf("k=%d: duplicate %s", k, it)
					}
					seen[it] = true
				}
			}
		})
	}
}
