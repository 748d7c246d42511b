package httpx

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/redis/rueidis"
	"golang.org/x/time/rate"

	recsysredis "recsys/pkg/redis"
	"recsys/pkg/testutil"
)

// openRedis opens a client of url as the process does (pkg/redis: no retries, one
// connection), closed when the test ends: each is one "pod".
func openRedis(t testing.TB, url string) rueidis.Client {
	t.Helper()
	cfg := recsysredis.DefaultConfig()
	cfg.URL = url
	cl, err := recsysredis.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// pod is one API process with cluster-wide rate limits.
type pod struct {
	e *echo.Echo
	a *Auth
}

func newPod(t *testing.T, keys, redisURL, prefix string, log *slog.Logger) pod {
	t.Helper()
	e, a := authServerWith(t, keys, RateLimits{Scope: RateLimitCluster, Redis: openRedis(t, redisURL), KeyPrefix: prefix}, log)
	return pod{e, a}
}

func (p pod) get(secret string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodGet, "/reco", nil)
	req.Header.Set("Authorization", "Bearer "+secret)
	rec := httptest.NewRecorder()
	p.e.ServeHTTP(rec, req)
	return rec
}

// burstOf sends n requests of secret, round robin over pods, and returns how many were
// served, how long it took and the answers other than 200 and 429.
func burstOf(pods []pod, secret string, n int) (served int, took time.Duration, others []int) {
	start := time.Now()
	for i := range n {
		switch code := pods[i%len(pods)].get(secret).Code; code {
		case http.StatusOK:
			served++
		case http.StatusTooManyRequests:
		default:
			others = append(others, code)
		}
	}
	return served, time.Since(start), others
}

// TestClusterRateLimitSharedAcrossProcesses: with --http.rate-limit-scope=cluster, API
// processes sharing a Redis give a key its rate in total: a burst of requests spread over
// the pods is served a second's worth (plus what refilled meanwhile), not that once per pod.
func TestClusterRateLimitSharedAcrossProcesses(t *testing.T) {
	url := testutil.RedisURL(t)
	for _, tc := range []struct {
		rate float64
		pods int
	}{
		{rate: 5, pods: 2},
		{rate: 5, pods: 3},
		{rate: 20, pods: 2},
		{rate: 1, pods: 4},
	} {
		t.Run(strconv.FormatFloat(tc.rate, 'g', -1, 64)+"/s over "+strconv.Itoa(tc.pods)+" pods", func(t *testing.T) {
			keys := writeKeys(t, "limited client "+clientSecret+" rate="+strconv.FormatFloat(tc.rate, 'g', -1, 64)+"\n")
			prefix := testutil.Unique("test-rl-") + ":"
			var pods []pod
			for range tc.pods {
				pods = append(pods, newPod(t, keys, url, prefix, slog.New(slog.DiscardHandler)))
			}
			b := burst(tc.rate)
			served, took, others := burstOf(pods, clientSecret, 3*b*tc.pods)
			if len(others) > 0 {
				t.Fatalf("answers other than 200 and 429: %v", others)
			}
			// Per-process limits would serve b on every pod: at least 2b.
			most := b + int(tc.rate*took.Seconds()) + 1
			if most >= b*tc.pods {
				t.Fatalf("the burst took %s: too slow to tell a shared limit (at most %d) from per-process ones (%d)", took, most, b*tc.pods)
			}
			if served < b || served > most {
				t.Errorf("served %d of %d requests in %s over %d pods, want %d to %d (per-process limits: %d)",
					served, 3*b*tc.pods, took, tc.pods, b, most, b*tc.pods)
			}
			for i, p := range pods {
				if p.a.cluster.degraded.Load() {
					t.Errorf("pod %d fell back to its own count with Redis up", i)
				}
			}
			rec := pods[1].get(clientSecret)
			if rec.Code != 429 || !strings.Contains(rec.Body.String(), "requests/s across all servers") || rec.Header().Get("Retry-After") != "1" {
				t.Errorf("over the rate: %d %q %s, want 429 saying the rate is across all servers", rec.Code, rec.Header().Get("Retry-After"), rec.Body)
			}
		})
	}
}

// TestClusterRateLimitReloadChangesRate: a reload that changes a key's rate takes effect at
// once on the shared count: the state the old, lower rate left in Redis does not make the
// key wait. A reload that keeps the rate keeps the count.
func TestClusterRateLimitReloadChangesRate(t *testing.T) {
	url := testutil.RedisURL(t)
	path := writeKeys(t, "limited client "+clientSecret+" rate=0.5\n")
	prefix := testutil.Unique("test-rl-") + ":"
	p := newPod(t, path, url, prefix, slog.New(slog.DiscardHandler))
	q := newPod(t, path, url, prefix, slog.New(slog.DiscardHandler))
	reload := func(content string, at time.Duration) {
		t.Helper()
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		mod := time.Now().Add(at)
		if err := os.Chtimes(path, mod, mod); err != nil {
			t.Fatal(err)
		}
		p.a.next.Store(0)
		q.a.next.Store(0)
	}
	// Half a request a second: one served, then nothing for 2 s on either pod.
	start := time.Now()
	if served, _, others := burstOf([]pod{p, q}, clientSecret, 4); served != 1 || len(others) > 0 {
		t.Fatalf("rate=0.5: served %d of 4 (others %v), want 1", served, others)
	}
	// The refusal says when the shared count has room again: 2 s after the served request,
	// not the 1 s a whole-rate key would wait (and be refused again at).
	rec := q.get(clientSecret)
	if left := 2*time.Second - time.Since(start); rec.Code != 429 || !retryAfterFits(rec.Header().Get("Retry-After"), left) {
		t.Errorf("over a rate of 0.5/s: %d Retry-After %q, want 429 with the %s left rounded up", rec.Code, rec.Header().Get("Retry-After"), left)
	}
	reload("limited client "+clientSecret+" rate=0.5\n# touched\n", time.Minute)
	if served, _, _ := burstOf([]pod{q, p}, clientSecret, 2); served != 0 {
		t.Errorf("after a reload keeping the rate: served %d, want the count kept (0)", served)
	}
	reload("limited client "+clientSecret+" rate=1000\n", 2*time.Minute)
	if served, _, others := burstOf([]pod{p, q}, clientSecret, 10); served != 10 || len(others) > 0 {
		t.Errorf("after raising the rate to 1000: served %d of 10 (others %v), want all", served, others)
	}
}

// retryAfterFits says whether got is the Retry-After of a refusal whose bucket refills in
// about left, measured by the test after the request: the server saw a little more of left
// than the test, so it may round up to one second more.
func retryAfterFits(got string, left time.Duration) bool {
	low := int64((left + time.Second - 1) / time.Second)
	n, err := strconv.ParseInt(got, 10, 64)
	return err == nil && n >= max(low, 1) && n <= max(low, 1)+1
}

func TestRetryAfter(t *testing.T) {
	for _, tc := range []struct {
		wait time.Duration
		want string
	}{
		{time.Nanosecond, "1"},
		{time.Second, "1"},
		{time.Second + time.Microsecond, "2"},
		{1999 * time.Millisecond, "2"},
		{10 * time.Second, "10"},
	} {
		if got := retryAfter(tc.wait); got != tc.want {
			t.Errorf("retryAfter(%s) = %q, want %q", tc.wait, got, tc.want)
		}
	}
}

// commandCalls is how many times Redis ran each of names since its statistics were reset.
func commandCalls(t *testing.T, rd rueidis.Client, names ...string) int {
	t.Helper()
	info, err := rd.Do(context.Background(), rd.B().Info().Section("commandstats").Build()).ToString()
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, line := range strings.Split(info, "\n") {
		for _, n := range names {
			// cmdstat_evalsha:calls=3,usec=...
			if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_"+n+":calls="); ok {
				c, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
				total += c
			}
		}
	}
	return total
}

// TestClusterRateLimitKeysWithoutRateSkipRedis: with cluster limits, a key without a rate
// costs no Redis call (a private Redis' command statistics count none), while a key with one
// costs a script call per request.
func TestClusterRateLimitKeysWithoutRateSkipRedis(t *testing.T) {
	srv := testutil.StartPrivate(t, "redis")
	rd := testutil.RedisClient(t, srv.URL)
	p := newPod(t, writeKeys(t, "free client,ops "+bothSecret+"\nlimited client "+clientSecret+" rate=1000\n"),
		srv.URL, "recsys:", slog.New(slog.DiscardHandler))
	if err := rd.Do(context.Background(), rd.B().ConfigResetstat().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/reco", "/log/watch", "/metrics", "/healthz"} {
		for range 20 {
			method := http.MethodGet
			if strings.HasPrefix(path, "/log/") {
				method = http.MethodPost
			}
			req := httptest.NewRequest(method, path, nil)
			req.Header.Set("Authorization", "Bearer "+bothSecret)
			rec := httptest.NewRecorder()
			p.e.ServeHTTP(rec, req)
			if rec.Code != 200 {
				t.Fatalf("%s with a key without a rate: %d", path, rec.Code)
			}
		}
	}
	if n := commandCalls(t, rd, "evalsha", "eval", "get", "set"); n != 0 {
		t.Errorf("80 requests of a key without a rate made %d Redis script or key calls, want 0", n)
	}
	for range 5 {
		if code := p.get(clientSecret).Code; code != 200 {
			t.Fatalf("key with a rate: %d", code)
		}
	}
	// The first call of a fresh server is EVALSHA answered NOSCRIPT, then EVAL.
	if n := commandCalls(t, rd, "evalsha", "eval"); n < 5 || n > 6 {
		t.Errorf("5 requests of a key with a rate made %d script calls, want one each (and an EVAL after the first EVALSHA finds no script)", n)
	}
}

// hungRedis accepts connections and never answers: a Redis stuck in a long command, or a
// network that drops packets.
func hungRedis(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "redis://" + ln.Addr().String() + "/0"
}

// TestClusterRateLimitDegradedMode: when Redis fails (stopped, or hung past the call's
// timeout), every request is still answered, never 5xx and never unlimited: each process
// limits the key at its full rate on its own, counts the fallback and logs the change once;
// Redis is tried again once a second, not on every request (a hung Redis costs one timeout,
// not one per request); and once Redis is back the key is counted there again, without a
// restart.
func TestClusterRateLimitDegradedMode(t *testing.T) {
	for _, tc := range []struct {
		name string
		// redis returns the URL the pod uses, and stop and start (nil: the outage lasts).
		redis func(t *testing.T) (url string, stop, start func())
	}{
		{"redis stopped", func(t *testing.T) (string, func(), func()) {
			srv := testutil.StartPrivate(t, "redis")
			return srv.URL, srv.Stop, srv.Start
		}},
		{"redis hung", func(t *testing.T) (string, func(), func()) { return hungRedis(t), func() {}, nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url, stop, start := tc.redis(t)
			var logs testutil.SyncBuffer
			const perSecond = 10
			p := newPod(t, writeKeys(t, "limited client "+clientSecret+" rate=10\n"), url, "recsys:", slog.New(slog.NewJSONHandler(&logs, nil)))
			fallbacks := func() uint64 { return p.a.cluster.fallbacks.Get() }
			if start != nil {
				// Up: the key is counted in Redis, no fallback.
				before := fallbacks()
				if served, _, others := burstOf([]pod{p}, clientSecret, 3*perSecond); served < perSecond || served > perSecond+1 || len(others) > 0 {
					t.Fatalf("Redis up: served %d of %d (others %v), want %d", served, 3*perSecond, others, perSecond)
				}
				if fallbacks() != before {
					t.Fatalf("Redis up: %d fallbacks", fallbacks()-before)
				}
				// Redis' count is spent; the process' own bucket is still full.
			}
			stop()
			before := fallbacks()
			const n = 40
			served, took, others := burstOf([]pod{p}, clientSecret, n)
			if len(others) > 0 {
				t.Errorf("Redis down: answers other than 200 and 429: %v", others)
			}
			// The process' bucket: a second's worth, plus at most what refilled meanwhile (a
			// token bucket is exact: no tolerance, so the request that met the failure is
			// limited too).
			if most := perSecond + int(perSecond*took.Seconds()); served < perSecond || served > most {
				t.Errorf("Redis down: served %d of %d in %s, want %d to %d (limited by the process)", served, n, took, perSecond, most)
			}
			if got := fallbacks() - before; got != n {
				t.Errorf("Redis down: %d fallbacks counted, want %d", got, n)
			}
			// One call waits for Redis (at most the call timeout), the breaker spares the rest.
			if took > 10*clusterCallTimeout {
				t.Errorf("Redis down: %d requests took %s: Redis is tried on every request", n, took)
			}
			if rec := p.get(clientSecret); rec.Code != 429 || !strings.Contains(rec.Body.String(), "requests/s on this server") {
				t.Errorf("Redis down, over the rate: %d %s, want 429 saying the rate is this server's", rec.Code, rec.Body)
			}
			if c := strings.Count(logs.String(), "fall back to each process"); c != 1 {
				t.Errorf("the fallback was logged %d times, want once:\n%s", c, logs.String())
			}
			if start == nil {
				return
			}
			start()
			// Back in Redis within the breaker's second (plus the reconnection): requests stop
			// falling back, and the key is limited by the shared count again.
			deadline := time.Now().Add(10 * time.Second)
			for p.a.cluster.degraded.Load() {
				if time.Now().After(deadline) {
					t.Fatalf("still degraded 10 s after Redis came back:\n%s", logs.String())
				}
				time.Sleep(100 * time.Millisecond)
				p.get(clientSecret)
			}
			before = fallbacks()
			if served, _, others := burstOf([]pod{p}, clientSecret, 3*perSecond); served > perSecond+1 || len(others) > 0 {
				t.Errorf("Redis back: served %d of %d (others %v), want at most %d", served, 3*perSecond, others, perSecond+1)
			}
			if got := fallbacks() - before; got != 0 {
				t.Errorf("Redis back: %d fallbacks", got)
			}
			if !strings.Contains(logs.String(), "shared through Redis again") {
				t.Errorf("the recovery was not logged:\n%s", logs.String())
			}
			rd := testutil.RedisClient(t, url)
			if n, err := rd.Do(context.Background(), rd.B().Exists().Key("recsys:ratelimit:limited:10").Build()).AsInt64(); err != nil || n != 1 {
				t.Errorf("the shared count recsys:ratelimit:limited:10: exists %d, %v", n, err)
			}
		})
	}
}

// TestRateLimitScopeSetting: --http.rate-limit-scope takes process or cluster; cluster needs a
// Redis client.
func TestRateLimitScopeSetting(t *testing.T) {
	for _, tc := range []struct {
		scope string
		want  string // "" for valid
	}{
		{RateLimitProcess, ""},
		{RateLimitCluster, ""},
		{"", `--http.rate-limit-scope must be "process" or "cluster", got ""`},
		{"global", `--http.rate-limit-scope must be "process" or "cluster", got "global"`},
		{"Cluster", `got "Cluster"`},
	} {
		cfg := DefaultConfig()
		cfg.RateLimitScope = tc.scope
		err := cfg.Validate()
		if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("scope %q: %v, want %q", tc.scope, err, tc.want)
		}
	}
	if DefaultConfig().RateLimitScope != RateLimitProcess {
		t.Errorf("default scope %q, want process", DefaultConfig().RateLimitScope)
	}
	keys := writeKeys(t, "limited client "+clientSecret+" rate=1\n")
	for _, tc := range []struct {
		limits RateLimits
		want   string
	}{
		{RateLimits{}, ""},
		{RateLimits{Scope: RateLimitProcess}, ""},
		{RateLimits{Scope: RateLimitCluster}, "--http.rate-limit-scope=cluster: no Redis client"},
		{RateLimits{Scope: "global"}, "--http.rate-limit-scope must be"},
	} {
		_, err := NewAuth(keys, slog.New(slog.DiscardHandler), tc.limits)
		if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("NewAuth with %+v: %v, want %q", tc.limits, err, tc.want)
		}
	}
}

// TestClusterRateLimitBreakerClosesOnSuccess: a success closes the breaker whatever the
// degraded flag says. A failure racing a success (the failure opening the breaker while the
// success clears the flag) used to leave the breaker open with the flag clear: every success
// then re-armed it instead of closing it, and all but one request a second fell back to the
// process' count with Redis healthy, silently (the flag clear, nothing logged).
func TestClusterRateLimitBreakerClosesOnSuccess(t *testing.T) {
	c, err := newClusterLimits(RateLimits{Scope: RateLimitCluster, Redis: openRedis(t, testutil.RedisURL(t)),
		KeyPrefix: testutil.Unique("test-rl-") + ":"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	k := apiKey{name: "racer", rate: 1000}
	k.limiter = rate.NewLimiter(rate.Limit(k.rate), burst(k.rate))
	for _, degraded := range []bool{false, true} {
		// The state that interleaving leaves: the breaker's second just over, so the next
		// request is the one that tries Redis.
		c.openUntil.Store(time.Now().Add(-time.Millisecond).UnixNano())
		c.degraded.Store(degraded)
		for i := range 3 {
			if wait, shared := c.allow(k); wait != 0 || !shared {
				t.Fatalf("degraded=%v, request %d with Redis up: wait %s shared %v, want allowed through Redis", degraded, i, wait, shared)
			}
		}
		if c.openUntil.Load() != 0 || c.degraded.Load() {
			t.Errorf("degraded=%v: after successes the breaker is %d and degraded %v, want both clear", degraded, c.openUntil.Load(), c.degraded.Load())
		}
	}
}

// BenchmarkClusterRateLimit is what one decision of a key with a rate costs: the process'
// own limiter, and a --http.rate-limit-scope=cluster call to the real Redis, one at a time
// (its latency) and from every core at once (the pipelined client's throughput):
//
//	go test -run '^$' -bench ClusterRateLimit -count 5 ./pkg/httpx/
func BenchmarkClusterRateLimit(b *testing.B) {
	k := apiKey{name: testutil.Unique("bench-"), rate: 1e6}
	k.limiter = rate.NewLimiter(rate.Limit(k.rate), burst(k.rate))
	b.Run("process", func(b *testing.B) {
		for b.Loop() {
			k.limiter.Allow()
		}
	})
	c, err := newClusterLimits(RateLimits{Scope: RateLimitCluster, Redis: openRedis(b, testutil.RedisURL(b)),
		KeyPrefix: testutil.Unique("bench-rl-") + ":"}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	c.allow(k) // loads the script
	before := c.fallbacks.Get()
	b.Run("cluster/serial", func(b *testing.B) {
		for b.Loop() {
			c.allow(k)
		}
	})
	b.Run("cluster/parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c.allow(k)
			}
		})
	})
	if n := c.fallbacks.Get() - before; n > 0 {
		b.Fatalf("%d decisions fell back: the figures are not Redis'", n)
	}
}
