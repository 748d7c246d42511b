package cmd

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

func TestHealthcheckURL(t *testing.T) {
	tests := []struct {
		name, url, addr, path string
		want, wantErr         string
	}{
		{name: "default", addr: ":8080", path: "/readyz", want: "http://127.0.0.1:8080/readyz"},
		{name: "wildcard v4", addr: "0.0.0.0:9000", path: "/healthz", want: "http://127.0.0.1:9000/healthz"},
		{name: "wildcard v6", addr: "[::]:9000", path: "/readyz", want: "http://127.0.0.1:9000/readyz"},
		{name: "explicit host", addr: "10.1.2.3:8081", path: "/readyz", want: "http://10.1.2.3:8081/readyz"},
		{name: "v6 host", addr: "[::1]:8080", path: "/readyz", want: "http://[::1]:8080/readyz"},
		{name: "url wins", url: "https://example.test/x", addr: "bad", path: "bad", want: "https://example.test/x"},
		{name: "no port", addr: "localhost", path: "/readyz", wantErr: "--http.addr"},
		{name: "empty port", addr: "127.0.0.1:", path: "/readyz", wantErr: "--http.addr"},
		{name: "relative path", addr: ":8080", path: "readyz", wantErr: "--path"},
		{name: "relative url", url: "/readyz", addr: ":8080", path: "/readyz", wantErr: "--url"},
		{name: "other scheme", url: "tcp://127.0.0.1:8080", addr: ":8080", path: "/readyz", wantErr: "--url"},
		// The refusal quoted the URL whole: a password with a raw '%' does not parse.
		{name: "bad url with password", url: "http://probe:s3cr%et@127.0.0.1:8080/readyz", addr: ":8080", path: "/readyz", wantErr: "got \"http://probe:REDACTED@127"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := healthcheckURL(tt.url, tt.addr, tt.path)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("healthcheckURL() = %q, %v; want an error naming %s", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("healthcheckURL() = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// runHealthcheck runs `recsys healthcheck args...` through the real command tree, so the
// environment binding of --http.addr is exercised too.
func runHealthcheck(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := NewRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"healthcheck"}, args...))
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestHealthcheckCommand(t *testing.T) {
	// Written by the server goroutine, read by the test: atomics keep -race quiet.
	var gotPath atomic.Value
	var ready atomic.Bool
	ready.Store(true)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotPath.Store(r.URL.Path)
		if r.URL.Path == "/readyz" && !ready.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"detail":{"ready":false,"clients":{"postgres":"postgres ping: refused"}}}`))
			return
		}
		_, _ = w.Write([]byte(`{"ready":true}`))
	}))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())

	t.Run("2xx exits 0", func(t *testing.T) {
		out, err := runHealthcheck(t, "--url", srv.URL+"/readyz")
		if err != nil || !strings.Contains(out, "healthy") {
			t.Fatalf("err = %v, out = %q; want success", err, out)
		}
	})
	t.Run("port from RECSYS_HTTP_ADDR", func(t *testing.T) {
		t.Setenv("RECSYS_HTTP_ADDR", ":"+port)
		gotPath.Store("")
		if _, err := runHealthcheck(t); err != nil {
			t.Fatalf("healthcheck with RECSYS_HTTP_ADDR=:%s: %v", port, err)
		}
		if p := gotPath.Load(); p != "/readyz" {
			t.Fatalf("probed path %q, want /readyz", p)
		}
	})
	t.Run("port from legacy API_ADDR", func(t *testing.T) {
		t.Setenv("API_ADDR", "0.0.0.0:"+port)
		if _, err := runHealthcheck(t, "--path", "/healthz"); err != nil || gotPath.Load() != "/healthz" {
			t.Fatalf("err = %v, path = %q; want success on /healthz", err, gotPath.Load())
		}
	})
	t.Run("503 exits non-zero with the reason", func(t *testing.T) {
		ready.Store(false)
		defer ready.Store(true)
		_, err := runHealthcheck(t, "--url", srv.URL+"/readyz")
		if err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "postgres ping") {
			t.Fatalf("err = %v; want a 503 error carrying the body", err)
		}
	})
	t.Run("connection refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		if _, err := runHealthcheck(t, "--http.addr", addr); err == nil || !strings.Contains(err.Error(), "healthcheck http://"+addr) {
			t.Fatalf("err = %v; want an error naming the probed URL", err)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		block := make(chan struct{})
		slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-block:
			case <-r.Context().Done():
			}
		}))
		defer slow.Close()
		defer close(block)
		if _, err := runHealthcheck(t, "--url", slow.URL, "--timeout", "50ms"); err == nil || !strings.Contains(err.Error(), "deadline") {
			t.Fatalf("err = %v; want a deadline error", err)
		}
	})
	t.Run("invalid timeout", func(t *testing.T) {
		if _, err := runHealthcheck(t, "--url", srv.URL, "--timeout", "0s"); err == nil || !strings.Contains(err.Error(), "--timeout") {
			t.Fatalf("err = %v; want an error naming --timeout", err)
		}
	})
}
