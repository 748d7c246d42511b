package consumer_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"recsys/pkg/events"
)

// A poison message whose header carries a NUL byte (binary headers are common: tracing,
// compression markers) lands in the DLQ like any other, its payload exact; the group moves
// past it only once it is stored.
func TestPoisonWithBinaryHeaderReachesDLQ(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	before := e.generate(2, 50)
	user := before[0].User()
	payload := []byte("not json at all \x00\xff")
	poison := kafkago.Message{Topic: e.TopicWatch, Key: []byte(user), Value: payload,
		Headers: []kafkago.Header{{Key: events.HeaderEventType, Value: []byte("watch")}, {Key: "trace-bin", Value: []byte{0x00, 0x01, 0xff}}}}
	e.produce(t, before)
	e.produceRaw(t, poison)
	after := e.generate(3, 50)
	e.produce(t, after)
	c := e.startConsumer(t)
	e.waitApplied(t, len(before)+len(after), 90*time.Second)
	waitFor(t, "the poison message in the dlq", 20*time.Second, func() bool {
		var n int
		_ = e.pool.QueryRow(context.Background(), `SELECT count(*) FROM feature_dlq`).Scan(&n)
		return n == 1
	})
	c.stop()
	var stored []byte
	var eventType, trace string
	if err := e.pool.QueryRow(context.Background(), `SELECT payload, headers->>'event_type', headers->>'trace-bin' FROM feature_dlq`).
		Scan(&stored, &eventType, &trace); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(stored, payload) || eventType != "watch" || trace != "\uFFFD\x01\uFFFD" {
		t.Errorf("dlq row: payload %q, event_type %q, trace-bin %q; want the payload exact, the headers with NUL and invalid bytes replaced",
			stored, eventType, trace)
	}
}
