package httpx

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

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
		{true, "/debug/pprof/cmdline", http.StatusOK, ""},
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
