package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/migrate"
	"recsys/pkg/testutil"
)

// A relay and a consumer already running when a breaking migration commits (the previous
// release's pods, at every rollout of one) stop within the schema watch interval and exit
// non-zero naming the refusal; the restart Kubernetes then makes refuses at start, before
// claiming or joining the group, and once the schema is reverted a restart relays and applies
// what waited meanwhile.
func TestRelayAndConsumerStopWhenTheSchemaRefusesThem(t *testing.T) {
	dsn := testutil.MigratedDatabase(t)
	pool := testutil.Pool(t, dsn)
	env := StackEnv(t, dsn)
	api := Start(t, env, "serve", "--roles", "api")
	relay := Start(t, env, "relay")
	consumer := Start(t, env, "consume")
	for _, p := range []*Process{api, relay, consumer} {
		p.WaitReadyz(t, 200, 90*time.Second)
	}
	now := time.Now().UnixMilli()
	if code, err := sendWatch(api.Base, "guard-watch-0001", "guard-user", "guard-item", now); err != nil || code != 200 {
		t.Fatalf("POST /log/watch = %d %v", code, err)
	}
	waitApplied(t, pool, "guard-watch-0001", 30*time.Second)

	next := int64(migrate.Latest() + 1)
	for _, q := range []string{"UPDATE schema_migrations SET version = $1, dirty = false",
		"INSERT INTO schema_breaking_migrations (version, min_binary, reason) VALUES ($1, $1, 'test: drops what older binaries write')"} {
		if _, err := pool.Exec(context.Background(), q, next); err != nil {
			t.Fatal(err)
		}
	}
	raised := time.Now()
	for name, p := range map[string]*Process{"relay": relay, "consumer": consumer} {
		select {
		case <-p.exited:
		case <-time.After(20*time.Second - time.Since(raised)):
			t.Fatalf("%s still running 20s after the schema refused its binary", name)
		}
		out := p.String()
		if code := p.cmd.ProcessState.ExitCode(); code == 0 || !strings.Contains(out, "stopping module "+name) ||
			!strings.Contains(out, "test: drops what older binaries write") {
			t.Fatalf("%s exited %d; want non-zero with the refusal in its log:\n%s", name, code, p.tail())
		}
	}
	t.Logf("relay and consumer stopped %s after the refusal", time.Since(raised).Round(time.Millisecond))
	// The api, which has no worker to stop, stays up and unready.
	api.WaitReadyz(t, 503, 10*time.Second)

	// Written by the api while nothing relays: it waits in the outbox.
	if code, err := sendWatch(api.Base, "guard-watch-0002", "guard-user", "guard-item-2", time.Now().UnixMilli()); err != nil || code != 200 {
		t.Fatalf("POST /log/watch = %d %v", code, err)
	}
	for _, role := range []string{"relay", "consume"} {
		_, stderr, code := toolEnv(t, 30*time.Second, env, role, "--http.addr", "127.0.0.1:0")
		if code == 0 || !strings.Contains(stderr, "refusing to start module") {
			t.Fatalf("%s restarted on the refusing schema: exit %d, want a refusal at start:\n%s", role, code, stderr)
		}
	}
	time.Sleep(time.Second)
	var pending int
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM event_outbox WHERE status = 'pending'").Scan(&pending); err != nil || pending == 0 {
		t.Fatalf("pending outbox rows = %d %v, want the watch written after the refusal left unclaimed", pending, err)
	}

	if _, err := pool.Exec(context.Background(), "DELETE FROM schema_breaking_migrations WHERE version = $1", next); err != nil {
		t.Fatal(err)
	}
	Start(t, env, "relay")
	Start(t, env, "consume")
	waitApplied(t, pool, "guard-watch-0002", 60*time.Second)
}

// waitApplied waits until the consumer recorded eventID as applied.
func waitApplied(t *testing.T, pool *pgxpool.Pool, eventID string, timeout time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(timeout); ; {
		var n int
		if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM feature_applied WHERE event_id = $1", eventID).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("event %s not applied within %s", eventID, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
