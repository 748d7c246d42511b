package reco

import (
	"time"

	"github.com/spf13/pflag"

	"recsys/pkg/flagenv"
	"recsys/pkg/ranking"
)

// Back-pressure modes of the autolog queue (RECO_BACKGROUND_BACKPRESSURE_MODE).
const (
	// BackpressureSync persists the impression inline when the queue is full.
	BackpressureSync = "sync"
	// BackpressureDrop drops it (counted) when the queue is full.
	BackpressureDrop = "drop"
)

// Config of the reco module (flags reco.* and ranking.*).
type Config struct {
	// Ranking configures the Weighted ranker and what the Snapshot loaders fetch.
	Ranking ranking.Config

	// AutologAsync answers /reco without waiting for the impression's commit; the event goes
	// through a bounded in-memory queue instead. Off: the response waits for the commit.
	AutologAsync bool
	// AutologQueueSize bounds the impressions accepted but not yet persisted (background
	// persists in async mode, and impressions buffered while PostgreSQL is down).
	AutologQueueSize int
	// AutologBackpressure is BackpressureSync or BackpressureDrop.
	AutologBackpressure string
	// AutologShutdownTimeout bounds the drain of the queue at shutdown.
	AutologShutdownTimeout time.Duration
	// AutologCommitWorkers is the number of transactions the autolog writer runs at once.
	// Two, with AutologGroupCommitMaxWait, give fewer and larger transactions: the whole
	// pipeline behind them (outbox rows, relay claims, consumer transactions) is paid per
	// transaction (docs/performance-log.md, session 14).
	AutologCommitWorkers int
	// AutologCommitMaxEvents caps the events merged into one transaction.
	AutologCommitMaxEvents int
	// AutologOutboxMaxAttempts is event_outbox.max_attempts of auto-logged impressions.
	AutologOutboxMaxAttempts int
	// AutologWriteTimeout bounds an impression's wait for the autolog writer to take it (past
	// it the write is retried, restamped) and its transaction once taken.
	AutologWriteTimeout time.Duration
	// AutologGroupCommitMaxWait is the group-commit gather time of the autolog's writer, in
	// async mode only: with AutologAsync false every /reco waits for its commit, so nothing
	// lingers then. Each transaction costs the whole pipeline a fixed amount (an outbox row
	// per lane, a relay claim, a produce, a consumer fetch) whatever its size. 20 ms instead
	// of 5, with the consumer's impression linger, took the machine from 905 to 624 µs of
	// CPU per list at 2,000 lists/s (docs/performance-log.md, session 17). A crash (kill -9) loses
	// what is queued in async mode: up to this much more.
	AutologGroupCommitMaxWait time.Duration
	// AutologRetryMax caps the back-off between retries of a batch while PostgreSQL is down.
	AutologRetryMax time.Duration

	// MetricsWindow and MetricsMaxSamples bound the /metrics/reco window.
	MetricsWindow     time.Duration
	MetricsMaxSamples int
	// SLATargetP95Ms and SLATargetP99Ms are the targets /metrics/reco reports against.
	SLATargetP95Ms float64
	SLATargetP99Ms float64

	// RedisTimeout and PGTimeout bound one Snapshot load from each store.
	RedisTimeout time.Duration
	PGTimeout    time.Duration
	// BreakerFailures consecutive failures of a store open its circuit breaker.
	BreakerFailures int
	// ProbeInterval is how often the stores are probed (closing an open breaker when they
	// answer) and Redis' ready marker is read.
	ProbeInterval time.Duration
	// GlobalRefresh is how often the in-process snapshot of the global lists is reloaded.
	GlobalRefresh time.Duration
	// BlockedRefresh is how often the blocked items are reread (blocklist).
	BlockedRefresh time.Duration
	// GlobalMaxAge: an in-process global snapshot older than this is not used to complete
	// per-user snapshots (it still serves as the last-resort fallback).
	GlobalMaxAge time.Duration
	// CacheGlobalLists serves the trending, popular and fresh lists from the in-process global
	// snapshot, so the per-request Redis read only fetches the user's own features.
	CacheGlobalLists bool
	// ItemCacheTTL is how long per-item features (neighbour lists, statistics) read from Redis
	// are reused across requests; 0 reads them with every request.
	ItemCacheTTL time.Duration
	// ItemCacheMax bounds the cached items.
	ItemCacheMax int
	// UserDecodeCacheMB bounds the memory of users' decoded Redis fields kept for reuse while
	// the raw values are unchanged (0: decode every read).
	UserDecodeCacheMB int
	// UserCacheTTL bounds how long a user's state read from Redis is kept in rueidis'
	// server-assisted client-side cache (0: read every request).
	UserCacheTTL time.Duration
	// AbsentUserCacheTTL is how long a user the read-through found unknown to PostgreSQL
	// (while users expire, --redis.user-ttl) is remembered in this process rather than looked
	// up again (0: look up every request); AbsentUserCacheMax bounds how many (absentUsers).
	AbsentUserCacheTTL time.Duration
	AbsentUserCacheMax int
	// PGMaxConcurrent bounds concurrent PostgreSQL snapshot reads (the degraded path); beyond
	// it requests are served from the global snapshot instead of queueing on PostgreSQL.
	PGMaxConcurrent int
	// PGSlotWait is how long a request waits for a busy PostgreSQL read slot (never past its
	// own deadline) before it is served from the global snapshot, whose lists exclude nothing
	// the user watched: a moment of PostgreSQL congestion is not worth a less personal list.
	PGSlotWait time.Duration

	// MaxInFlight bounds the /reco and /recommend requests served at once (0: no bound);
	// beyond it they queue for at most QueueTimeout, then get 503 (httpx.Limiter).
	MaxInFlight  int
	QueueTimeout time.Duration
}

// NewConfig returns the defaults: the contract's autolog and window settings, the ranking
// defaults, a 250 ms Redis and a 500 ms PostgreSQL budget per request.
func NewConfig() *Config {
	return &Config{
		Ranking:                   ranking.DefaultConfig(),
		AutologAsync:              true,
		AutologQueueSize:          1000,
		AutologBackpressure:       BackpressureSync,
		AutologShutdownTimeout:    5 * time.Second,
		AutologCommitWorkers:      2,
		AutologCommitMaxEvents:    2000,
		AutologOutboxMaxAttempts:  25,
		AutologWriteTimeout:       time.Second,
		AutologGroupCommitMaxWait: 20 * time.Millisecond,
		AutologRetryMax:           time.Second,
		MetricsWindow:             time.Hour,
		MetricsMaxSamples:         50_000,
		SLATargetP95Ms:            120,
		SLATargetP99Ms:            200,
		RedisTimeout:              250 * time.Millisecond,
		PGTimeout:                 500 * time.Millisecond,
		BreakerFailures:           5,
		ProbeInterval:             time.Second,
		GlobalRefresh:             time.Second,
		BlockedRefresh:            2 * time.Second,
		GlobalMaxAge:              30 * time.Second,
		CacheGlobalLists:          true,
		ItemCacheTTL:              5 * time.Second,
		ItemCacheMax:              200_000,
		UserCacheTTL:              0,
		AbsentUserCacheTTL:        time.Minute,
		AbsentUserCacheMax:        100_000,
		UserDecodeCacheMB:         64,
		PGMaxConcurrent:           8,
		PGSlotWait:                25 * time.Millisecond,
		MaxInFlight:               256,
		QueueTimeout:              100 * time.Millisecond,
	}
}

// RegisterFlags adds the reco.* and ranking.* flags with the original service's environment
// names as aliases.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	c.Ranking.RegisterFlags(fs)
	fs.BoolVar(&c.AutologAsync, "reco.autolog-async", c.AutologAsync, "answer /reco before the auto-logged impression is committed (bounded queue, drained on shutdown; a crash loses what is queued); false waits for the group commit, so a crash (kill -9) loses no served list except those whose write failed (PostgreSQL unavailable or slow), which wait in the same in-memory queue")
	fs.IntVar(&c.AutologQueueSize, "reco.autolog-queue-size", c.AutologQueueSize, "impression events waiting to be persisted; beyond it --reco.autolog-backpressure applies")
	fs.StringVar(&c.AutologBackpressure, "reco.autolog-backpressure", c.AutologBackpressure, "when the autolog queue is full: sync (persist inline) or drop (counted in recsys_reco_autolog_dropped_total)")
	fs.DurationVar(&c.AutologShutdownTimeout, "reco.autolog-shutdown-timeout", c.AutologShutdownTimeout, "longest the shutdown waits for queued impressions to be persisted (the rest is counted as dropped)")
	fs.IntVar(&c.AutologCommitWorkers, "reco.autolog-commit-workers", c.AutologCommitWorkers, "impression transactions the autolog's group-commit writer runs at once")
	fs.IntVar(&c.AutologCommitMaxEvents, "reco.autolog-commit-max-events", c.AutologCommitMaxEvents, "most impressions merged into one autolog transaction")
	fs.IntVar(&c.AutologOutboxMaxAttempts, "reco.autolog-outbox-max-attempts", c.AutologOutboxMaxAttempts, "max_attempts stored on the event_outbox rows of auto-logged impressions")
	fs.DurationVar(&c.AutologWriteTimeout, "reco.autolog-write-timeout", c.AutologWriteTimeout, "longest an auto-logged impression waits for the writer to take it (then it is retried, restamped) and longest its transaction may take; an inline /reco waits at most about twice this before buffering it")
	fs.DurationVar(&c.AutologGroupCommitMaxWait, "reco.autolog-group-commit-max-wait", c.AutologGroupCommitMaxWait, "longest the autolog writer waits to merge concurrent impressions into one transaction, in async mode (0: merge only what is queued; with --reco.autolog-async=false /reco waits for its commit and nothing waits)")
	fs.DurationVar(&c.AutologRetryMax, "reco.autolog-retry-max", c.AutologRetryMax, "longest pause between retries of queued impressions while PostgreSQL is unavailable")
	fs.DurationVar(&c.MetricsWindow, "reco.metrics-window", c.MetricsWindow, "time window of /metrics/reco (1s to 24h)")
	fs.IntVar(&c.MetricsMaxSamples, "reco.metrics-max-samples", c.MetricsMaxSamples, "/metrics/reco keeps only the newest whole seconds holding at most this many requests")
	fs.Float64Var(&c.SLATargetP95Ms, "reco.sla-target-p95-ms", c.SLATargetP95Ms, "p95 latency target reported by /metrics/reco, ms")
	fs.Float64Var(&c.SLATargetP99Ms, "reco.sla-target-p99-ms", c.SLATargetP99Ms, "p99 latency target reported by /metrics/reco, ms")
	fs.DurationVar(&c.RedisTimeout, "reco.redis-timeout", c.RedisTimeout, "budget of one feature snapshot read from Redis before falling back to PostgreSQL")
	fs.DurationVar(&c.PGTimeout, "reco.pg-timeout", c.PGTimeout, "budget of one feature snapshot read from PostgreSQL before falling back to the in-process global lists")
	fs.IntVar(&c.BreakerFailures, "reco.breaker-failures", c.BreakerFailures, "consecutive failures of Redis or PostgreSQL that open its circuit breaker (reads skip it until a probe succeeds)")
	fs.DurationVar(&c.ProbeInterval, "reco.probe-interval", c.ProbeInterval, "how often Redis (with its ready marker) and PostgreSQL are probed to close an open breaker")
	fs.DurationVar(&c.GlobalRefresh, "reco.global-refresh", c.GlobalRefresh, "how often the in-process snapshot of the trending, popular and fresh lists is reloaded")
	fs.DurationVar(&c.BlockedRefresh, "reco.blocked-refresh", c.BlockedRefresh, "how often the blocked items (`recsys items block`) are reread from PostgreSQL: a newly blocked item leaves every list within this")
	fs.DurationVar(&c.GlobalMaxAge, "reco.global-max-age", c.GlobalMaxAge, "an in-process global snapshot older than this no longer completes per-user snapshots (it remains the last-resort fallback)")
	fs.BoolVar(&c.CacheGlobalLists, "reco.cache-global-lists", c.CacheGlobalLists, "serve the global lists from the in-process snapshot (refreshed every --reco.global-refresh) so each request reads only the user's features from Redis")
	fs.DurationVar(&c.ItemCacheTTL, "reco.item-cache-ttl", c.ItemCacheTTL, "how long per-item features (co-visitation neighbours, item statistics) read from Redis are reused across requests (each entry for 75–100 % of it, at random, so entries loaded together are not refreshed together; stale ones are served while one background loader refreshes them); the user's own state is always read live; 0 reads everything per request")
	fs.IntVar(&c.ItemCacheMax, "reco.item-cache-max", c.ItemCacheMax, "most items kept in the per-item feature cache")
	fs.IntVar(&c.UserDecodeCacheMB, "reco.user-decode-cache-mb", c.UserDecodeCacheMB, "memory (estimated, MiB) for users' decoded state (history, watched set, impression counters), reused while the values read from Redis on every request are unchanged; 0 decodes every read")
	fs.DurationVar(&c.UserCacheTTL, "reco.user-cache-ttl", c.UserCacheTTL, "keep a user's state read from Redis in the client-side cache (RESP3 CLIENT TRACKING: Redis invalidates it the moment the user's hash changes) for at most this long; 0 reads it on every request; ignored with --redis.disable-client-cache")
	fs.DurationVar(&c.AbsentUserCacheTTL, "reco.absent-user-cache-ttl", c.AbsentUserCacheTTL, "while users expire (--redis.user-ttl on the writers), how long a user PostgreSQL does not know is remembered in this process, so their next requests skip the PostgreSQL lookup (Redis is read first: their first event shows at once); 0 looks them up on every request")
	fs.IntVar(&c.AbsentUserCacheMax, "reco.absent-user-cache-max", c.AbsentUserCacheMax, "most users PostgreSQL does not know remembered by --reco.absent-user-cache-ttl (about 100 bytes each); beyond it random ones are forgotten")
	fs.IntVar(&c.PGMaxConcurrent, "reco.pg-max-concurrent", c.PGMaxConcurrent, "concurrent PostgreSQL snapshot reads while Redis is unusable; requests beyond it get the global snapshot instead of queueing")
	fs.DurationVar(&c.PGSlotWait, "reco.pg-slot-wait", c.PGSlotWait, "longest a request waits for one of the busy --reco.pg-max-concurrent PostgreSQL reads before it gets the global snapshot (which does not exclude the items the user watched); 0 does not wait")
	fs.IntVar(&c.MaxInFlight, "reco.max-in-flight", c.MaxInFlight, "most /reco and /recommend requests served at once by this process; beyond it they wait for a turn (first come first served, newest first once the queue has not emptied for --reco.queue-timeout) and get 503 with Retry-After after --reco.queue-timeout; 0 serves every request at once")
	fs.DurationVar(&c.QueueTimeout, "reco.queue-timeout", c.QueueTimeout, "longest a /reco or /recommend request waits for a turn under --reco.max-in-flight before it is answered 503 (overloaded)")
	flagenv.Alias(fs, "reco.autolog-async", "RECO_ASYNC_IMPRESSION_LOGGING")
	flagenv.Alias(fs, "reco.autolog-queue-size", "RECO_MAX_BACKGROUND_TASKS")
	flagenv.Alias(fs, "reco.autolog-backpressure", "RECO_BACKGROUND_BACKPRESSURE_MODE")
	flagenv.Alias(fs, "reco.autolog-shutdown-timeout", "RECO_BACKGROUND_SHUTDOWN_TIMEOUT_SEC:s")
	flagenv.Alias(fs, "reco.metrics-window", "RECO_METRICS_WINDOW_SEC:s")
	flagenv.Alias(fs, "reco.metrics-max-samples", "RECO_METRICS_MAX_SAMPLES")
	flagenv.Alias(fs, "reco.autolog-outbox-max-attempts", "OUTBOX_MAX_ATTEMPTS")
}

// Validate reports every invalid setting, naming the flag. Unlike the original service, an
// unknown back-pressure mode or a zero timeout is an error, never a silent default.
func (c *Config) Validate() error {
	var p flagenv.Problems
	p.Add(c.Ranking.Validate())
	p.IntBetween("reco.autolog-queue-size", c.AutologQueueSize, 1, 10_000_000)
	if c.AutologBackpressure != BackpressureSync && c.AutologBackpressure != BackpressureDrop {
		p.Addf("--reco.autolog-backpressure (RECO_BACKGROUND_BACKPRESSURE_MODE) must be %q or %q, got %q", BackpressureSync, BackpressureDrop, c.AutologBackpressure)
	}
	p.DurationBetween("reco.autolog-shutdown-timeout", c.AutologShutdownTimeout, time.Millisecond, 10*time.Minute)
	p.IntBetween("reco.autolog-commit-workers", c.AutologCommitWorkers, 1, 256)
	p.IntBetween("reco.autolog-commit-max-events", c.AutologCommitMaxEvents, 1, 1_000_000)
	p.IntBetween("reco.autolog-outbox-max-attempts", c.AutologOutboxMaxAttempts, 1, 1_000_000)
	p.DurationBetween("reco.autolog-write-timeout", c.AutologWriteTimeout, time.Millisecond, time.Minute)
	p.DurationBetween("reco.autolog-group-commit-max-wait", c.AutologGroupCommitMaxWait, 0, time.Second)
	p.DurationBetween("reco.autolog-retry-max", c.AutologRetryMax, time.Millisecond, time.Minute)
	p.DurationBetween("reco.metrics-window", c.MetricsWindow, time.Second, 24*time.Hour)
	p.IntBetween("reco.metrics-max-samples", c.MetricsMaxSamples, 1, 100_000_000)
	for _, t := range []struct {
		flag string
		v    float64
	}{{"reco.sla-target-p95-ms", c.SLATargetP95Ms}, {"reco.sla-target-p99-ms", c.SLATargetP99Ms}} {
		if !(t.v > 0) {
			p.Addf("--%s must be > 0, got %v", t.flag, t.v)
		}
	}
	p.DurationBetween("reco.redis-timeout", c.RedisTimeout, time.Millisecond, time.Minute)
	p.DurationBetween("reco.pg-timeout", c.PGTimeout, time.Millisecond, time.Minute)
	p.IntBetween("reco.breaker-failures", c.BreakerFailures, 1, 1000)
	p.DurationBetween("reco.probe-interval", c.ProbeInterval, 10*time.Millisecond, time.Hour)
	p.DurationBetween("reco.global-refresh", c.GlobalRefresh, 10*time.Millisecond, time.Hour)
	p.DurationBetween("reco.blocked-refresh", c.BlockedRefresh, 100*time.Millisecond, time.Hour)
	p.DurationBetween("reco.item-cache-ttl", c.ItemCacheTTL, 0, time.Minute)
	p.IntBetween("reco.item-cache-max", c.ItemCacheMax, 1000, 100_000_000)
	p.DurationBetween("reco.user-cache-ttl", c.UserCacheTTL, 0, time.Hour)
	p.DurationBetween("reco.absent-user-cache-ttl", c.AbsentUserCacheTTL, 0, time.Hour)
	p.IntBetween("reco.absent-user-cache-max", c.AbsentUserCacheMax, 1000, 100_000_000)
	p.IntBetween("reco.user-decode-cache-mb", c.UserDecodeCacheMB, 0, 1<<20)
	p.IntBetween("reco.pg-max-concurrent", c.PGMaxConcurrent, 1, 1024)
	p.DurationBetween("reco.pg-slot-wait", c.PGSlotWait, 0, time.Second)
	p.IntBetween("reco.max-in-flight", c.MaxInFlight, 0, 1_000_000)
	p.DurationBetween("reco.queue-timeout", c.QueueTimeout, time.Millisecond, time.Minute)
	if c.GlobalMaxAge < c.GlobalRefresh {
		p.Addf("--reco.global-max-age must be >= --reco.global-refresh (%s), got %s", c.GlobalRefresh, c.GlobalMaxAge)
	}
	return p.Err()
}

// snapshotOptions is what a per-user load fetches: everything the ranker needs, minus the
// global lists when they come from the in-process snapshot.
//
// Decayed values are read as stored (ranking.Snapshot.Stored): the global lists and the item
// cache keep them for many requests, and decayed to the time each was loaded they would make
// scores depend on when this server loaded what.
func (c *Config) snapshotOptions(withGlobal bool) ranking.SnapshotOptions {
	o := c.Ranking.SnapshotOptions()
	o.Stored = true
	if !withGlobal {
		o.TrendingN, o.PopularN, o.FreshN = 0, 0, 0
	}
	return o
}
