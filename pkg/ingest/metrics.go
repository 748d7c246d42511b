package ingest

import (
	"fmt"

	"github.com/VictoriaMetrics/metrics"
)

// writerMetrics are the writer's metrics, labelled writer=<Config.Name> so two writers in one
// process (ingest and the /reco autolog) stay apart:
//
//	recsys_ingest_group_commit_events{writer}        histogram: events per committed transaction
//	recsys_ingest_group_commit_requests{writer}      histogram: requests merged per transaction
//	recsys_ingest_commit_duration_seconds{writer}    histogram: statement + commit time
//	recsys_ingest_write_duration_seconds{writer}     histogram: Write from call to answer (queue wait included)
//	recsys_ingest_commit_errors_total{writer}        counter:   failed transactions
//	recsys_ingest_group_fallbacks_total{writer}      counter:   merged transactions retried request by request
//	recsys_ingest_queue_expired_total{writer}        counter:   submitted requests answered unavailable, unwritten, after waiting past their bound in the queue
//	recsys_ingest_copy_conflicts_total{writer}       counter:   COPY groups redone as a statement (a unique key met: a resend racing the group, or an outbox row that outlived its dedup key)
//	recsys_ingest_unconfirmed_commits_total{writer,outcome}
//	                                                 counter:   transactions whose commit went unanswered (write timeout, lost connection), by
//	                                                            what the database then told: committed | rolled_back | unknown
type writerMetrics struct {
	groupEvents, groupRequests    *metrics.PrometheusHistogram
	commitDuration, writeDuration *metrics.PrometheusHistogram
	commitErrors, fallbacks       *metrics.Counter
	copyConflicts, expired        *metrics.Counter
	unconfirmedBy                 map[string]*metrics.Counter // by outcome
}

// unconfirmed returns the counter of unanswered commits with the given outcome.
func (m writerMetrics) unconfirmed(outcome string) *metrics.Counter {
	return m.unconfirmedBy[outcome]
}

var (
	sizeBuckets    = []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000}
	latencyBuckets = metrics.ExponentialBuckets(0.00025, 2, 15) // 0.25 ms .. 4 s
)

func newWriterMetrics(set *metrics.Set, name string) writerMetrics {
	if set == nil {
		set = metrics.NewSet() // unregistered: the writer works the same without metrics
	}
	l := fmt.Sprintf(`{writer=%q}`, name)
	unconfirmed := map[string]*metrics.Counter{}
	for _, o := range []string{"committed", "rolled_back", "unknown"} {
		// Exported at 0 from the start, so an alert on the rate has a series before the first.
		unconfirmed[o] = set.NewCounter(fmt.Sprintf(`recsys_ingest_unconfirmed_commits_total{writer=%q,outcome=%q}`, name, o))
	}
	return writerMetrics{
		groupEvents:    set.NewPrometheusHistogramExt("recsys_ingest_group_commit_events"+l, sizeBuckets),
		groupRequests:  set.NewPrometheusHistogramExt("recsys_ingest_group_commit_requests"+l, sizeBuckets),
		commitDuration: set.NewPrometheusHistogramExt("recsys_ingest_commit_duration_seconds"+l, latencyBuckets),
		writeDuration:  set.NewPrometheusHistogramExt("recsys_ingest_write_duration_seconds"+l, latencyBuckets),
		commitErrors:   set.NewCounter("recsys_ingest_commit_errors_total" + l),
		fallbacks:      set.NewCounter("recsys_ingest_group_fallbacks_total" + l),
		copyConflicts:  set.NewCounter("recsys_ingest_copy_conflicts_total" + l),
		expired:        set.NewCounter("recsys_ingest_queue_expired_total" + l),
		unconfirmedBy:  unconfirmed,
	}
}
