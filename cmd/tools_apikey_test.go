package cmd

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// The operator tools read the API key from RECSYS_API_KEY through the real command tree, send
// it on every request, and write it nowhere.
func TestToolsSendTheAPIKeyFromTheEnvironment(t *testing.T) {
	var (
		mu   sync.Mutex
		auth = map[string]map[string]int{} // path -> Authorization -> requests
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		if auth[r.URL.Path] == nil {
			auth[r.URL.Path] = map[string]int{}
		}
		auth[r.URL.Path][r.Header.Get("Authorization")]++
		mu.Unlock()
		body := map[string]string{
			"/readyz":       `{"ready":true}`,
			"/reco":         `{"request_id":"r","items":["x"]}`,
			"/healthz":      `{"event_backbone":{"outbox":{"pending":0,"publishing":0,"dead":0}}}`,
			"/metrics/reco": `{"sample_size":1}`,
			"/contract":     `{"sla_targets":{"reco_p95_ms":120}}`,
		}[r.URL.Path]
		if body == "" {
			body = `{"status":"ok"}`
		}
		_, _ = w.Write([]byte(body))
	}))
	defer srv.Close()
	const key = "sk-env-9b27d1"
	for _, tc := range []struct {
		tool  string
		args  []string
		paths []string // requests that must have been made
	}{
		{tool: "smoke", args: []string{"--base-url", srv.URL, "--poll-sec", "0.05", "--ready-timeout-sec", "1", "--consumer-timeout-sec", "1",
			"--outbox-timeout-sec", "1", "--seed-users", "1", "--seed-items", "1", "--seed-rounds", "1", "--reco-requests", "2"},
			paths: []string{"/readyz", "/event", "/reco", "/log/watch", "/healthz", "/metrics/reco"}},
		{tool: "load", args: []string{"--base-url", srv.URL, "--scenario", "mixed", "--watch-prob", "1", "--requests", "5", "--warmup", "2", "--concurrency", "1", "--k", "1"},
			paths: []string{"/reco", "/log/watch", "/contract", "/metrics/reco"}},
		{tool: "guardrails", args: []string{"--base-url", srv.URL, "--days", "1"},
			paths: []string{"/analytics/baseline", "/contract", "/metrics/reco"}},
	} {
		for _, withKey := range []bool{true, false} {
			name := tc.tool + map[bool]string{true: " with RECSYS_API_KEY", false: " without a key"}[withKey]
			t.Run(name, func(t *testing.T) {
				want := ""
				t.Setenv("RECSYS_API_KEY", key) // restored after the test, even when unset below
				if withKey {
					want = "Bearer " + key
				} else {
					if err := os.Unsetenv("RECSYS_API_KEY"); err != nil {
						t.Fatal(err)
					}
				}
				mu.Lock()
				clear(auth)
				mu.Unlock()
				dir := t.TempDir()
				root := NewRootCmd()
				var out bytes.Buffer
				root.SetOut(&out)
				root.SetErr(&out)
				args := append([]string{tc.tool, "--output-json", filepath.Join(dir, "report.json")}, tc.args...)
				if tc.tool == "guardrails" {
					args = append(args, "--save-dir", dir)
				}
				root.SetArgs(args)
				// smoke and guardrails fail against this stub (no consumer, no KPIs); only the
				// requests and what the tools write matter here.
				err := root.ExecuteContext(context.Background())
				written := out.String() + errText(err)
				files, _ := filepath.Glob(filepath.Join(dir, "*.json"))
				if len(files) == 0 {
					t.Fatalf("no report written: %s", written)
				}
				for _, f := range files {
					b, _ := os.ReadFile(f)
					written += string(b)
				}
				if strings.Contains(written, key) {
					t.Errorf("the API key shows in the output or a written file")
				}
				mu.Lock()
				defer mu.Unlock()
				for _, p := range tc.paths {
					if len(auth[p]) == 0 {
						t.Errorf("no request to %s", p)
					}
				}
				for p, byAuth := range auth {
					for a, n := range byAuth {
						if a != want {
							t.Errorf("%d requests to %s had Authorization %q, want %q", n, p, a, want)
						}
					}
				}
			})
		}
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
