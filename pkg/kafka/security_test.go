package kafka

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/spf13/pflag"

	"recsys/pkg/testutil/pki"
)

// TestSecuritySettings: TLS and SASL settings are checked at start with errors naming the
// flags, and what they configure reaches every dialer and transport the clients use.
func TestSecuritySettings(t *testing.T) {
	dir := t.TempDir()
	p := pki.New(t)
	ca, cert, key := p.CA, p.ClientCert, p.ClientKey
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		args    []string
		wantErr string // "" when valid
		tls     bool
		certs   int
		sasl    string // the mechanism's name
	}{
		{"none", nil, "", false, 0, ""},
		{"tls with the system roots", []string{"--kafka.tls"}, "", true, 0, ""},
		{"tls with a CA", []string{"--kafka.tls", "--kafka.tls-ca-file", ca}, "", true, 0, ""},
		{"mutual tls", []string{"--kafka.tls", "--kafka.tls-ca-file", ca, "--kafka.tls-cert-file", cert, "--kafka.tls-key-file", key}, "", true, 1, ""},
		{"sasl plain over tls", []string{"--kafka.tls", "--kafka.sasl-mechanism", "plain", "--kafka.sasl-username", "u", "--kafka.sasl-password", "p"}, "", true, 0, "PLAIN"},
		{"scram-sha-256", []string{"--kafka.sasl-mechanism", "scram-sha-256", "--kafka.sasl-username", "u", "--kafka.sasl-password", "p"}, "", false, 0, "SCRAM-SHA-256"},
		{"scram-sha-512", []string{"--kafka.tls", "--kafka.sasl-mechanism", "scram-sha-512", "--kafka.sasl-username", "u", "--kafka.sasl-password", "p"}, "", true, 0, "SCRAM-SHA-512"},
		{"CA without tls", []string{"--kafka.tls-ca-file", ca}, "need --kafka.tls (RECSYS_KAFKA_TLS=true)", false, 0, ""},
		{"cert without key", []string{"--kafka.tls", "--kafka.tls-cert-file", cert}, "--kafka.tls-cert-file and --kafka.tls-key-file go together", false, 0, ""},
		{"missing CA file", []string{"--kafka.tls", "--kafka.tls-ca-file", filepath.Join(dir, "missing")}, "--kafka.tls-ca-file: open", false, 0, ""},
		{"CA file without PEM", []string{"--kafka.tls", "--kafka.tls-ca-file", notPEM}, "no PEM certificate in it", false, 0, ""},
		{"key of another certificate", []string{"--kafka.tls", "--kafka.tls-cert-file", cert, "--kafka.tls-key-file", notPEM}, "--kafka.tls-cert-file/--kafka.tls-key-file", false, 0, ""},
		{"unknown mechanism", []string{"--kafka.sasl-mechanism", "gssapi", "--kafka.sasl-username", "u", "--kafka.sasl-password", "p"}, `--kafka.sasl-mechanism must be plain, scram-sha-256 or scram-sha-512, got "gssapi"`, false, 0, ""},
		{"mechanism without password", []string{"--kafka.sasl-mechanism", "plain", "--kafka.sasl-username", "u"}, "needs --kafka.sasl-username and --kafka.sasl-password", false, 0, ""},
		{"credentials without mechanism", []string{"--kafka.sasl-username", "u", "--kafka.sasl-password", "p"}, "need --kafka.sasl-mechanism", false, 0, ""},
	}
	for _, tc := range cases {
		c := DefaultConfig()
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		c.RegisterFlags(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		err := c.Validate()
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "=p") {
				t.Errorf("%s: the error shows the password: %v", tc.name, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		d, tr := c.Dialer(time.Second), c.Transport(time.Second, time.Second)
		// The dialer's connections do their own handshake (tlsDialer): a TLS field would make
		// kafka-go wrap them in a second one.
		if (d.DialFunc != nil) != tc.tls || d.TLS != nil || (tr.TLS != nil) != tc.tls {
			t.Errorf("%s: TLS on the dialer %v (TLS field %v), on the transport %v, want %v", tc.name, d.DialFunc != nil, d.TLS != nil, tr.TLS != nil, tc.tls)
		}
		if tc.tls && (len(tr.TLS.Certificates) != tc.certs || tr.TLS.ServerName != "") {
			t.Errorf("%s: %d client certificates (want %d), server name %q (kafka-go sets it per broker)", tc.name, len(tr.TLS.Certificates), tc.certs, tr.TLS.ServerName)
		}
		name := ""
		if d.SASLMechanism != nil {
			name = d.SASLMechanism.Name()
			if tr.SASL == nil || tr.SASL.Name() != name {
				t.Errorf("%s: the transport's SASL differs from the dialer's", tc.name)
			}
		}
		if name != tc.sasl {
			t.Errorf("%s: SASL %q, want %q", tc.name, name, tc.sasl)
		}
		if m, ok := d.SASLMechanism.(plain.Mechanism); ok && (m.Username != "u" || m.Password != "p") {
			t.Errorf("%s: PLAIN credentials %q", tc.name, m.Username)
		}
	}
}

// A CA file that becomes unreadable after the start makes connections fail their handshake
// with an error naming the flag, never fall back to no TLS.
func TestUnreadableCAFailsClosed(t *testing.T) {
	p := pki.New(t)
	addr, handshakes := tlsServer(t, p)
	c := DefaultConfig()
	c.Security = copiedSecurity(t, p)
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	removeFile(t, c.Security.TLSCAFile)
	_, err := c.Dialer(time.Second).DialContext(context.Background(), "tcp", addr.String())
	if err == nil || !strings.Contains(err.Error(), "--kafka.tls-ca-file") {
		t.Errorf("dial: %v, want the unreadable CA file", err)
	}
	if n := handshakes.Load(); n != 0 {
		t.Errorf("%d handshakes went through", n)
	}
}

// The consumer group keeps its Dialer for the process' life, and every coordinator
// connection (join, heartbeat, commit) comes from it: after the brokers moved to a new CA and
// the client's files to a new CA and certificate, a dial at most tlsRereadEvery later uses
// the new files.
func TestDialerFollowsRotatedTLSFiles(t *testing.T) {
	before, after := pki.New(t), pki.New(t)
	addr, handshakes, rotate := rotatingTLSServer(t, before)
	c := DefaultConfig()
	c.Security = copiedSecurity(t, before)
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	d := c.Dialer(time.Second)
	dial := func() error {
		conn, err := d.DialContext(context.Background(), "tcp", addr.String())
		if err == nil {
			conn.Close()
		}
		return err
	}
	waitHandshake(t, handshakes, 0, dial)
	rotate(after)
	if err := dial(); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("dial after the broker's rotation: %v, want unknown authority", err)
	}
	rotateFiles(t, c.Security, after)
	waitHandshake(t, handshakes, handshakes.Load(), dial)
}
