package httpx

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// capped serves on a loopback listener capped at max. GET /block waits until release is
// closed or its client goes away; every other path answers at once. idle receives each connection's remote address
// when it goes idle between requests.
type capped struct {
	addr    string
	entered chan struct{}
	release chan struct{}
	idle    chan string
	srv     *http.Server
}

func serveCapped(t *testing.T, max int) *capped {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &capped{addr: ln.Addr().String(), entered: make(chan struct{}, 16), release: make(chan struct{}), idle: make(chan string, 16)}
	c.srv = &http.Server{ReadHeaderTimeout: time.Minute, IdleTimeout: time.Minute,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/block" {
				c.entered <- struct{}{}
				select {
				case <-c.release:
				case <-r.Context().Done(): // the client went away
				}
			}
			_, _ = io.WriteString(w, "ok")
		}),
		ConnState: func(conn net.Conn, s http.ConnState) {
			if s == http.StateIdle {
				c.idle <- conn.RemoteAddr().String()
			}
		}}
	done := make(chan error, 1)
	lln := LimitConnections(ln, max, c.srv)
	go func() { done <- c.srv.Serve(lln) }()
	t.Cleanup(func() {
		select {
		case <-c.release:
		default:
			close(c.release)
		}
		_ = c.srv.Close()
		select {
		case err := <-done:
			if !errors.Is(err, http.ErrServerClosed) {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after Close")
		}
	})
	return c
}

type client struct {
	net.Conn
	br *bufio.Reader
}

func (c *capped) dial(t *testing.T) *client {
	t.Helper()
	conn, err := net.Dial("tcp", c.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &client{Conn: conn, br: bufio.NewReader(conn)}
}

func (cl *client) send(t *testing.T, path string) {
	t.Helper()
	if _, err := fmt.Fprintf(cl, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path); err != nil {
		t.Fatal(err)
	}
}

// answer reads one response within d; "" when none came.
func (cl *client) answer(t *testing.T, d time.Duration) string {
	t.Helper()
	_ = cl.SetReadDeadline(time.Now().Add(d))
	resp, err := http.ReadResponse(cl.br, nil)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return ""
		}
		return "error: " + err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// busyAtTheCap serves with a cap of 1, one connection busy in a request held until
// s.release closes, and a second one waiting for a slot (unanswered for quiet).
func busyAtTheCap(t *testing.T, quiet time.Duration) (s *capped, busy, waiting *client) {
	t.Helper()
	s = serveCapped(t, 1)
	busy = s.dial(t)
	busy.send(t, "/block")
	s.waitEntered(t)
	waiting = s.dial(t)
	waiting.send(t, "/")
	if got := waiting.answer(t, quiet); got != "" {
		t.Fatalf("answered %q at the cap", got)
	}
	return s, busy, waiting
}

func (c *capped) waitEntered(t *testing.T) {
	t.Helper()
	select {
	case <-c.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("request did not reach the handler")
	}
}

func TestLimitConnections(t *testing.T) {
	const quiet = 300 * time.Millisecond // long enough for a served request on loopback
	tests := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"busy connections make the next one wait until one closes", func(t *testing.T) {
			s := serveCapped(t, 2)
			busy := []*client{s.dial(t), s.dial(t)}
			for _, b := range busy {
				b.send(t, "/block")
				s.waitEntered(t)
			}
			waits := connWaits.Get()
			third := s.dial(t)
			third.send(t, "/")
			if got := third.answer(t, quiet); got != "" {
				t.Fatalf("third connection answered %q while two were open, cap 2", got)
			}
			if connWaits.Get() != waits+1 {
				t.Errorf("recsys_http_connection_waits_total went from %d to %d, want one more", waits, connWaits.Get())
			}
			_ = busy[0].Close()
			if got := third.answer(t, 5*time.Second); got != "ok" {
				t.Fatalf("third connection answered %q after one closed, want ok", got)
			}
		}},
		{"silent connections hold their slots", func(t *testing.T) {
			s := serveCapped(t, 1)
			silent := s.dial(t)
			_ = silent.SetDeadline(time.Time{})
			second := s.dial(t)
			second.send(t, "/")
			if got := second.answer(t, quiet); got != "" {
				t.Fatalf("second connection answered %q while a silent one was open, cap 1", got)
			}
			_ = silent.Close()
			if got := second.answer(t, 5*time.Second); got != "ok" {
				t.Fatalf("second connection answered %q after the first closed, want ok", got)
			}
		}},
		{"idle keep-alive connections give way, longest idle first", func(t *testing.T) {
			s := serveCapped(t, 2)
			first, second := s.dial(t), s.dial(t)
			for _, c := range []*client{first, second} {
				c.send(t, "/")
				if got := c.answer(t, 5*time.Second); got != "ok" {
					t.Fatalf("answer %q", got)
				}
				if got := <-s.idle; got != c.LocalAddr().String() {
					t.Fatalf("idle %s, want %s", got, c.LocalAddr())
				}
			}
			evicted := connIdleEvicted.Get()
			third := s.dial(t)
			third.send(t, "/")
			if got := third.answer(t, 5*time.Second); got != "ok" {
				t.Fatalf("third connection answered %q with two idle ones open, want ok", got)
			}
			if got := first.answer(t, 5*time.Second); !strings.HasPrefix(got, "error: ") {
				t.Fatalf("the longest idle connection read %q, want it closed", got)
			}
			second.send(t, "/")
			if got := second.answer(t, 5*time.Second); got != "ok" {
				t.Fatalf("the other idle connection answered %q, want ok", got)
			}
			if connIdleEvicted.Get() != evicted+1 {
				t.Errorf("recsys_http_connection_idle_closed_total went from %d to %d, want one more", evicted, connIdleEvicted.Get())
			}
		}},
		{"a busy connection that goes idle gives way to a waiting one", func(t *testing.T) {
			s, busy, waiting := busyAtTheCap(t, quiet)
			close(s.release)
			if got := busy.answer(t, 5*time.Second); got != "ok" {
				t.Fatalf("busy answered %q", got)
			}
			if got := waiting.answer(t, 5*time.Second); got != "ok" {
				t.Fatalf("waiting connection answered %q once the busy one was idle, want ok", got)
			}
		}},
		{"closing the server ends a wait for a slot", func(t *testing.T) {
			s, _, waiting := busyAtTheCap(t, quiet)
			// Close closes the listener while Accept waits for a slot: Serve must return
			// (the cleanup checks that it does, with ErrServerClosed), the waiting client
			// must not hang.
			_ = s.srv.Close()
			if got := waiting.answer(t, 5*time.Second); !strings.HasPrefix(got, "error: ") {
				t.Fatalf("waiting connection read %q after Close, want it closed", got)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, tc.run)
	}
}

func TestLimitConnectionsZeroIsNoCap(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srv := &http.Server{}
	if got := LimitConnections(ln, 0, srv); got != ln || srv.ConnState != nil {
		t.Fatal("a cap of 0 wrapped the listener")
	}
}

func TestMaxConnectionsValidation(t *testing.T) {
	for v, ok := range map[int]bool{-1: false, 0: true, 1: true, DefaultMaxConnections: true} {
		cfg := DefaultConfig()
		cfg.MaxConnections = v
		if err := cfg.Validate(); (err == nil) != ok || (err != nil && !strings.Contains(err.Error(), "--http.max-connections")) {
			t.Errorf("--http.max-connections=%d: %v", v, err)
		}
	}
}

// TestLimitConnectionsEvictionRace: a request that reaches an idle connection just as it is
// chosen to make way must either be served and answered, or never reach the handler (the
// client sees the connection closed, as at --http.idle-timeout, and may resend it). Served
// without its answer, a POST /log/* is recorded while its client sees an error and resends it.
func TestLimitConnectionsEvictionRace(t *testing.T) {
	type target struct {
		idle    *client
		entered chan struct{}
	}
	targets := make(chan target, 1)
	var entered atomic.Bool
	// Set before the server starts and reset after it ends: Accept's goroutine reads it.
	t.Cleanup(func() { beforeEvict = nil })
	beforeEvict = func() {
		tg := <-targets
		// The idle connection's next request arrives between the choice and the close.
		_, _ = io.WriteString(tg.idle, "GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
		select {
		case <-tg.entered:
			entered.Store(true)
		case <-time.After(500 * time.Millisecond):
		}
	}
	s := serveCapped(t, 1)
	idle := s.dial(t)
	idle.send(t, "/")
	if got := idle.answer(t, 5*time.Second); got != "ok" {
		t.Fatalf("answer %q", got)
	}
	<-s.idle
	targets <- target{idle, s.entered}
	next := s.dial(t)
	next.send(t, "/")
	if got := next.answer(t, 5*time.Second); got != "ok" {
		t.Fatalf("the new connection answered %q, want ok", got)
	}
	close(s.release)
	got := idle.answer(t, 5*time.Second)
	if entered.Load() && got != "ok" {
		t.Fatalf("the request on the connection closed to make way was served, and its client read %q", got)
	}
}

func TestWarnDescriptorLimit(t *testing.T) {
	tests := []struct {
		max  int
		soft uint64
		warn bool
	}{
		{DefaultMaxConnections, 1 << 20, false},
		{DefaultMaxConnections, DefaultMaxConnections + DescriptorHeadroom, false},
		{DefaultMaxConnections, DefaultMaxConnections + DescriptorHeadroom - 1, true},
		{DefaultMaxConnections, 1024, true},
		{0, 1024, false}, // no cap: nothing it could protect
	}
	for _, tc := range tests {
		var buf strings.Builder
		warnDescriptorLimit(slog.New(slog.NewTextHandler(&buf, nil)), tc.max, tc.soft)
		if got := strings.Contains(buf.String(), "--http.max-connections"); got != tc.warn {
			t.Errorf("max %d, nofile %d: warned %v, want %v (%q)", tc.max, tc.soft, got, tc.warn, buf.String())
		}
	}
	if _, ok := descriptorLimit(); !ok && runtime.GOOS == "linux" {
		t.Error("RLIMIT_NOFILE not read")
	}
}
