package app_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

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
	ic := infra.DefaultConfig()
	ic.PG.DSN = dsn
	ic.PG.ConnectTimeout = 200 * time.Millisecond
	return runModules(t, ic, module.Info{Name: "db", Role: true, Needs: infra.Postgres,
		NewConfig: func() module.Config { return cfg{} },
		New: func(module.Config, infra.Deps) (module.Module, error) {
			return &fake{name: "db", journal: &journal{}}, nil
		}})
}

// runModules serves the given modules with the shared clients of ic and returns the base URL.
func runModules(t *testing.T, ic infra.Config, infos ...module.Info) string {
	t.Helper()
	reg := module.NewRegistry()
	for _, i := range infos {
		reg.Register(i)
	}
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

// detailer is a module whose health details query PostgreSQL with their own timeout, as the
// ingest module's outbox snapshot does.
type detailer struct {
	fake
	pg *pgxpool.Pool
}

func (d *detailer) HealthDetails(ctx context.Context) map[string]any {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := d.pg.Ping(ctx); err != nil {
		return map[string]any{"outbox": map[string]string{"error": err.Error()}}
	}
	return map[string]any{"outbox": "ok"}
}

// A hung PostgreSQL costs a probe at most infra.CheckBudget: the client checks and the
// modules' details are asked concurrently under one budget, so /healthz and /readyz answer
// within the probes' timeouts while the degraded mode still serves.
func TestHealthAnswersWithinBudgetWhenPostgresHangs(t *testing.T) {
	ic := infra.DefaultConfig()
	ic.PG.DSN = "postgres://u:p@" + testutil.HangingServer(t) + "/db?sslmode=disable"
	ic.PG.ConnectTimeout = 5 * time.Second
	base := runModules(t, ic, module.Info{Name: "api", Role: true, Needs: infra.Postgres, Optional: infra.Postgres,
		NewConfig: func() module.Config { return cfg{} },
		New: func(_ module.Config, d infra.Deps) (module.Module, error) {
			return &detailer{fake: fake{name: "api", journal: &journal{}}, pg: d.PG}, nil
		}})
	for _, path := range []string{"/readyz", "/healthz", "/readyz"} {
		start := time.Now()
		code, body := get(t, base+path)
		if took, limit := time.Since(start), infra.CheckBudget+300*time.Millisecond; took > limit {
			t.Errorf("%s took %s with PostgreSQL hung, want at most %s", path, took, limit)
		}
		if code != 200 {
			t.Errorf("%s = %d %v, want 200: PostgreSQL is optional here", path, code, body)
		}
	}
}

// A module that cannot work without PostgreSQL does not start while the schema is behind
// the binary: the process serves probes, reports the wait as unready, and starts the module
// once `migrate up` has run. A cancel while waiting is a clean stop.
func TestPostgresModulesWaitForTheSchema(t *testing.T) {
	dsn := testutil.MigratedDatabase(t)
	pool := testutil.Pool(t, dsn)
	setVersion := func(v uint) {
		t.Helper()
		if _, err := pool.Exec(context.Background(), "UPDATE schema_migrations SET version = $1, dirty = false", int64(v)); err != nil {
			t.Fatal(err)
		}
	}
	setVersion(migrate.Latest() - 1)
	j := &journal{}
	ic := infra.DefaultConfig()
	ic.PG.DSN = dsn
	base := runModules(t, ic,
		module.Info{Name: "relay", Role: true, Needs: infra.Postgres,
			NewConfig: func() module.Config { return cfg{} },
			New: func(module.Config, infra.Deps) (module.Module, error) {
				return &fake{name: "relay", journal: j}, nil
			}},
		module.Info{Name: "reco", Role: true, Needs: infra.Postgres, Optional: infra.Postgres,
			NewConfig: func() module.Config { return cfg{} },
			New: func(module.Config, infra.Deps) (module.Module, error) {
				return &fake{name: "reco", journal: j}, nil
			}})

	time.Sleep(1500 * time.Millisecond)
	if got := j.String(); got != "start:reco" {
		t.Fatalf("modules started on a schema behind the binary: %q, want only the one that runs without PostgreSQL", got)
	}
	code, body := get(t, base+"/readyz")
	detail, _ := body["detail"].(map[string]any)
	mods, _ := detail["modules"].(map[string]any)
	if want := "waiting for schema version"; code != 503 || !strings.HasPrefix(fmt.Sprint(mods["relay"]), want) {
		t.Fatalf("readyz = %d %v, want 503 with relay %q", code, body, want)
	}

	setVersion(migrate.Latest())
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(j.String(), "start:relay") {
		if time.Now().After(deadline) {
			t.Fatalf("relay did not start once the schema was current: %q", j)
		}
		time.Sleep(50 * time.Millisecond)
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		code, body := get(t, base+"/readyz")
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("readyz = %d %v after the schema caught up, want 200", code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Cancelling a process that still waits for the schema stops it cleanly, without starting
// the waiting module.
func TestWaitingForSchemaStopsCleanly(t *testing.T) {
	dsn := testutil.MigratedDatabase(t)
	pool := testutil.Pool(t, dsn)
	if _, err := pool.Exec(context.Background(), "UPDATE schema_migrations SET version = $1", int64(migrate.Latest()-1)); err != nil {
		t.Fatal(err)
	}
	j := &journal{}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	err := runFakes(ctx, t, dsn, j, module.Info{Name: "consumer", Role: true, Needs: infra.Postgres})
	if err != nil || j.String() != "" {
		t.Fatalf("Run = %v, journal %q; want a clean stop without starting the consumer", err, j)
	}
}

// runFakes runs the roles "all" of fake modules (journalled in j) on the database dsn.
func runFakes(ctx context.Context, t *testing.T, dsn string, j *journal, infos ...module.Info) error {
	reg := module.NewRegistry()
	for _, i := range infos {
		i.NewConfig = func() module.Config { return cfg{} }
		i.New = func(module.Config, infra.Deps) (module.Module, error) { return &fake{name: i.Name, journal: j}, nil }
		reg.Register(i)
	}
	ic := infra.DefaultConfig()
	ic.PG.DSN = dsn
	return app.Run(ctx, app.Options{Registry: reg, Roles: []string{"all"}, HTTP: httpx.DefaultConfig(),
		Shutdown: app.ShutdownConfig{Timeout: 2 * time.Second}, Infra: ic,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Listener: listen(t)})
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// holder takes a pooled connection and keeps it past its cancel until released: a module
// whose drain outlives --shutdown.timeout.
type holder struct {
	pg      *pgxpool.Pool
	release chan struct{}
}

func (h *holder) Run(ctx context.Context) error {
	c, err := h.pg.Acquire(ctx)
	if err != nil {
		return err
	}
	defer c.Release()
	<-ctx.Done()
	<-h.release
	return nil
}

// --shutdown.timeout bounds the whole shutdown, the clients' close included: closing the pool
// waits for every connection, so a module that has not stopped and holds one must not keep
// the process alive until the orchestrator kills it.
func TestShutdownTimeoutBoundsClientClose(t *testing.T) {
	dsn := testutil.MigratedDatabase(t)
	release := make(chan struct{})
	defer close(release)
	reg := module.NewRegistry()
	reg.Register(module.Info{Name: "stuck", Role: true, Needs: infra.Postgres, Optional: infra.Postgres,
		NewConfig: func() module.Config { return cfg{} },
		New: func(_ module.Config, d infra.Deps) (module.Module, error) {
			return &holder{pg: d.PG, release: release}, nil
		}})
	ic := infra.DefaultConfig()
	ic.PG.DSN = dsn
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- app.Run(ctx, app.Options{Registry: reg, Roles: []string{"all"}, HTTP: httpx.DefaultConfig(),
			Shutdown: app.ShutdownConfig{Timeout: 300 * time.Millisecond}, Infra: ic,
			Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Listener: listen(t)})
	}()
	time.Sleep(300 * time.Millisecond) // the module takes its connection
	cancel()
	start := time.Now()
	select {
	case err := <-done:
		if took := time.Since(start); took > time.Second {
			t.Errorf("Run returned %s after the cancel, want about --shutdown.timeout (300ms)", took)
		}
		if err == nil || !strings.Contains(err.Error(), "module stuck did not stop") {
			t.Errorf("Run = %v, want an error naming the module that did not stop", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run still waits 5s after the cancel with --shutdown.timeout=300ms: the pool close waits for the module's connection")
	}
}

// breakThisBinary puts the schema at the next release's version, whose migration recorded
// that binaries before it do not work on it (docs/rollback.md, "Marking a breaking
// migration"): what a rolled-back image, or a pod left from an old ReplicaSet, finds.
func breakThisBinary(pool *pgxpool.Pool) error {
	next := int64(migrate.Latest() + 1)
	for _, q := range []string{"UPDATE schema_migrations SET version = $1, dirty = false",
		"INSERT INTO schema_breaking_migrations (version, min_binary, reason) VALUES ($1, $1, 'test: drops what older binaries write')"} {
		if _, err := pool.Exec(context.Background(), q, next); err != nil {
			return err
		}
	}
	return nil
}

// schemaBehindUntil puts the schema one migration behind this binary's (the modules needing
// PostgreSQL wait for `migrate up`) and runs catchUp 300 ms later.
func schemaBehindUntil(t *testing.T, pool *pgxpool.Pool, catchUp func() error) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), "UPDATE schema_migrations SET version = $1", int64(migrate.Latest()-1)); err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(300*time.Millisecond, func() {
		if err := catchUp(); err != nil {
			t.Error(err)
		}
	})
}

// A relay or consumer refused by the schema does not start: the process exits with the
// versions and the way out, whether the schema refused it at start or moved ahead to one that
// does while it waited for `migrate up`.
func TestPostgresModulesRefusedByTheSchemaDoNotStart(t *testing.T) {
	for _, tc := range []struct {
		name    string
		waiting bool
	}{{"at start", false}, {"while waiting for the schema", true}} {
		t.Run(tc.name, func(t *testing.T) {
			dsn := testutil.MigratedDatabase(t)
			pool := testutil.Pool(t, dsn)
			if tc.waiting {
				schemaBehindUntil(t, pool, func() error { return breakThisBinary(pool) })
			} else if err := breakThisBinary(pool); err != nil {
				t.Fatal(err)
			}
			j := &journal{}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := runFakes(ctx, t, dsn, j, module.Info{Name: "consumer", Role: true, Needs: infra.Postgres})
			var old *migrate.TooOldError
			if !errors.As(err, &old) || ctx.Err() != nil || j.String() != "" {
				t.Fatalf("Run = %v (journal %q), want a refusal before the consumer starts", err, j)
			}
			want := fmt.Sprintf("`recsys migrate down --to-version %d`", migrate.Latest())
			if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "test: drops what older binaries write") {
				t.Fatalf("Run = %v, want the reason and %s", err, want)
			}
		})
	}
}

// A process that serves without PostgreSQL (the api) stays up on a schema that refuses it,
// unready with the reason, and turns ready once the refusal is lifted (the schema reverted).
// A relay or consumer already running when a breaking migration commits (every rollout of
// one does this to the previous release's pods) stops within the watch interval and the
// process exits with the refusal, whether it ran from the start or once the schema caught up;
// a module that serves without PostgreSQL in the same process stops with it.
func TestRunningPostgresModulesStopWhenTheSchemaRefusesThem(t *testing.T) {
	for _, tc := range []struct {
		name    string
		waiting bool
	}{{"running from the start", false}, {"started once the schema caught up", true}} {
		t.Run(tc.name, func(t *testing.T) {
			dsn := testutil.MigratedDatabase(t)
			pool := testutil.Pool(t, dsn)
			if tc.waiting {
				schemaBehindUntil(t, pool, func() error {
					_, err := pool.Exec(context.Background(), "UPDATE schema_migrations SET version = $1", int64(migrate.Latest()))
					return err
				})
			}
			j := &journal{}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			done := make(chan error, 1)
			go func() {
				done <- runFakes(ctx, t, dsn, j,
					module.Info{Name: "consumer", Role: true, Needs: infra.Postgres},
					module.Info{Name: "reco", Role: true, Needs: infra.Postgres, Optional: infra.Postgres})
			}()
			for deadline := time.Now().Add(5 * time.Second); !strings.Contains(j.String(), "start:consumer"); {
				if time.Now().After(deadline) {
					t.Fatalf("consumer did not start: %q", j)
				}
				time.Sleep(50 * time.Millisecond)
			}
			if !tc.waiting {
				// Longer than a watch interval: a current schema leaves it running.
				time.Sleep(6 * time.Second)
				if strings.Contains(j.String(), "stop:") {
					t.Fatalf("modules stopped on a schema that accepts the binary: %q", j)
				}
			}
			if err := breakThisBinary(pool); err != nil {
				t.Fatal(err)
			}
			raised := time.Now()
			var err error
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				t.Fatalf("still running 10s after the schema refused the binary: %q", j)
			}
			t.Logf("stopped %s after the refusal", time.Since(raised).Round(time.Millisecond))
			var old *migrate.TooOldError
			if !errors.As(err, &old) || !strings.Contains(err.Error(), "stopping module consumer") ||
				!strings.Contains(err.Error(), "test: drops what older binaries write") {
				t.Fatalf("Run = %v, want the refusal naming the consumer and the reason", err)
			}
			if got := j.String(); !strings.Contains(got, "stop:consumer") || !strings.Contains(got, "stop:reco") {
				t.Fatalf("journal %q, want every module stopped through its context", got)
			}
		})
	}
}

func TestRefusedByTheSchemaIsUnready(t *testing.T) {
	dsn := testutil.MigratedDatabase(t)
	pool := testutil.Pool(t, dsn)
	if err := breakThisBinary(pool); err != nil {
		t.Fatal(err)
	}
	ic := infra.DefaultConfig()
	ic.PG.DSN = dsn
	base := runModules(t, ic, module.Info{Name: "reco", Role: true, Needs: infra.Postgres, Optional: infra.Postgres,
		NewConfig: func() module.Config { return cfg{} },
		New: func(module.Config, infra.Deps) (module.Module, error) {
			return &fake{name: "reco", journal: &journal{}}, nil
		}})
	code, body := get(t, base+"/readyz")
	detail, _ := body["detail"].(map[string]any)
	clients, _ := detail["clients"].(map[string]any)
	if reason := fmt.Sprint(clients["schema"]); code != 503 || !strings.Contains(reason, "no longer works with binaries older than") ||
		!strings.Contains(reason, fmt.Sprintf("--to-version %d", migrate.Latest())) {
		t.Fatalf("readyz = %d %v, want 503 with the refusal under clients.schema", code, body)
	}
	if _, err := pool.Exec(context.Background(), "DELETE FROM schema_breaking_migrations WHERE version = $1", int64(migrate.Latest()+1)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, body := get(t, base+"/readyz")
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("readyz = %d %v once the refusal was lifted, want 200", code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
