package cmd

import (
	"bytes"
	"context"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"recsys/pkg/migrate"
)

// Every command that connects to PostgreSQL warns, as the roles do, when the connection does
// not verify the server: the tools run by hand or as Jobs (takedowns, replays, erasures) send
// the same password over the same network. items and relay replay did not. migrate connects
// without infra.Open, often first to a new database, and warns on its own (the Job's log is
// where a deploy looks).
func TestEveryConnectingCommandWarnsAboutAnUnverifiedConnection(t *testing.T) {
	oldWait, oldRetry, oldConnect := migrateConnectWait, migrateConnectRetry, migrate.ConnectTimeout
	migrateConnectWait, migrateConnectRetry, migrate.ConnectTimeout = 0, 10*time.Millisecond, 200*time.Millisecond
	defer func() {
		migrateConnectWait, migrateConnectRetry, migrate.ConnectTimeout = oldWait, oldRetry, oldConnect
	}()
	// TEST-NET-1: off this machine, and nothing answers; the Redis port is closed.
	dsn := "postgres://recsys:S3cretPW@192.0.2.1:5432/recsys?sslmode=disable&connect_timeout=1"
	store := []string{"--pg.dsn", dsn, "--redis.url", "redis://127.0.0.1:1/0"}
	for _, args := range [][]string{
		{"items", "block", "--pg.dsn", dsn, "item-a"},
		{"items", "unblock", "--pg.dsn", dsn, "item-a"},
		{"items", "blocked", "--pg.dsn", dsn},
		{"relay", "replay", "--status", "dead", "--pg.dsn", dsn},
		{"migrate", "up", "--pg.dsn", dsn},
		{"migrate", "version", "--pg.dsn", dsn},
		{"migrate", "check", "--pg.dsn", dsn},
		{"migrate", "check", "--database-url", dsn},
		append([]string{"features", "verify"}, store...),
		append([]string{"features", "rebuild"}, store...),
		append([]string{"consume", "replay-dlq"}, store...),
		append([]string{"users", "forget", "user-a"}, store...),
	} {
		t.Run(strings.Join(args[:2], " "), func(t *testing.T) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			stderr := os.Stderr
			os.Stderr = w
			root := NewRootCmd()
			root.SetOut(io.Discard)
			root.SetErr(io.Discard)
			root.SetArgs(args)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err = root.ExecuteContext(ctx)
			cancel()
			os.Stderr = stderr
			_ = w.Close()
			logged, _ := io.ReadAll(r)
			if err == nil && args[1] != "check" {
				t.Fatal("succeeded against an address where nothing answers")
			}
			if !bytes.Contains(logged, []byte("PostgreSQL connection does not verify the server")) || !bytes.Contains(logged, []byte("192.0.2.1")) {
				t.Fatalf("no warning about the unverified connection; stderr: %s", logged)
			}
			if bytes.Contains(logged, []byte("S3cretPW")) {
				t.Fatalf("stderr shows the password: %s", logged)
			}
		})
	}
}
