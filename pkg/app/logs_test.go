package app_test

import (
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"recsys/pkg/app"
	"recsys/pkg/httpx"
	"recsys/pkg/infra"
	"recsys/pkg/logging"
	"recsys/pkg/module"
	"recsys/pkg/testutil"
)

// The server's own lines (access log, failed requests, panics) and the process' own (started,
// a module failed, stopped) carry the process' component, as every line of the original's
// three programs did: log queries select a program's lines by it.
func TestServerLinesCarryTheProcessComponent(t *testing.T) {
	for _, tc := range []struct {
		roles []string
		want  string
	}{
		{[]string{"api"}, "api"},
		{[]string{"relay"}, "outbox-relay"},
		{[]string{"consumer"}, "feature-consumer"},
		{[]string{"all"}, "api"},
		{[]string{"relay", "consumer"}, "-"},
	} {
		t.Run(strings.Join(tc.roles, ","), func(t *testing.T) {
			reg := module.NewRegistry()
			add := func(name string, role bool, deps ...string) {
				reg.Register(module.Info{Name: name, Role: role, DependsOn: deps,
					NewConfig: func() module.Config { return cfg{} },
					New: func(module.Config, infra.Deps) (module.Module, error) {
						return &fake{name: name, journal: &journal{}}, nil
					}})
			}
			add("reco", false)
			add("api", true, "reco")
			add("relay", true)
			add("consumer", true)
			var logs testutil.SyncBuffer
			log, err := logging.New(&logs, "json", slog.LevelInfo)
			if err != nil {
				t.Fatal(err)
			}
			base, cancel, done := serve(t, app.Options{Registry: reg, Roles: tc.roles, HTTP: httpx.DefaultConfig(),
				Shutdown: app.ShutdownConfig{Timeout: 5 * time.Second}, Infra: infra.DefaultConfig(), Log: log})
			defer func() { cancel(); <-done }()
			req, _ := http.NewRequest(http.MethodGet, base+"/no-such-route", nil)
			req.Header.Set(httpx.HeaderRequestID, "req-component-1")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			var access, started map[string]any
			for _, l := range logs.JSONLines(t) {
				switch {
				case l["message"] == "http_request" && l["request_id"] == "req-component-1":
					access = l
				case l["message"] == "started":
					started = l
				}
			}
			if access == nil || started == nil {
				t.Fatalf("no access log line for the request or no started line: %v, %v", access, started)
			}
			if access["component"] != tc.want {
				t.Errorf("access log component %v, want %q: %v", access["component"], tc.want, access)
			}
			if started["component"] != tc.want {
				t.Errorf("started line component %v, want %q: %v", started["component"], tc.want, started)
			}
		})
	}
}
