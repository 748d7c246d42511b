package httpx

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"

	"recsys/pkg/logging"
)

// A panic is answered with the contract's JSON 500 and the ID headers, and logged with the
// request's IDs and its stack under exc_info, the key the original's lines carry a traceback
// in (contract §2.1), so log pipelines keyed on it see Go panics too.
func TestPanicAnswersWithIDsAndLogsTheTraceback(t *testing.T) {
	for _, tc := range []struct {
		name  string
		value any
	}{
		{"string", "boom"},
		{"error", errors.New("nil map write")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			log, err := logging.New(&buf, "json", slog.LevelInfo)
			if err != nil {
				t.Fatal(err)
			}
			e := New(DefaultConfig(), log)
			e.GET("/panic", func(echo.Context) error { panic(tc.value) })
			req := httptest.NewRequest(http.MethodGet, "/panic", nil)
			req.Header.Set(HeaderRequestID, "req-panic-0001")
			req.Header.Set(HeaderCorrelationID, "corr-panic-0001")
			rec := httptest.NewRecorder()
			e.ServeHTTP(rec, req)
			if rec.Code != http.StatusInternalServerError || rec.Header().Get(HeaderRequestID) != "req-panic-0001" ||
				rec.Header().Get(HeaderCorrelationID) != "corr-panic-0001" || !strings.Contains(rec.Body.String(), `"detail"`) {
				t.Fatalf("answer %d %v %s, want a JSON 500 with the ID headers", rec.Code, rec.Header(), rec.Body)
			}
			var line map[string]any
			for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
				var m map[string]any
				if err := json.Unmarshal([]byte(l), &m); err != nil {
					t.Fatalf("log line %q: %v", l, err)
				}
				if m["message"] == "panic serving request" {
					line = m
				}
			}
			if line == nil {
				t.Fatalf("no panic line in %s", buf.String())
			}
			tb, _ := line["exc_info"].(string)
			if line["request_id"] != "req-panic-0001" || line["correlation_id"] != "corr-panic-0001" || !strings.Contains(tb, "goroutine") {
				t.Errorf("panic line %v: want the request's IDs and the stack in exc_info", line)
			}
		})
	}
}
