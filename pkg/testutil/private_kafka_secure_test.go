package testutil

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"
)

// TestStartPrivateKafkaSASLSSL: the secure private broker serves produce and fetch on its
// SASL_SSL listener to a client that trusts its CA and logs in with PLAIN or SCRAM-SHA-512,
// and refuses a wrong password, a client without SASL and a client without TLS.
func TestStartPrivateKafkaSASLSSL(t *testing.T) {
	k := StartPrivateKafkaSASLSSL(t)
	if k.User != KafkaSASLUser || k.Password != KafkaSASLPassword {
		t.Fatalf("credentials %q / %q, want the constants", k.User, k.Password)
	}
	pem, err := os.ReadFile(k.CAFile)
	if err != nil {
		t.Fatalf("CA file: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("no certificate in %s", k.CAFile)
	}
	tlsConf := &tls.Config{RootCAs: pool}
	scramMech := func(password string) sasl.Mechanism {
		m, err := scram.Mechanism(scram.SHA512, k.User, password)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}

	for _, tc := range []struct {
		name string
		mech sasl.Mechanism
	}{
		{"PLAIN", plain.Mechanism{Username: k.User, Password: k.Password}},
		{"SCRAM-SHA-512", scramMech(k.Password)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			topic := Unique("secure")
			createTopic(t, k.Addr, topic)

			// Writer (Transport) and Reader (Dialer) are kafka-go's two ways to a broker;
			// both must get through TLS and SASL, and be sent on by the metadata to the
			// SASL_SSL listener, not the PLAINTEXT one.
			w := &kafkago.Writer{
				Addr:         kafkago.TCP(k.SASLSSLAddr),
				Topic:        topic,
				RequiredAcks: kafkago.RequireAll,
				Transport:    &kafkago.Transport{TLS: tlsConf, SASL: tc.mech, DialTimeout: 10 * time.Second},
			}
			defer w.Close()
			want := "hello over " + tc.name
			if err := w.WriteMessages(ctx, kafkago.Message{Key: []byte("k"), Value: []byte(want)}); err != nil {
				t.Fatalf("produce through %s: %v", k.SASLSSLAddr, err)
			}
			r := kafkago.NewReader(kafkago.ReaderConfig{
				Brokers: []string{k.SASLSSLAddr},
				Topic:   topic,
				MaxWait: 500 * time.Millisecond,
				Dialer:  &kafkago.Dialer{Timeout: 10 * time.Second, TLS: tlsConf, SASLMechanism: tc.mech},
			})
			defer r.Close()
			m, err := r.ReadMessage(ctx)
			if err != nil {
				t.Fatalf("fetch through %s: %v", k.SASLSSLAddr, err)
			}
			if string(m.Value) != want {
				t.Fatalf("read %q, want %q", m.Value, want)
			}
		})
	}

	refused := func(t *testing.T, d *kafkago.Dialer) error {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c, err := d.DialContext(ctx, "tcp", k.SASLSSLAddr)
		if err == nil {
			// A dial may succeed without a round trip; the broker must still answer nothing.
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			_, err = c.ReadPartitions()
			c.Close()
		}
		if err == nil {
			t.Fatalf("%s served a client it should have refused", k.SASLSSLAddr)
		}
		t.Logf("refused: %v", err)
		return err
	}
	for _, tc := range []struct {
		name string
		mech sasl.Mechanism
	}{
		{"PLAIN", plain.Mechanism{Username: k.User, Password: "wrong"}},
		{"SCRAM-SHA-512", scramMech("wrong")},
	} {
		t.Run("wrong password "+tc.name, func(t *testing.T) {
			err := refused(t, &kafkago.Dialer{Timeout: 10 * time.Second, TLS: tlsConf, SASLMechanism: tc.mech})
			if !errors.Is(err, kafkago.SASLAuthenticationFailed) {
				t.Fatalf("got %v, want %v", err, kafkago.SASLAuthenticationFailed)
			}
		})
	}
	t.Run("no SASL", func(t *testing.T) {
		refused(t, &kafkago.Dialer{Timeout: 10 * time.Second, TLS: tlsConf})
	})
	t.Run("no TLS", func(t *testing.T) {
		refused(t, &kafkago.Dialer{Timeout: 10 * time.Second,
			SASLMechanism: plain.Mechanism{Username: k.User, Password: k.Password}})
	})
}

// createTopic creates a one-partition topic through the PLAINTEXT listener at addr.
func createTopic(t *testing.T, addr, topic string) {
	t.Helper()
	c, err := kafkago.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	if err := c.CreateTopics(kafkago.TopicConfig{Topic: topic, NumPartitions: 1, ReplicationFactor: 1}); err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
}
