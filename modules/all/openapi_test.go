package all_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	_ "recsys/modules/all"
	"recsys/pkg/app"
	"recsys/pkg/httpx"
	"recsys/pkg/infra"
	"recsys/pkg/module"
	"recsys/pkg/openapi"
	"recsys/pkg/testutil"
)

// served runs the real modules of roles on the shared services and returns the routes the
// process registered and the operations its /openapi.json describes, both as "METHOD /path".
func served(t *testing.T, roles ...string) (routes, described []string) {
	t.Helper()
	base, e := startRoles(t, httpx.DefaultConfig(), roles...)
	for _, r := range e.Routes() {
		// Every path has an OPTIONS route answering 405 (pkg/httpx), as FastAPI answered; the
		// document's own endpoints are not in it, as in FastAPI.
		if r.Method == http.MethodOptions && strings.Contains(r.Name, "httpx.methodNotAllowed") ||
			slices.Contains([]string{openapi.PathJSON, openapi.PathDocs, openapi.PathRedoc}, r.Path) {
			continue
		}
		routes = append(routes, r.Method+" "+strings.NewReplacer(":", "{").Replace(r.Path))
	}
	slices.Sort(routes)
	for p, item := range fetchDoc(t, base).Paths {
		for m := range item {
			described = append(described, strings.ToUpper(m)+" "+p)
		}
	}
	slices.Sort(described)
	return routes, described
}

type document struct {
	OpenAPI    string                               `json:"openapi"`
	Paths      map[string]map[string]map[string]any `json:"paths"`
	Components struct {
		SecuritySchemes map[string]map[string]any `json:"securitySchemes"`
	} `json:"components"`
}

func fetchDoc(t *testing.T, base string) document {
	t.Helper()
	resp, err := http.Get("http://" + base + openapi.PathJSON)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc document
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil || resp.StatusCode != http.StatusOK || doc.OpenAPI != openapi.Version {
		t.Fatalf("GET /openapi.json: %d, openapi %q, %v", resp.StatusCode, doc.OpenAPI, err)
	}
	return doc
}

// startRoles runs the real modules of roles with the HTTP settings hc until the test ends,
// and returns the address they serve on and the process' router.
func startRoles(t *testing.T, hc httpx.Config, roles ...string) (string, *echo.Echo) {
	t.Helper()
	cfg := infra.DefaultConfig()
	cfg.PG.DSN = testutil.MigratedDatabase(t)
	cfg.Redis.URL = testutil.RedisURL(t)
	cfg.Redis.KeyPrefix = testutil.Unique("openapi") + ":"
	cfg.Kafka.Brokers = testutil.KafkaBrokers(t)
	cfg.Kafka.TopicImpressions = testutil.KafkaTopic(t, "openapi.impressions.")
	cfg.Kafka.TopicWatches = testutil.KafkaTopic(t, "openapi.watches.")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addr, echoes, done := make(chan string, 1), make(chan *echo.Echo, 1), make(chan error, 1)
	go func() {
		done <- app.Run(ctx, app.Options{Registry: module.Default(), Roles: roles, HTTP: hc, Infra: cfg,
			Shutdown: app.ShutdownConfig{Timeout: 20 * time.Second}, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
			Listener: ln, OnReady: func(a string) { addr <- a }, Extra: func(e *echo.Echo) { echoes <- e }})
	}()
	var base string
	select {
	case base = <-addr:
	case err := <-done:
		cancel()
		t.Fatalf("run %v: %v", roles, err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	return base, <-echoes
}

// /openapi.json describes exactly the routes the process serves: an api process its API and
// ops endpoints, a relay process its ops endpoints only.
func TestOpenAPIDescribesEveryRoute(t *testing.T) {
	ops := []string{"GET /healthz", "GET /livez", "GET /metrics", "GET /metrics/prometheus", "GET /readyz"}
	for _, c := range []struct {
		role     string
		mustHave []string
		mustNot  []string
	}{
		{"api", append([]string{"GET /reco", "GET /recommend", "POST /log/batch", "GET /analytics/baseline", "GET /contract"}, ops...), nil},
		{"relay", ops, []string{"GET /reco", "POST /log/watch"}},
	} {
		t.Run(c.role, func(t *testing.T) {
			routes, described := served(t, c.role)
			if !slices.Equal(routes, described) {
				t.Errorf("registered routes and /openapi.json differ:\nregistered: %v\ndescribed:  %v", routes, described)
			}
			for _, r := range c.mustHave {
				if !slices.Contains(described, r) {
					t.Errorf("%s not described", r)
				}
			}
			for _, r := range c.mustNot {
				if slices.Contains(described, r) {
					t.Errorf("%s described by a %s process", r, c.role)
				}
			}
		})
	}
}

// TestAPIKeysGuardTheRealRoutes: with --http.api-keys-file, /openapi.json (itself open)
// declares the two ways to present a key, and every operation it marks as needing one
// answers 401 without a key and 403 with a key of the other scope, while every operation it
// leaves open answers without one; the product API serves a client key.
func TestAPIKeysGuardTheRealRoutes(t *testing.T) {
	const clientKey, opsKey = "client-key-0123456789", "ops-key-0123456789abc"
	path := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(path, []byte("app client "+clientKey+"\nprometheus ops "+opsKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hc := httpx.DefaultConfig()
	hc.APIKeysFile = path
	base, _ := startRoles(t, hc, "api")
	doc := fetchDoc(t, base)
	if doc.Components.SecuritySchemes["bearer"]["scheme"] != "bearer" || doc.Components.SecuritySchemes["apiKey"]["name"] != httpx.HeaderAPIKey {
		t.Errorf("security schemes %v", doc.Components.SecuritySchemes)
	}
	do := func(method, p, key string) int {
		req, err := http.NewRequest(method, "http://"+base+strings.NewReplacer("{id}", "x").Replace(p), nil)
		if err != nil {
			t.Fatal(err)
		}
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	guarded := 0
	for p, item := range doc.Paths {
		for m, op := range item {
			method := strings.ToUpper(m)
			_, secured := op["security"]
			need := httpx.ScopeOf(p)
			if secured != (need != "") {
				t.Errorf("%s %s: security %v in the document, scope %q at the server", method, p, op["security"], need)
				continue
			}
			if !secured {
				if got := do(method, p, ""); got == http.StatusUnauthorized || got == http.StatusForbidden {
					t.Errorf("%s %s is open in the document but answered %d without a key", method, p, got)
				}
				continue
			}
			guarded++
			other := opsKey
			if need == httpx.ScopeOps {
				other = clientKey
			}
			if got := do(method, p, ""); got != http.StatusUnauthorized {
				t.Errorf("%s %s without a key: %d, want 401", method, p, got)
			}
			if got := do(method, p, other); got != http.StatusForbidden {
				t.Errorf("%s %s with a key of the other scope: %d, want 403", method, p, got)
			}
		}
	}
	if guarded < 8 {
		t.Errorf("only %d operations need a key", guarded)
	}
	if got := do(http.MethodGet, "/reco?user_id=u1&session_id=s1", clientKey); got != http.StatusOK {
		t.Errorf("GET /reco with a client key: %d", got)
	}
	if got := do(http.MethodGet, "/metrics/prometheus", opsKey); got != http.StatusOK {
		t.Errorf("GET /metrics/prometheus with an ops key: %d", got)
	}
}
