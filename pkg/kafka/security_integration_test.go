package kafka_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"recsys/pkg/kafka"
	"recsys/pkg/testutil"
)

// TestClientsOverSASLSSL: against a real broker's SASL_SSL listener (TLS with a private CA,
// SASL PLAIN and SCRAM-SHA-512), every client recsys builds works through that listener
// alone: topic creation and the leader wait, the probe, the configuration read, the producer,
// and a consumer group member's fetches and commits. A wrong password, a client without TLS
// and one that does not trust the CA are refused.
func TestClientsOverSASLSSL(t *testing.T) {
	b := testutil.StartPrivateKafkaSASLSSL(t)
	secured := func(mechanism, password string) kafka.Config {
		cfg := kafka.DefaultConfig()
		cfg.Brokers = []string{b.SASLSSLAddr}
		cfg.Partitions = 3
		cfg.RequestTimeout = 10 * time.Second
		cfg.Security = kafka.Security{TLS: true, TLSCAFile: b.CAFile, SASLMechanism: mechanism, SASLUsername: b.User, SASLPassword: password}
		return cfg
	}
	for _, mechanism := range []string{kafka.SASLPlain, kafka.SASLScramSHA512} {
		t.Run(mechanism, func(t *testing.T) {
			cfg := secured(mechanism, b.Password)
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			c := kafka.New(cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			if err := c.Ping(ctx, 5*time.Second); err != nil {
				t.Fatalf("ping: %v", err)
			}
			topic := testutil.Unique("t.secure." + strings.ReplaceAll(mechanism, "-", "") + ".")
			if err := c.EnsureTopics(ctx, topic); err != nil {
				t.Fatalf("ensure topics: %v", err)
			}
			if limits, err := c.MaxMessageBytes(ctx, topic); err != nil || limits[topic] <= 0 {
				t.Fatalf("max.message.bytes: %v %v", limits, err)
			}
			const n = 60
			produceKeyed(t, ctx, c, 0, n, topic)
			r := newGroupReader(t, c, testutil.Unique("secure"), topic)
			var got collected
			dctx, stop := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() { defer close(done); drain(dctx, r, &got) }()
			waitFor(t, "every message read over SASL_SSL", 60*time.Second, func() bool { return got.len() >= n })
			stop()
			<-done
			if f := append(got.order, got.fault...); len(f) > 0 || got.len() != n {
				t.Fatalf("%d messages, faults %v", got.len(), f)
			}
			if err := r.CommitMessages(ctx, got.msgs...); err != nil {
				t.Fatalf("commit: %v", err)
			}
			if err := c.DeleteTopics(ctx, topic); err != nil {
				t.Fatalf("delete topics: %v", err)
			}
		})
	}

	refused := []struct {
		name string
		cfg  func() kafka.Config
		want string
	}{
		{"wrong password, PLAIN", func() kafka.Config { return secured(kafka.SASLPlain, "not-the-password") }, "SASL Authentication Failed"},
		{"wrong password, SCRAM", func() kafka.Config { return secured(kafka.SASLScramSHA512, "not-the-password") }, "SASL Authentication Failed"},
		{"no TLS", func() kafka.Config {
			c := secured(kafka.SASLPlain, b.Password)
			c.Security.TLS, c.Security.TLSCAFile = false, ""
			return c
		}, ""},
		{"the system's roots, not the CA", func() kafka.Config {
			c := secured(kafka.SASLPlain, b.Password)
			c.Security.TLSCAFile = ""
			return c
		}, "certificate signed by unknown authority"},
	}
	for _, tc := range refused {
		cfg := tc.cfg()
		if err := cfg.Validate(); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		err := kafka.New(cfg).Ping(context.Background(), 5*time.Second)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: ping %v, want a refusal%s", tc.name, err, map[bool]string{true: fmt.Sprintf(" containing %q", tc.want)}[tc.want != ""])
		}
	}
}
