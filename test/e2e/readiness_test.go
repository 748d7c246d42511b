package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"recsys/pkg/testutil"
)

// An api pod stays in rotation while PostgreSQL is down: every api pod shares the database,
// so failing readiness would take /reco (served from Redis) out of the load balancer for
// nothing. /readyz answers 200 naming PostgreSQL as degraded, /reco answers 200, the write
// endpoints answer 503 with a clear detail, and writes work again once it is back. A schema
// at another version stays a hard failure.
func TestAPIPodStaysReadyWithPostgresDown(t *testing.T) {
	pg := testutil.StartPrivate(t, "pg")
	p := Start(t, StackEnv(t, pg.URL), "serve", "--roles", "api")
	body := p.WaitReadyz(t, 503, 30*time.Second) // not migrated yet
	if !strings.Contains(fmt.Sprint(body), "behind this binary") {
		t.Fatalf("readyz body %v does not explain the schema is behind", body)
	}
	testutil.MigrateUp(t, pg.URL)
	p.WaitReadyz(t, 200, 30*time.Second)
	watch := func(id string) int {
		code, _ := sendWatch(p.Base, id, "rdy-user", "rdy-item", time.Now().UnixMilli())
		return code
	}
	if code := watch("ready-watch-0001"); code != 200 {
		t.Fatalf("/log/watch with postgres up = %d", code)
	}

	pg.Stop()
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body, err := getJSON(p.Base + "/readyz")
		if err == nil && code == 200 && strings.Contains(fmt.Sprint(body), "degraded") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz with postgres down = %d %v %v, want 200 naming postgres degraded", code, body, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if code, _, err := getJSON(p.Base + "/reco?user_id=u1&session_id=s1&k=5"); err != nil || code != 200 {
		t.Fatalf("/reco with postgres down = %d %v", code, err)
	}
	start := time.Now()
	if code := watch("ready-watch-0002"); code != http.StatusServiceUnavailable {
		t.Fatalf("/log/watch with postgres down = %d, want 503", code)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("/log/watch took %s to answer 503", d)
	}

	pg.Start()
	deadline = time.Now().Add(60 * time.Second)
	for watch("ready-watch-0003") != 200 {
		if time.Now().After(deadline) {
			t.Fatal("/log/watch did not recover after postgres came back")
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestSecondSignalEndsTheProcess: the first SIGTERM starts the graceful shutdown (readiness
// 503, then --shutdown.delay); a second one, as an operator's second Ctrl-C, ends the process
// at once by the signal's default action instead of being swallowed by the shutdown's wait.
func TestSecondSignalEndsTheProcess(t *testing.T) {
	p := Start(t, StackEnv(t, testutil.MigratedDatabase(t)), "all", "--shutdown.delay", "40s", "--shutdown.timeout", "50s")
	p.WaitReadyz(t, 200, 60*time.Second)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.WaitReadyz(t, 503, 10*time.Second) // draining: the delay has begun
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(35 * time.Second):
		t.Fatal("recsys still runs 35 s after a second SIGTERM (its shutdown delay is 40 s)")
	}
	if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Errorf("recsys ended with %v, want killed by the second SIGTERM", p.cmd.ProcessState)
	}
}
