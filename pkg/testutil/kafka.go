package testutil

import (
	"context"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
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
	c := &kafkago.Client{Addr: kafkago.TCP(brokers...), Timeout: 10 * time.Second}
	res, err := c.DeleteTopics(ctx, &kafkago.DeleteTopicsRequest{Topics: topics})
	if err != nil {
		t.Logf("delete kafka topics %v: %v", topics, err)
		return
	}
	for topic, err := range res.Errors {
		if err != nil && err != kafkago.UnknownTopicOrPartition {
			t.Logf("delete kafka topic %s: %v", topic, err)
		}
	}
}
