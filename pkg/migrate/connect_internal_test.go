package migrate

import (
	"context"
	"net"
	"testing"
	"time"
)

// `migrate up` on a schema ahead of the binary checks, over a connection of its own, whether
// the schema refuses the binary: that connection must be bounded like the others, or a
// server that stops answering between them (a pooler waiting for its backend) holds the
// deploy's Job forever.
func TestFloorConnectIsBounded(t *testing.T) {
	old := ConnectTimeout
	ConnectTimeout = 300 * time.Millisecond
	defer func() { ConnectTimeout = old }()
	// testutil.HangingServer's package imports this one.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		var held []net.Conn // accepted, never answered
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	mg := &Migrator{dsn: "postgres://recsys:secret@" + ln.Addr().String() + "/recsys?sslmode=disable"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	err = mg.floor(ctx, Latest()+1, Latest())
	if took := time.Since(start); err == nil || took > 5*time.Second {
		t.Fatalf("floor against a server that never answers: %v after %s, want a failure within ConnectTimeout", err, took)
	}
}
