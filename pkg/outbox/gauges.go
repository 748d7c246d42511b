package outbox

import (
	"sync"

	"github.com/VictoriaMetrics/metrics"
)

// backlogGauges are the contract's reco_outbox_backlog_* gauges. The relay sets them from its
// periodic snapshot and the API from the snapshot of its health endpoints, so an API pod
// deployed without a relay exports them too. They live in one set per process, registered
// once: a process running both roles exports each series once (two sets would write it
// twice, which Prometheus refuses), last snapshot wins.
var backlogGauges = sync.OnceValue(func() *struct{ pending, publishing, dead, oldestLag *metrics.Gauge } {
	set := metrics.NewSet()
	g := &struct{ pending, publishing, dead, oldestLag *metrics.Gauge }{
		pending:    set.NewGauge(`reco_outbox_backlog_events{status="pending"}`, nil),
		publishing: set.NewGauge(`reco_outbox_backlog_events{status="publishing"}`, nil),
		dead:       set.NewGauge(`reco_outbox_backlog_events{status="dead"}`, nil),
		oldestLag:  set.NewGauge("reco_outbox_backlog_oldest_lag_ms", nil),
	}
	metrics.RegisterSet(set)
	return g
})

// ExportBacklog sets the process' backlog gauges (events; the oldest lag in ms) to b.
func ExportBacklog(b Backlog) {
	g := backlogGauges()
	g.pending.Set(float64(b.Pending))
	g.publishing.Set(float64(b.Publishing))
	g.dead.Set(float64(b.Dead))
	g.oldestLag.Set(float64(b.OldestLagMS))
}
