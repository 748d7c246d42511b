package all_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
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
		done <- app.Run(ctx, app.Options{Registry: module.Default(), Roles: roles, HTTP: httpx.DefaultConfig(), Infra: cfg,
			Shutdown: app.ShutdownConfig{Timeout: 20 * time.Second}, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
			Listener: ln, OnReady: func(a string) { addr <- a }, Extra: func(e *echo.Echo) { echoes <- e }})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	var base string
	select {
	case base = <-addr:
	case err := <-done:
		t.Fatalf("run %v: %v", roles, err)
	}
	e := <-echoes
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
	resp, err := http.Get("http://" + base + openapi.PathJSON)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc struct {
		OpenAPI string                               `json:"openapi"`
		Paths   map[string]map[string]map[string]any `json:"paths"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil || resp.StatusCode != http.StatusOK || doc.OpenAPI != openapi.Version {
		t.Fatalf("GET /openapi.json: %d, openapi %q, %v", resp.StatusCode, doc.OpenAPI, err)
	}
	for p, item := range doc.Paths {
		for m := range item {
			described = append(described, strings.ToUpper(m)+" "+p)
		}
	}
	slices.Sort(described)
	return routes, described
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
