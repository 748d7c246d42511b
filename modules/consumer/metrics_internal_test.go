package consumer

import (
	"bytes"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metrics"

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
