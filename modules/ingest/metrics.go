package ingest

import (
	"fmt"

	"github.com/VictoriaMetrics/metrics"

	"recsys/pkg/events"
	writer "recsys/pkg/ingest"
)

// moduleMetrics are listed in the package doc.
type moduleMetrics struct {
	set             *metrics.Set
	batchEvents     *metrics.PrometheusHistogram
	retentionErrors *metrics.Counter
	latencyBuckets  []float64
}

func newModuleMetrics(set *metrics.Set) *moduleMetrics {
	if set == nil {
		set = metrics.NewSet()
	}
	m := &moduleMetrics{
		set:             set,
		batchEvents:     set.NewPrometheusHistogramExt("recsys_ingest_batch_events", []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000}),
		retentionErrors: set.NewCounter("recsys_ingest_retention_errors_total"),
		latencyBuckets:  metrics.ExponentialBuckets(0.00025, 2, 15), // 0.25 ms .. 4 s
	}
	// Create the common series up front so dashboards see zeros rather than gaps.
	for _, ep := range []string{epImpression, epWatch, epBatch, epEvent} {
		m.persistDuration(ep)
		for _, r := range []string{"validation", "malformed_json", "body_too_large", "unsupported_media_type", "unavailable"} {
			m.rejectedCounter(ep, r)
		}
	}
	return m
}

func (m *moduleMetrics) event(endpoint string, kind events.Kind, status writer.Status) {
	outcome := "accepted"
	if status != writer.StatusOK {
		outcome = "duplicate"
	}
	m.set.GetOrCreateCounter(fmt.Sprintf(`recsys_ingest_events_total{endpoint=%q,kind=%q,outcome=%q}`, endpoint, kind, outcome)).Inc()
}

func (m *moduleMetrics) rejectedCounter(endpoint, reason string) *metrics.Counter {
	return m.set.GetOrCreateCounter(fmt.Sprintf(`recsys_ingest_rejected_total{endpoint=%q,reason=%q}`, endpoint, reason))
}

func (m *moduleMetrics) rejected(endpoint, reason string) { m.rejectedCounter(endpoint, reason).Inc() }

func (m *moduleMetrics) persistDuration(endpoint string) *metrics.PrometheusHistogram {
	return m.set.GetOrCreatePrometheusHistogramExt(fmt.Sprintf(`recsys_ingest_persist_duration_seconds{endpoint=%q}`, endpoint), m.latencyBuckets)
}

func (m *moduleMetrics) retentionDeleted(table string) *metrics.Counter {
	return m.set.GetOrCreateCounter(fmt.Sprintf(`recsys_ingest_retention_deleted_total{table=%q}`, table))
}
