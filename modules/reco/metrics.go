package reco

import (
	"fmt"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// contractBuckets are the histogram buckets of api-contract §9.1, in milliseconds.
var contractBuckets = []float64{10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000}

// Stages of reco_stage_latency_ms. The last three are observed as 0 and act as counters.
const (
	stageRetrieval        = "retrieval"
	stageRanking          = "ranking"
	stageImpressionLog    = "impression_log"
	stageImpressionSched  = "impression_schedule"
	stageImpressionDrop   = "impression_drop"
	stageImpressionBPSync = "impression_backpressure_sync"
)

// Sources a list can be served from (recsys_reco_served_total{source}).
const (
	sourceRedis  = "redis"
	sourcePG     = "pg_fallback"
	sourceGlobal = "global_snapshot"
)

// Reasons of recsys_reco_autolog_dropped_total.
const (
	dropQueueFull = "queue_full" // drop mode, queue full
	dropDBDown    = "db_down"    // queue full while PostgreSQL is down: nowhere to put it
	dropRejected  = "rejected"   // the database refused the event (a bug, never retried)
	dropShutdown  = "shutdown"   // still queued when the shutdown timeout passed
)

type recoMetrics struct {
	set      *metrics.Set
	requests [famCount]*metrics.Counter
	latency  *metrics.PrometheusHistogram
	stages   map[string]*metrics.PrometheusHistogram

	served       map[string]*metrics.Counter
	sourceErrors map[string]*metrics.Counter
	unavailable  *metrics.Counter
	pgShed       *metrics.Counter
	// userUndecodable counts requests of users whose features did not decode in Redis or
	// PostgreSQL (errUserUndecodable), once per request.
	userUndecodable *metrics.Counter
	globalErrors    *metrics.Counter
	breakerOpened   map[string]*metrics.Counter

	autologEnqueued  *metrics.Counter
	autologPersisted *metrics.Counter
	autologBuffered  *metrics.Counter
	autologRetries   *metrics.Counter
	autologDropped   map[string]*metrics.Counter
}

// newRecoMetrics creates the metrics on set; gauges read their value from the callbacks.
func newRecoMetrics(set *metrics.Set) *recoMetrics {
	if set == nil {
		set = metrics.NewSet()
	}
	m := &recoMetrics{set: set, stages: map[string]*metrics.PrometheusHistogram{}, served: map[string]*metrics.Counter{},
		sourceErrors: map[string]*metrics.Counter{}, autologDropped: map[string]*metrics.Counter{}, breakerOpened: map[string]*metrics.Counter{}}
	for f, name := range []string{"2xx", "3xx", "4xx", "5xx", "other"} {
		m.requests[f] = set.NewCounter(fmt.Sprintf(`reco_api_requests_total{status_family=%q}`, name))
	}
	m.latency = set.NewPrometheusHistogramExt("reco_api_latency_ms", contractBuckets)
	for _, s := range []string{stageRetrieval, stageRanking, stageImpressionLog, stageImpressionSched, stageImpressionDrop, stageImpressionBPSync} {
		m.stages[s] = set.NewPrometheusHistogramExt(fmt.Sprintf(`reco_stage_latency_ms{stage=%q}`, s), contractBuckets)
	}
	for _, s := range []string{sourceRedis, sourcePG, sourceGlobal} {
		m.served[s] = set.NewCounter(fmt.Sprintf(`recsys_reco_served_total{source=%q}`, s))
	}
	for _, s := range []string{"redis", "postgres"} {
		m.sourceErrors[s] = set.NewCounter(fmt.Sprintf(`recsys_reco_source_errors_total{store=%q}`, s))
		m.breakerOpened[s] = set.NewCounter(fmt.Sprintf(`recsys_reco_breaker_opened_total{store=%q}`, s))
	}
	m.unavailable = set.NewCounter("recsys_reco_unavailable_total")
	m.pgShed = set.NewCounter("recsys_reco_pg_shed_total")
	m.userUndecodable = set.NewCounter("recsys_reco_user_undecodable_total")
	m.globalErrors = set.NewCounter("recsys_reco_global_refresh_errors_total")
	m.autologEnqueued = set.NewCounter("recsys_reco_autolog_enqueued_total")
	m.autologPersisted = set.NewCounter("recsys_reco_autolog_persisted_total")
	m.autologBuffered = set.NewCounter("recsys_reco_autolog_buffered_total")
	m.autologRetries = set.NewCounter("recsys_reco_autolog_retries_total")
	for _, r := range []string{dropQueueFull, dropDBDown, dropRejected, dropShutdown} {
		m.autologDropped[r] = set.NewCounter(fmt.Sprintf(`recsys_reco_autolog_dropped_total{reason=%q}`, r))
	}
	return m
}

// gauges registers the callback gauges once the objects they read exist.
func (m *recoMetrics) gauges(r *Reco) {
	m.set.NewGauge("recsys_reco_autolog_queue_depth", func() float64 { return float64(r.autolog.Pending()) })
	m.set.NewGauge("recsys_reco_autolog_queue_capacity", func() float64 { return float64(r.autolog.Capacity()) })
	m.set.NewGauge(`recsys_reco_breaker_open{store="redis"}`, func() float64 { return b2f(r.serving.redisBrk.IsOpen()) })
	m.set.NewGauge(`recsys_reco_breaker_open{store="postgres"}`, func() float64 { return b2f(r.serving.pgBrk.IsOpen()) })
	m.set.NewGauge("recsys_reco_redis_ready_marker", func() float64 { return b2f(r.serving.readyMarker.Load()) })
	m.set.NewGauge("recsys_reco_global_snapshot_age_seconds", func() float64 {
		g := r.serving.global.Load()
		if g == nil {
			return -1
		}
		return time.Since(g.loadedAt).Seconds()
	})
	m.set.NewGauge("recsys_reco_global_snapshot_items", func() float64 {
		g := r.serving.global.Load()
		if g == nil {
			return 0
		}
		return float64(len(g.snap.Items))
	})
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (m *recoMetrics) stage(name string, d time.Duration) {
	m.stages[name].Update(float64(d.Microseconds()) / 1000)
}

func (m *recoMetrics) dropped(reason string, n int) {
	m.autologDropped[reason].Add(n)
}

// request records one /reco request in the contract's counter and histogram.
func (m *recoMetrics) request(status int, d time.Duration) {
	m.requests[family(status)].Inc()
	m.latency.Update(float64(d.Microseconds()) / 1000)
}

func (m *recoMetrics) droppedTotal() uint64 {
	var n uint64
	for _, c := range m.autologDropped {
		n += c.Get()
	}
	return n
}
