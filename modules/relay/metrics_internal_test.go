package relay

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metrics"
	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/infra"
	"recsys/pkg/kafka"
)

// The contract's per-topic publish counters are exported at 0 before the first publish: a
// series born at its first failure shows no rate() or increase() for it, so a relay's first
// failures (all of them, when Kafka goes away and the relay pauses after one batch) would
// not count in RelayPublishFailing or a dashboard.
func TestPublishCountersStartAtZeroPerTopic(t *testing.T) {
	pool, err := pgxpool.New(context.Background(), "postgres://u:p@127.0.0.1:1/db?sslmode=disable") // never dialled
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	kcfg := infra.DefaultConfig().Kafka
	kcfg.TopicImpressions, kcfg.TopicWatches = "imp.v1", "watch.v1"
	set := metrics.NewSet()
	if _, err := NewRelay(NewConfig(), infra.Deps{PG: pool, Kafka: kafka.New(kcfg), Metrics: set}, Options{Owner: "t"}); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	set.WritePrometheus(&b)
	for _, name := range []string{"reco_outbox_relay_published_total", "reco_outbox_relay_failed_total"} {
		for _, topic := range []string{"imp.v1", "watch.v1"} {
			if line := name + `{topic="` + topic + `"} 0`; !strings.Contains(b.String(), line+"\n") {
				t.Errorf("exposition lacks %s:\n%s", line, b.String())
			}
		}
	}
}

// recsys_relay_kafka_unreachable is 1 exactly while the relay publishes nothing because of
// Kafka: the failed counter grows by one batch and then stops, so only this gauge shows an
// outage that lasts.
func TestKafkaUnreachableGauge(t *testing.T) {
	pool, err := pgxpool.New(context.Background(), "postgres://u:p@127.0.0.1:1/db?sslmode=disable") // never dialled
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	down := errors.New("dial tcp: connection refused")
	for _, tc := range []struct {
		name                    string
		provisioned, startupErr bool
		paused                  bool
		want                    string
	}{
		{name: "starting, no answer yet", want: "0"},
		{name: "topics not provisioned: kafka does not answer", startupErr: true, want: "1"},
		{name: "publishing", provisioned: true, want: "0"},
		{name: "paused after a batch failed whole", provisioned: true, paused: true, want: "1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set := metrics.NewSet()
			r, err := NewRelay(NewConfig(), infra.Deps{PG: pool, Kafka: kafka.New(infra.DefaultConfig().Kafka), Metrics: set}, Options{Owner: "t"})
			if err != nil {
				t.Fatal(err)
			}
			r.provisioned.Store(tc.provisioned)
			if tc.startupErr {
				r.startupErr.Store(&down)
			}
			if tc.paused {
				r.markDown(context.Background(), down)
			}
			var b bytes.Buffer
			set.WritePrometheus(&b)
			if line := "recsys_relay_kafka_unreachable " + tc.want + "\n"; !strings.Contains(b.String(), line) {
				t.Errorf("exposition lacks %q:\n%s", line, b.String())
			}
		})
	}
}
