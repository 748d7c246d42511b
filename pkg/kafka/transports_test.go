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
	"github.com/segmentio/kafka-go/protocol/listoffsets"
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
	addr, handshakes, _ = rotatingTLSServer(t, p)
	return addr, handshakes
}

// rotatingTLSServer is tlsServer whose certificate and client CA rotate moves to those of
// another PKI, as a broker does when its cluster moves to a new CA.
func rotatingTLSServer(t *testing.T, p pki.PKI) (addr net.Addr, handshakes *atomic.Int64, rotate func(pki.PKI)) {
	t.Helper()
	var cur atomic.Pointer[tls.Config]
	rotate = func(p pki.PKI) {
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
		cur.Store(&tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: cas})
	}
	rotate(p)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return cur.Load(), nil }})
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
	return ln.Addr(), handshakes, rotate
}

// rotateFiles replaces the client's CA, certificate and key files (s's) by p's.
func rotateFiles(t *testing.T, s Security, p pki.PKI) {
	t.Helper()
	copyFile(t, p.CA, s.TLSCAFile)
	copyFile(t, p.ClientCert, s.TLSCertFile)
	copyFile(t, p.ClientKey, s.TLSKeyFile)
}

// copiedSecurity is a Security whose files are copies of p's, for rotateFiles.
func copiedSecurity(t *testing.T, p pki.PKI) Security {
	t.Helper()
	dir := t.TempDir()
	s := Security{TLS: true, TLSCAFile: filepath.Join(dir, "ca.pem"), TLSCertFile: filepath.Join(dir, "client.pem"),
		TLSKeyFile: filepath.Join(dir, "client.key")}
	rotateFiles(t, s, p)
	return s
}

// waitHandshake calls try until handshakes exceeds n, for at most 3 s (a few renewEvery and
// tlsRereadEvery), failing with try's last error.
func waitHandshake(t *testing.T, handshakes *atomic.Int64, n int64, try func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(3 * time.Second); handshakes.Load() <= n; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no handshake went through in 3s after the rotation: %v", err)
		}
		err = try()
	}
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

// The admin client lives as long as the process (topic creation, configuration reads, the
// consumer's lag reads): after the brokers and the client's files moved to a new CA, its
// requests connect again within a few renewEvery instead of failing until a restart.
func TestAdminFollowsRotatedTLSFiles(t *testing.T) {
	before, after := pki.New(t), pki.New(t)
	addr, handshakes, rotate := rotatingTLSServer(t, before)
	c := DefaultConfig()
	c.Brokers = []string{addr.String()}
	c.RequestTimeout = time.Second
	c.Security = copiedSecurity(t, before)
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	admin := New(c).Admin()
	metadata := func() error {
		_, err := admin.Metadata(context.Background(), &kafkago.MetadataRequest{})
		return err
	}
	waitHandshake(t, handshakes, 0, metadata)
	rotate(after)
	n := handshakes.Load()
	if err := metadata(); err == nil {
		t.Fatal("a request went through with the old CA")
	}
	rotateFiles(t, c.Security, after)
	waitHandshake(t, handshakes, n, metadata)
}

// offsetsCluster answers ListOffsets for partitions 0 and 1 of topic a, partition 1 with
// code (0: its offset) as a transport with stale metadata would.
type offsetsCluster struct{ code int16 }

func (c offsetsCluster) RoundTrip(_ context.Context, _ net.Addr, req kafkago.Request) (kafkago.Response, error) {
	r, ok := req.(*listoffsets.Request)
	if !ok {
		return nil, fmt.Errorf("unexpected request %T", req)
	}
	t := listoffsets.ResponseTopic{Topic: "a"}
	for _, p := range r.Topics[0].Partitions {
		pt := listoffsets.ResponsePartition{Partition: p.Partition, Timestamp: p.Timestamp, Offset: 7}
		if p.Partition == 1 && c.code != 0 {
			pt.ErrorCode, pt.Offset = c.code, -1
		}
		t.Partitions = append(t.Partitions, pt)
	}
	return &listoffsets.Response{Topics: []listoffsets.ResponseTopic{t}}, nil
}

// kafka-go's Transport routes each partition of a ListOffsets by its cached metadata and
// reports a partition whose leader moved, or whose stale leader's broker is down, in that
// partition's answer, not as the request's error: the admin client's transport is replaced
// then too, so the consumer's next lag read goes by fresh metadata instead of missing those
// partitions until the metadata TTL. A partition's own error keeps the transport.
func TestAdminRenewsItsTransportWhenAListOffsetsPartitionIsMisrouted(t *testing.T) {
	for _, tc := range []struct {
		name  string
		code  int16
		renew bool
	}{
		{"a leader moved", int16(kafkago.NotLeaderForPartition), true},
		{"a leader being elected", int16(kafkago.LeaderNotAvailable), true},
		{"the stale leader's broker down", int16(kafkago.Unknown), true},
		{"the partition's own error", int16(kafkago.KafkaStorageError), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			made := 0
			admin := &kafkago.Client{Addr: kafkago.TCP("127.0.0.1:1"), Timeout: time.Second,
				Transport: renewing{newTransports(func() kafkago.RoundTripper {
					made++
					if made == 1 {
						return offsetsCluster{code: tc.code}
					}
					return offsetsCluster{}
				})}}
			req := &kafkago.ListOffsetsRequest{Topics: map[string][]kafkago.OffsetRequest{"a": {kafkago.LastOffsetOf(0), kafkago.LastOffsetOf(1)}}}
			errs := func() (errs []error) {
				res, err := admin.ListOffsets(context.Background(), req)
				if err != nil {
					t.Fatalf("ListOffsets: %v (an error of a partition is not the request's)", err)
				}
				for _, po := range res.Topics["a"] {
					if po.Error != nil {
						errs = append(errs, po.Error)
					}
				}
				return errs
			}
			if got := errs(); len(got) != 1 || !errors.Is(got[0], kafkago.Error(tc.code)) {
				t.Fatalf("first read: partition errors %v, want %v", got, kafkago.Error(tc.code))
			}
			got := errs()
			if tc.renew && len(got) != 0 {
				t.Fatalf("the read after the misrouted one: partition errors %v, want none (transports made: %d)", got, made)
			}
			if want := map[bool]int{true: 2, false: 1}[tc.renew]; made != want {
				t.Fatalf("%d transports made, want %d", made, want)
			}
		})
	}
}
