package relay

import (
	"strconv"

	"github.com/VictoriaMetrics/metrics"

	"recsys/pkg/outbox"
)

// contractBucketsMS are the API contract's histogram buckets (milliseconds).
var contractBucketsMS = []float64{10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000}

// latencyBuckets resolve the milliseconds the relay is meant to add (seconds).
var latencyBuckets = []float64{.001, .0025, .005, .0075, .01, .015, .02, .03, .05, .075, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// batchSizeBuckets are events (Kafka messages) per claimed batch.
var batchSizeBuckets = []float64{1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000}

type relayMetrics struct {
	set *metrics.Set

	eventLag    *metrics.PrometheusHistogram // contract: now - created_at at each publish attempt (ms)
	commitToAck *metrics.PrometheusHistogram
	batchSize   *metrics.PrometheusHistogram
	publishDur  *metrics.PrometheusHistogram
	claimDur    *metrics.PrometheusHistogram
	completeDur *metrics.PrometheusHistogram

	fenced    *metrics.Counter
	leaseLost *metrics.Counter
	dead      *metrics.Counter
	poison    *metrics.Counter
	heldBack  *metrics.Counter
	reqd      *metrics.Counter
	reapDead  *metrics.Counter
	retention *metrics.Counter
	erased    *metrics.Counter
}

func newMetrics(set *metrics.Set) *relayMetrics {
	m := &relayMetrics{set: set}
	m.eventLag = set.NewPrometheusHistogramExt("reco_outbox_relay_event_lag_ms", contractBucketsMS)
	m.commitToAck = set.NewPrometheusHistogramExt("recsys_relay_commit_to_ack_seconds", latencyBuckets)
	m.batchSize = set.NewPrometheusHistogramExt("recsys_relay_batch_size", batchSizeBuckets)
	m.publishDur = set.NewPrometheusHistogramExt("recsys_relay_publish_duration_seconds", latencyBuckets)
	m.claimDur = set.NewPrometheusHistogramExt("recsys_relay_claim_duration_seconds", latencyBuckets)
	m.completeDur = set.NewPrometheusHistogramExt("recsys_relay_complete_duration_seconds", latencyBuckets)
	m.fenced = set.NewCounter("recsys_relay_fenced_total")
	m.leaseLost = set.NewCounter("recsys_relay_lease_lost_total")
	m.dead = set.NewCounter("recsys_relay_dead_total")
	m.poison = set.NewCounter("recsys_relay_undecodable_rows_total")
	m.heldBack = set.NewCounter("recsys_relay_held_back_total")
	m.reqd = set.NewCounter(`recsys_relay_reaped_total{outcome="requeued"}`)
	m.reapDead = set.NewCounter(`recsys_relay_reaped_total{outcome="dead"}`)
	m.retention = set.NewCounter("recsys_relay_retention_deleted_total")
	m.erased = set.NewCounter("recsys_relay_erased_events_total")
	for _, stage := range []string{"startup", "claim", "publish", "mark_failed", "process", "metrics", "stop", "stop_timeout", "renew", "reap", "retention", "listen"} {
		m.errors(stage) // exported at 0 from the start, so rate() works from the first failure
	}
	return m
}

// published counts acked events (Kafka messages) per topic (contract name).
func (m *relayMetrics) published(topic string, n int) {
	m.set.GetOrCreateCounter(`reco_outbox_relay_published_total{topic=` + strconv.Quote(topic) + `}`).Add(n)
}

// failed counts the events of failed publish attempts per topic (contract name): a batch row
// that fails counts all its events, since all of them are sent again.
func (m *relayMetrics) failed(topic string, n int) {
	m.set.GetOrCreateCounter(`reco_outbox_relay_failed_total{topic=` + strconv.Quote(topic) + `}`).Add(n)
}

// errors counts relay errors by stage (contract name; stages renew, reap, retention and listen
// are recsys additions).
func (m *relayMetrics) errors(stage string) *metrics.Counter {
	return m.set.GetOrCreateCounter(`reco_outbox_relay_errors_total{stage="` + stage + `"}`)
}

// backlog exports the snapshot as the contract's reco_outbox_backlog_* gauges, shared with an
// API module of the same process (see outbox.ExportBacklog).
func (m *relayMetrics) backlog(b outbox.Backlog) { outbox.ExportBacklog(b) }
