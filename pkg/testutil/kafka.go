package testutil

import (
	"context"
	"testing"
	"time"

	"recsys/pkg/kafka"
)

// KafkaTopic returns a unique topic name starting with prefix and deletes the topic from the
// shared broker when the test ends. The broker outlives every run (its data stays under the
// services directory), and topics left behind by each run had grown to hundreds of topics and
// thousands of partitions that the broker keeps working on.
func KafkaTopic(t testing.TB, prefix string) string {
	t.Helper()
	brokers := KafkaBrokers(t)
	name := Unique(prefix)
	t.Cleanup(func() { DeleteTopics(t, brokers, name) })
	return name
}

// DeleteTopics deletes topics from the broker, best effort: a topic nobody created is fine,
// and a failure is logged, not fatal (the run's results do not depend on it).
func DeleteTopics(t testing.TB, brokers []string, topics ...string) {
	if len(brokers) == 0 || len(topics) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg := kafka.DefaultConfig()
	cfg.Brokers, cfg.RequestTimeout = brokers, 10*time.Second
	if err := kafka.New(cfg).DeleteTopics(ctx, topics...); err != nil {
		t.Logf("%v", err)
	}
}
