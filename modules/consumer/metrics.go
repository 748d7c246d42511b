package consumer

import (
	"fmt"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	kafkago "github.com/segmentio/kafka-go"

	"recsys/pkg/featurestore"
	"recsys/pkg/kafka"
)

// contractBucketsMs are the histogram buckets of api-contract §9.1.
var contractBucketsMs = []float64{10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000}

// secondsBuckets are fine around the 100 ms freshness target, and below it where the path
// now runs (API → Redis p99 within 10-20 ms at 1,000 watches/s: 2.5 ms steps there, so the
// quantile is not a straight line across one 10 ms bucket).
var secondsBuckets = []float64{0.001, 0.0025, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.0175, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.125, 0.15, 0.2, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}

type consumerMetrics struct {
	set *metrics.Set

	watchToFeature    *metrics.PrometheusHistogram
	acceptedToVisible *metrics.PrometheusHistogram
	applySeconds      *metrics.PrometheusHistogram
	fetchDelay        *metrics.PrometheusHistogram
	queueDelay        *metrics.PrometheusHistogram
	redisSeconds      *metrics.PrometheusHistogram
	batchSize         *metrics.PrometheusHistogram
	dlqStored         *metrics.Counter
	dlqErased         *metrics.Counter // dead letters left out as their user was erased: not stored, which the DLQ alert sums
	dlqRedelivered    *metrics.Counter // dead letters the DLQ held already (a redelivered poison message): not stored again
	dlqPending        *metrics.Gauge
	dlqReplayed       *metrics.Gauge
	dlqOldestPending  *metrics.Gauge
	retries           *metrics.Counter
	redisFailures     *metrics.Counter
	repopulations     *metrics.Counter
	resentUsers       *metrics.Counter
	resentLists       *metrics.Counter
	healed            *metrics.Counter
	dedupPurged       *metrics.Counter
	itemsTrimmed      *metrics.Counter
	usersTrimmed      *metrics.Counter
	commits           *metrics.Counter
	kafkaDials        *metrics.Counter
	kafkaFetches      *metrics.Counter
	kafkaErrors       *metrics.Counter
	kafkaRebalances   *metrics.Counter
	userWrites        [len(featurestore.UserWriteKinds)]*metrics.Counter
	lags              partitionLags
}

func newMetrics(set *metrics.Set) *consumerMetrics {
	m := &consumerMetrics{
		set:               set,
		watchToFeature:    set.NewPrometheusHistogramExt("reco_watch_event_to_feature_latency_ms", contractBucketsMs),
		acceptedToVisible: set.NewPrometheusHistogramExt("recsys_consumer_accepted_to_visible_seconds", secondsBuckets),
		applySeconds:      set.NewPrometheusHistogramExt("recsys_consumer_apply_seconds", secondsBuckets),
		fetchDelay:        set.NewPrometheusHistogramExt("recsys_consumer_fetch_delay_seconds", secondsBuckets),
		queueDelay:        set.NewPrometheusHistogramExt("recsys_consumer_queue_delay_seconds", secondsBuckets),
		redisSeconds:      set.NewPrometheusHistogramExt("recsys_consumer_redis_write_seconds", secondsBuckets),
		batchSize:         set.NewPrometheusHistogramExt("recsys_consumer_batch_size", []float64{1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 50000}),
		dlqStored:         set.NewCounter(`reco_feature_consumer_dlq_events_total{outcome="stored"}`),
		dlqErased:         set.NewCounter("recsys_consumer_dlq_erased_total"),
		dlqRedelivered:    set.NewCounter("recsys_consumer_dlq_redelivered_total"),
		dlqPending:        set.NewGauge(`reco_feature_consumer_dlq_backlog{status="pending"}`, nil),
		dlqReplayed:       set.NewGauge(`reco_feature_consumer_dlq_backlog{status="replayed"}`, nil),
		dlqOldestPending:  set.NewGauge(`reco_feature_consumer_dlq_oldest_pending_ms`, nil),
		retries:           set.NewCounter("recsys_consumer_batch_retries_total"),
		redisFailures:     set.NewCounter("recsys_consumer_redis_write_failures_total"),
		repopulations:     set.NewCounter("recsys_consumer_redis_repopulations_total"),
		resentUsers:       set.NewCounter(`recsys_consumer_redis_resent_total{kind="user"}`),
		resentLists:       set.NewCounter(`recsys_consumer_redis_resent_total{kind="neighbours"}`),
		healed:            set.NewCounter("recsys_consumer_redis_journal_healed_total"),
		dedupPurged:       set.NewCounter("recsys_consumer_dedup_purged_total"),
		itemsTrimmed:      set.NewCounter("recsys_consumer_items_trimmed_total"),
		usersTrimmed:      set.NewCounter("recsys_consumer_users_trimmed_total"),
		commits:           set.NewCounter("recsys_consumer_offset_commits_total"),
		kafkaDials:        set.NewCounter("recsys_consumer_kafka_dials_total"),
		kafkaFetches:      set.NewCounter("recsys_consumer_kafka_fetches_total"),
		kafkaErrors:       set.NewCounter("recsys_consumer_kafka_errors_total"),
		kafkaRebalances:   set.NewCounter("recsys_consumer_kafka_rebalances_total"),
		lags:              partitionLags{hwm: map[partitionKey]int64{}, pos: map[partitionKey]int64{}},
	}
	for i, kind := range featurestore.UserWriteKinds {
		m.userWrites[i] = set.NewCounter(fmt.Sprintf(`recsys_consumer_user_writes_total{kind=%q}`, kind))
	}
	return m
}

// reader adds a kafka-go stats snapshot, whose counters are those since the previous one.
// Dials that go on between rebalances mean readers lose their connections (session 23:
// idle partitions redialling under a 100 ms fetch wait).
func (m *consumerMetrics) reader(s kafka.ReaderStats) {
	m.kafkaDials.AddInt64(s.Dials)
	m.kafkaFetches.AddInt64(s.Fetches)
	m.kafkaErrors.AddInt64(s.Errors)
	m.kafkaRebalances.AddInt64(s.Rebalances)
}

// applied counts what a committed transaction wrote.
func (m *consumerMetrics) applied(a *featurestore.Applied) {
	for i, n := range a.UserWrites {
		m.userWrites[i].Add(n)
	}
}

// Statuses of reco_feature_consumer_processed_total and stages of
// reco_feature_consumer_errors_total (contract names, plus recsys' redis, heal, retention,
// forgotten_users, item_retention and user_retention stages).
var (
	processedStatuses = []string{"processed", "duplicate", "ignored", "invalid_payload", "invalid_event", "error", "dlq"}
	errorStages       = []string{"startup", "poll", "process", "poison_message", "dlq_store", "commit", "lag_metrics", "dlq_metrics",
		"stop", "redis", "heal", "retention", "forgotten_users", "item_retention", "user_retention"}
)

// exportZeros creates the per-topic processed counters and the error counters at 0: rate()
// and increase() see an increment only against an earlier sample, so a series born at its
// first DLQ entry or first failure would hide it.
func (m *consumerMetrics) exportZeros(topics []string) {
	for _, t := range topics {
		for _, st := range processedStatuses {
			m.set.GetOrCreateCounter(fmt.Sprintf(`reco_feature_consumer_processed_total{topic=%q,status=%q}`, t, st))
		}
	}
	for _, st := range errorStages {
		m.set.GetOrCreateCounter(fmt.Sprintf(`reco_feature_consumer_errors_total{stage=%q}`, st))
	}
}

func (m *consumerMetrics) processed(topic, status string, n int) {
	if n > 0 {
		m.set.GetOrCreateCounter(fmt.Sprintf(`reco_feature_consumer_processed_total{topic=%q,status=%q}`, topic, status)).Add(n)
	}
}

func (m *consumerMetrics) eventLag(topic string) *metrics.PrometheusHistogram {
	return m.set.GetOrCreatePrometheusHistogramExt(fmt.Sprintf(`reco_feature_consumer_event_lag_ms{topic=%q}`, topic), contractBucketsMs)
}

// partitionLags keep reco_feature_consumer_partition_lag (high-water mark - position) of the
// partitions this member owns. The position is the next offset to apply: the first fetched
// offset of a partition, then the last committed one + 1, and at each refresh the group's
// committed offset as the reader knows it (what the generation started from, then this
// member's commits). The high-water mark comes from the fetched messages and from a periodic
// ListOffsets (refresh), so the lag grows while nothing is applied (PostgreSQL down, the
// fetches held back) instead of freezing at the last commit. refresh also drops the series
// of the partitions a rebalance took away: their new owner reports them.
type partitionLags struct {
	mu  sync.Mutex
	hwm map[partitionKey]int64
	pos map[partitionKey]int64
}

type partitionKey struct {
	topic     string
	partition int
}

func (k partitionKey) series() string {
	return fmt.Sprintf(`reco_feature_consumer_partition_lag{topic=%q,partition="%d"}`, k.topic, k.partition)
}

// setLag updates k's gauge; the caller holds lags.mu.
func (m *consumerMetrics) setLag(k partitionKey) {
	pos, ok := m.lags.pos[k]
	hwm, known := m.lags.hwm[k]
	if !ok || !known {
		return // nothing fetched or committed yet, or no high-water mark read: unknown
	}
	m.set.GetOrCreateGauge(k.series(), nil).Set(float64(max(hwm-pos, 0)))
}

// lagFetched takes the high-water marks of fetched messages (and a partition's first position).
func (m *consumerMetrics) lagFetched(msgs []kafkago.Message) {
	m.lags.mu.Lock()
	defer m.lags.mu.Unlock()
	var last partitionKey
	for i := range msgs {
		msg := &msgs[i]
		k := partitionKey{msg.Topic, msg.Partition}
		if _, ok := m.lags.pos[k]; !ok {
			m.lags.pos[k] = msg.Offset
		}
		m.lags.hwm[k] = max(m.lags.hwm[k], msg.HighWaterMark)
		if i > 0 && k != last {
			m.setLag(last)
		}
		last = k
	}
	if len(msgs) > 0 {
		m.setLag(last)
	}
}

// lagCommitted moves the positions past the committed messages (the last of each partition).
func (m *consumerMetrics) lagCommitted(msgs []kafkago.Message) {
	m.lags.mu.Lock()
	defer m.lags.mu.Unlock()
	for i := range msgs {
		msg := &msgs[i]
		k := partitionKey{msg.Topic, msg.Partition}
		m.lags.pos[k] = max(m.lags.pos[k], msg.Offset+1)
		m.lags.hwm[k] = max(m.lags.hwm[k], msg.HighWaterMark)
		m.setLag(k)
	}
}

// lagRefresh forgets the partitions not in owned (topic -> partitions), raises the
// high-water marks to hwm and sets the positions to the committed offsets (topic ->
// partition -> offset, read under the lock: a commit's lagCommitted comes after it).
//
// The committed offsets matter after a rebalance: a partition that went to another member
// and came back (within one refresh, so never forgotten) kept the position of this member's
// last commit, and its lag stayed as high as the other member had read past it until this
// one committed on it again; an idle partition never did.
func (m *consumerMetrics) lagRefresh(owned map[string][]int, hwm map[partitionKey]int64, committed func() map[string]map[int]int64) {
	m.lags.mu.Lock()
	defer m.lags.mu.Unlock()
	keep := map[partitionKey]bool{}
	for topic, ps := range owned {
		for _, p := range ps {
			keep[partitionKey{topic, p}] = true
		}
	}
	for k := range m.lags.pos {
		if !keep[k] {
			delete(m.lags.pos, k)
			delete(m.lags.hwm, k)
			m.set.UnregisterMetric(k.series())
		}
	}
	for topic, ps := range committed() {
		for p, off := range ps {
			if k := (partitionKey{topic, p}); keep[k] {
				m.lags.pos[k] = off
			}
		}
	}
	for k, v := range hwm {
		if keep[k] {
			m.lags.hwm[k] = max(m.lags.hwm[k], v)
		}
	}
	for k := range keep {
		m.setLag(k)
	}
}

func (m *consumerMetrics) phase(name string, d time.Duration) {
	m.set.GetOrCreatePrometheusHistogramExt(fmt.Sprintf(`recsys_consumer_apply_phase_seconds{phase=%q}`, name), secondsBuckets).Update(d.Seconds())
}

func (m *consumerMetrics) errors(stage string) {
	m.set.GetOrCreateCounter(fmt.Sprintf(`reco_feature_consumer_errors_total{stage=%q}`, stage)).Inc()
}
