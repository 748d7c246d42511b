package consumer

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metrics"

	"recsys/pkg/featurestore"
	"recsys/pkg/infra"
)

// The contract's processed (per topic and status) and error (per stage) counters are exported
// at 0 from the start: a series born at its first increment shows no rate() or increase() for
// it, so a consumer's first DLQ entries or first failed batch would not count on a dashboard.
func TestCountersStartAtZero(t *testing.T) {
	cfg := infra.DefaultConfig()
	cfg.Kafka.TopicImpressions, cfg.Kafka.TopicWatches = "imp.v1", "watch.v1"
	set := metrics.NewSet()
	newConsumer(NewConfig(), infra.Deps{Metrics: set, Config: cfg})
	var b bytes.Buffer
	set.WritePrometheus(&b)
	var want []string
	for _, topic := range []string{"imp.v1", "watch.v1"} {
		for _, st := range []string{"processed", "duplicate", "ignored", "invalid_payload", "invalid_event", "error", "dlq"} {
			want = append(want, `reco_feature_consumer_processed_total{topic="`+topic+`",status="`+st+`"} 0`)
		}
	}
	for _, st := range []string{"startup", "poll", "process", "poison_message", "dlq_store", "commit", "lag_metrics", "dlq_metrics", "stop"} {
		want = append(want, `reco_feature_consumer_errors_total{stage="`+st+`"} 0`)
	}
	for _, line := range want {
		if !strings.Contains(b.String(), line+"\n") {
			t.Errorf("exposition lacks %s", line)
		}
	}
}

// A dead letter the store's insert left out because its user was erased after its receive
// time (Applied.DLQErased) is not in the DLQ: it counted as stored, which the DLQ alert sums,
// and as processed "dlq". It counts as erased and "ignored", as the consumer's own skip does.
func TestDeadLetterLeftOutForAnErasureIsNotCountedAsStored(t *testing.T) {
	set := metrics.NewSet()
	c := newConsumer(NewConfig(), infra.Deps{Metrics: set, Config: infra.DefaultConfig()})
	b := &featurestore.Batch{DLQ: []featurestore.DLQEntry{{Topic: "t", Offset: 1}, {Topic: "t", Offset: 2}, {Topic: "t", Offset: 3}}}
	c.account(context.Background(), b, nil, &featurestore.Applied{DLQErased: []int{1}})
	var out bytes.Buffer
	set.WritePrometheus(&out)
	for _, line := range []string{
		`reco_feature_consumer_dlq_events_total{outcome="stored"} 2`,
		`recsys_consumer_dlq_erased_total 1`,
		`reco_feature_consumer_processed_total{topic="t",status="dlq"} 2`,
		`reco_feature_consumer_processed_total{topic="t",status="ignored"} 1`,
	} {
		if !strings.Contains(out.String(), line+"\n") {
			t.Errorf("exposition lacks %s", line)
		}
	}
}

// A redelivered poison message (Applied.DLQRedelivered: its entry is in the DLQ already, the
// insert stored nothing) counted as stored again on every delivery, raising the counter the
// DLQ alert watches for one entry. It counts as redelivered; it is still processed "dlq".
func TestRedeliveredDeadLetterIsNotCountedAsStoredAgain(t *testing.T) {
	set := metrics.NewSet()
	c := newConsumer(NewConfig(), infra.Deps{Metrics: set, Config: infra.DefaultConfig()})
	b := &featurestore.Batch{DLQ: []featurestore.DLQEntry{{Topic: "t", Offset: 1}, {Topic: "t", Offset: 2}, {Topic: "t", Offset: 3}}}
	c.account(context.Background(), b, nil, &featurestore.Applied{DLQErased: []int{0}, DLQRedelivered: 1})
	var out bytes.Buffer
	set.WritePrometheus(&out)
	for _, line := range []string{
		`reco_feature_consumer_dlq_events_total{outcome="stored"} 1`,
		`recsys_consumer_dlq_redelivered_total 1`,
		`recsys_consumer_dlq_erased_total 1`,
		`reco_feature_consumer_processed_total{topic="t",status="dlq"} 2`,
	} {
		if !strings.Contains(out.String(), line+"\n") {
			t.Errorf("exposition lacks %s", line)
		}
	}
}
