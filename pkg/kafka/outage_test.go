package kafka_test

import (
	"context"
	"testing"
	"time"

	"recsys/pkg/kafka"
	"recsys/pkg/testutil"
)

// A group member reads again within seconds of its broker's restart. Its first join after
// the outage was under a new member id (kafka-go's leave with the old one failed while the
// broker was down), and the coordinator, which had loaded the old member back, held that
// join until the old member's session expired: 10 s; kafka-go also tried to join only every
// 5 s.
func TestGroupReaderResumesPromptlyAfterBrokerRestart(t *testing.T) {
	pk := testutil.StartPrivate(t, "kafka")
	cfg := kafka.DefaultConfig()
	cfg.Brokers = []string{pk.Addr}
	cfg.Partitions = 3
	cfg.RequestTimeout = 10 * time.Second
	c := kafka.New(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	topic := testutil.Unique("t.gr.restart.")
	if err := c.EnsureTopics(ctx, topic); err != nil {
		t.Fatal(err)
	}
	r := newGroupReader(t, c, testutil.Unique("gr-restart"), topic)
	var got collected
	dctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); drain(dctx, r, &got) }()
	defer func() { stop(); <-done }()
	produceKeyed(t, ctx, c, 0, 30, topic)
	waitFor(t, "the messages before the restart read", 30*time.Second, func() bool { return got.len() >= 30 })

	pk.Stop()
	waitFor(t, "the outage noticed", 20*time.Second, func() bool { return r.Stats().Errors > 0 })
	pk.Start()
	back := time.Now()
	produceKeyed(t, ctx, c, 30, 30, topic)
	waitFor(t, "the messages after the restart read", 60*time.Second, func() bool { return got.len() >= 60 })
	took := time.Since(back)
	t.Logf("read again %v after the broker was back", took)
	// Well under the session timeout of the member left behind (10 s), with room for a
	// slow host: about a second here.
	if took > 8*time.Second {
		t.Errorf("read again %v after the broker was back, want well under the 10 s session timeout", took)
	}
	if len(got.fault) > 0 {
		t.Fatalf("faults: %v", got.fault)
	}
}
