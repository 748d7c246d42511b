package kafka_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

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
