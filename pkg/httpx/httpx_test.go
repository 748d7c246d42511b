package httpx

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
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
