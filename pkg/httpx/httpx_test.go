package httpx

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/labstack/echo/v4"
)

func TestPprofOnlyWhenEnabled(t *testing.T) {
	for _, tc := range []struct {
		pprof bool
		path  string
		want  int
		body  string
	}{
		{false, "/debug/pprof/", http.StatusNotFound, ""},
		{false, "/debug/pprof/heap", http.StatusNotFound, ""},
		{true, "/debug/pprof/", http.StatusOK, "goroutine"},
		{true, "/debug/pprof/heap?debug=1", http.StatusOK, "heap profile"},
		{true, "/debug/pprof/symbol", http.StatusOK, "num_symbols"},
		// The command line may carry secrets given as flags (--pg.dsn, --kafka.sasl-password).
		{true, "/debug/pprof/cmdline", http.StatusNotFound, "Unknown profile"},
		{true, "/debug/pprof/cmdline?debug=1", http.StatusNotFound, "Unknown profile"},
	} {
		cfg := DefaultConfig()
		cfg.Pprof = tc.pprof
		e := New(cfg, slog.New(slog.DiscardHandler))
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path, nil))
		if rec.Code != tc.want || !strings.Contains(rec.Body.String(), tc.body) {
			t.Errorf("pprof=%v GET %s = %d %.80q, want %d containing %q", tc.pprof, tc.path, rec.Code, rec.Body.String(), tc.want, tc.body)
		}
	}
}

// The method label of the request metrics is bounded: a method a client invents is "other",
// so it cannot add series for the life of the process.
func TestRequestMetricsMethodLabelIsBounded(t *testing.T) {
	e := New(DefaultConfig(), slog.New(slog.DiscardHandler))
	e.Any("/method-label-test", func(c echo.Context) error { return c.NoContent(http.StatusNoContent) })
	for _, tc := range []struct{ method, label string }{
		{http.MethodGet, "GET"}, {http.MethodHead, "HEAD"}, {http.MethodPost, "POST"}, {http.MethodPut, "PUT"},
		{http.MethodPatch, "PATCH"}, {http.MethodDelete, "DELETE"}, {http.MethodOptions, "OPTIONS"},
		{"get", "other"}, {"PROPFIND", "other"}, {"X" + strings.Repeat("Z", 1000), "other"},
	} {
		e.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(tc.method, "/method-label-test", nil))
		if got := methodSeries(t); !slices.Contains(got, tc.label) {
			t.Fatalf("%.20s: method labels %v, want %q among them", tc.method, got, tc.label)
		}
	}
	for i := 0; i < 100; i++ {
		e.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(fmt.Sprintf("X%06d", i), "/method-label-test", nil))
	}
	got := methodSeries(t)
	slices.Sort(got)
	if want := []string{"DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "other"}; !slices.Equal(got, want) {
		t.Fatalf("method labels %v, want %v", got, want)
	}
}

// methodSeries lists the method labels of the test route's request counters.
func methodSeries(t *testing.T) []string {
	t.Helper()
	var b bytes.Buffer
	metrics.WritePrometheus(&b, false)
	re := regexp.MustCompile(`recsys_http_requests_total\{route="/method-label-test",method="([^"]*)"`)
	var out []string
	for _, m := range re.FindAllStringSubmatch(b.String(), -1) {
		if !slices.Contains(out, m[1]) {
			out = append(out, m[1])
		}
	}
	return out
}

// A probe route answering 503 (an unready /readyz, every few seconds for as long as it lasts)
// is not an error line per probe: debug, and info when its status changes.
func TestProbeStatusLoggedOnChangeOnly(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	e := New(DefaultConfig(), log)
	var status atomic.Int32
	status.Store(http.StatusOK)
	e.GET("/readyz", func(c echo.Context) error { return c.NoContent(int(status.Load())) })
	e.GET("/boom", func(c echo.Context) error { return c.NoContent(http.StatusServiceUnavailable) })
	probe := func(n int) {
		for i := 0; i < n; i++ {
			e.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/readyz", nil))
		}
	}
	probe(3)
	status.Store(http.StatusServiceUnavailable)
	probe(5)
	status.Store(http.StatusOK)
	probe(2)
	e.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/boom", nil))
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var rec struct {
			Level  string `json:"level"`
			Route  string `json:"route"`
			Status int    `json:"status_code"`
		}
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		lines = append(lines, fmt.Sprintf("%s %s %d", rec.Level, rec.Route, rec.Status))
	}
	want := []string{"INFO /readyz 200", "INFO /readyz 503", "INFO /readyz 200", "ERROR /boom 503"}
	if !slices.Equal(lines, want) {
		t.Fatalf("log lines %q, want %q", lines, want)
	}
}

// A path with a trailing slash that no route matches, but that does without it, is answered
// 307 to the path without it, query kept, as the original service (Starlette's
// redirect_slashes) did; "/" and unknown paths stay 404, and a path a route matches as it is
// is served, not redirected.
func TestTrailingSlashRedirectsToTheRoute(t *testing.T) {
	e := New(DefaultConfig(), slog.New(slog.DiscardHandler))
	ok := func(c echo.Context) error { return c.String(http.StatusOK, c.Path()) }
	e.GET("/reco", ok)
	e.POST("/event", ok)
	e.GET("/files/*", ok)
	e.GET("/files/readme", ok)
	for _, tc := range []struct {
		method, target string
		code           int
		location, body string
	}{
		{http.MethodGet, "/reco/?user_id=u1&session_id=s1", 307, "/reco?user_id=u1&session_id=s1", ""},
		{http.MethodGet, "/reco/", 307, "/reco", ""},
		{http.MethodGet, "/reco//", 307, "/reco", ""},
		{http.MethodPost, "/event/", 307, "/event", ""},
		{http.MethodPost, "/reco/", 307, "/reco", ""}, // any method: the redirect target answers 405
		{http.MethodGet, "/reco", 200, "", "/reco"},
		{http.MethodGet, "/files/readme/", 200, "", "/files/*"},
		{http.MethodGet, "/", 404, "", `{"detail":"Not Found"}`},
		{http.MethodGet, "//", 404, "", `{"detail":"Not Found"}`},
		{http.MethodGet, "/nope/", 404, "", `{"detail":"Not Found"}`},
		{http.MethodGet, "/reco/x/", 404, "", `{"detail":"Not Found"}`},
	} {
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.target, strings.NewReader("{}")))
		if rec.Code != tc.code || rec.Header().Get("Location") != tc.location || strings.TrimSpace(rec.Body.String()) != tc.body {
			t.Errorf("%s %s = %d Location %q %q, want %d %q %q", tc.method, tc.target, rec.Code, rec.Header().Get("Location"),
				rec.Body.String(), tc.code, tc.location, tc.body)
		}
		if rec.Header().Get(HeaderRequestID) == "" {
			t.Errorf("%s %s: no %s", tc.method, tc.target, HeaderRequestID)
		}
	}
}

// OPTIONS on a routed path is a method the path does not serve: 405 with the body and Allow
// header of every other 405, as the original service (FastAPI without CORS) answered, not
// echo's 204. A route registered for OPTIONS keeps its handler.
func TestOptionsIsMethodNotAllowed(t *testing.T) {
	e := New(DefaultConfig(), slog.New(slog.DiscardHandler))
	ok := func(c echo.Context) error { return c.NoContent(http.StatusNoContent) }
	e.GET("/reco", ok)
	e.POST("/event", ok)
	e.GET("/items/:id", ok)
	e.OPTIONS("/own", ok)
	e.GET("/own", ok)
	e.Any("/any", ok)
	for _, tc := range []struct {
		method, path string
		code         int
		allow        string
	}{
		{http.MethodOptions, "/reco", 405, "GET"},
		{http.MethodPost, "/reco", 405, "GET"},
		{http.MethodOptions, "/event", 405, "POST"},
		{http.MethodGet, "/event", 405, "POST"},
		{http.MethodOptions, "/items/42", 405, "GET"},
		{http.MethodOptions, "/own", 204, ""},
		{http.MethodOptions, "/any", 204, ""},
		{http.MethodOptions, "/nope", 404, ""},
	} {
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, nil))
		if rec.Code != tc.code || rec.Header().Get("Allow") != tc.allow {
			t.Errorf("%s %s = %d Allow %q, want %d %q", tc.method, tc.path, rec.Code, rec.Header().Get("Allow"), tc.code, tc.allow)
		}
		if tc.code == 405 && rec.Body.String() != `{"detail":"Method Not Allowed"}`+"\n" {
			t.Errorf("%s %s: body %q", tc.method, tc.path, rec.Body.String())
		}
	}
}

// A client following the redirect of POST /event/ reaches /event with its body and query.
func TestTrailingSlashRedirectKeepsPostBody(t *testing.T) {
	e := New(DefaultConfig(), slog.New(slog.DiscardHandler))
	e.POST("/event", func(c echo.Context) error {
		b, err := io.ReadAll(c.Request().Body)
		if err != nil {
			return err
		}
		return c.String(http.StatusOK, c.Request().URL.RequestURI()+" "+string(b))
	})
	srv := httptest.NewServer(e)
	defer srv.Close()
	resp, err := srv.Client().Post(srv.URL+"/event/?a=1", "application/json", strings.NewReader(`{"k":1}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(b) != `/event?a=1 {"k":1}` {
		t.Fatalf("POST /event/?a=1 followed: %d %q", resp.StatusCode, b)
	}
}

// TestShutdownClosesWhatTheDrainLeft: a request still running when the drain's deadline
// passes loses its connection, so its context ends and it stops before the modules it uses
// are stopped, instead of running on unbounded.
func TestShutdownClosesWhatTheDrainLeft(t *testing.T) {
	started, ended := make(chan struct{}), make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done()
		close(ended)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	go func() {
		if resp, err := http.Get("http://" + ln.Addr().String()); err == nil {
			resp.Body.Close()
		}
	}()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := Shutdown(ctx, srv); err == nil {
		t.Fatal("Shutdown with a request running past its deadline: nil error")
	}
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the request left by the drain still runs 10 s after Shutdown returned")
	}
}

// Error answers carry <, > and & verbatim, as the original's (Python's json) did: escaped,
// each is six bytes, and a 422 echoing a body of them was six times its size.
func TestErrorAnswersKeepHTMLCharacters(t *testing.T) {
	e := New(DefaultConfig(), slog.New(slog.DiscardHandler))
	input := strings.Repeat("<&>", 1000)
	e.GET("/json-422", func(c echo.Context) error {
		return echo.NewHTTPError(http.StatusUnprocessableEntity, []map[string]any{{"input": input}})
	})
	for _, tc := range []struct{ path, want string }{
		{"/json-422", `{"detail":[{"input":"` + input + `"}]}` + "\n"},
		{"/json-422?pretty", "{\n  \"detail\": [\n    {\n      \"input\": \"" + input + "\"\n    }\n  ]\n}\n"},
	} {
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path, nil))
		if rec.Code != http.StatusUnprocessableEntity || rec.Body.String() != tc.want || rec.Header().Get("Content-Type") != echo.MIMEApplicationJSON {
			t.Errorf("GET %s: %d %q %.60q..., want 422 %.60q...", tc.path, rec.Code, rec.Header().Get("Content-Type"), rec.Body.String(), tc.want)
		}
	}
}

// The cause of failed requests is logged at most once a second, with the number of failures
// since: in an outage every request fails alike and has its own access line already.
func TestRequestFailureCauseLoggedOncePerSecond(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelError}))
	e := New(DefaultConfig(), log)
	e.GET("/down", func(c echo.Context) error {
		return echo.NewHTTPError(http.StatusServiceUnavailable, "database unavailable").SetInternal(errors.New("dial tcp: connection refused"))
	})
	e.GET("/bug", func(c echo.Context) error { return errors.New("unexpected") })
	count := func() (causes, failures int) {
		for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
			var rec struct {
				Msg      string `json:"msg"`
				Failures int    `json:"failures"`
			}
			if err := json.Unmarshal([]byte(l), &rec); err == nil && rec.Msg == "request failed" {
				causes++
				failures += rec.Failures
			}
		}
		return causes, failures
	}
	for i := 0; i < 100; i++ {
		e.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/down", nil))
		e.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/bug", nil))
	}
	if causes, failures := count(); causes != 1 || failures != 1 {
		t.Fatalf("200 failed requests in a moment logged %d causes (failures %d), want 1 (the first)", causes, failures)
	}
	time.Sleep(1100 * time.Millisecond)
	e.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/down", nil))
	if causes, failures := count(); causes != 2 || failures != 201 {
		t.Fatalf("a failure a second later: %d causes (failures %d), want 2 counting all 201", causes, failures)
	}
}

// The server bounds a request's header block (Go's default, 1 MiB, let a query string of
// that size through to the handlers and the access log): beyond --http.header-limit-bytes
// the answer is 431, below it the request is served.
func TestHeaderBlockIsBounded(t *testing.T) {
	e := echo.New()
	e.GET("/reco", func(c echo.Context) error { return c.String(http.StatusOK, "ok") })
	cfg := DefaultConfig()
	cfg.Addr = "127.0.0.1:0"
	srv := cfg.Server(e)
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	base := "http://" + ln.Addr().String()
	for _, tc := range []struct {
		name   string
		query  int // bytes of query string
		header int // bytes of one extra header's value
		want   int
	}{
		{"small request", 10, 10, http.StatusOK},
		{"32 KiB header", 0, 32 << 10, http.StatusOK},
		{"128 KiB header", 0, 128 << 10, http.StatusRequestHeaderFieldsTooLarge},
		{"128 KiB query string", 128 << 10, 0, http.StatusRequestHeaderFieldsTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodGet, base+"/reco?user_id=u&x="+strings.Repeat("a", tc.query), nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("X-Filler", strings.Repeat("b", tc.header))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_ = resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
	cfg.HeaderLimitBytes = 100
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "--http.header-limit-bytes") {
		t.Fatalf("a 100-byte header limit: %v", err)
	}
}
