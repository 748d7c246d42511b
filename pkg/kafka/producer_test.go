package kafka_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"recsys/pkg/kafka"
	"recsys/pkg/testutil"
)

// producerTopics creates a fresh topic per prefix with that many partitions and returns the
// client and a context bounding the test to a minute.
func producerTopics(t *testing.T, partitions int, prefixes ...string) (*kafka.Client, context.Context, []string) {
	t.Helper()
	cfg := kafka.DefaultConfig()
	cfg.Brokers = testutil.KafkaBrokers(t)
	cfg.Partitions = partitions
	cfg.RequestTimeout = 10 * time.Second
	c := kafka.New(cfg)
	topics := make([]string, len(prefixes))
	for i, p := range prefixes {
		topics[i] = testutil.KafkaTopic(t, p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	if err := c.EnsureTopics(ctx, topics...); err != nil {
		t.Fatal(err)
	}
	return c, ctx, topics
}

// partitionEnd is a partition's next offset: its message count, on a fresh topic.
func partitionEnd(t *testing.T, brokers []string, topic string, partition int) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := kafkago.DialLeader(ctx, "tcp", brokers[0], topic, partition)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	last, err := conn.ReadLastOffset()
	if err != nil {
		t.Fatal(err)
	}
	return int(last)
}

// readPartition reads n messages of one partition from the start, and checks it holds no more.
func readPartition(t *testing.T, brokers []string, topic string, partition, n int) []kafkago.Message {
	t.Helper()
	if end := partitionEnd(t, brokers, topic, partition); end != n {
		t.Fatalf("%s/%d holds %d messages, want %d", topic, partition, end, n)
	}
	r := kafkago.NewReader(kafkago.ReaderConfig{Brokers: brokers, Topic: topic, Partition: partition, MinBytes: 1, MaxBytes: 10 << 20, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out []kafkago.Message
	for len(out) < n {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			t.Fatalf("%s/%d: read %d of %d messages: %v", topic, partition, len(out), n, err)
		}
		out = append(out, m)
	}
	return out
}

// One call over two topics and every partition, with partitions split into several record
// batches by MaxBytes: every message lands once, in the partition kafka-go's Writer picks for
// its key, in call order within the partition, key, value and headers intact.
func TestProducerWritesEveryPartitionInOrder(t *testing.T) {
	const partitions = 3
	c, ctx, topics := producerTopics(t, partitions, "t.produce.a.", "t.produce.b.")
	// ~600 B per message and 4 kB batches: a partition's ~65 messages need ~10 batches.
	p := c.NewProducer(kafka.ProducerOptions{MaxBytes: 4096})
	defer p.Close()
	var msgs []kafkago.Message
	for i := range 400 {
		key := "user-" + strconv.Itoa(i%37)
		msgs = append(msgs, kafkago.Message{Topic: topics[i%2], Key: []byte(key),
			Value:   bytes.Repeat([]byte{byte('a' + i%26)}, 500+i%50),
			Headers: []kafkago.Header{{Key: "seq", Value: []byte(strconv.Itoa(i))}, {Key: "empty"}}})
	}
	testutil.ProduceAll(t, ctx, p, msgs...)
	want := map[string][][]kafkago.Message{}
	for _, topic := range topics {
		want[topic] = make([][]kafkago.Message, partitions)
	}
	all := []int{0, 1, 2}
	for _, m := range msgs {
		pt := (&kafkago.Hash{}).Balance(m, all...)
		want[m.Topic][pt] = append(want[m.Topic][pt], m)
	}
	for _, topic := range topics {
		for pt := range partitions {
			got := readPartition(t, c.Brokers, topic, pt, len(want[topic][pt]))
			for i, m := range got {
				w := want[topic][pt][i]
				if string(m.Key) != string(w.Key) || !bytes.Equal(m.Value, w.Value) || len(m.Headers) != 2 ||
					m.Headers[0].Key != "seq" || string(m.Headers[0].Value) != string(w.Headers[0].Value) || m.Headers[1].Key != "empty" {
					t.Fatalf("%s/%d message %d: key %s seq %s, want key %s seq %s", topic, pt, i, m.Key, m.Headers[0].Value, w.Key, w.Headers[0].Value)
				}
			}
		}
	}
}

// The producer puts every key in the partition kafka-go's Writer put it in, so switching from
// the Writer keeps each user's events in one partition.
func TestProducerPartitionsLikeTheWriter(t *testing.T) {
	c, ctx, topics := producerTopics(t, 6, "t.produce.parity.")
	topic := topics[0]
	// A Transport of its own: kafka-go's DefaultTransport is shared by the process and serves
	// metadata from a cache up to 6 s old, which (warmed by an earlier run, -count=2) does not
	// know the topic just created: the Writer then fails with Unknown Topic Or Partition.
	tr := &kafkago.Transport{}
	defer tr.CloseIdleConnections()
	w := &kafkago.Writer{Addr: kafkago.TCP(c.Brokers...), Topic: topic, Balancer: &kafkago.Hash{}, RequiredAcks: kafkago.RequireAll,
		BatchTimeout: time.Millisecond, MaxAttempts: 20, Transport: tr}
	defer w.Close()
	p := c.NewProducer(kafka.ProducerOptions{})
	defer p.Close()
	const keys = 60
	var viaWriter, viaProducer []kafkago.Message
	for i := range keys {
		viaWriter = append(viaWriter, kafkago.Message{Key: []byte(fmt.Sprintf("u%d", i)), Value: []byte("writer")})
		viaProducer = append(viaProducer, kafkago.Message{Topic: topic, Key: []byte(fmt.Sprintf("u%d", i)), Value: []byte("producer")})
	}
	if err := w.WriteMessages(ctx, viaWriter...); err != nil {
		t.Fatalf("writer: %v", err)
	}
	if err := p.WriteMessages(ctx, viaProducer...); err != nil {
		t.Fatalf("producer: %v", err)
	}
	seen := 0
	md, err := c.Admin().Metadata(ctx, &kafkago.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		t.Fatal(err)
	}
	for _, pt := range md.Topics[0].Partitions {
		got := readPartition(t, c.Brokers, topic, pt.ID, partitionEnd(t, c.Brokers, topic, pt.ID))
		from := map[string][]string{}
		for _, m := range got {
			from[string(m.Key)] = append(from[string(m.Key)], string(m.Value))
		}
		for k, v := range from {
			if len(v) != 2 || v[0] != "writer" || v[1] != "producer" {
				t.Errorf("key %s in partition %d: %v, want the writer's message and then the producer's", k, pt.ID, v)
			}
		}
		seen += len(got)
	}
	if seen != 2*keys {
		t.Fatalf("%d messages in the topic, want %d", seen, 2*keys)
	}
}

// A message of a missing topic fails alone; the rest is acked.
func TestProducerMissingTopicFailsOnlyItsMessages(t *testing.T) {
	c, ctx, topics := producerTopics(t, 2, "t.produce.exists.")
	topic := topics[0]
	p := c.NewProducer(kafka.ProducerOptions{})
	defer p.Close()
	missing := topic + ".missing"
	msgs := []kafkago.Message{
		{Topic: topic, Key: []byte("a"), Value: []byte("1")},
		{Topic: missing, Key: []byte("a"), Value: []byte("2")},
		{Topic: topic, Key: []byte("b"), Value: []byte("3")},
	}
	err := p.WriteMessages(ctx, msgs...)
	var we kafkago.WriteErrors
	if !errors.As(err, &we) || len(we) != 3 {
		t.Fatalf("got %v, want WriteErrors for 3 messages", err)
	}
	if we[0] != nil || we[2] != nil || !errors.Is(we[1], kafkago.UnknownTopicOrPartition) {
		t.Fatalf("per-message errors %v; want only the missing topic's message to fail with UnknownTopicOrPartition", we)
	}
}

// The size limit is kafka-go's Writer's to the byte: a message of exactly MaxBytes goes, one
// byte more fails the call with MessageTooLargeError before anything is sent (no broker needed).
func TestProducerMessageSizeMatchesTheWriter(t *testing.T) {
	cfg := kafka.DefaultConfig()
	cfg.Brokers = []string{"127.0.0.1:1"} // nothing listens: only the size check can answer
	cfg.RequestTimeout = 200 * time.Millisecond
	c := kafka.New(cfg)
	long := strings.Repeat("k", 200) // two-byte varint lengths
	for _, tc := range []struct {
		name string
		m    kafkago.Message
	}{
		{"bare", kafkago.Message{Topic: "t", Value: []byte("v")}},
		{"key and headers", kafkago.Message{Topic: "t", Key: []byte("user-1"), Value: make([]byte, 300),
			Headers: []kafkago.Header{{Key: "event_id", Value: []byte("e-1")}, {Key: "outbox_id", Value: []byte("12")}}}},
		{"long header", kafkago.Message{Topic: "t", Key: []byte(long), Value: make([]byte, 70_000),
			Headers: []kafkago.Header{{Key: long, Value: []byte(long)}, {Key: "nil"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			size := kafka.MessageSize(&tc.m)
			for _, limit := range []int64{size, size - 1} {
				w := &kafkago.Writer{Addr: kafkago.TCP(cfg.Brokers...), BatchBytes: limit, MaxAttempts: 1,
					WriteTimeout: 200 * time.Millisecond, ReadTimeout: 200 * time.Millisecond}
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				werr := w.WriteMessages(ctx, tc.m)
				p := c.NewProducer(kafka.ProducerOptions{MaxBytes: limit})
				perr := p.WriteMessages(ctx, tc.m, tc.m)
				cancel()
				_ = w.Close()
				_ = p.Close()
				var wt, pt kafkago.MessageTooLargeError
				writerTooLarge, producerTooLarge := errors.As(werr, &wt), errors.As(perr, &pt)
				if writerTooLarge != (limit < size) {
					t.Fatalf("limit %d, message %d: the Writer says too large %t (%v)", limit, size, writerTooLarge, werr)
				}
				if producerTooLarge != writerTooLarge {
					t.Fatalf("limit %d: producer too large %t (%v), Writer %t", limit, producerTooLarge, perr, writerTooLarge)
				}
				if producerTooLarge && len(pt.Remaining) != 1 {
					t.Fatalf("MessageTooLargeError.Remaining holds %d messages, want the other 1", len(pt.Remaining))
				}
				if !producerTooLarge && perr == nil {
					t.Fatalf("limit %d: the producer reported success with no broker", limit)
				}
			}
		})
	}
}

// limitedTopic creates a one-partition topic whose max.message.bytes is limit (a topic created
// by ops, or a managed Kafka's lower default) and waits for its leader.
func limitedTopic(t *testing.T, prefix string, limit int) (*kafka.Client, context.Context, string) {
	t.Helper()
	cfg := kafka.DefaultConfig()
	cfg.Brokers = testutil.KafkaBrokers(t)
	cfg.Partitions = 1
	cfg.RequestTimeout = 10 * time.Second
	c := kafka.New(cfg)
	topic := testutil.KafkaTopic(t, prefix)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	_, err := c.Admin().CreateTopics(ctx, &kafkago.CreateTopicsRequest{Topics: []kafkago.TopicConfig{{
		Topic: topic, NumPartitions: 1, ReplicationFactor: 1,
		ConfigEntries: []kafkago.ConfigEntry{{ConfigName: "max.message.bytes", ConfigValue: strconv.Itoa(limit)}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.EnsureTopics(ctx, topic); err != nil {
		t.Fatal(err)
	}
	return c, ctx, topic
}

// The broker's MessageSizeTooLarge is about a record batch: with a topic's max.message.bytes
// below the producer's MaxBytes, a batch of small messages is refused whole. The producer
// splits it until the broker takes the pieces, so small messages are published exactly once
// and in order, and only a message the broker refuses alone carries MessageSizeTooLarge; the
// partition's later messages are reported not sent, never too large.
func TestProducerSplitsABatchTheTopicRefuses(t *testing.T) {
	small := func(i int) kafkago.Message {
		return kafkago.Message{Key: []byte("same-user"), Value: append([]byte(strconv.Itoa(i)+":"), bytes.Repeat([]byte("v"), 400)...)}
	}
	for _, tc := range []struct {
		name      string
		big       int // index of a 3000-byte message; -1 for none
		published int // messages the partition must hold: the first ones of the call
	}{
		{name: "small messages over the limit together", big: -1, published: 10},
		{name: "one message over the limit alone", big: 5, published: 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, ctx, topic := limitedTopic(t, "t.produce.limited.", 2000)
			p := c.NewProducer(kafka.ProducerOptions{MaxBytes: 1 << 20})
			defer p.Close()
			var msgs []kafkago.Message
			for i := range 10 {
				if i == tc.big {
					msgs = append(msgs, kafkago.Message{Key: []byte("same-user"), Value: bytes.Repeat([]byte("B"), 3000)})
				}
				msgs = append(msgs, small(i))
			}
			for i := range msgs {
				msgs[i].Topic = topic
			}
			err := p.WriteMessages(ctx, msgs...)
			var we kafkago.WriteErrors
			switch {
			case tc.big < 0 && err != nil:
				t.Fatalf("small messages failed: %v", err)
			case tc.big >= 0 && !errors.As(err, &we):
				t.Fatalf("got %v, want WriteErrors", err)
			}
			for i, e := range we {
				var ns kafka.NotSentError
				switch {
				case i < tc.big && e != nil:
					t.Errorf("message %d before the big one: %v", i, e)
				case i == tc.big && !errors.Is(e, kafkago.MessageSizeTooLarge):
					t.Errorf("the big message: %v, want MessageSizeTooLarge", e)
				case i > tc.big && (!errors.As(e, &ns) || errors.Is(e, kafkago.MessageSizeTooLarge)):
					t.Errorf("message %d after the big one: %v, want NotSentError", i, e)
				}
			}
			for i, m := range readPartition(t, c.Brokers, topic, 0, tc.published) {
				if !bytes.Equal(m.Value, msgs[i].Value) {
					t.Fatalf("message %d is %.10q, want %.10q", i, m.Value, msgs[i].Value)
				}
			}
		})
	}
}
