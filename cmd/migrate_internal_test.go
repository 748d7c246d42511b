package cmd

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"recsys/pkg/migrate"
	"recsys/pkg/testutil"
)

// `migrate up` against a database that only starts accepting connections a moment later (the
// compose migration service right after PostgreSQL's first start) waits for it instead of
// failing the one-shot.
func TestMigrateUpWaitsForTheDatabase(t *testing.T) {
	dsn := testutil.NewDatabase(t)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	target := u.Host
	// A port nothing listens on yet; the proxy to the real server opens on it later.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	late := ln.Addr().String()
	ln.Close()
	u.Host = late

	oldWait, oldRetry := migrateConnectWait, migrateConnectRetry
	migrateConnectWait, migrateConnectRetry = 20*time.Second, 200*time.Millisecond
	defer func() { migrateConnectWait, migrateConnectRetry = oldWait, oldRetry }()

	opened := make(chan net.Listener, 1)
	go func() {
		time.Sleep(time.Second)
		l, err := net.Listen("tcp", late)
		opened <- l
		if err == nil {
			proxy(l, target)
		}
	}()
	defer func() {
		if l := <-opened; l != nil {
			l.Close()
		}
	}()
	root := NewRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(io.Discard)
	root.SetArgs([]string{"migrate", "up", "--pg.dsn", u.String()})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := root.ExecuteContext(ctx); err != nil {
		t.Fatalf("migrate up with the database coming up late: %v", err)
	}
	if want := fmt.Sprintf("version %d dirty=false", migrate.Latest()); !strings.HasPrefix(out.String(), want) {
		t.Fatalf("output %q, want %q", out.String(), want)
	}
}

// proxy forwards the connections accepted on ln to target until ln is closed.
func proxy(ln net.Listener, target string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			s, err := net.Dial("tcp", target)
			if err != nil {
				return
			}
			defer s.Close()
			go func() { _, _ = io.Copy(s, c) }()
			_, _ = io.Copy(c, s)
		}()
	}
}

// docs/rollback.md promises that every command it gives is safe to run twice. Its schema
// rollback step, repeated (unsure whether the one-off Job ran, a retried Job), must not revert
// one more release's migration and drop what that one holds (0021's blocked items, say).
func TestMigrateDownToVersionIsSafeToRepeat(t *testing.T) {
	dsn := testutil.MigratedDatabase(t)
	latest := migrate.Latest()
	target := latest - 1
	run := func(args ...string) (string, error) {
		root := NewRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(io.Discard)
		root.SetArgs(append([]string{"migrate", "--pg.dsn", dsn}, args...))
		err := root.ExecuteContext(context.Background())
		return out.String(), err
	}
	for i := range 2 {
		out, err := run("down", "--to-version", fmt.Sprint(target))
		if err != nil {
			t.Fatalf("run %d: %v", i+1, err)
		}
		if want := fmt.Sprintf("version %d dirty=false", target); !strings.HasPrefix(out, want) {
			t.Fatalf("run %d: output %q, want %q", i+1, out, want)
		}
	}
	for _, args := range [][]string{
		{"down"},
		{"down", "1", "--to-version", "3"},
		{"down", "--to-version", "-2"},
	} {
		if _, err := run(args...); err == nil {
			t.Errorf("migrate %v succeeded", args)
		}
	}
	if out, err := run("version"); err != nil || !strings.HasPrefix(out, fmt.Sprintf("version %d dirty=false", target)) {
		t.Fatalf("after the refused runs: %q %v, want version %d", out, err, target)
	}
}
