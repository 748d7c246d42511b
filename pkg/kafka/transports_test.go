package kafka

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	metadataAPI "github.com/segmentio/kafka-go/protocol/metadata"

	"recsys/pkg/testutil/pki"
)

// Only a request the broker did not answer renews the transport: a broker's error code
// (kafkago.Error has the methods of a net.Error) is about the partition, not the route.
func TestUnreachable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{errRefused, true},
		{fmt.Errorf("fetch: %w", errRefused), true},
		{fmt.Errorf("produce: %w", io.ErrUnexpectedEOF), true},
		{context.DeadlineExceeded, true}, // the request's timeout: a broker that hangs
		{kafkago.BrokerNotAvailable, true},
		{context.Canceled, false},
		{fmt.Errorf("fetch a/1: %w", kafkago.KafkaStorageError), false},
		{errors.Join(fmt.Errorf("fetch a/1: %w", kafkago.OffsetOutOfRange)), false},
		{kafkago.NotLeaderForPartition, false}, // leaderMoved's
		{NotSentError{Cause: errRefused}, false},
	} {
		if got := unreachable(tc.err); got != tc.want {
			t.Errorf("unreachable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// tlsServer is a TLS listener that asks for a client certificate signed by p's CA and
// counts the handshakes that went through; it speaks no Kafka.
func tlsServer(t *testing.T, p pki.PKI) (addr net.Addr, handshakes *atomic.Int64) {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(p.ServerCert, p.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(p.CA)
	if err != nil {
		t.Fatal(err)
	}
	cas := x509.NewCertPool()
	cas.AppendCertsFromPEM(pem)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: cas})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	handshakes = new(atomic.Int64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(time.Second))
				if c.(*tls.Conn).Handshake() == nil {
					handshakes.Add(1)
				}
			}()
		}
	}()
	return ln.Addr(), handshakes
}

// A transport reads the TLS files when it is made, so one whose handshakes fail (the
// broker's certificate now signed by a new CA, the client's no longer accepted, a file
// unreadable mid-rotation) must be replaced, or the client stays broken until it restarts.
// The errors are those a handshake with a TLS listener returns.
func TestUnreachableTLSHandshake(t *testing.T) {
	srv, other := pki.New(t), pki.New(t)
	addr, _ := tlsServer(t, srv)
	for _, tc := range []struct {
		name    string
		s       Security
		remove  string // a file gone after Validate
		wantMsg string
	}{
		{"broker signed by another CA", Security{TLS: true, TLSCAFile: other.CA, TLSCertFile: srv.ClientCert, TLSKeyFile: srv.ClientKey}, "", "unknown authority"},
		{"client certificate refused", Security{TLS: true, TLSCAFile: srv.CA, TLSCertFile: other.ClientCert, TLSKeyFile: other.ClientKey}, "", "unknown certificate authority"},
		{"no client certificate", Security{TLS: true, TLSCAFile: srv.CA}, "", "certificate required"},
		{"CA file gone", Security{TLS: true, TLSCAFile: filepath.Join(t.TempDir(), "ca.pem"), TLSCertFile: srv.ClientCert, TLSKeyFile: srv.ClientKey}, "ca", "--kafka.tls-ca-file: open"},
		{"key file gone", Security{TLS: true, TLSCAFile: srv.CA, TLSCertFile: srv.ClientCert, TLSKeyFile: filepath.Join(t.TempDir(), "client.key")}, "key", "--kafka.tls-cert-file/--kafka.tls-key-file: open"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Security = tc.s
			switch tc.remove {
			case "ca":
				copyFile(t, srv.CA, tc.s.TLSCAFile)
			case "key":
				copyFile(t, srv.ClientKey, tc.s.TLSKeyFile)
			}
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
			switch tc.remove {
			case "ca":
				removeFile(t, tc.s.TLSCAFile)
			case "key":
				removeFile(t, tc.s.TLSKeyFile)
			}
			_, err := c.Transport(time.Second, time.Second).RoundTrip(context.Background(), addr, &metadataAPI.Request{})
			if err == nil || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("handshake error %v, want one containing %q", err, tc.wantMsg)
			}
			if !unreachable(err) {
				t.Errorf("unreachable(%T %v) = false: the transport is never replaced", err, err)
			}
		})
	}
}

// A client whose CA file was unreadable when its transport was made connects once the file
// is back: a failed handshake replaces the transport (at most once per renewEvery), and the
// new one reads the file.
func TestTransportRecoversFromUnreadableTLSFile(t *testing.T) {
	srv := pki.New(t)
	addr, handshakes := tlsServer(t, srv)
	c := DefaultConfig()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	copyFile(t, srv.CA, ca)
	c.Security = Security{TLS: true, TLSCAFile: ca, TLSCertFile: srv.ClientCert, TLSKeyFile: srv.ClientKey}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	removeFile(t, ca)
	trs := newTransports(func() kafkago.RoundTripper { return c.Transport(time.Second, time.Second) })
	defer trs.close()
	roundTrip := func() error {
		tr := trs.acquire()
		_, err := tr.rt.RoundTrip(context.Background(), addr, &metadataAPI.Request{})
		tr.release()
		if unreachable(err) {
			trs.renew(tr)
		}
		return err
	}
	if err := roundTrip(); err == nil || !strings.Contains(err.Error(), "--kafka.tls-ca-file") {
		t.Fatalf("first round trip: %v, want the unreadable CA file", err)
	}
	copyFile(t, srv.CA, ca)
	// The transport that replaced the first one read the files while the CA was still gone;
	// the next failure at least renewEvery later replaces it again.
	for deadline := time.Now().Add(3 * renewEvery); handshakes.Load() == 0; {
		err := roundTrip()
		if time.Now().After(deadline) {
			t.Fatalf("no handshake went through %v after the CA file was back: %v", 3*renewEvery, err)
		}
		time.Sleep(renewEvery / 10)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func removeFile(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}
