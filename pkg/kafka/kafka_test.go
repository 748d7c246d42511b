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
		// Created with the configured partitions, and the second round leaves them so.
		md, err := c.Admin().Metadata(ctx, &kafkago.MetadataRequest{Topics: []string{topic}})
		if err != nil {
			t.Fatalf("round %d: metadata: %v", i, err)
		}
		if len(md.Topics) != 1 || md.Topics[0].Error != nil || len(md.Topics[0].Partitions) != cfg.Partitions {
			t.Fatalf("round %d: topic metadata %+v, want %s with %d partitions", i, md.Topics, topic, cfg.Partitions)
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

// MaxMessageBytes reads a topic's own max.message.bytes and, for a topic without one, the
// broker's default; a missing topic is an error naming it.
func TestMaxMessageBytesReadsEachTopicsLimit(t *testing.T) {
	c, ctx, limited := limitedTopic(t, "t.limit.small.", 2000)
	_, plain, _ := newTopic(t, "t.limit.default.")
	got, err := c.MaxMessageBytes(ctx, limited, plain)
	if err != nil {
		t.Fatal(err)
	}
	if got[limited] != 2000 || got[plain] < 1<<20 {
		t.Fatalf("max.message.bytes %v; want %s 2000 and %s the broker's default (about 1 MiB)", got, limited, plain)
	}
	missing := limited + ".missing"
	if _, err := c.MaxMessageBytes(ctx, missing); err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("missing topic: %v, want an error naming it", err)
	}
}
