package redis

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"recsys/pkg/testutil"
	"recsys/pkg/testutil/pki"
)

// TestTLSSettings: the CA and client certificate files are checked at start with errors
// naming the flags, and need a rediss:// URL (with a plain one they would be ignored).
func TestTLSSettings(t *testing.T) {
	p := pki.New(t)
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	const tlsURL = "rediss://:pw-secret@cache.example:6380/0"
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string // "" when valid
	}{
		{"tls with the system roots", []string{"--redis.url", tlsURL}, ""},
		{"tls with a CA", []string{"--redis.url", tlsURL, "--redis.tls-ca-file", p.CA}, ""},
		{"mutual tls", []string{"--redis.url", tlsURL, "--redis.tls-ca-file", p.CA, "--redis.tls-cert-file", p.ClientCert, "--redis.tls-key-file", p.ClientKey}, ""},
		{"CA with a plain url", []string{"--redis.tls-ca-file", p.CA}, `need a rediss:// --redis.url, got "redis://127.0.0.1:6379/0"`},
		{"cert with a unix socket", []string{"--redis.url", "unix:///run/redis.sock", "--redis.tls-cert-file", p.ClientCert, "--redis.tls-key-file", p.ClientKey}, "need a rediss:// --redis.url"},
		{"cert without key", []string{"--redis.url", tlsURL, "--redis.tls-cert-file", p.ClientCert}, "--redis.tls-cert-file and --redis.tls-key-file go together"},
		{"missing CA file", []string{"--redis.url", tlsURL, "--redis.tls-ca-file", filepath.Join(t.TempDir(), "missing")}, "--redis.tls-ca-file: open"},
		{"CA file without PEM", []string{"--redis.url", tlsURL, "--redis.tls-ca-file", notPEM}, "--redis.tls-ca-file " + notPEM + ": no PEM certificate in it"},
		{"key of nothing", []string{"--redis.url", tlsURL, "--redis.tls-cert-file", p.ClientCert, "--redis.tls-key-file", notPEM}, "--redis.tls-cert-file/--redis.tls-key-file"},
	} {
		c := DefaultConfig()
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		c.RegisterFlags(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		err := c.Validate()
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.wantErr)
		case err != nil && strings.Contains(err.Error(), "pw-secret"):
			t.Errorf("%s: the error shows the password: %v", tc.name, err)
		}
	}
}

// startTLSRedis starts a redis-server of the test's own that listens with TLS only and asks
// clients for a certificate signed by the CA, and returns its address.
func startTLSRedis(t *testing.T, p pki.PKI) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		testutil.Missing(t, "redis-server not found")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	dir := t.TempDir()
	cmd := testutil.Command(bin, "--port", "0", "--tls-port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir,
		"--tls-cert-file", p.ServerCert, "--tls-key-file", p.ServerKey,
		"--tls-ca-cert-file", p.CA, "--tls-auth-clients", "yes")
	var out testutil.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(out.String(), "Ready to accept connections") {
		select {
		case <-exited:
			t.Fatalf("redis-server exited (a build without TLS?):\n%s", out.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server not ready after 15s:\n%s", out.String())
		}
	}
	return "127.0.0.1:" + strconv.Itoa(port)
}

// TestOpenOverTLSWithAPrivateCA: against a real Redis that listens with TLS only, under a
// certificate of a private CA and asking for client certificates, the client trusts the
// server through --redis.tls-ca-file and presents --redis.tls-cert-file. Without the CA file
// (the system's roots) or without a client certificate the connection is refused: before
// the settings existed, a private CA could only be trusted by skipping verification.
func TestOpenOverTLSWithAPrivateCA(t *testing.T) {
	p := pki.New(t)
	addr := startTLSRedis(t, p)
	for _, tc := range []struct {
		name          string
		ca, cert, key string
		wantErr       string // "" when PING must answer
	}{
		{"CA and client certificate", p.CA, p.ClientCert, p.ClientKey, ""},
		{"the system's roots", "", p.ClientCert, p.ClientKey, "certificate signed by unknown authority"},
		// The server resets the connection or sends an alert, depending on timing.
		{"no client certificate", p.CA, "", "", "redis ping"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.URL, c.Timeout, c.DisableCache = "rediss://"+addr+"/0", 5*time.Second, true
			c.TLSCAFile, c.TLSCertFile, c.TLSKeyFile = tc.ca, tc.cert, tc.key
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
			cl, err := Open(c)
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			err = Ping(context.Background(), cl, 5*time.Second)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("ping over TLS: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("ping: %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}
