package testutil

import (
	"context"
	"errors"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

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

// ProduceAll writes msgs through p, resending the messages that failed (a topic just created
// may not have its leaders yet) until all are acked; it fails the test after 50 attempts or
// on an error that is not per message. A failed record batch fails its partition's later
// messages too (kafka.Producer), so what is resent still follows what was acked.
func ProduceAll(tb testing.TB, ctx context.Context, p *kafka.Producer, msgs ...kafkago.Message) {
	tb.Helper()
	for attempt := 0; len(msgs) > 0; attempt++ {
		err := p.WriteMessages(ctx, msgs...)
		if err == nil {
			return
		}
		var we kafkago.WriteErrors
		if !errors.As(err, &we) || attempt == 50 {
			tb.Fatalf("produce: %.300v", err)
		}
		var failed []kafkago.Message
		for i, e := range we {
			if e != nil {
				failed = append(failed, msgs[i])
			}
		}
		msgs = failed
		time.Sleep(200 * time.Millisecond)
	}
}
