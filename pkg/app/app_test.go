package app_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"recsys/pkg/app"
	"recsys/pkg/httpx"
	"recsys/pkg/infra"
	"recsys/pkg/module"
)

type cfg struct{ err error }

func (cfg) RegisterFlags(*pflag.FlagSet) {}
func (c cfg) Validate() error            { return c.err }

// fake is a module that records its lifecycle in a shared journal.
type fake struct {
	name    string
	journal *journal
	failIn  time.Duration
	ready   *atomic.Pointer[error]
}

type journal struct {
	mu     sync.Mutex
	events []string
}

func (j *journal) add(s string) { j.mu.Lock(); j.events = append(j.events, s); j.mu.Unlock() }
func (j *journal) String() string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return strings.Join(j.events, " ")
}

func (f *fake) Run(ctx context.Context) error {
	f.journal.add("start:" + f.name)
	if f.failIn > 0 {
		select {
		case <-time.After(f.failIn):
			return errors.New("boom")
		case <-ctx.Done():
		}
	}
	<-ctx.Done()
	f.journal.add("stop:" + f.name)
	return nil
}

func (f *fake) Ready(context.Context) error {
	if f.ready == nil {
		return nil
	}
	if p := f.ready.Load(); p != nil {
		return *p
	}
	return nil
}

type setup struct {
	reg     *module.Registry
	journal *journal
	ready   atomic.Pointer[error]
}

func newSetup(failing string, validateErr error) *setup {
	s := &setup{reg: module.NewRegistry(), journal: &journal{}}
	add := func(name string, deps ...string) {
		s.reg.Register(module.Info{Name: name, Role: true, DependsOn: deps,
			NewConfig: func() module.Config {
				if name == "b" {
					return cfg{err: validateErr}
				}
				return cfg{}
			},
			New: func(module.Config, infra.Deps) (module.Module, error) {
				f := &fake{name: name, journal: s.journal}
				if name == failing {
					f.failIn = 100 * time.Millisecond
				}
				if name == "b" {
					f.ready = &s.ready
				}
				return f, nil
			}})
	}
	add("a")
	add("b", "a")
	add("c", "b")
	return s
}

func start(t *testing.T, s *setup, delay time.Duration) (string, context.CancelFunc, chan error) {
	t.Helper()
	return serve(t, app.Options{Registry: s.reg, Roles: []string{"all"}, HTTP: httpx.DefaultConfig(),
		Shutdown: app.ShutdownConfig{Delay: delay, Timeout: 5 * time.Second}, Infra: infra.DefaultConfig(),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
}

// serve runs app.Run with o on a loopback listener and returns the base URL once it serves,
// with the cancel that stops it and the channel of Run's result.
func serve(t *testing.T, o app.Options) (string, context.CancelFunc, chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	addr := make(chan string, 1)
	o.Listener, o.OnReady = ln, func(a string) { addr <- a }
	go func() { done <- app.Run(ctx, o) }()
	select {
	case a := <-addr:
		return "http://" + a, cancel, done
	case err := <-done:
		cancel()
		t.Fatalf("Run returned before serving: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("server did not start")
	}
	return "", cancel, done
}

func get(t *testing.T, url string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("decode %s: %v", url, err)
	}
	return resp.StatusCode, body
}

func TestShutdownOrderIsReverseOfStart(t *testing.T) {
	s := newSetup("", nil)
	_, cancel, done := start(t, s, 0)
	time.Sleep(50 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("clean stop returned %v", err)
	}
	got := s.journal.String()
	// Start order is only guaranteed for goroutine launch; stops are strictly sequential.
	if !strings.HasSuffix(got, "stop:c stop:b stop:a") {
		t.Fatalf("journal = %q, want stops c, b, a", got)
	}
}

func TestFailingModuleStopsAllWithError(t *testing.T) {
	s := newSetup("b", nil)
	_, cancel, done := start(t, s, time.Second) // the delay must not apply to failures
	defer cancel()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "module b: boom") {
			t.Fatalf("err = %v, want module b: boom", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("a failing module did not stop the process")
	}
	got := s.journal.String()
	for _, want := range []string{"stop:c", "stop:a"} {
		if !strings.Contains(got, want) {
			t.Fatalf("journal = %q, missing %s", got, want)
		}
	}
}

// A taken --http.addr (a second instance started by mistake on the same host) must fail
// before any module runs: a relay or consumer started for nothing claims outbox rows and
// joins the consumer group, pausing the real instances for a rebalance and a lease.
func TestTakenAddressFailsBeforeAnyModuleStarts(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	s := newSetup("", nil)
	h := httpx.DefaultConfig()
	h.Addr = taken.Addr().String()
	err = app.Run(context.Background(), app.Options{Registry: s.reg, Roles: []string{"all"}, HTTP: h,
		Shutdown: app.ShutdownConfig{Timeout: 5 * time.Second}, Infra: infra.DefaultConfig(),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil || !strings.Contains(err.Error(), "listen on "+h.Addr) {
		t.Fatalf("err = %v, want listen on %s", err, h.Addr)
	}
	if got := s.journal.String(); got != "" {
		t.Fatalf("modules ran although the address was taken: %s", got)
	}
}

func TestReadinessAggregatesModulesAndDraining(t *testing.T) {
	s := newSetup("", nil)
	base, cancel, done := start(t, s, 500*time.Millisecond)
	defer cancel()

	if code, body := get(t, base+"/readyz"); code != 200 || body["ready"] != true {
		t.Fatalf("readyz = %d %v, want 200 ready", code, body)
	}
	warming := errors.New("warming up")
	s.ready.Store(&warming)
	code, body := get(t, base+"/readyz")
	detail, _ := body["detail"].(map[string]any)
	mods, _ := detail["modules"].(map[string]any)
	if code != 503 || detail["ready"] != false || !strings.Contains(mods["b"].(string), "warming up") {
		t.Fatalf("readyz = %d %v, want 503 naming module b", code, body)
	}
	if code, body := get(t, base+"/healthz"); code != 200 || body["status"] != "ok" {
		t.Fatalf("healthz = %d %v, want 200 ok while unready", code, body)
	}
	s.ready.Store(nil)
	if code, _ := get(t, base+"/readyz"); code != 200 {
		t.Fatalf("readyz = %d after recovery, want 200", code)
	}

	cancel()
	time.Sleep(100 * time.Millisecond) // inside the shutdown delay: still serving, but draining
	code, body = get(t, base+"/readyz")
	if code != 503 || body["detail"].(map[string]any)["draining"] != true {
		t.Fatalf("readyz while draining = %d %v, want 503 draining", code, body)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestInvalidConfigListsEveryProblem(t *testing.T) {
	s := newSetup("", errors.New("--b.size must be > 0"))
	var crossChecked []string
	err := app.Run(context.Background(), app.Options{Registry: s.reg, Roles: []string{"all"},
		HTTP: httpx.Config{}, Shutdown: app.ShutdownConfig{Timeout: time.Second}, Infra: infra.DefaultConfig(),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		CrossCheck: func(cfgs map[string]module.Config) error {
			for name := range cfgs {
				crossChecked = append(crossChecked, name)
			}
			return errors.New("--a.x must exceed --c.y")
		}})
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	if len(crossChecked) != 3 {
		t.Errorf("CrossCheck saw %v, want the configs of a, b and c", crossChecked)
	}
	for _, want := range []string{"module b: --b.size must be > 0", "--http.addr", "--http.read-timeout", "--a.x must exceed --c.y"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
	if s.journal.String() != "" {
		t.Fatalf("modules ran despite invalid config: %s", s.journal)
	}
}

func TestRequestIDsOnEveryResponse(t *testing.T) {
	s := newSetup("", nil)
	base, cancel, done := start(t, s, 0)
	defer func() { cancel(); <-done }()
	tests := []struct {
		name, reqID, corrID, wantReq, wantCorr string
	}{
		{"valid ids echoed", "abcdefgh-1234", "corr:12345678", "abcdefgh-1234", "corr:12345678"},
		{"correlation defaults to request", "abcdefgh-1234", "", "abcdefgh-1234", "abcdefgh-1234"},
		{"invalid request id replaced", "short", "", "", ""},
		{"bad chars replaced", "abc def ghi jkl", "", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, path := range []string{"/healthz", "/no-such-route"} {
				req, _ := http.NewRequest("GET", base+path, nil)
				if tc.reqID != "" {
					req.Header.Set("X-Request-ID", tc.reqID)
				}
				if tc.corrID != "" {
					req.Header.Set("X-Correlation-ID", tc.corrID)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				rid, cid := resp.Header.Get("X-Request-ID"), resp.Header.Get("X-Correlation-ID")
				if tc.wantReq != "" && rid != tc.wantReq {
					t.Fatalf("%s: X-Request-ID = %q, want %q", path, rid, tc.wantReq)
				}
				if tc.wantReq == "" && (len(rid) != 32 || rid == tc.reqID) {
					t.Fatalf("%s: X-Request-ID = %q, want a fresh 32-hex id", path, rid)
				}
				want := tc.wantCorr
				if want == "" {
					want = rid
				}
				if cid != want {
					t.Fatalf("%s: X-Correlation-ID = %q, want %q", path, cid, want)
				}
			}
		})
	}
}

func TestRequestMetricsByRouteTemplate(t *testing.T) {
	s := newSetup("", nil)
	base, cancel, done := start(t, s, 0)
	defer func() { cancel(); <-done }()
	for _, p := range []string{"/healthz", "/healthz", "/no/such/path"} {
		resp, err := http.Get(base + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	resp, err := http.Get(base + "/metrics/prometheus")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`recsys_http_requests_total{route="/healthz",method="GET",code="200"}`,
		`recsys_http_requests_total{route="unmatched",method="GET",code="404"}`,
		`recsys_http_request_duration_seconds_bucket{route="/healthz",method="GET",le=`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics/prometheus lacks %s", want)
		}
	}
}

// Run serves through --http.max-connections: at the cap a new client waits for a slot.
func TestMaxConnectionsCapsTheServer(t *testing.T) {
	h := httpx.DefaultConfig()
	h.MaxConnections = 1
	base, cancel, done := serve(t, app.Options{Registry: newSetup("", nil).reg, Roles: []string{"all"}, HTTP: h,
		Shutdown: app.ShutdownConfig{Timeout: 5 * time.Second}, Infra: infra.DefaultConfig(),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	defer func() { cancel(); <-done }()
	silent, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	client := &http.Client{Timeout: 300 * time.Millisecond, Transport: &http.Transport{DisableKeepAlives: true}}
	if resp, err := client.Get(base + "/livez"); err == nil {
		resp.Body.Close()
		t.Fatalf("/livez answered %d while the one connection allowed was open", resp.StatusCode)
	}
	_ = silent.Close()
	client.Timeout = 5 * time.Second
	resp, err := client.Get(base + "/livez")
	if err != nil {
		t.Fatalf("/livez after the connection closed: %v", err)
	}
	resp.Body.Close()
}
