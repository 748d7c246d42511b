package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

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

// TestEnsureTopicsWithoutCreatePermission: a client allowed to use the topics but not to
// create them (the usual least privilege where a platform team creates topics) is refused
// CreateTopics even for a topic that exists, since the broker checks the permission first.
// The topics it finds are ready for it, the consumer group and producer work as usual; a
// missing one fails at once with the refusal, not after a wait for leaders that never come.
func TestEnsureTopicsWithoutCreatePermission(t *testing.T) {
	b := testutil.StartPrivateKafkaACLs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	plain := kafka.DefaultConfig()
	plain.Brokers = []string{b.Addr}
	plain.Partitions = 3
	admin := kafka.New(plain)
	prefix := testutil.Unique("t.acl.")
	topic := prefix + "ready"
	if err := admin.EnsureTopics(ctx, topic); err != nil {
		t.Fatal(err)
	}
	group := prefix + "group"
	var acls []kafkago.ACLEntry
	for _, op := range []kafkago.ACLOperationType{kafkago.ACLOperationTypeDescribe, kafkago.ACLOperationTypeRead, kafkago.ACLOperationTypeWrite} {
		acls = append(acls, kafkago.ACLEntry{ResourceType: kafkago.ResourceTypeTopic, ResourceName: prefix, ResourcePatternType: kafkago.PatternTypePrefixed,
			Principal: "User:" + b.User, Host: "*", Operation: op, PermissionType: kafkago.ACLPermissionTypeAllow})
	}
	acls = append(acls, kafkago.ACLEntry{ResourceType: kafkago.ResourceTypeGroup, ResourceName: group, ResourcePatternType: kafkago.PatternTypeLiteral,
		Principal: "User:" + b.User, Host: "*", Operation: kafkago.ACLOperationTypeRead, PermissionType: kafkago.ACLPermissionTypeAllow})
	res, err := admin.Admin().CreateACLs(ctx, &kafkago.CreateACLsRequest{ACLs: acls})
	if err == nil {
		err = errors.Join(res.Errors...)
	}
	if err != nil {
		t.Fatalf("grant ACLs: %v", err)
	}

	cfg := plain
	cfg.Brokers = []string{b.SASLSSLAddr}
	cfg.Security = kafka.Security{TLS: true, TLSCAFile: b.CAFile, SASLMechanism: kafka.SASLPlain, SASLUsername: b.User, SASLPassword: b.Password}
	c := kafka.New(cfg)
	// The grants reach the broker through the metadata log, a moment after they are acked.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		err := c.EnsureTopics(ctx, topic)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ensure the existing topic: %v", err)
		}
	}
	const n = 30
	produceKeyed(t, ctx, c, 0, n, topic)
	r := newGroupReader(t, c, group, topic)
	var got collected
	dctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); drain(dctx, r, &got) }()
	waitFor(t, "every message read", 60*time.Second, func() bool { return got.len() >= n })
	stop()
	<-done
	if err := r.CommitMessages(ctx, got.msgs...); err != nil {
		t.Fatalf("commit: %v", err)
	}

	start := time.Now()
	err = c.EnsureTopics(ctx, prefix+"missing")
	if !errors.Is(err, kafkago.TopicAuthorizationFailed) || time.Since(start) > 10*time.Second {
		t.Fatalf("a topic it may not create and that does not exist: %v after %s, want the refusal at once", err, time.Since(start))
	}
	t.Logf("missing: %v", err)
}
