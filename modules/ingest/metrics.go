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
	// Handles of the per-request series, built once: formatting a series name and looking it
	// up in the set for every event cost more than the rest of the bookkeeping.
	events   map[eventSeries]*metrics.Counter
	persists map[string]*metrics.PrometheusHistogram
}

type eventSeries struct {
	endpoint  string
	kind      events.Kind
	duplicate bool
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
	m.events = map[eventSeries]*metrics.Counter{}
	m.persists = map[string]*metrics.PrometheusHistogram{}
	for _, ep := range []string{epImpression, epWatch, epBatch, epEvent} {
		m.persists[ep] = m.persistDuration(ep)
		for _, k := range []events.Kind{events.KindImpression, events.KindWatch, events.KindLegacy} {
			for _, dup := range []bool{false, true} {
				m.events[eventSeries{ep, k, dup}] = m.eventCounter(ep, k, dup)
			}
		}
		for _, r := range []string{"validation", "malformed_json", "body_too_large", "read_timeout", "unsupported_media_type", "unavailable"} {
			m.rejectedCounter(ep, r)
		}
	}
	return m
}

// countEvents counts the outcomes of one request's events.
func (m *moduleMetrics) countEvents(endpoint string, evs []events.Any, res []writer.Result) {
	if len(evs) == 1 {
		m.eventSeries(endpoint, evs[0].Kind(), res[0].Status != writer.StatusOK).Inc()
		return
	}
	counts := map[eventSeries]int{}
	for i, r := range res {
		counts[eventSeries{endpoint, evs[i].Kind(), r.Status != writer.StatusOK}]++
	}
	for k, n := range counts {
		m.eventSeries(k.endpoint, k.kind, k.duplicate).Add(n)
	}
}

func (m *moduleMetrics) eventSeries(endpoint string, kind events.Kind, duplicate bool) *metrics.Counter {
	if c, ok := m.events[eventSeries{endpoint, kind, duplicate}]; ok {
		return c
	}
	return m.eventCounter(endpoint, kind, duplicate)
}

func (m *moduleMetrics) eventCounter(endpoint string, kind events.Kind, duplicate bool) *metrics.Counter {
	outcome := "accepted"
	if duplicate {
		outcome = "duplicate"
	}
	return m.set.GetOrCreateCounter(fmt.Sprintf(`recsys_ingest_events_total{endpoint=%q,kind=%q,outcome=%q}`, endpoint, kind, outcome))
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
