package testutil

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"
)

// TestStartPrivateMovesOffAPortTakenMeanwhile: when the port picked for a private service is
// bound by someone else before the service starts, StartPrivate starts it on another port.
func TestStartPrivateMovesOffAPortTakenMeanwhile(t *testing.T) {
	ServicesScript(t)
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	taken := held.Addr().(*net.TCPAddr).Port
	calls := 0
	pickPort = func(t testing.TB) int {
		calls++
		if calls == 1 {
			return taken
		}
		return freePort(t)
	}
	defer func() { pickPort = freePort }()

	p := StartPrivate(t, "redis")
	if p.Addr == held.Addr().String() {
		t.Fatalf("started on the taken port %s", p.Addr)
	}
	if calls < 4 {
		t.Fatalf("ports picked %d times, want a second attempt", calls)
	}
	c, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "+PONG" {
		t.Fatalf("PING on %s answered %q, %v", p.Addr, line, err)
	}
}
