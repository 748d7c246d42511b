package logging

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"regexp"
	"strings"
	"testing"
)

// TestJSONLinesHaveTheContractKeys: a JSON line carries the original service's keys
// (api-contract §2.1), so log queries written for it keep matching.
func TestJSONLinesHaveTheContractKeys(t *testing.T) {
	idCtx := WithIDs(context.Background(), IDs{RequestID: "req-0001", CorrelationID: "corr-0001"})
	tests := []struct {
		name   string
		log    func(l *slog.Logger)
		want   map[string]any
		absent []string
	}{
		{"a process line", func(l *slog.Logger) { l.Info("started", "addr", "127.0.0.1:1") },
			map[string]any{"level": "INFO", "message": "started", "logger": "recsys", "component": "-", "request_id": "-", "correlation_id": "-", "addr": "127.0.0.1:1"},
			[]string{"msg", "time"}},
		{"a request line of the api", func(l *slog.Logger) { l.With("module", "reco").InfoContext(idCtx, "http_request", "status_code", 200) },
			map[string]any{"level": "INFO", "message": "http_request", "logger": "recsys.reco", "component": "api", "request_id": "req-0001", "correlation_id": "corr-0001", "status_code": 200.0},
			nil},
		{"a relay warning", func(l *slog.Logger) { l.With("module", "relay").Warn("lease lost") },
			map[string]any{"level": "WARNING", "component": "outbox-relay", "logger": "recsys.relay"}, nil},
		{"a consumer error", func(l *slog.Logger) { l.With("module", "consumer").Error("apply") },
			map[string]any{"level": "ERROR", "component": "feature-consumer"}, nil},
		{"a debug line", func(l *slog.Logger) { l.With("module", "ingest").Debug("probe", "k", "v") },
			map[string]any{"level": "DEBUG", "component": "api", "k": "v"}, nil},
		{"a relay process line", func(l *slog.Logger) { WithComponent(l, "relay").Error("module failed, stopping") },
			map[string]any{"level": "ERROR", "logger": "recsys", "component": "outbox-relay"}, []string{"module"}},
		{"a module line of a process with a component", func(l *slog.Logger) { WithComponent(l, "api").With("module", "consumer").Warn("x") },
			map[string]any{"component": "feature-consumer", "logger": "recsys.consumer"}, nil},
	}
	ts := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			l, err := New(&b, "json", slog.LevelDebug)
			if err != nil {
				t.Fatal(err)
			}
			tc.log(l)
			var got map[string]any
			if err := json.Unmarshal(b.Bytes(), &got); err != nil {
				t.Fatalf("%v: %s", err, b.String())
			}
			if s, _ := got["ts"].(string); !ts.MatchString(s) {
				t.Errorf("ts %q, want UTC ISO-8601 with milliseconds and Z", got["ts"])
			}
			for k, v := range tc.want {
				if g, ok := got[k]; !ok || !equal(g, v) {
					t.Errorf("%s = %v, want %v (line %s)", k, got[k], v, b.String())
				}
			}
			for _, k := range tc.absent {
				if _, ok := got[k]; ok {
					t.Errorf("key %q present: %s", k, b.String())
				}
			}
		})
	}
}

func equal(a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

// TestTextLinesCarryIDsOnlyWhenKnown: the terminal format stays slog's, with the IDs of a
// request's context.
func TestTextLinesCarryIDsOnlyWhenKnown(t *testing.T) {
	var b bytes.Buffer
	l, err := New(&b, "text", slog.LevelInfo)
	if err != nil {
		t.Fatal(err)
	}
	l.Info("plain")
	l.InfoContext(WithIDs(context.Background(), IDs{RequestID: "req-0001", CorrelationID: "corr-0001"}), "request")
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 2 || strings.Contains(lines[0], "request_id") || !strings.Contains(lines[1], "request_id=req-0001 correlation_id=corr-0001") {
		t.Fatalf("text lines:\n%s", b.String())
	}
}

func TestParseLevel(t *testing.T) {
	for in, want := range map[string]slog.Level{"debug": slog.LevelDebug, "": slog.LevelInfo, "WARNING": slog.LevelWarn, "warn": slog.LevelWarn, "CRITICAL": slog.LevelError,
		"FATAL": slog.LevelError, "NOTSET": slog.LevelDebug} {
		if got, err := ParseLevel(in); err != nil || got != want {
			t.Errorf("ParseLevel(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseLevel("loud"); err == nil {
		t.Error("ParseLevel(loud): no error")
	}
}
