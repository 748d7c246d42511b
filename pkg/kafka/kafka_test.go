package kafka_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"recsys/pkg/kafka"
	"recsys/pkg/testutil"
)

func TestPingSeesTheRealBrokerAndADeadOne(t *testing.T) {
	cfg := kafka.DefaultConfig()
	cfg.Brokers = testutil.KafkaBrokers(t)
	if err := kafka.New(cfg).Ping(context.Background(), 3*time.Second); err != nil {
		t.Fatalf("ping real broker: %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	cfg.Brokers = []string{dead}
	if err := kafka.New(cfg).Ping(context.Background(), time.Second); err == nil {
		t.Fatal("ping of a closed port succeeded")
	}
}

func TestEnsureTopicsIsIdempotent(t *testing.T) {
	cfg := kafka.DefaultConfig()
	cfg.Brokers = testutil.KafkaBrokers(t)
	cfg.Partitions = 2
	c := kafka.New(cfg)
	topic := testutil.KafkaTopic(t, "t.ensure.")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := 0; i < 2; i++ {
		if err := c.EnsureTopics(ctx, topic); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
	}
}

// newTopic creates a topic with the default settings; ctx bounds the test's Kafka calls.
func newTopic(t *testing.T, prefix string) (c *kafka.Client, topic string, ctx context.Context) {
	t.Helper()
	cfg := kafka.DefaultConfig()
	cfg.Brokers = testutil.KafkaBrokers(t)
	c = kafka.New(cfg)
	topic = testutil.KafkaTopic(t, prefix)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	if err := c.EnsureTopics(ctx, topic); err != nil {
		t.Fatal(err)
	}
	return c, topic, ctx
}

func TestDeleteTopicsRemovesThemAndToleratesMissingOnes(t *testing.T) {
	c, topic, ctx := newTopic(t, "t.delete.")
	exists := func() bool {
		md, err := c.Admin().Metadata(ctx, &kafkago.MetadataRequest{Topics: []string{topic}})
		if err != nil {
			t.Fatalf("metadata: %v", err)
		}
		return len(md.Topics) == 1 && md.Topics[0].Error == nil
	}
	if !exists() {
		t.Fatalf("topic %s missing after EnsureTopics", topic)
	}
	if err := c.DeleteTopics(ctx, topic); err != nil {
		t.Fatalf("delete: %v", err)
	}
	// The controller applies the deletion asynchronously: metadata follows within moments.
	for deadline := time.Now().Add(15 * time.Second); exists(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("topic %s still listed 15 s after its deletion", topic)
		}
	}
	if err := c.DeleteTopics(ctx, topic, topic+".never-created"); err != nil {
		t.Fatalf("deleting missing topics: %v", err)
	}
}

func TestValidateNamesFlags(t *testing.T) {
	cfg := kafka.DefaultConfig()
	cfg.Brokers = []string{"nohostport"}
	cfg.Partitions = 0
	err := cfg.Validate()
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, want := range []string{"--kafka.brokers", "--kafka.partitions"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q not in %v", want, err)
		}
	}
}

// An idle partition's reader long-polls the broker. kafka-go reads the answer with the wait
// as its deadline and asks the broker for three quarters of it. With 100 ms each idle
// partition fetched ~25 times a second, and the 25 ms margin was missed about once a second
// on this machine, each miss closing the connection and dialling the leader again (10 errors
// and 16 dials for 3 partitions in 10 s, against none and 6 with the default). The dials
// are logged, not asserted: a margin of 250 ms can still be missed on a machine stalled
// that long.
func TestIdleReaderLongPolls(t *testing.T) {
	c, topic, ctx := newTopic(t, "t.idle.")
	r := c.NewReader(kafka.ReaderOptions{GroupID: testutil.Unique("idle"), Topics: []string{topic}})
	defer r.Close()
	rctx, rcancel := context.WithCancel(ctx)
	defer rcancel()
	go func() { _, _ = r.FetchMessage(rctx) }()
	// Joined: every partition's reader has dialled its leader and fetched.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if r.Stats().Fetches > 0 { // kafka-go's counters restart at every Stats
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no fetch 20 s after start")
		}
	}
	const watch = 4 * time.Second
	time.Sleep(watch)
	s := r.Stats()
	t.Logf("idle for %s: %d fetches, %d dials, %d errors", watch, s.Fetches, s.Dials, s.Errors)
	if perSec := float64(s.Fetches) / watch.Seconds() / float64(c.Partitions); perSec > 3 {
		t.Errorf("%.1f fetches per idle partition per second, want about 1 (the default wait %s)", perSec, kafka.DefaultFetchMaxWait)
	}
}
