package httpx

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/rueidis"

	"recsys/pkg/redis"
)

// RateLimits says where the keys' rates are counted. The zero value counts them in the process.
type RateLimits struct {
	// Scope is RateLimitProcess or RateLimitCluster ("" is RateLimitProcess).
	Scope string
	// Redis and KeyPrefix (--redis.key-prefix) hold the shared counts of RateLimitCluster.
	Redis     rueidis.Client
	KeyPrefix string
}

// gcraScript is the generic cell rate algorithm (as redis-cell and go-redis/redis_rate): a
// key's state is one number, its theoretical arrival time (TAT), the instant at which it
// would be back to a full burst; a request is allowed when, after it, the TAT is at most a
// burst of intervals ahead of now. One round trip decides and counts a request, whichever pod
// it reached. The time is the server's, so the pods' clocks do not matter.
//
// KEYS[1]: the key's TAT, in microseconds of the Redis server's clock.
// ARGV[1]: the emission interval, microseconds between two requests at the rate (fractional).
// ARGV[2]: the burst, in requests.
// Returns 0 when the request is allowed (and counted); when it is over the rate, the
// microseconds until it would be allowed (at least 1), which the 429's Retry-After reports.
//
// Redis >= 5 replicates a script's effects rather than the script, so a write after TIME is
// allowed. The TAT is fractional (an interval need not be a whole microsecond); Redis writes
// a number argument with 17 significant digits, which keeps it to a fraction of a
// microsecond. The key expires when a full burst has drained, so idle keys cost no memory.
const gcraScript = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0) or 0
if tat < now then tat = now end
local after = tat + interval
local wait = after - now - interval * tonumber(ARGV[2])
if wait > 0 then
  return math.ceil(wait)
end
redis.call('SET', KEYS[1], after, 'PX', math.ceil((after - now) / 1000))
return 0
`

var gcra = rueidis.NewLuaScript(gcraScript)

const (
	// clusterCallTimeout bounds a request's wait for Redis' verdict. The script takes a few
	// microseconds and a round trip in a cluster well under a millisecond, so 50 ms means
	// Redis is in trouble; waiting longer would add that to every limited request's latency
	// in an outage, where the process' own limiter decides as well.
	clusterCallTimeout = 50 * time.Millisecond
	// clusterRetryAfter is how long a process keeps deciding on its own after Redis failed,
	// before one request tries Redis again: an outage then costs one timeout a second per
	// process, not one per request.
	clusterRetryAfter = time.Second
)

// clusterLimits decides the requests of keys with a rate through Redis (gcraScript), and
// falls back to the process' limiter of the key while Redis fails (degraded mode).
type clusterLimits struct {
	client  rueidis.Client
	prefix  string
	log     *slog.Logger
	timeout time.Duration
	// openUntil is the breaker: 0 while Redis answers; after a failure, the Unix nanosecond
	// before which no request tries Redis. The first request after it swaps in a new instant
	// and is the one that tries (the others keep deciding on their own meanwhile).
	openUntil atomic.Int64
	// degraded is set from the first failure to the next success, so each transition is
	// logged once, however many requests fail together.
	degraded  atomic.Bool
	fallbacks *metrics.Counter
}

func newClusterLimits(l RateLimits, log *slog.Logger) (*clusterLimits, error) {
	if l.Redis == nil {
		return nil, fmt.Errorf("--http.rate-limit-scope=%s: no Redis client to share the keys' rates through", RateLimitCluster)
	}
	return &clusterLimits{client: l.Redis, prefix: l.KeyPrefix, log: log, timeout: clusterCallTimeout,
		fallbacks: metrics.GetOrCreateCounter("recsys_http_rate_limit_fallback_total")}, nil
}

// redisKey names a key's shared state. The rate is part of the name so that a reload that
// changes it starts from a full burst at the new rate, never waits out a TAT the old rate
// left (the old name expires within its burst's drain time).
func (c *clusterLimits) redisKey(k apiKey) string {
	return c.prefix + redis.RateLimitKeys + k.name + ":" + strconv.FormatFloat(k.rate, 'g', -1, 64)
}

// allow decides one request of k, a key with a rate: wait is 0 when it is allowed, else how
// long until it would be. shared is false when the process' limiter decided because Redis is
// failing.
func (c *clusterLimits) allow(k apiKey) (wait time.Duration, shared bool) {
	now := time.Now().UnixNano()
	if until := c.openUntil.Load(); until != 0 &&
		(now < until || !c.openUntil.CompareAndSwap(until, now+int64(clusterRetryAfter))) {
		c.fallbacks.Inc()
		return allowLocal(k), false
	}
	// Not the client's context: a client that hangs up must not count as a Redis failure.
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	interval := strconv.FormatFloat(1e6/k.rate, 'g', -1, 64)
	n, err := gcra.Exec(ctx, c.client, []string{c.redisKey(k)}, []string{interval, strconv.Itoa(burst(k.rate))}).AsInt64()
	if err != nil {
		c.openUntil.Store(time.Now().Add(clusterRetryAfter).UnixNano())
		if c.degraded.CompareAndSwap(false, true) {
			c.log.Warn("API key rate limits fall back to each process's own count: Redis failed",
				"err", err, "retry_every", clusterRetryAfter.String(),
				"mitigation", "each API process now allows every key its full rate (P pods: up to P times it) until Redis answers again")
		}
		c.fallbacks.Inc()
		return allowLocal(k), false
	}
	// The breaker and the log flag are cleared apart, each by itself: a failure racing this
	// success may leave degraded set with the breaker open (the next attempt settles it), but
	// never the breaker open for good behind a degraded already cleared.
	if c.openUntil.Load() != 0 {
		c.openUntil.Store(0)
	}
	if c.degraded.Load() && c.degraded.CompareAndSwap(true, false) {
		c.log.Info("API key rate limits are shared through Redis again")
	}
	return time.Duration(n) * time.Microsecond, true
}

// allowLocal decides one request of k, a key with a rate, on the process' own bucket: 0 when
// it is allowed (and counted), else how long until the bucket holds a request again.
func allowLocal(k apiKey) time.Duration {
	now := time.Now()
	if k.limiter.AllowN(now, 1) {
		return 0
	}
	// Read after the refusal, so concurrent requests may have moved it: a hint for the
	// client's Retry-After, never the decision.
	missing := 1 - k.limiter.TokensAt(now)
	return max(time.Duration(missing/k.rate*float64(time.Second)), time.Nanosecond)
}

// retryAfter is the Retry-After of a request refused for wait: whole seconds (RFC 9110),
// rounded up so a client that waits that long is served, at least 1.
func retryAfter(wait time.Duration) string {
	return strconv.FormatInt(max(int64((wait+time.Second-1)/time.Second), 1), 10)
}

// burst is how many requests a key with rate r may send at once: a second's worth, at least one.
func burst(r float64) int { return max(int(r), 1) }
