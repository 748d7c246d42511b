package reco

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/features"
	"recsys/pkg/featurestore"
	rds "recsys/pkg/redis"
	"recsys/pkg/testutil"
)

// served is one /reco answer: its request id and how many items were shown.
type served struct {
	rid   string
	items int
}

// apiProcess is the real recsys binary running `serve --roles api`.
type apiProcess struct {
	testutil.SyncBuffer // its output
	cmd                 *exec.Cmd
	exited              chan struct{} // closed once the process has exited
	base                string
}

func startAPI(t testing.TB, env ...string) *apiProcess {
	t.Helper()
	return startRecsys(t, []string{"serve", "--roles", "api"}, env...)
}

// startRecsys runs the binary with args on a free port and waits for /readyz.
func startRecsys(t testing.TB, args []string, env ...string) *apiProcess {
	t.Helper()
	return startRecsysNice(t, 0, args, env...)
}

// startRecsysNice is startRecsys at a nice level (0: the default priority).
func startRecsysNice(t testing.TB, nice int, args []string, env ...string) *apiProcess {
	t.Helper()
	// A port picked here and released can be taken before recsys binds it (by another
	// package's test process): start again on another port when that is why it exited.
	for attempt := 1; ; attempt++ {
		p, err := tryStartRecsys(t, nice, args, env...)
		if err == nil {
			return p
		}
		if attempt == 5 || !strings.Contains(p.String(), "address already in use") {
			t.Fatal(err)
		}
	}
}

func tryStartRecsys(t testing.TB, nice int, args []string, env ...string) (*apiProcess, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	p := &apiProcess{base: "http://" + addr, exited: make(chan struct{})}
	argv := append([]string{testutil.RecsysBinary(t)}, append(args, "--http.addr", addr)...)
	if nice != 0 {
		// nice execs the binary: the process keeps its pid, which the CPU accounting reads.
		argv = append([]string{"nice", "-n", strconv.Itoa(nice)}, argv...)
	}
	p.cmd = testutil.Command(argv[0], argv[1:]...)
	p.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "LOG_FORMAT=json"}, env...)
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			out := p.String()
			if len(out) > 5000 {
				out = out[len(out)-5000:]
			}
			t.Logf("recsys output (tail):\n%s", out)
		}
	})
	for deadline := time.Now().Add(60 * time.Second); ; {
		resp, err := http.Get(p.base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p, nil
			}
		}
		select {
		case <-p.exited:
			return p, fmt.Errorf("recsys %v exited before it was ready", args)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return p, fmt.Errorf("recsys %v not ready within 60s", args)
		}
	}
}

// durabilityWorld seeds features for a fresh database and key prefix and returns the env of
// an API process on them.
func durabilityWorld(t *testing.T) (env []string, pool *pgxpool.Pool) {
	t.Helper()
	dsn := testutil.MigratedDatabase(t)
	redisURL := testutil.RedisURL(t)
	prefix := testutil.Unique("recodur") + ":"
	pool = testutil.Pool(t, dsn)
	rcfg := rds.DefaultConfig()
	rcfg.URL, rcfg.Timeout = redisURL, 30*time.Second
	rd, err := rds.Open(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rd.Close)
	s := &stack{t: t, pg: pool, rd: rd, prefix: prefix, store: featurestore.New(pool, rd, prefix, features.DefaultConfig(), testLogger())}
	t.Cleanup(s.deleteKeys)
	s.seed()
	return []string{"DATABASE_URL=" + dsn, "ONLINE_CACHE_REDIS_URL=" + redisURL, "RECSYS_REDIS_KEY_PREFIX=" + prefix}, pool
}

// hammer sends /reco requests from 16 clients until stop is closed and returns what was
// answered 200 with a non-empty list before that.
func hammer(t *testing.T, base string, stop <-chan struct{}) []served {
	t.Helper()
	var mu sync.Mutex
	var out []served
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 10 * time.Second}
	for c := 0; c < 16; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := client.Get(fmt.Sprintf("%s/reco?user_id=pu%d&session_id=s-%d-%d&k=8", base, (c*7+i)%30, c, i))
				if err != nil {
					return // the process is gone
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 {
					continue
				}
				var r struct {
					RequestID string   `json:"request_id"`
					Items     []string `json:"items"`
				}
				if json.Unmarshal(body, &r) == nil && len(r.Items) > 0 {
					mu.Lock()
					out = append(out, served{r.RequestID, len(r.Items)})
					mu.Unlock()
				}
			}
		}(c)
	}
	wg.Wait()
	return out
}

// missing returns the served lists whose impression rows are not all in the table.
func missing(t *testing.T, pool *pgxpool.Pool, list []served) []served {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT request_id, count(*) FROM impressions GROUP BY request_id`)
	if err != nil {
		t.Fatal(err)
	}
	stored := map[string]int{}
	for rows.Next() {
		var rid string
		var n int
		if err := rows.Scan(&rid, &n); err != nil {
			t.Fatal(err)
		}
		stored[rid] = n
	}
	var out []served
	for _, s := range list {
		if stored[s.rid] != s.items {
			out = append(out, s)
		}
	}
	return out
}

// With --reco.autolog-async=false a /reco response is sent only after its impression is
// committed: a kill -9 right after responses loses nothing that was served.
func TestDurabilityKill9SyncAutologLosesNothingServed(t *testing.T) {
	env, pool := durabilityWorld(t)
	p := startAPI(t, append(env, "RECO_ASYNC_IMPRESSION_LOGGING=false")...)
	stop := make(chan struct{})
	go func() {
		time.Sleep(1500 * time.Millisecond)
		// Kill while the clients are still sending: responses in flight are cut, the ones
		// received before must be durable.
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		close(stop)
	}()
	list := hammer(t, p.base, stop)
	if len(list) < 50 {
		t.Fatalf("only %d lists served before the kill", len(list))
	}
	if m := missing(t, pool, list); len(m) > 0 {
		t.Fatalf("%d of %d served lists have no (complete) impression rows after kill -9, e.g. %v", len(m), len(list), m[0])
	}
	t.Logf("%d served lists, all persisted", len(list))
}

var droppedLog = regexp.MustCompile(`"autolog shutdown timeout, impressions dropped".*?"dropped":(\d+)`)

// Async mode (the contract's default) answers before the commit. A graceful stop drains the
// queue: every served list is persisted or counted as dropped in the shutdown log line. A
// crash loses at most the queue's capacity.
func TestDurabilityAsyncAutolog(t *testing.T) {
	t.Run("sigterm drains", func(t *testing.T) {
		env, pool := durabilityWorld(t)
		p := startAPI(t, env...)
		stop := make(chan struct{})
		go func() { time.Sleep(1500 * time.Millisecond); close(stop) }()
		list := hammer(t, p.base, stop)
		if len(list) < 50 {
			t.Fatalf("only %d lists served before the stop: too few to test the drain", len(list))
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(30 * time.Second):
			t.Fatal("no exit after SIGTERM")
		}
		dropped := 0
		if m := droppedLog.FindStringSubmatch(p.String()); m != nil {
			dropped, _ = strconv.Atoi(m[1])
		}
		if m := missing(t, pool, list); len(m) > dropped {
			t.Fatalf("%d of %d served lists missing after a graceful stop, %d counted as dropped", len(m), len(list), dropped)
		}
		t.Logf("%d served lists, %d dropped at shutdown", len(list), dropped)
	})
	t.Run("kill -9 loses at most the queue", func(t *testing.T) {
		env, pool := durabilityWorld(t)
		const capacity = 64
		p := startAPI(t, append(env, "RECO_MAX_BACKGROUND_TASKS="+strconv.Itoa(capacity))...)
		stop := make(chan struct{})
		go func() {
			time.Sleep(1500 * time.Millisecond)
			_ = p.cmd.Process.Signal(syscall.SIGKILL)
			close(stop)
		}()
		list := hammer(t, p.base, stop)
		// With no more lists served than the queue holds, the bound below could not fail.
		if len(list) < 2*capacity {
			t.Fatalf("only %d lists served before the kill, want at least %d to test a bound of %d", len(list), 2*capacity, capacity)
		}
		m := missing(t, pool, list)
		if len(m) > capacity {
			t.Fatalf("%d of %d served lists lost, more than the queue capacity %d", len(m), len(list), capacity)
		}
		t.Logf("%d served lists, %d lost by the crash (bound %d)", len(list), len(m), capacity)
	})
}

// TestMain removes the recsys binary the process tests built.
func TestMain(m *testing.M) {
	code := m.Run()
	testutil.RemoveRecsysBinary()
	os.Exit(code)
}
