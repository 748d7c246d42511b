package loadgen_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"recsys/pkg/apikey/apikeytest"
	"recsys/pkg/loadgen"
)

func TestPercentilesOnKnownInputs(t *testing.T) {
	start := time.Unix(1000, 0)
	rec := loadgen.NewRecorder(start)
	// 1..1000 ms, one each: the exact order statistics are p50=500, p95=950, p99=990, mean=500.5.
	for i := 1; i <= 1000; i++ {
		st := 200
		if i%100 == 0 {
			st = 503
		}
		rec.Add(loadgen.Result{Endpoint: "reco", At: start.Add(time.Duration(i) * time.Millisecond), Latency: time.Duration(i) * time.Millisecond, Status: st,
			Err: map[bool]string{true: "", false: "HTTPError: 503"}[st == 200]})
	}
	snap := rec.Snapshot(2 * time.Second)
	s := snap.Summary
	for _, c := range []struct {
		name string
		got  *float64
		want float64
	}{{"p50", s.LatencyMs.P50, 500}, {"p95", s.LatencyMs.P95, 950}, {"p99", s.LatencyMs.P99, 990}, {"p99.9", s.LatencyMs.P999, 999}} {
		// HDR with 3 significant digits: within 0.1 % of the exact value.
		if c.got == nil || math.Abs(*c.got-c.want)/c.want > 0.001 {
			t.Errorf("%s = %v, want %v ±0.1%%", c.name, c.got, c.want)
		}
	}
	if *s.LatencyMs.Mean != 500.5 || *s.LatencyMs.Max != 1000 {
		t.Errorf("mean %v max %v, want exact 500.5 and 1000", *s.LatencyMs.Mean, *s.LatencyMs.Max)
	}
	if s.RequestsTotal != 1000 || s.RequestsFailed != 10 || s.ErrorRatePct != 1 || s.RPS != 500 {
		t.Errorf("summary %+v", s)
	}
	if s.StatusCodes["200"] != 990 || s.StatusCodes["503"] != 10 || s.Errors["HTTPError: 503"] != 10 {
		t.Errorf("status codes %v errors %v", s.StatusCodes, s.Errors)
	}
	if len(snap.Timeline) != 2 || snap.Timeline[0].Requests != 999 || snap.Timeline[1].Requests != 1 {
		t.Errorf("timeline %+v", snap.Timeline)
	}
	curve := snap.Percentiles["reco"]
	if curve[0].Percentile != 0 || curve[len(curve)-1].Percentile != 100 || curve[len(curve)-1].LatencyMs != 1000 {
		t.Errorf("percentile curve %+v", curve)
	}
	for i := 1; i < len(curve); i++ {
		if curve[i].LatencyMs < curve[i-1].LatencyMs {
			t.Errorf("percentile curve not monotonic at %d: %+v", i, curve)
		}
	}
}

func TestEmptyRunReportsFullErrorRate(t *testing.T) {
	s := loadgen.NewRecorder(time.Now()).Snapshot(time.Second).Summary
	if s.ErrorRatePct != 100 || s.LatencyMs.P50 != nil {
		t.Fatalf("empty summary %+v", s)
	}
}

// fakeAPI answers /reco with a fixed list and records watch bodies.
type fakeAPI struct {
	mu       sync.Mutex
	watches  []map[string]any
	batches  int
	recos    atomic.Int64
	failEvry int64         // every n-th /reco answers 500
	stallAt  int64         // the n-th /reco sleeps stall
	stall    time.Duration // ...for this long
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/reco":
		n := f.recos.Add(1)
		if f.stallAt > 0 && n == f.stallAt {
			time.Sleep(f.stall)
		}
		if f.failEvry > 0 && n%f.failEvry == 0 {
			http.Error(w, `{"detail":"boom"}`, 500)
			return
		}
		if r.URL.Query().Get("user_id") == "" || r.URL.Query().Get("k") != "3" {
			http.Error(w, "bad query", http.StatusUnprocessableEntity)
			return
		}
		_, _ = w.Write([]byte(`{"request_id":"req-` + r.URL.Query().Get("session_id") + `","items":["a","b","c"],"model_version":"m","strategy":"s"}`))
	case "/log/watch":
		var m map[string]any
		b, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(b, &m); err != nil {
			http.Error(w, "bad json", 400)
			return
		}
		f.mu.Lock()
		f.watches = append(f.watches, m)
		f.mu.Unlock()
		_, _ = w.Write([]byte(`{"status":"ok"}`))
	case "/log/batch":
		var m struct {
			Events []map[string]any `json:"events"`
		}
		if err := json.NewDecoder(r.Body).Decode(&m); err != nil || len(m.Events) != 7 {
			http.Error(w, "bad batch", http.StatusUnprocessableEntity)
			return
		}
		f.mu.Lock()
		f.batches++
		f.mu.Unlock()
		_, _ = w.Write([]byte(`{"status":"ok"}`))
	case "/contract":
		_, _ = w.Write([]byte(`{"sla_targets":{"reco_p95_ms":120,"reco_p99_ms":200,"api_error_rate_pct":1.0}}`))
	case "/metrics/reco":
		_, _ = w.Write([]byte(`{"sample_size": 7}`))
	default:
		http.NotFound(w, r)
	}
}

func baseCfg(url string) loadgen.Config {
	c := loadgen.DefaultConfig()
	c.BaseURL, c.Requests, c.Concurrency, c.K, c.Warmup, c.Duration = url, 200, 4, 3, 5, 30*time.Second
	return c
}

func TestMixedScenarioWatchesShownItems(t *testing.T) {
	f := &fakeAPI{}
	srv := httptest.NewServer(f)
	defer srv.Close()
	cfg := baseCfg(srv.URL)
	cfg.Scenario, cfg.WatchProb, cfg.OrganicWatchProb, cfg.Autolog = loadgen.ScenarioMixed, 0.5, 0.2, true
	r, err := loadgen.Run(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	reco := r.Endpoints["reco"]
	watch := r.Endpoints["watch"]
	if reco.RequestsTotal != 200 || r.Operations != 200 || r.StoppedBy != "requests" {
		t.Fatalf("reco requests %d ops %d stopped by %s", reco.RequestsTotal, r.Operations, r.StoppedBy)
	}
	if watch.RequestsTotal < 60 || watch.RequestsTotal > 220 || r.Summary.RequestsTotal != reco.RequestsTotal+watch.RequestsTotal {
		t.Fatalf("watches %d total %d", watch.RequestsTotal, r.Summary.RequestsTotal)
	}
	shown, organic := 0, 0
	f.mu.Lock()
	for _, w := range f.watches {
		rid, _ := w["request_id"].(string)
		switch {
		case strings.HasPrefix(rid, "req-session-"):
			shown++
			if it := w["item_id"]; it != "a" && it != "b" && it != "c" {
				t.Errorf("watch of an item that was not shown: %v", w)
			}
		case strings.HasPrefix(rid, "organic-"):
			organic++
		default:
			t.Errorf("watch with unexpected request_id: %v", w)
		}
		if wt, _ := w["watch_time_sec"].(float64); wt < 20 || wt > 120 {
			t.Errorf("watch_time_sec %v outside [20,120]", wt)
		}
	}
	f.mu.Unlock()
	if shown == 0 || organic == 0 {
		t.Fatalf("shown-item watches %d, organic %d", shown, organic)
	}
	if r.Verdict != "pass" || r.SLA.Source != "reco" || r.SLA.Targets["reco_p95_ms"] != 120.0 {
		t.Fatalf("verdict %s sla %+v", r.Verdict, r.SLA)
	}
	if m, _ := r.RecoMetricsSnapshot.(map[string]any); m["sample_size"] != 7.0 {
		t.Fatalf("reco metrics snapshot %v", r.RecoMetricsSnapshot)
	}
	var html bytes.Buffer
	if err := r.WriteHTML(&html); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<svg", "latency over time", "latency by percentile", "<polyline", ">watch<"} {
		if !strings.Contains(html.String(), want) {
			t.Errorf("HTML report lacks %q", want)
		}
	}
	if strings.Contains(html.String(), "<script") || strings.Contains(html.String(), "http://www.w3.org/2000/svg\" src") {
		t.Error("HTML report is not self-contained")
	}
}

func TestIngestBatchScenario(t *testing.T) {
	f := &fakeAPI{}
	srv := httptest.NewServer(f)
	defer srv.Close()
	cfg := baseCfg(srv.URL)
	cfg.Scenario, cfg.IngestMode, cfg.BatchSize, cfg.Requests = loadgen.ScenarioIngest, "batch", 7, 30
	var bar bytes.Buffer
	r, err := loadgen.Run(context.Background(), cfg, &bar)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(bar.String(), "load ingest") {
		t.Errorf("no progress bar drawn: %q", bar.String())
	}
	if r.Endpoints["batch"].RequestsOK != 30 || r.Summary.ErrorRatePct != 0 {
		t.Fatalf("batch summary %+v", r.Endpoints["batch"])
	}
}

func TestErrorThresholdFailsTheRun(t *testing.T) {
	f := &fakeAPI{failEvry: 5} // 20 % errors
	srv := httptest.NewServer(f)
	defer srv.Close()
	cfg := baseCfg(srv.URL)
	cfg.Warmup = 0
	r, err := loadgen.Run(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Summary.ErrorRatePct != 20 || !r.Failed() || r.Summary.Errors["HTTPError: 500"] != 40 {
		t.Fatalf("error rate %v failed %v errors %v", r.Summary.ErrorRatePct, r.Failed(), r.Summary.Errors)
	}
	cfg.MaxErrorRatePct = 25
	if r, _ = loadgen.Run(context.Background(), cfg, nil); r.Failed() {
		t.Fatalf("20 %% errors failed a 25 %% threshold")
	}
}

func TestConnectionErrorsAreCountedNotFatal(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // nothing listens there any more
	cfg := baseCfg(url)
	cfg.Requests, cfg.Warmup = 10, 0
	r, err := loadgen.Run(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Summary.RequestsFailed != 10 || r.Summary.StatusCodes["0"] != 10 || !r.Failed() {
		t.Fatalf("summary %+v", r.Summary)
	}
	for msg := range r.Summary.Errors {
		if !strings.HasPrefix(msg, "ConnectionError: ") {
			t.Errorf("error %q not classified as a connection error", msg)
		}
	}
	if m, _ := r.Contract.(map[string]any); m["error"] == nil {
		t.Errorf("contract fetch failure not recorded: %v", r.Contract)
	}
}

// A stall of the server must show in the open-loop latencies of every request that was due
// during it (the generator keeps its schedule), while the closed loop records only the one
// slow request: that is coordinated omission, and the open loop avoids it.
func TestOpenLoopMeasuresFromDueTime(t *testing.T) {
	run := func(rate float64) loadgen.Summary {
		f := &fakeAPI{stallAt: 20, stall: 400 * time.Millisecond}
		srv := httptest.NewServer(f)
		defer srv.Close()
		cfg := baseCfg(srv.URL)
		cfg.Requests, cfg.Concurrency, cfg.Warmup, cfg.Rate = 100, 1, 0, rate
		r, err := loadgen.Run(context.Background(), cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		if rate > 0 && (r.Config.Mode != "open_loop" || r.MaxSendDelayMs < 100) {
			t.Errorf("open loop: mode %s, max send delay %v ms", r.Config.Mode, r.MaxSendDelayMs)
		}
		return r.Summary
	}
	closed := run(0)
	open := run(100) // due every 10 ms: ~40 requests fall due during the 400 ms stall
	if *closed.LatencyMs.P95 >= 100 {
		t.Errorf("closed loop p95 = %v ms: only one request was slow", *closed.LatencyMs.P95)
	}
	if *open.LatencyMs.P90 < 100 || *open.LatencyMs.Max < 350 {
		t.Errorf("open loop p90 = %v ms, max %v ms: the requests queued behind the stall must count their wait", *open.LatencyMs.P90, *open.LatencyMs.Max)
	}
}

// In open loop the warm-up follows --rate too: it was sent back to back on every worker, a
// burst just before the measured run. Warm-up operation i is due i/rate after the run starts,
// so by any time after the start at most rate × elapsed + 1 of them have reached the server
// (a lower bound on when each arrives: a slow machine only makes them later).
func TestOpenLoopWarmupFollowsTheRate(t *testing.T) {
	f := &fakeAPI{}
	var mu sync.Mutex
	var arrived []time.Time
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/reco" {
			mu.Lock()
			arrived = append(arrived, time.Now())
			mu.Unlock()
		}
		f.ServeHTTP(w, r)
	}))
	defer srv.Close()
	cfg := baseCfg(srv.URL)
	const rate, warmup = 50.0, 11 // the warm-up spans at least 200 ms
	cfg.Requests, cfg.Concurrency, cfg.Warmup, cfg.Rate = 1, 10, warmup, rate
	start := time.Now()
	if _, err := loadgen.Run(context.Background(), cfg, nil); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(arrived) != warmup+1 {
		t.Fatalf("%d /reco requests, want %d (the warm-up, then the run)", len(arrived), warmup+1)
	}
	slices.SortFunc(arrived, func(a, b time.Time) int { return a.Compare(b) })
	interval := time.Duration(float64(time.Second) / rate)
	for i, at := range arrived[:warmup] {
		if elapsed := at.Sub(start); elapsed < time.Duration(i)*interval {
			t.Fatalf("warm-up request %d arrived %v after the start, want at least %v (%g/s): %d requests by then",
				i, elapsed, time.Duration(i)*interval, rate, i+1)
		}
	}
}

func TestDurationBoundsTheRun(t *testing.T) {
	f := &fakeAPI{}
	srv := httptest.NewServer(f)
	defer srv.Close()
	cfg := baseCfg(srv.URL)
	cfg.Requests, cfg.Rate, cfg.Duration, cfg.Warmup = 1_000_000, 50, 300*time.Millisecond, 0
	r, err := loadgen.Run(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	// 50/s for 0.3 s: 15 operations are due.
	if r.StoppedBy != "duration" || r.Operations != 15 {
		t.Fatalf("stopped by %s after %d operations", r.StoppedBy, r.Operations)
	}
}

func TestValidationAndLoopbackGuard(t *testing.T) {
	cfg := loadgen.DefaultConfig()
	cfg.K, cfg.Scenario, cfg.WatchProb, cfg.BaseURL = 0, "bogus", 2, "ftp://x"
	err := cfg.Validate()
	for _, want := range []string{"--k must be between 1 and 200", "--scenario must be", "--watch-prob must be between 0 and 1", "--base-url must be an http(s) URL"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("validation error %v does not contain %q", err, want)
		}
	}
	// NaN passes a range test written with < and >, and only broke the report's JSON after
	// the whole run; an infinite or huge rate made the open loop a closed one.
	for _, tc := range []struct {
		set  func(*loadgen.Config)
		want string
	}{
		{func(c *loadgen.Config) { c.Rate = math.NaN() }, "--rate must be between 0"},
		{func(c *loadgen.Config) { c.Rate = math.Inf(1) }, "--rate must be between 0"},
		{func(c *loadgen.Config) { c.Rate = 2e9 }, "--rate must be between 0"},
		{func(c *loadgen.Config) { c.WatchProb = math.NaN() }, "--watch-prob must be between 0 and 1"},
		{func(c *loadgen.Config) { c.OrganicWatchProb = math.NaN() }, "--organic-watch-prob must be between 0 and 1"},
		{func(c *loadgen.Config) { c.MaxErrorRatePct = math.NaN() }, "--max-error-rate-pct must be between 0 and 100"},
		{func(c *loadgen.Config) { c.Rate = 10_000 }, ""},
	} {
		c := loadgen.DefaultConfig()
		tc.set(&c)
		err := c.Validate()
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("validation error %v, want one containing %q", err, tc.want)
		}
	}
	ctx := context.Background()
	for _, ok := range []string{"http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:80", "http://127.3.4.5"} {
		if err := loadgen.CheckLoopback(ctx, ok); err != nil {
			t.Errorf("%s refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"http://10.0.0.1:8080", "http://192.168.1.1", "http://8.8.8.8"} {
		if err := loadgen.CheckLoopback(ctx, bad); err == nil || !strings.Contains(err.Error(), "--allow-non-loopback") {
			t.Errorf("%s accepted: %v", bad, err)
		}
	}
	cfg = loadgen.DefaultConfig()
	cfg.BaseURL = "http://10.1.2.3:8080"
	if _, err := loadgen.Run(ctx, cfg, nil); err == nil {
		t.Error("Run accepted a non-loopback base URL")
	}
}

// stallingAPI answers /reco at once until stallAfter has passed since it started, then holds
// every /reco until the client gives up.
func stallingAPI(stallAfter time.Duration) *httptest.Server {
	start := time.Now()
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/reco":
			if time.Since(start) > stallAfter {
				<-r.Context().Done()
				return
			}
			_, _ = w.Write([]byte(`{"request_id":"r","items":["a"]}`))
		default:
			_, _ = w.Write([]byte(`{}`))
		}
	}))
}

// When the server stalls at the end of an open-loop run, the operations that fell due during
// the stall but found no free worker before the run ended are failures with their wait as
// latency: they count in the error rate and the verdict, never vanish from the report.
func TestOpenLoopCountsOperationsDueButNeverSent(t *testing.T) {
	srv := stallingAPI(600 * time.Millisecond) // the last 0.4 s of a 1 s run
	defer srv.Close()
	cfg := baseCfg(srv.URL)
	cfg.Requests, cfg.Rate, cfg.Duration, cfg.Concurrency, cfg.Warmup = 1_000_000, 100, time.Second, 2, 0
	cfg.Timeout = 200 * time.Millisecond
	r, err := loadgen.Run(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	const due = 100 // 100/s for 1 s
	s := r.Summary
	if s.RequestsTotal != due || r.Operations+r.OperationsNotSent != due {
		t.Fatalf("requests_total %d, operations %d + not sent %d, want %d due operations in all",
			s.RequestsTotal, r.Operations, r.OperationsNotSent, due)
	}
	// ~40 fell due during the stall; 2 workers each spend 0.2 s per stalled request, so at most
	// a handful of those were sent.
	if r.OperationsNotSent < 20 || s.Errors["NotSent: fell due but no worker was free before the run ended"] != r.OperationsNotSent {
		t.Fatalf("operations_not_sent %d, errors %v", r.OperationsNotSent, s.Errors)
	}
	if s.StatusCodes["0"] != s.RequestsFailed || s.ErrorRatePct < 30 || !r.Failed() {
		t.Fatalf("status codes %v, error rate %v %%, verdict %s", s.StatusCodes, s.ErrorRatePct, r.Verdict)
	}
	// The last operation was due ~10 ms before the end of --duration and waited until the run
	// gave up at duration + timeout.
	if *s.LatencyMs.Max < float64(cfg.Timeout/time.Millisecond) {
		t.Errorf("max latency %v ms: the unsent operations must carry their wait", *s.LatencyMs.Max)
	}
	if r.StoppedBy != "duration" {
		t.Errorf("stopped by %s", r.StoppedBy)
	}
	// rps is what was sent: the unsent operations are failures, not throughput (it was the
	// full 100/s the server could not take before).
	sent := float64(s.RequestsTotal - r.OperationsNotSent)
	if got := s.RPS * r.BenchmarkElapsedSec; got < sent-1 || got > sent+1 {
		t.Errorf("rps %v over %v s = %.1f requests, want the %v sent", s.RPS, r.BenchmarkElapsedSec, got, sent)
	}
	if ep := r.Endpoints["reco"]; ep.RPS != s.RPS {
		t.Errorf("reco endpoint rps %v, summary rps %v", ep.RPS, s.RPS)
	}
}

// The closed loop has no schedule: a stall slows it down but leaves nothing "due".
func TestClosedLoopHasNoUnsentOperations(t *testing.T) {
	srv := stallingAPI(300 * time.Millisecond)
	defer srv.Close()
	cfg := baseCfg(srv.URL)
	cfg.Requests, cfg.Duration, cfg.Concurrency, cfg.Warmup = 1_000_000, 600*time.Millisecond, 2, 0
	cfg.Timeout = 200 * time.Millisecond
	r, err := loadgen.Run(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.OperationsNotSent != 0 || r.Summary.Errors["NotSent: fell due but no worker was free before the run ended"] != 0 ||
		r.Summary.RequestsTotal != r.Operations || r.StoppedBy != "duration" {
		t.Fatalf("closed loop: not sent %d, requests %d, operations %d, stopped by %s, errors %v",
			r.OperationsNotSent, r.Summary.RequestsTotal, r.Operations, r.StoppedBy, r.Summary.Errors)
	}
}

func TestRunSendsTheAPIKey(t *testing.T) {
	const key = "sk-load-5e1d2b"
	both := map[string][]string{key: {"client", "ops"}}
	for _, tc := range []struct {
		name              string
		keys              map[string][]string
		apiKey            string
		scenario, ingest  string
		wantErr           string // the error of every traffic request ("" : none)
		wantContractError string
	}{
		{name: "mixed, no authentication, no key", scenario: loadgen.ScenarioMixed},
		{name: "mixed with a key", keys: both, apiKey: key, scenario: loadgen.ScenarioMixed},
		{name: "ingest watch with a key", keys: both, apiKey: key, scenario: loadgen.ScenarioIngest, ingest: "watch"},
		{name: "ingest batch with a key", keys: both, apiKey: key, scenario: loadgen.ScenarioIngest, ingest: "batch"},
		{name: "key required but not given", keys: both, scenario: loadgen.ScenarioReco,
			wantErr:           "HTTPError: 401 (the server requires an API key: --api-key / RECSYS_API_KEY)",
			wantContractError: "HTTPError: 401 (the server requires an API key: --api-key / RECSYS_API_KEY)"},
		{name: "wrong key", keys: both, apiKey: "sk-wrong-2", scenario: loadgen.ScenarioReco,
			wantErr:           "HTTPError: 401 (the server did not accept the API key: --api-key / RECSYS_API_KEY)",
			wantContractError: "HTTPError: 401 (the server did not accept the API key: --api-key / RECSYS_API_KEY)"},
		{name: "key without the ops scope", keys: map[string][]string{key: {"client"}}, apiKey: key, scenario: loadgen.ScenarioReco,
			wantContractError: "HTTPError: 403 (the API key lacks a scope: the traffic needs client, /contract and /metrics/reco need ops)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &apikeytest.Gate{Next: &fakeAPI{}, Keys: tc.keys}
			srv := httptest.NewServer(g)
			defer srv.Close()
			cfg := baseCfg(srv.URL)
			cfg.Requests, cfg.APIKey, cfg.Scenario, cfg.WatchProb, cfg.OrganicWatchProb = 40, tc.apiKey, tc.scenario, 1, 1
			if tc.ingest != "" {
				cfg.IngestMode, cfg.BatchSize = tc.ingest, 7
			}
			r, err := loadgen.Run(context.Background(), cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantErr == "" && r.Summary.RequestsFailed != 0 || tc.wantErr != "" && r.Summary.Errors[tc.wantErr] != r.Summary.RequestsTotal {
				t.Fatalf("errors %v of %d requests, want %q on all or none", r.Summary.Errors, r.Summary.RequestsTotal, tc.wantErr)
			}
			if m, _ := r.Contract.(map[string]any); tc.wantContractError != "" && m["error"] != tc.wantContractError {
				t.Errorf("contract %v, want the error %q", r.Contract, tc.wantContractError)
			} else if tc.wantContractError == "" && (m == nil || m["sla_targets"] == nil) {
				t.Errorf("contract %v not read", r.Contract)
			}
			var out bytes.Buffer
			if err := r.WriteJSON(&out); err != nil {
				t.Fatal(err)
			}
			if err := r.WriteHTML(&out); err != nil {
				t.Fatal(err)
			}
			out.WriteString(r.Headline())
			if tc.apiKey != "" && strings.Contains(out.String(), tc.apiKey) {
				t.Errorf("the report contains the API key")
			}
			want := ""
			if tc.apiKey != "" {
				want = "Bearer " + tc.apiKey
			}
			seen := map[string]bool{}
			for _, req := range g.Requests() {
				if req.Authorization != want {
					t.Errorf("%s %s had Authorization %q, want %q", req.Method, req.Path, req.Authorization, want)
				}
				seen[req.Method+" "+req.Path] = true
			}
			for _, req := range []string{"GET /contract", "GET /metrics/reco"} {
				if !seen[req] {
					t.Errorf("no %s seen: %v", req, seen)
				}
			}
		})
	}
}

// A base URL may carry a gateway's credentials (https://user:password@host); the report,
// which CI archives, echoed it with its password.
func TestReportHidesTheBaseURLPassword(t *testing.T) {
	srv := httptest.NewServer(&fakeAPI{})
	defer srv.Close()
	cfg := baseCfg(strings.Replace(srv.URL, "http://", "http://ci:s3cret-pw@", 1))
	cfg.Requests, cfg.Warmup = 5, 0
	r, err := loadgen.Run(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "s3cret-pw") || r.Config.BaseURL != strings.Replace(srv.URL, "http://", "http://ci:REDACTED@", 1) {
		t.Errorf("report's base_url %q", r.Config.BaseURL)
	}
}

// A base URL refused by Validate or by the loopback check was quoted whole, password
// included: a password with a raw '%' does not parse, and a scheme typo is no http(s).
func TestBadBaseURLErrorsHideThePassword(t *testing.T) {
	for _, base := range []string{"http://ci:s3cr%et-pw@127.0.0.1:8080", "htp://ci:s3cret-pw@127.0.0.1:8080", "ci:s3cret-pw@127.0.0.1:8080"} {
		cfg := baseCfg(base)
		for what, err := range map[string]error{"Validate": cfg.Validate(), "CheckLoopback": loadgen.CheckLoopback(context.Background(), base)} {
			if err == nil || !strings.Contains(err.Error(), "--base-url") {
				t.Errorf("%s(%q) = %v, want the base URL refused", what, base, err)
			} else if strings.Contains(err.Error(), "s3cr") {
				t.Errorf("%s(%q): error names the password: %v", what, base, err)
			}
		}
	}
}

// An operator's Ctrl-C cancels the requests in flight: they say nothing about the server, so
// they are not errors. Counted, a slow server's run stopped by hand failed on its error rate
// (exit 2) and reported latencies cut short by the interrupt.
func TestInterruptDoesNotCountRequestsInFlight(t *testing.T) {
	var served atomic.Int64
	hold := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/reco" && served.Add(1) > 20 {
			select { // the server turns slow: these are in flight at the interrupt
			case <-hold:
			case <-r.Context().Done():
			}
			return
		}
		_, _ = w.Write([]byte(`{"request_id":"r","items":["a"]}`))
	}))
	defer srv.Close()
	defer close(hold)
	cfg := baseCfg(srv.URL)
	cfg.Requests, cfg.Concurrency, cfg.Warmup, cfg.Timeout = 1000, 4, 0, time.Minute
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for served.Load() < 24 {
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
	}()
	r, err := loadgen.Run(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.StoppedBy != "interrupted" || r.Summary.RequestsTotal != 20 || r.Summary.RequestsFailed != 0 || r.Failed() {
		t.Fatalf("stopped by %s, %d requests, %d failed (%v), verdict %s: want the 20 answered, none failed",
			r.StoppedBy, r.Summary.RequestsTotal, r.Summary.RequestsFailed, r.Summary.Errors, r.Verdict)
	}
}

// An HDR percentile is the top of its bucket, up to 0.1 % above the recorded values: the
// report showed p99.9 = 38.015 ms above max = 38.009 ms, and a percentile curve that fell at
// its last point. No percentile exceeds the exact max.
func TestPercentilesNeverExceedTheMax(t *testing.T) {
	start := time.Unix(1000, 0)
	rec := loadgen.NewRecorder(start)
	for i := 0; i < 10; i++ {
		rec.Add(loadgen.Result{Endpoint: "reco", At: start, Latency: 38009 * time.Microsecond, Status: 200})
	}
	snap := rec.Snapshot(time.Second)
	l := snap.Summary.LatencyMs
	for name, p := range map[string]*float64{"p50": l.P50, "p90": l.P90, "p95": l.P95, "p99": l.P99, "p99.9": l.P999} {
		if *p > *l.Max {
			t.Errorf("%s = %v ms above max %v ms", name, *p, *l.Max)
		}
	}
	for _, pt := range snap.Percentiles["reco"] {
		if pt.LatencyMs > *l.Max {
			t.Errorf("percentile curve at %v: %v ms above max %v ms", pt.Percentile, pt.LatencyMs, *l.Max)
		}
	}
	if tl := snap.Timeline[0]; tl.P99Ms > tl.MaxMs {
		t.Errorf("timeline p99 %v ms above its max %v ms", tl.P99Ms, tl.MaxMs)
	}
}
