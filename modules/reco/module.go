// Package reco is the recommendation module of the api role: GET /reco, GET /recommend
// (legacy) and GET /metrics/reco (api-contract §2.4, §2.5, §2.13, §9.2).
//
// A request reads the user's own features live from Redis in one round trip (history, watched
// set, impression counters: pkg/featurestore's RedisLoader), takes the co-visitation
// neighbours of the recent history items and their statistics from an in-process cache
// (--reco.item-cache-ttl, single-flight loads, stale entries refreshed in the background) and
// the global lists (trending, popular, fresh) from an in-process snapshot refreshed every
// --reco.global-refresh, ranks the Snapshot with a ranking.Ranker (the Weighted ranker, weights
// from the ranking.* flags) and, with x_autolog_impressions, persists the served list as an
// impression event through pkg/ingest's group-commit writer: the same durable path
// (impression rows plus event_outbox row, idempotent by event_id) as POST /log/impression.
// Reading the per-item features per request cost Redis milliseconds (hundreds of HMGETs in
// the loader's script), which capped one Redis below a thousand requests per second; they
// change slowly, while what the user just did is always read live, so a watch changes the
// user's next list at once. The user's fields are read on every request; their decoded form
// is reused while the raw values are unchanged (--reco.user-decode-cache-mb), and with
// --reco.user-cache-ttl the read itself is served by rueidis' client-side cache, which Redis
// invalidates whenever the user's hash changes.
//
// Autolog modes (the contract's RECO_* names): async (default) answers before the commit,
// with at most --reco.autolog-queue-size impressions pending and the contract's sync/drop
// back-pressure beyond; --reco.autolog-async=false answers after the group commit, so even a
// kill -9 loses no served list, except while the PostgreSQL breaker is open (the list then
// waits in the in-memory queue). In both modes an impression whose write fails because
// PostgreSQL is unavailable waits in the bounded queue and is written when PostgreSQL is back;
// the queue is drained at shutdown (PostgreSQL is probed during the drain, so a database back
// since the last probe still gets the buffer); everything not persisted is counted in
// recsys_reco_autolog_dropped_total{reason}.
//
// Degraded serving (strategy gets a suffix naming the source):
//   - Redis down, or its ready marker missing (Redis lost its data): the Snapshot is built
//     from PostgreSQL ("<strategy>_pg_fallback");
//   - PostgreSQL down too, or all --reco.pg-max-concurrent PostgreSQL reads busy for longer
//     than --reco.pg-slot-wait: the in-process global snapshot, no personalisation
//     ("<strategy>_global_snapshot"). Such a list does not exclude the items the user
//     watched: nothing of the user was read;
//   - PostgreSQL down: reads are served from Redis; auto-logged impressions are buffered in
//     the bounded autolog queue and persisted once PostgreSQL answers again. A user whose
//     Redis hash expired (--redis.user-ttl) cannot be read back then: that request takes the
//     path of a Redis failure above (PostgreSQL, then the global snapshot, labelled as such),
//     without counting against Redis' breaker, so it is never passed off as a plain cold
//     start with the user's watched items in it;
//   - 503 {"detail": ...} only when no store was ever reachable, i.e. no list can be made.
//
// Circuit breakers keep an outage from costing a timeout per request: a few consecutive
// failures open the breaker of a store, requests then skip it, and a background probe every
// --reco.probe-interval closes it when the store answers (Redis: GET of the ready marker).
//
// Validation: user_id and session_id are 1–128 characters of letters, digits and
// - _ . : @ / + = ~ ! $ * , ; | # % &, stricter than /log/*, which takes any characters but
// NUL (docs/architecture.md); k is 1–200; x_autolog_impressions takes pydantic's boolean
// strings. A value with a raw ';' or a bad %-escape is a value_error naming the field.
// Violations are 422 with a pydantic-style detail list naming the field, never 500.
//
// Metrics (contract names kept verbatim; histograms in ms with the contract's buckets):
//
//	reco_api_requests_total{status_family}   counter: /reco requests by 2xx, 3xx, 4xx, 5xx, other
//	reco_api_latency_ms                      histogram: /reco latency
//	reco_stage_latency_ms{stage}             histogram: retrieval, ranking, impression_log; and, always
//	                                         observed as 0 (counters): impression_schedule, impression_drop,
//	                                         impression_backpressure_sync
//	recsys_reco_served_total{source}         counter: lists served from redis, pg_fallback, global_snapshot
//	recsys_reco_source_errors_total{store}   counter: failed snapshot reads from redis or postgres
//	recsys_reco_user_undecodable_total       counter: users whose features did not decode in Redis
//	                                         (served from postgresql) or in PostgreSQL too (the global
//	                                         snapshot); not a store failure for the breakers
//	recsys_reco_breaker_opened_total{store}  counter: breaker openings
//	recsys_reco_breaker_open{store}          gauge: 1 while the breaker is open
//	recsys_reco_redis_ready_marker           gauge: 1 while Redis' ready marker is present
//	recsys_reco_unavailable_total            counter: 503 answers (no list could be made)
//	recsys_reco_pg_shed_total                counter: requests given the global snapshot because every
//	                                         PostgreSQL read slot (--reco.pg-max-concurrent) stayed
//	                                         busy for --reco.pg-slot-wait
//	recsys_reco_global_snapshot_age_seconds  gauge: age of the in-process global snapshot (-1 before the first)
//	recsys_reco_global_snapshot_items        gauge: items with statistics in it
//	recsys_reco_global_refresh_errors_total  counter: failed refreshes (the previous snapshot is kept)
//	recsys_reco_user_cache_hits_total        counter: user reads answered by the client-side cache (--reco.user-cache-ttl)
//	recsys_reco_absent_user_cache_hits_total counter: users PostgreSQL does not know, not looked up again (--reco.absent-user-cache-ttl)
//	recsys_reco_autolog_queue_depth          gauge: impressions accepted, not yet persisted
//	recsys_reco_autolog_queue_capacity       gauge: its bound (--reco.autolog-queue-size)
//	recsys_reco_autolog_enqueued_total       counter: impressions handed to a background persist (async mode)
//	recsys_reco_autolog_buffered_total       counter: impressions buffered because PostgreSQL was unavailable
//	recsys_reco_autolog_persisted_total      counter: impressions committed
//	recsys_reco_autolog_retries_total        counter: failed background writes that will be retried
//	recsys_reco_autolog_dropped_total{reason} counter: queue_full (drop mode), db_down (buffer full while
//	                                         PostgreSQL is down), rejected (refused by the database), shutdown
//	recsys_ingest_*{writer="reco"}           pkg/ingest's writer metrics of the autolog writer
//
// Readiness: ready while some list can be made (Redis usable, PostgreSQL usable, or a global
// snapshot loaded). Redis and PostgreSQL are optional needs: an outage of either shows as
// "degraded" in /readyz (autolog buffers while PostgreSQL is down).
// /healthz and /readyz carry an "online_cache" object (Redis state, breakers, ready marker,
// global snapshot) and a "reco_autolog" object (mode, queue depth, drops).
package reco

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"recsys/pkg/httpx"
	"recsys/pkg/infra"
	"recsys/pkg/ingest"
	"recsys/pkg/logging"
	"recsys/pkg/module"
	"recsys/pkg/postgres"
	"recsys/pkg/ranking"
)

func init() {
	newCfg, build := module.Typed(NewConfig, New)
	module.Register(module.Info{
		Name:      "reco",
		Summary:   "recommendations: /reco, /recommend, /metrics/reco",
		Needs:     infra.Postgres | infra.Redis,
		Optional:  infra.Postgres | infra.Redis,
		NewConfig: newCfg,
		New:       build,
	})
}

// Reco serves the recommendation endpoints.
type Reco struct {
	cfg     *Config
	log     *slog.Logger
	m       *recoMetrics
	ranker  ranking.Ranker
	serving *serving
	autolog *autolog
	window  *window
	writer  impressionWriter
	limit   *httpx.Limiter
	blocked *blocklist // nil: no block list (unit tests without PostgreSQL)
	// agree checks the settings every pod must share (postgres.Agree; nil: none, unit
	// tests); a disagreement found fails readiness: a pod reading another prefix than the
	// consumers write serves a copy nobody updates, one writing other topics autologs
	// impressions no consumer applies.
	agree     func(context.Context) error
	agreement postgres.Agreement
}

var (
	_ module.Module         = (*Reco)(nil)
	_ module.RouteRegistrar = (*Reco)(nil)
	_ module.Readier        = (*Reco)(nil)
	_ module.HealthReporter = (*Reco)(nil)
)

// parts are the I/O pieces of the module, replaced by fakes in unit tests.
type parts struct {
	redis, pg  snapshotSource
	writer     impressionWriter
	probeRedis func(context.Context) (ready bool, err error)
	probePG    func(context.Context) error
	ranker     ranking.Ranker // nil: ranking.NewWeighted(cfg.Ranking)
	blocked    func(context.Context) ([]string, error)
	mirror     mirror // the blocked items' copy in Redis; nil: none
	agree      func(context.Context) error
}

// New wires the module: no goroutines, no I/O.
func New(cfg *Config, d infra.Deps) (module.Module, error) {
	p, err := stores(cfg, d)
	if err != nil {
		return nil, err
	}
	p.writer = ingest.New(d.PG, autologWriterConfig(cfg, d))
	return newReco(cfg, d.Log, d.Metrics, p), nil
}

// autologWriterConfig configures the group-commit writer of auto-logged impressions (the
// module's own, beside the API's). It gathers impressions for a few milliseconds in async
// mode only: in sync mode every /reco waits for its commit ("autolog adds ≤ 1 ms to p50"),
// so nothing lingers.
func autologWriterConfig(cfg *Config, d infra.Deps) ingest.Config {
	maxWait := cfg.AutologGroupCommitMaxWait
	if !cfg.AutologAsync {
		maxWait = 0
	}
	return ingest.Config{
		TopicImpressions: d.Config.Kafka.TopicImpressions,
		TopicWatches:     d.Config.Kafka.TopicWatches,
		MaxAttempts:      cfg.AutologOutboxMaxAttempts,
		OutboxLanes:      d.Config.OutboxLanes,
		MaxWait:          maxWait,
		MaxEvents:        cfg.AutologCommitMaxEvents,
		Workers:          cfg.AutologCommitWorkers,
		QueueSize:        cfg.AutologQueueSize + 1024,
		Timeout:          cfg.AutologWriteTimeout,
		AcquireTimeout:   d.Config.PG.AcquireTimeout,
		Name:             "reco",
		Metrics:          d.Metrics,
		Log:              d.Log,
	}
}

func newReco(cfg *Config, log *slog.Logger, set *metrics.Set, p parts) *Reco {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := newRecoMetrics(set)
	r := &Reco{cfg: cfg, log: log, m: m, ranker: p.ranker, writer: p.writer, agree: p.agree,
		window: newWindow(cfg.MetricsWindow, cfg.MetricsMaxSamples, cfg.SLATargetP95Ms, cfg.SLATargetP99Ms)}
	if r.ranker == nil {
		r.ranker = ranking.NewWeighted(cfg.Ranking)
	}
	r.serving = newServing(cfg, p.redis, p.pg, m, log)
	if pr, ok := r.ranker.(ranking.Preparer); ok {
		r.serving.prepare = pr.Prepare
		if cs, ok := p.redis.(*cachedSource); ok {
			cs.items.prepare = pr.Prepare
		}
	}
	if cs, ok := p.redis.(*cachedSource); ok {
		r.serving.onLandmarks = cs.items.noteLandmarks
	}
	r.serving.probeRedis, r.serving.probePG = p.probeRedis, p.probePG
	r.autolog = newAutolog(cfg, p.writer, r.serving.pgBrk, m, log)
	r.limit = httpx.NewLimiter("reco", cfg.MaxInFlight, cfg.QueueTimeout, set)
	if p.blocked != nil {
		r.blocked = &blocklist{load: p.blocked, store: p.mirror}
		m.set.NewGauge("recsys_reco_blocked_items", func() float64 { return float64(len(r.blocked.current())) })
		m.set.NewGauge("recsys_reco_blocklist_age_seconds", func() float64 {
			if at := r.blocked.at.Load(); at > 0 {
				return float64(time.Now().UnixMilli()-at) / 1000
			}
			return -1 // never read
		})
	}
	m.gauges(r)
	return r
}

// lifecycle is implemented by pkg/ingest's Writer.
type lifecycle interface {
	Start()
	Close()
}

// Run probes the stores, refreshes the global snapshot, and at shutdown (after the HTTP server
// has drained) waits for the autolog's pending impressions, then closes the writer.
func (r *Reco) Run(ctx context.Context) error {
	lc, _ := r.writer.(lifecycle)
	if lc != nil {
		lc.Start()
	}
	var wg sync.WaitGroup
	every := func(d time.Duration, f func(context.Context)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(d)
			defer t.Stop()
			for {
				f(ctx)
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}
	if r.agree != nil {
		wg.Go(func() {
			var warn logging.Limiter
			r.agreement.Run(ctx, r.agree, agreeRetry, func(err error) {
				warn.Do(func(n int64) {
					r.log.WarnContext(ctx, "deployment settings not checked yet, retrying", "err", err, "failures", n)
				})
			}, func(err error) {
				r.log.ErrorContext(ctx, "not ready: a setting differs from the deployment's", "err", err)
			})
		})
	}
	every(r.cfg.ProbeInterval, r.serving.probeRedisOnce)
	every(r.cfg.ProbeInterval, r.serving.probePGOnce)
	if r.blocked != nil {
		var blockedWarn logging.Limiter
		every(r.cfg.BlockedRefresh, func(ctx context.Context) {
			if err := r.blocked.refresh(ctx, blockedTimeout(r.cfg)); err != nil && ctx.Err() == nil {
				blockedWarn.Do(func(n int64) {
					r.log.WarnContext(ctx, "blocked items refresh failed, keeping the previous list (or the redis mirror's, before a first read)",
						"err", err, "failures", n, "from_redis_mirror", r.blocked.mirrored.Load())
				})
			}
		})
	}
	var refreshWarn logging.Limiter
	every(r.cfg.GlobalRefresh, func(ctx context.Context) {
		if err := r.serving.refreshGlobal(ctx); err != nil && ctx.Err() == nil {
			refreshWarn.Do(func(n int64) {
				r.log.WarnContext(ctx, "global snapshot refresh failed, keeping the previous one", "err", err, "failures", n)
			})
		}
	})
	<-ctx.Done()
	wg.Wait()
	// A read of the global lists still in flight would hold its connection, so the pool's
	// close, for up to 15 s (the scans of a large catalog).
	if c, ok := r.serving.pg.(interface{ Close() }); ok {
		c.Close()
	}
	start := time.Now()
	pending := r.autolog.Pending()
	// Only a probe closes the PostgreSQL breaker and the buffered impressions are not written
	// while it is open, so the drain keeps probing: PostgreSQL back since the last regular
	// probe (or during the drain) gets the buffer instead of a count of drops.
	drainCtx, endDrain := context.WithCancel(context.Background())
	probing := make(chan struct{})
	go func() {
		defer close(probing)
		r.serving.probePGWhileOpen(drainCtx, min(r.cfg.ProbeInterval, drainProbeInterval))
	}()
	var closeWriter func()
	if lc != nil {
		closeWriter = lc.Close
	}
	dropped := r.autolog.Shutdown(r.cfg.AutologShutdownTimeout, closeWriter)
	endDrain()
	<-probing
	if dropped > 0 {
		r.log.Warn("autolog shutdown timeout, impressions dropped", "dropped", dropped, "timeout_s", r.cfg.AutologShutdownTimeout.Seconds())
	} else if pending > 0 {
		r.log.Info("autolog drained", "impressions", pending, "duration_s", time.Since(start).Seconds())
	}
	return nil
}

// drainProbeInterval bounds the PostgreSQL probe interval during the shutdown drain, which
// lasts seconds (--reco.autolog-shutdown-timeout) where the regular interval may not.
const drainProbeInterval = 100 * time.Millisecond

// agreeRetry is the pause between checks of the deployment's settings while PostgreSQL
// cannot tell (down, or a schema without the table yet).
var agreeRetry = 5 * time.Second

// Ready fails when no list at all can be made, and when a setting every pod must share
// differs from the deployment's.
func (r *Reco) Ready(context.Context) error {
	if err := r.agreement.Err(); err != nil {
		return err
	}
	if r.serving.canServe() {
		return nil
	}
	return errors.New(errNoSource.Error())
}

// HealthDetails adds the "online_cache" and "reco_autolog" snapshots to /healthz and /readyz.
func (r *Reco) HealthDetails(context.Context) map[string]any {
	s := r.serving
	cache := map[string]any{
		"backend":          "redis",
		"redis_breaker":    s.redisBrk.State(),
		"postgres_breaker": s.pgBrk.State(),
		"ready_marker":     s.readyMarker.Load(),
		"serving_from":     s.servingFrom(),
	}
	if d := s.redisBrk.OpenFor(); d > 0 {
		cache["redis_breaker_open_sec"] = round3(d.Seconds())
	}
	if g := s.global.Load(); g != nil {
		cache["global_snapshot"] = map[string]any{"source": g.source, "age_sec": round3(time.Since(g.loadedAt).Seconds()),
			"trending": len(g.snap.Trending), "popular": len(g.snap.Popular), "fresh": len(g.snap.Fresh)}
	} else {
		cache["global_snapshot"] = nil
	}
	mode := "sync"
	if r.cfg.AutologAsync {
		mode = "async"
	}
	out := map[string]any{
		"online_cache": cache,
		"reco_autolog": map[string]any{"mode": mode, "backpressure": r.cfg.AutologBackpressure,
			"queue_depth": r.autolog.Pending(), "queue_capacity": r.autolog.Capacity(),
			"persisted_total": r.m.autologPersisted.Get(), "dropped_total": r.m.droppedTotal()},
	}
	if b := r.blocked; b != nil {
		bl := map[string]any{"items": len(b.current()), "age_sec": nil, "from_redis_mirror": b.mirrored.Load()}
		if at := b.at.Load(); at > 0 {
			bl["age_sec"] = round3(float64(time.Now().UnixMilli()-at) / 1000)
		}
		out["blocked_items"] = bl
	}
	return out
}
