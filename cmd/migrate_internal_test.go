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

// While a migration runs its version is dirty, as a failed one's is. `migrate version` must
// answer at once and say a migration is running, and `migrate force` must refuse rather than
// wait for the run to end and then overwrite the version it recorded.
func TestMigrateVersionAndForceDuringARun(t *testing.T) {
	ctx := context.Background()
	dsn := testutil.MigratedDatabase(t)
	latest := migrate.Latest()
	m, err := migrate.Open(dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	// 0022 waits for event_dedup, held by another transaction: a long migration.
	const running = 22
	if err := m.DownTo(ctx, running-1); err != nil {
		t.Fatal(err)
	}
	m.LockTimeout = 0
	pool := testutil.Pool(t, dsn)
	blocker, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Rollback(ctx) //nolint:errcheck
	if _, err := blocker.Exec(ctx, "SELECT count(*) FROM event_dedup"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Up(ctx) }()
	defer func() {
		blocker.Rollback(ctx) //nolint:errcheck
		if err := <-done; err != nil {
			t.Errorf("the migration: %v", err)
		}
	}()
	for start := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		var dirty bool
		if err := pool.QueryRow(ctx, "SELECT dirty FROM schema_migrations").Scan(&dirty); err != nil {
			t.Fatal(err)
		}
		if dirty {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("the migration never started")
		}
	}
	run := func(args ...string) (string, error) {
		root := NewRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(io.Discard)
		root.SetArgs(append([]string{"migrate", "--pg.dsn", dsn}, args...))
		res := make(chan error, 1)
		go func() { res <- root.ExecuteContext(ctx) }()
		select {
		case err := <-res:
			return out.String(), err
		case <-time.After(5 * time.Second):
			t.Fatalf("migrate %v waited for the running migration", args)
			return "", nil
		}
	}
	out, err := run("version")
	if want := fmt.Sprintf("version %d dirty=true (binary expects %d; a migration is running now", running, latest); err != nil || !strings.HasPrefix(out, want) {
		t.Errorf("version: %q %v, want %q", out, err, want)
	}
	if _, err := run("force", fmt.Sprint(running-1)); err == nil || !strings.Contains(err.Error(), "a migration is running") {
		t.Errorf("force during the run = %v, want a refusal", err)
	}
}

// A server that accepts connections and never answers (a stuck PostgreSQL, a pooler waiting
// for its backend, a firewall that swallows the handshake) must fail every migrate command
// after the database wait, not hold a deploy's one-shot Job forever.
func TestMigrateGivesUpOnAServerThatNeverAnswers(t *testing.T) {
	addr := testutil.HangingServer(t)
	oldWait, oldRetry, oldConnect := migrateConnectWait, migrateConnectRetry, migrate.ConnectTimeout
	migrateConnectWait, migrateConnectRetry, migrate.ConnectTimeout = time.Second, 100*time.Millisecond, 300*time.Millisecond
	defer func() {
		migrateConnectWait, migrateConnectRetry, migrate.ConnectTimeout = oldWait, oldRetry, oldConnect
	}()
	dsn := "postgres://recsys:secret@" + addr + "/recsys?sslmode=disable"
	for _, args := range [][]string{{"up"}, {"version"}, {"down", "--to-version", "0"}, {"force", "1"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			root := NewRootCmd()
			root.SetOut(io.Discard)
			root.SetErr(io.Discard)
			root.SetArgs(append(append([]string{"migrate"}, args...), "--pg.dsn", dsn))
			// Without a bound the connect ignores even a cancelled context (golang-migrate's
			// driver connects with its own): run it aside and give up on it.
			done := make(chan error, 1)
			go func() { done <- root.ExecuteContext(context.Background()) }()
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("succeeded against a server that never answers")
				}
			case <-time.After(10 * time.Second):
				t.Fatal("still connecting after 10 s, want the connect wait (1 s) plus one bounded attempt")
			}
		})
	}
}
