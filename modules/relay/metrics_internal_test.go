package relay

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

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

// Failed recordings make the relay unready from --relay.unready-after-failures in a row, until
// one succeeds (TestRelayUnreadyWhileRecordingsFail) or none has failed for
// recordFailureWindow: a relay with nothing left to record has no recording to succeed, and
// would stay unready for good (with every API pod embedding a relay unready, no new event
// comes to record).
func TestReadyAfterRecordingFailures(t *testing.T) {
	cfg := NewConfig()
	cfg.UnreadyAfter = 3
	refused := errors.New("permission denied for table event_outbox")
	for _, tc := range []struct {
		name      string
		failures  int64
		lastAgo   time.Duration
		wantReady bool
	}{
		{"none", 0, 0, true},
		{"below the threshold", 2, time.Second, true},
		{"at the threshold", 3, time.Second, false},
		{"still failing at the end of the window", 40, cfg.Lease + cfg.RetryMax + maxRecordTimeout - 5*time.Second, false},
		{"no failure for the window", 40, cfg.Lease + cfg.RetryMax + maxRecordTimeout + time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &Relay{cfg: cfg}
			r.provisioned.Store(true)
			if tc.failures > 0 {
				r.recordErr.Store(&refused)
				r.recordFailures.Store(tc.failures)
				r.recordFailedAt.Store(time.Now().Add(-tc.lastAgo).UnixNano())
			}
			err := r.Ready(context.Background())
			if (err == nil) != tc.wantReady {
				t.Fatalf("Ready = %v, want ready %v", err, tc.wantReady)
			}
			if err != nil && (!strings.Contains(err.Error(), "record outbox batch outcomes") || !errors.Is(err, refused)) {
				t.Errorf("Ready = %v, want it to name the recordings and their error", err)
			}
		})
	}
}
