package app_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"recsys/pkg/app"
	"recsys/pkg/httpx"
	"recsys/pkg/infra"
	"recsys/pkg/module"
	"recsys/pkg/testutil"
)

// TestClusterRateLimitScopeNeedsRedis: --http.rate-limit-scope=cluster with API keys is
// refused at start, naming the flag, in a process whose roles do not use Redis; in one whose
// roles do, the keys' rates are counted in the process' Redis, under --redis.key-prefix.
func TestClusterRateLimitScopeNeedsRedis(t *testing.T) {
	const secret = "client-secret-0123456789"
	keys := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keys, []byte("app client "+secret+" rate=1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	url := testutil.RedisURL(t)
	for _, tc := range []struct {
		name     string
		needs    infra.Need
		scope    string
		keysFile string
		want     string // a substring of Run's error; "" when it serves
		answers  []int  // with want "": the codes of requests with the key, in order
	}{
		{"cluster without Redis", infra.Postgres, httpx.RateLimitCluster, keys, "--http.rate-limit-scope=cluster counts the API keys' rates in Redis, which the roles of this process (all) do not use", nil},
		{"cluster without Redis and without keys", 0, httpx.RateLimitCluster, "", "", []int{404, 404}},
		{"process without Redis", 0, httpx.RateLimitProcess, keys, "", []int{404, 429}},
		{"cluster with Redis", infra.Redis, httpx.RateLimitCluster, keys, "", []int{404, 429}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := module.NewRegistry()
			reg.Register(module.Info{Name: "m", Role: true, Needs: tc.needs, Optional: tc.needs,
				NewConfig: func() module.Config { return cfg{} },
				New: func(module.Config, infra.Deps) (module.Module, error) {
					return &fake{name: "m", journal: &journal{}}, nil
				}})
			hc := httpx.DefaultConfig()
			hc.APIKeysFile, hc.RateLimitScope = tc.keysFile, tc.scope
			ic := infra.DefaultConfig()
			ic.PG.DSN = "postgres://u:p@127.0.0.1:1/db?sslmode=disable"
			ic.Redis.URL = url
			ic.Redis.KeyPrefix = testutil.Unique("test-app-rl-") + ":"
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			ready := make(chan string, 1)
			go func() {
				done <- app.Run(ctx, app.Options{Registry: reg, Roles: []string{"all"}, HTTP: hc,
					Shutdown: app.ShutdownConfig{Timeout: 5 * time.Second}, Infra: ic,
					Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Listener: ln, OnReady: func(a string) { ready <- a }})
			}()
			var base string
			select {
			case err := <-done:
				if tc.want == "" || err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("Run: %v, want an error containing %q", err, tc.want)
				}
				return
			case a := <-ready:
				if tc.want != "" {
					t.Fatalf("served, want Run to fail with %q", tc.want)
				}
				base = "http://" + a
			case <-time.After(10 * time.Second):
				t.Fatal("Run neither served nor failed")
			}
			var last string
			for i, want := range tc.answers {
				req, _ := http.NewRequest(http.MethodGet, base+"/no-such-path", nil)
				req.Header.Set("Authorization", "Bearer "+secret)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				last = string(b)
				if resp.StatusCode != want {
					t.Errorf("request %d: %d %s, want %d", i+1, resp.StatusCode, b, want)
				}
			}
			if tc.scope == httpx.RateLimitCluster && tc.keysFile != "" && !strings.Contains(last, "across all servers") {
				t.Errorf("the 429 of a cluster limit says %s", last)
			}
			if tc.scope == httpx.RateLimitProcess && !strings.Contains(last, "on this server") {
				t.Errorf("the 429 of a process limit says %s", last)
			}
			clientNamed := func(rd rueidis.Client) bool {
				list, err := rd.Do(context.Background(), rd.B().ClientList().Build()).ToString()
				if err != nil {
					t.Fatal(err)
				}
				return strings.Contains(list, " name="+app.RateLimitClientName+" ")
			}
			if tc.needs.Has(infra.Redis) {
				rd := testutil.RedisClient(t, url)
				key := ic.Redis.KeyPrefix + "ratelimit:app:1"
				if n, err := rd.Do(context.Background(), rd.B().Exists().Key(key).Build()).AsInt64(); err != nil || n != 1 {
					t.Errorf("the shared count %s: exists %d, %v", key, n, err)
				}
				// The counts go over a connection of their own: a timeout of the limiter's
				// 50 ms budget closes that one, not the feature client's.
				if tc.scope == httpx.RateLimitCluster && !clientNamed(rd) {
					t.Errorf("no Redis connection named %s while serving with cluster limits", app.RateLimitClientName)
				}
			}
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
			if tc.needs.Has(infra.Redis) && tc.scope == httpx.RateLimitCluster {
				rd := testutil.RedisClient(t, url)
				for deadline := time.Now().Add(5 * time.Second); clientNamed(rd); time.Sleep(20 * time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatalf("the %s connection is still open 5 s after Run returned", app.RateLimitClientName)
					}
				}
			}
		})
	}
}
