package app_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"recsys/pkg/app"
	"recsys/pkg/httpx"
	"recsys/pkg/infra"
	"recsys/pkg/migrate"
	"recsys/pkg/module"
	"recsys/pkg/testutil"
)

// runWithPostgres serves one module that needs PostgreSQL at dsn and returns the base URL.
func runWithPostgres(t *testing.T, dsn string) string {
	t.Helper()
	reg := module.NewRegistry()
	reg.Register(module.Info{Name: "db", Role: true, Needs: infra.Postgres,
		NewConfig: func() module.Config { return cfg{} },
		New: func(module.Config, infra.Deps) (module.Module, error) {
			return &fake{name: "db", journal: &journal{}}, nil
		}})
	ic := infra.DefaultConfig()
	ic.PG.DSN = dsn
	ic.PG.ConnectTimeout = 200 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- app.Run(ctx, app.Options{Registry: reg, Roles: []string{"all"}, HTTP: httpx.DefaultConfig(),
			Shutdown: app.ShutdownConfig{Timeout: 5 * time.Second}, Infra: ic,
			Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Listener: ln})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

func metricsText(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// The next release's migration failed (version above this binary's, dirty): this process
// stays ready and /healthz shows the schema ahead of it.
func TestSchemaAheadAndDirtyStaysReadyAndIsReported(t *testing.T) {
	dsn := testutil.MigratedDatabase(t)
	pool := testutil.Pool(t, dsn)
	if _, err := pool.Exec(context.Background(), "UPDATE schema_migrations SET version = $1, dirty = true", int64(migrate.Latest()+1)); err != nil {
		t.Fatal(err)
	}
	base := runWithPostgres(t, dsn)
	if code, body := get(t, base+"/readyz"); code != 200 {
		t.Fatalf("readyz = %d %v, want 200: a newer release's failed migration must not unready this one", code, body)
	}
	_, body := get(t, base+"/healthz")
	schema, _ := body["schema"].(map[string]any)
	if schema["dirty"] != true || schema["version"] != float64(migrate.Latest()+1) || schema["binary_expects"] != float64(migrate.Latest()) {
		t.Fatalf("healthz schema = %v, want version %d dirty, binary_expects %d", body["schema"], migrate.Latest()+1, migrate.Latest())
	}
}

// Contract §9.1: reco_api_check_status{scope, check} is 1 for a passing check, 0 otherwise,
// set by /healthz and /readyz each under its own scope.
func TestCheckStatusGauge(t *testing.T) {
	tests := []struct {
		name string
		dsn  func(t testing.TB) string
		want string
	}{
		{"database up", testutil.MigratedDatabase, "1"},
		{"database down", func(testing.TB) string { return "postgres://u:p@127.0.0.1:1/db?sslmode=disable" }, "0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := runWithPostgres(t, tc.dsn(t))
			get(t, base+"/healthz")
			resp, err := http.Get(base + "/readyz")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			text := metricsText(t, base)
			for _, scope := range []string{"healthz", "readyz"} {
				line := `reco_api_check_status{scope="` + scope + `",check="db"} ` + tc.want
				if !strings.Contains(text, line+"\n") {
					t.Errorf("/metrics lacks %q", line)
				}
			}
		})
	}
}
