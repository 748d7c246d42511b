package guardrails_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"recsys/pkg/apikey/apikeytest"
	"recsys/pkg/guardrails"
)

func f(v float64) *float64 { return &v }

func mustObj(t *testing.T, s string) map[string]any {
	t.Helper()
	m, err := guardrails.DecodeObject("test", []byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

const contractJSON = `{"kpi_targets": {"ctr_at_20": ">= 8%", "avg_watch_time_sec": ">= 35", "catalog_coverage_at_20": ">= 60%"},
  "sla_targets": {"reco_p95_ms": 120, "reco_p99_ms": 200, "api_error_rate_pct": 1.0}}`

func TestNumber(t *testing.T) {
	for _, tc := range []struct {
		in   any
		want *float64
	}{
		{nil, nil},
		{8.5, f(8.5)},
		{json.Number("120"), f(120)},
		{">= 8%", f(8)},
		{"<= -1.25 ms", f(-1.25)},
		{"+3", f(3)},
		{"no digits", nil},
		{true, nil},
		{[]any{"x", 7.0}, f(7)},
	} {
		got := guardrails.Number(tc.in)
		if (got == nil) != (tc.want == nil) || (got != nil && *got != *tc.want) {
			t.Errorf("Number(%#v) = %v, want %v", tc.in, deref(got), deref(tc.want))
		}
	}
}

func deref(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}

func TestEvaluate(t *testing.T) {
	healthyReco := `{"sample_size": 500, "error_rate_pct": 0.2, "latency_ms": {"p50": 3, "p95": 40, "p99": 90}}`
	type want struct {
		statuses map[string]string
		ok       bool
		summary  guardrails.Summary
	}
	for _, tc := range []struct {
		name     string
		baseline string
		reco     string
		contract string
		targets  *guardrails.Targets
		min      int
		want     want
	}{
		{
			name:     "all pass",
			baseline: `{"kpi_targets": {}, "metrics": {"ctr_at_20_pct": 9.5, "avg_watch_time_sec": 40, "catalog_coverage_at_20_pct": 61}}`,
			reco:     healthyReco, contract: contractJSON, min: 100,
			want: want{ok: true, statuses: map[string]string{"ctr_at_20_pct": "pass", "avg_watch_time_sec": "pass", "catalog_coverage_at_20_pct": "pass",
				"reco_p95_ms": "pass", "reco_p99_ms": "pass", "api_error_rate_pct": "pass"},
				summary: guardrails.Summary{Passed: 6, MinSLASamples: 100}},
		},
		{
			name:     "boundary values pass, KPI and latency misses fail",
			baseline: `{"metrics": {"ctr_at_20_pct": 8, "avg_watch_time_sec": 34.999, "catalog_coverage_at_20_pct": 60}}`,
			reco:     `{"sample_size": 100, "error_rate_pct": 1.0, "latency_ms": {"p95": 120.001, "p99": 200}}`, contract: contractJSON, min: 100,
			want: want{ok: false, statuses: map[string]string{"ctr_at_20_pct": "pass", "avg_watch_time_sec": "fail", "catalog_coverage_at_20_pct": "pass",
				"reco_p95_ms": "fail", "reco_p99_ms": "pass", "api_error_rate_pct": "pass"},
				summary: guardrails.Summary{Passed: 4, Failed: 2, MinSLASamples: 100}},
		},
		{
			name:     "metrics at top level, missing values are unknown and fail the gate",
			baseline: `{"ctr_at_20_pct": 9, "avg_watch_time_sec": null}`,
			reco:     `{"sample_size": 200, "latency_ms": {"p95": 10, "p99": null}}`, contract: contractJSON, min: 100,
			want: want{ok: false, statuses: map[string]string{"ctr_at_20_pct": "pass", "avg_watch_time_sec": "unknown", "catalog_coverage_at_20_pct": "unknown",
				"reco_p95_ms": "pass", "reco_p99_ms": "unknown", "api_error_rate_pct": "unknown"},
				summary: guardrails.Summary{Passed: 2, Unknown: 4, MinSLASamples: 100}},
		},
		{
			name:     "small sample skips latency checks only",
			baseline: `{"metrics": {"ctr_at_20_pct": 9, "avg_watch_time_sec": 40, "catalog_coverage_at_20_pct": 70}}`,
			reco:     `{"sample_size": 99, "error_rate_pct": 0, "latency_ms": {"p95": 9999, "p99": 9999}}`, contract: contractJSON, min: 100,
			want: want{ok: true, statuses: map[string]string{"ctr_at_20_pct": "pass", "avg_watch_time_sec": "pass", "catalog_coverage_at_20_pct": "pass",
				"reco_latency_checks": "skipped", "api_error_rate_pct": "pass"},
				summary: guardrails.Summary{Passed: 4, Skipped: 1, MinSLASamples: 100}},
		},
		{
			name:     "negative min samples counts as zero",
			baseline: `{"metrics": {"ctr_at_20_pct": 9, "avg_watch_time_sec": 40, "catalog_coverage_at_20_pct": 70}}`,
			reco:     `{"sample_size": 0, "error_rate_pct": 0, "latency_ms": {"p95": null, "p99": null}}`, contract: contractJSON, min: -5,
			want: want{ok: false, statuses: map[string]string{"reco_p95_ms": "unknown", "reco_p99_ms": "unknown"},
				summary: guardrails.Summary{Passed: 4, Unknown: 2, MinSLASamples: 0}},
		},
		{
			name:     "targets file replaces contract KPI targets",
			baseline: `{"metrics": {"ctr_at_20_pct": 1.2, "avg_watch_time_sec": 40, "catalog_coverage_at_20_pct": 35}}`,
			reco:     healthyReco, contract: contractJSON, min: 100,
			targets: &guardrails.Targets{Targets: map[string]float64{"ctr_at_20_pct": 0.5, "catalog_coverage_at_20_pct": 30, "reco_p95_ms": 30}},
			want: want{ok: false, statuses: map[string]string{"ctr_at_20_pct": "pass", "catalog_coverage_at_20_pct": "pass", "reco_p95_ms": "fail", "reco_p99_ms": "pass"},
				summary: guardrails.Summary{Passed: 5, Failed: 1, MinSLASamples: 100}},
		},
		{
			name:     "empty contract: every target unknown unless the file sets it",
			baseline: `{"metrics": {"ctr_at_20_pct": 1.2, "avg_watch_time_sec": 40, "catalog_coverage_at_20_pct": 35}}`,
			reco:     healthyReco, contract: `{}`, min: 100,
			targets: &guardrails.Targets{Targets: map[string]float64{"ctr_at_20_pct": 0.5}},
			want: want{ok: false, statuses: map[string]string{"ctr_at_20_pct": "pass", "avg_watch_time_sec": "unknown"},
				summary: guardrails.Summary{Passed: 1, Unknown: 5, MinSLASamples: 100}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := guardrails.Evaluate(guardrails.Inputs{Baseline: mustObj(t, tc.baseline), Contract: mustObj(t, tc.contract), RecoMetrics: mustObj(t, tc.reco)}, tc.targets, tc.min)
			got := map[string]string{}
			for _, c := range r.Checks {
				got[c.Name] = c.Status
				if c.Status == guardrails.StatusUnknown && c.Message != "missing observed value or target" {
					t.Errorf("%s: unknown without the contract's message: %q", c.Name, c.Message)
				}
			}
			for name, st := range tc.want.statuses {
				if got[name] != st {
					t.Errorf("%s = %q, want %q (all: %v)", name, got[name], st, got)
				}
			}
			if r.Summary != tc.want.summary {
				t.Errorf("summary = %+v, want %+v", r.Summary, tc.want.summary)
			}
			if r.OK() != tc.want.ok {
				t.Errorf("OK() = %v, want %v", r.OK(), tc.want.ok)
			}
		})
	}
}

func TestConsoleLinesAndReportShape(t *testing.T) {
	r := guardrails.Evaluate(guardrails.Inputs{
		Baseline:    mustObj(t, `{"metrics": {"ctr_at_20_pct": 9.25, "avg_watch_time_sec": 12, "catalog_coverage_at_20_pct": null}}`),
		Contract:    mustObj(t, contractJSON),
		RecoMetrics: mustObj(t, `{"sample_size": 3, "error_rate_pct": 0}`),
	}, nil, 100)
	var buf bytes.Buffer
	r.Print(&buf)
	want := `[PASS] ctr_at_20_pct: observed=9.25 >= target=8.0 (pct)
[FAIL] avg_watch_time_sec: observed=12.0 >= target=35.0 (sec)
[UNKNOWN] catalog_coverage_at_20_pct: observed=None >= target=60.0 (pct); missing observed value or target
[SKIPPED] reco_latency_checks: observed=3.0 >= target=100.0 (samples); sample_size is below min_sla_samples=100; latency checks skipped
[PASS] api_error_rate_pct: observed=0.0 <= target=1.0 (pct)
[SUMMARY] passed=2 failed=1 unknown=1 skipped=1
`
	if buf.String() != want {
		t.Fatalf("console:\n%s\nwant:\n%s", buf.String(), want)
	}
	b, _ := json.Marshal(r)
	var back map[string]any
	_ = json.Unmarshal(b, &back)
	checks := back["checks"].([]any)
	first := checks[0].(map[string]any)
	for _, k := range []string{"name", "status", "observed", "target", "comparator", "unit"} {
		if _, ok := first[k]; !ok {
			t.Errorf("check has no %q field: %v", k, first)
		}
	}
	sum := back["summary"].(map[string]any)
	for _, k := range []string{"passed", "failed", "unknown", "skipped", "min_sla_samples"} {
		if _, ok := sum[k]; !ok {
			t.Errorf("summary has no %q field: %v", k, sum)
		}
	}
}

func TestParseTargets(t *testing.T) {
	if _, err := guardrails.ParseTargets([]byte(`{"targets": {"ctr_at_20": 1}}`)); err == nil || !strings.Contains(err.Error(), `unknown check "ctr_at_20"`) {
		t.Fatalf("typo in a check name: err = %v", err)
	}
	if _, err := guardrails.ParseTargets([]byte(`{"targets": {}, "extra": 1}`)); err == nil {
		t.Fatal("unknown top-level field accepted")
	}
	if _, err := guardrails.ParseTargets([]byte(`{"targets": {}, "min_sla_samples": -1}`)); err == nil {
		t.Fatal("negative min_sla_samples accepted")
	}
	// The file CI uses must parse and set every check.
	b, err := os.ReadFile(filepath.Join("..", "..", "config", "guardrails.ci.json"))
	if err != nil {
		t.Fatal(err)
	}
	tg, err := guardrails.ParseTargets(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range guardrails.CheckNames {
		if _, ok := tg.Targets[n]; !ok {
			t.Errorf("config/guardrails.ci.json sets no target for %s", n)
		}
	}
}

func TestDecodeObjectRejectsNonObjects(t *testing.T) {
	for _, in := range []string{`[]`, `3`, `"x"`, `null`, `{`} {
		if _, err := guardrails.DecodeObject("in", []byte(in)); err == nil {
			t.Errorf("DecodeObject(%s) accepted", in)
		}
	}
}

func TestFetchSavesInputs(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/analytics/baseline":
			if r.URL.Query().Get("days") != "2" {
				http.Error(w, "bad days", http.StatusUnprocessableEntity)
				return
			}
			_, _ = w.Write([]byte(`{"metrics": {"ctr_at_20_pct": 1}}`))
		case "/contract":
			_, _ = w.Write([]byte(contractJSON))
		case "/metrics/reco":
			_, _ = w.Write([]byte(`{"sample_size": 1}`))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	dir := t.TempDir()
	in, src, err := guardrails.Fetch(context.Background(), srv.Client(), srv.URL+"/", "", 2, dir)
	if err != nil {
		t.Fatal(err)
	}
	if guardrails.Number(in.RecoMetrics["sample_size"]) == nil || src["contract"] != srv.URL+"/contract" {
		t.Fatalf("inputs %v sources %v", in, src)
	}
	for _, name := range []string{"baseline-kpi.json", "contract.json", "reco-metrics.json"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("not saved: %v", err)
		}
	}
	// The saved files evaluate exactly like the fetched documents.
	fin, _, err := guardrails.ReadFiles(filepath.Join(dir, "baseline-kpi.json"), filepath.Join(dir, "contract.json"), filepath.Join(dir, "reco-metrics.json"))
	if err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(guardrails.Evaluate(in, nil, 100))
	b, _ := json.Marshal(guardrails.Evaluate(fin, nil, 100))
	if !bytes.Equal(a, b) {
		t.Fatalf("fetched %s != files %s", a, b)
	}
	// A server error is an error naming the URL, not a crash.
	if _, _, err := guardrails.Fetch(context.Background(), srv.Client(), srv.URL, "", 31, ""); err == nil || !strings.Contains(err.Error(), "/analytics/baseline?days=31") {
		t.Fatalf("err = %v", err)
	}
}

func TestFetchSendsTheAPIKey(t *testing.T) {
	const key = "sk-gate-4c8e0a"
	// A server started with --http.api-keys-file: the three inputs need an ops key.
	var g *apikeytest.Gate
	newServer := func() *httptest.Server {
		g = &apikeytest.Gate{Keys: map[string][]string{key: {"ops"}, "sk-client-only": {"client"}},
			Next: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				switch r.URL.Path {
				case "/contract":
					_, _ = w.Write([]byte(contractJSON))
				default:
					_, _ = w.Write([]byte(`{"sample_size": 1}`))
				}
			})}
		return httptest.NewServer(g)
	}
	for _, tc := range []struct {
		name, apiKey, wantAuth, wantErr string
	}{
		{name: "key", apiKey: key, wantAuth: "Bearer " + key},
		{name: "no key", wantErr: "status 401: {\"detail\":\"Not authenticated\"} (the server requires an API key: --api-key / RECSYS_API_KEY)"},
		{name: "wrong key", apiKey: "sk-wrong-3", wantAuth: "Bearer sk-wrong-3", wantErr: "(the server did not accept the API key: --api-key / RECSYS_API_KEY)"},
		{name: "key without the ops scope", apiKey: "sk-client-only", wantAuth: "Bearer sk-client-only", wantErr: "lacks the ops scope this path needs\"} (the API key lacks a scope: guardrails needs ops)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newServer()
			defer srv.Close()
			in, src, err := guardrails.Fetch(context.Background(), srv.Client(), srv.URL, tc.apiKey, 1, "")
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || strings.Count(err.Error(), tc.wantErr) != 3) {
				t.Fatalf("err = %v, want %q for each of the three inputs", err, tc.wantErr)
			}
			r := guardrails.Evaluate(in, nil, 1)
			r.Sources = src
			report, _ := json.Marshal(r)
			var console bytes.Buffer
			r.Print(&console)
			if tc.apiKey != "" && strings.Contains(fmt.Sprint(err, string(report), console.String()), tc.apiKey) {
				t.Errorf("the API key shows in the error, report or console output")
			}
			seen := g.Requests()
			if len(seen) != 3 {
				t.Fatalf("requests %v, want the three inputs", seen)
			}
			for _, req := range seen {
				if req.Authorization != tc.wantAuth {
					t.Errorf("%s %s had Authorization %q, want %q", req.Method, req.Path, req.Authorization, tc.wantAuth)
				}
			}
		})
	}
}

// A base URL may carry a gateway's credentials (https://user:password@host); the report's
// sources and the errors, which CI archives, named it with its password.
func TestFetchHidesTheBaseURLPassword(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/contract" {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte(`[]`))
	}))
	defer srv.Close()
	base := strings.Replace(srv.URL, "http://", "http://ci:s3cret-pw@", 1)
	_, src, err := guardrails.Fetch(context.Background(), srv.Client(), base, "", 1, "")
	if err == nil {
		t.Fatal("want the errors of the failed fetches")
	}
	b, _ := json.Marshal(src)
	for what, s := range map[string]string{"sources": string(b), "error": err.Error()} {
		if strings.Contains(s, "s3cret-pw") {
			t.Errorf("%s name the password: %s", what, s)
		}
		if !strings.Contains(s, "ci:REDACTED@") {
			t.Errorf("%s do not name the base URL: %s", what, s)
		}
	}
}

// A base URL that does not parse (a password with a raw '%', as generated passwords often
// have) was refused with url's own error, which quotes the whole URL, password included.
func TestFetchRefusesABadBaseURLWithoutItsPassword(t *testing.T) {
	for _, base := range []string{
		"http://ci:s3cr%et-pw@127.0.0.1:1",
		"http://ci:s3cr%et-pw@127.0.0.1:1/path with space%zz",
		"ci:s3cr%et-pw@127.0.0.1:1",
	} {
		_, _, err := guardrails.Fetch(context.Background(), http.DefaultClient, base, "", 1, "")
		if err == nil {
			t.Fatalf("Fetch(%q) = nil error, want the base URL refused", base)
		}
		if strings.Contains(err.Error(), "s3cr") {
			t.Errorf("Fetch(%q): error names the password: %v", base, err)
		}
		if !strings.Contains(err.Error(), "--base-url") {
			t.Errorf("Fetch(%q): error does not name the flag: %v", base, err)
		}
	}
}
