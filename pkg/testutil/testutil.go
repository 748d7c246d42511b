// Package testutil gives integration tests the real PostgreSQL, Redis and Kafka started by
// scripts/services.sh (found through RECSYS_TEST_* variables). Without them a test skips with
// a message, unless RECSYS_INTEGRATION=1 (set by `make test` and CI), where a missing
// service is a failure: CI never passes by skipping.
package testutil

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/migrate"
)

func need(t testing.TB, env, what string) string {
	t.Helper()
	v := os.Getenv(env)
	if v != "" {
		return v
	}
	Missing(t, "%s not set: start the real %s with `eval \"$(scripts/services.sh up)\"`", env, what)
	return ""
}

// Missing ends a test that lacks something it cannot run without (a server binary, a data
// set, root): a skip with the message, but a failure when RECSYS_INTEGRATION=1 (make test,
// CI), where everything the tests need is installed and a skip would pass the run without
// the test.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("RECSYS_INTEGRATION") == "1" {
		t.Fatal(msg + " (RECSYS_INTEGRATION=1 requires it)")
	}
	t.Skip(msg)
}

// PGDSN returns the base PostgreSQL URL of the test server.
func PGDSN(t testing.TB) string { return need(t, "RECSYS_TEST_PG_DSN", "PostgreSQL") }

// RedisURL returns the test Redis URL.
func RedisURL(t testing.TB) string { return need(t, "RECSYS_TEST_REDIS_URL", "Redis") }

// KafkaBrokers returns the test broker addresses.
func KafkaBrokers(t testing.TB) []string {
	return strings.Split(need(t, "RECSYS_TEST_KAFKA_BROKERS", "Kafka"), ",")
}

// ServicesScript returns the path of scripts/services.sh, for tests that stop and start a
// server to simulate an outage.
func ServicesScript(t testing.TB) string { return need(t, "RECSYS_SERVICES_SCRIPT", "services script") }

// EnvInt is a benchmark's positive integer setting from the environment, or def when the
// variable is unset or not a positive integer.
func EnvInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// Unique returns prefix plus random hex, for database, topic, group and key names that must
// not collide between tests running in parallel.
func Unique(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// NewDatabase creates an empty database on the test server, drops it when the test ends and
// returns its URL.
func NewDatabase(t testing.TB) string {
	t.Helper()
	base := PGDSN(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("connect to test postgres: %v", err)
	}
	defer conn.Close(ctx)
	name := Unique("t_")
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, base)
		if err != nil {
			return
		}
		defer c.Close(ctx)
		_, _ = c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	u, _ := url.Parse(base)
	u.Path = "/" + name
	return u.String()
}

// SetReadOnly makes the new sessions of the test database at dsn (from NewDatabase) read-only
// or writable again, as a failover does for the sessions that still reach the demoted primary,
// then the promoted one: a write in such a session fails with 25006. Existing sessions keep
// their setting. It runs on the server's own database, since a read-only session could not
// undo it, and leaves roles alone (they are shared).
func SetReadOnly(t testing.TB, dsn string, on bool) {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("parse dsn: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, PGDSN(t))
	if err != nil {
		t.Fatalf("connect to test postgres: %v", err)
	}
	defer conn.Close(ctx)
	v := "off"
	if on {
		v = "on"
	}
	db := pgx.Identifier{strings.TrimPrefix(u.Path, "/")}.Sanitize()
	if _, err := conn.Exec(ctx, "ALTER DATABASE "+db+" SET default_transaction_read_only = "+v); err != nil {
		t.Fatalf("set %s read-only %s: %v", db, v, err)
	}
}

// HoldLock runs lock (a LOCK TABLE statement) in a transaction of its own connection to dsn
// and keeps it until release, or the end of the test: what a long transaction of another
// process does to the code under test. release may be called more than once.
func HoldLock(t testing.TB, dsn, lock string) (release func()) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := conn.Begin(ctx)
	if err == nil {
		_, err = tx.Exec(ctx, lock)
	}
	if err != nil {
		_ = conn.Close(ctx)
		t.Fatal(err)
	}
	released := false
	release = func() {
		if !released {
			released = true
			_ = tx.Rollback(ctx)
			_ = conn.Close(ctx)
		}
	}
	t.Cleanup(release)
	return release
}

// MigratedDatabase is NewDatabase with every migration applied.
func MigratedDatabase(t testing.TB) string {
	t.Helper()
	dsn := NewDatabase(t)
	MigrateUp(t, dsn)
	return dsn
}

// MigrateUp applies every migration to the database at dsn (a private server's, say).
func MigrateUp(t testing.TB, dsn string) {
	t.Helper()
	m, err := migrate.Open(dsn)
	if err != nil {
		t.Fatalf("open migrator: %v", err)
	}
	defer m.Close()
	if err := m.Up(context.Background()); err != nil {
		t.Fatalf("migrate up: %v", err)
	}
}

// Pool opens a pool on dsn, closed when the test ends.
func Pool(t testing.TB, dsn string) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatalf("open pool: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}
