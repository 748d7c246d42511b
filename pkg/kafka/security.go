package kafka

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"
	"github.com/spf13/pflag"

	"recsys/pkg/flagenv"
)

// Security is how recsys authenticates to the brokers and protects the connection: TLS
// (with a private CA and a client certificate when the cluster wants them) and SASL
// (PLAIN or SCRAM). Managed clusters require them (Confluent Cloud: SASL_SSL with PLAIN;
// Amazon MSK and Aiven: SCRAM-SHA-512 over TLS, or TLS client certificates); the original
// service could reach none of them (api-contract §16.25).
type Security struct {
	TLS           bool
	TLSCAFile     string
	TLSCertFile   string
	TLSKeyFile    string
	SASLMechanism string
	SASLUsername  string
	SASLPassword  string
}

// The values of --kafka.sasl-mechanism.
const (
	SASLPlain       = "plain"
	SASLScramSHA256 = "scram-sha-256"
	SASLScramSHA512 = "scram-sha-512"
)

func (s *Security) registerFlags(fs *pflag.FlagSet) {
	fs.BoolVar(&s.TLS, "kafka.tls", s.TLS, "connect to the brokers over TLS (SSL or SASL_SSL listeners)")
	fs.StringVar(&s.TLSCAFile, "kafka.tls-ca-file", s.TLSCAFile, "PEM file of the CA certificates that sign the brokers' certificates (empty: the system's roots); needs --kafka.tls")
	fs.StringVar(&s.TLSCertFile, "kafka.tls-cert-file", s.TLSCertFile, "PEM file of the client certificate, for brokers that authenticate clients by certificate (with --kafka.tls-key-file); needs --kafka.tls")
	fs.StringVar(&s.TLSKeyFile, "kafka.tls-key-file", s.TLSKeyFile, "PEM file of the client certificate's private key (with --kafka.tls-cert-file)")
	fs.StringVar(&s.SASLMechanism, "kafka.sasl-mechanism", s.SASLMechanism, "SASL mechanism: plain, scram-sha-256 or scram-sha-512 (empty: no SASL); PLAIN sends the password as is, so use it with --kafka.tls")
	fs.StringVar(&s.SASLUsername, "kafka.sasl-username", s.SASLUsername, "SASL user name")
	fs.StringVar(&s.SASLPassword, "kafka.sasl-password", s.SASLPassword, "SASL password (prefer the environment variable to the flag: flags show in process listings)")
	flagenv.Secret(fs, "kafka.sasl-password")
}

func (s Security) validate() error {
	var errs []error
	if !s.TLS && (s.TLSCAFile != "" || s.TLSCertFile != "" || s.TLSKeyFile != "") {
		errs = append(errs, errors.New("--kafka.tls-ca-file, --kafka.tls-cert-file and --kafka.tls-key-file need --kafka.tls (RECSYS_KAFKA_TLS=true)"))
	}
	if (s.TLSCertFile == "") != (s.TLSKeyFile == "") {
		errs = append(errs, errors.New("--kafka.tls-cert-file and --kafka.tls-key-file go together: give both or neither"))
	}
	if s.TLS {
		if _, err := s.tlsConfig(); err != nil {
			errs = append(errs, err)
		}
	}
	switch s.SASLMechanism {
	case "":
		if s.SASLUsername != "" || s.SASLPassword != "" {
			errs = append(errs, errors.New("--kafka.sasl-username and --kafka.sasl-password need --kafka.sasl-mechanism (plain, scram-sha-256 or scram-sha-512)"))
		}
	case SASLPlain, SASLScramSHA256, SASLScramSHA512:
		if s.SASLUsername == "" || s.SASLPassword == "" {
			errs = append(errs, fmt.Errorf("--kafka.sasl-mechanism %s needs --kafka.sasl-username and --kafka.sasl-password (RECSYS_KAFKA_SASL_USERNAME, RECSYS_KAFKA_SASL_PASSWORD)", s.SASLMechanism))
		} else if _, err := s.mechanism(); err != nil {
			errs = append(errs, err)
		}
	default:
		errs = append(errs, fmt.Errorf("--kafka.sasl-mechanism must be %s, %s or %s, got %q", SASLPlain, SASLScramSHA256, SASLScramSHA512, s.SASLMechanism))
	}
	return errors.Join(errs...)
}

// tlsConfig reads the configured files into a client TLS configuration (nil without TLS).
// The server name is left empty: kafka-go sets it per broker from the address it dials.
func (s Security) tlsConfig() (*tls.Config, error) {
	if !s.TLS {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if s.TLSCAFile != "" {
		pem, err := os.ReadFile(s.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("--kafka.tls-ca-file: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--kafka.tls-ca-file %s: no PEM certificate in it", s.TLSCAFile)
		}
	}
	if s.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(s.TLSCertFile, s.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("--kafka.tls-cert-file/--kafka.tls-key-file: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// mechanism returns the SASL mechanism (nil without SASL).
func (s Security) mechanism() (sasl.Mechanism, error) {
	switch s.SASLMechanism {
	case SASLPlain:
		return plain.Mechanism{Username: s.SASLUsername, Password: s.SASLPassword}, nil
	case SASLScramSHA256, SASLScramSHA512:
		algo := scram.SHA256
		if s.SASLMechanism == SASLScramSHA512 {
			algo = scram.SHA512
		}
		m, err := scram.Mechanism(algo, s.SASLUsername, s.SASLPassword)
		if err != nil {
			return nil, fmt.Errorf("--kafka.sasl-mechanism %s: %w", s.SASLMechanism, err)
		}
		return m, nil
	}
	return nil, nil
}

// secured returns the TLS configuration and SASL mechanism every connection uses. Validate
// read the files at start; should one have become unreadable since (a rotation replacing
// them), every connection fails its handshake with that error, naming the flag, rather
// than going without TLS, and the transport that got it is replaced (unreachable), which
// reads the files again.
func (c Config) secured() (*tls.Config, sasl.Mechanism) {
	// The mechanism depends on the settings alone, which Validate checked; a nil one would
	// only make a SASL listener refuse the connection.
	m, _ := c.Security.mechanism()
	return c.Security.clientTLS(), m
}

// clientTLS reads the files into a TLS configuration (nil without TLS), or, when one cannot
// be read, returns a configuration failing every handshake with that error (tlsFilesError).
func (s Security) clientTLS() *tls.Config {
	t, err := s.tlsConfig()
	if err == nil {
		return t
	}
	err = tlsFilesError{err}
	// Without InsecureSkipVerify the server's certificate is checked against the system's
	// roots first, and a broker signed by a private CA fails with "unknown authority",
	// not with what is wrong. Nothing is sent either way: VerifyConnection refuses every
	// handshake before it completes.
	return &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true,
		VerifyConnection: func(tls.ConnectionState) error { return err },
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return nil, err
		}}
}

// tlsFilesError is a TLS file that could not be read for a transport or a connection.
type tlsFilesError struct{ err error }

func (e tlsFilesError) Error() string { return e.err.Error() }
func (e tlsFilesError) Unwrap() error { return e.err }

// tlsRereadEvery bounds how often a dialer reads the TLS files again.
const tlsRereadEvery = time.Second

// tlsDialer opens TLS connections with the files as they are now, read again at most once
// per tlsRereadEvery. A kafka-go Dialer's TLS configuration is fixed when it is made, and the
// consumer group keeps its Dialer for the process' life: after the brokers moved to a new
// CA, or the client certificate was rotated, its coordinator connections (join, heartbeat,
// commit) failed until a restart.
type tlsDialer struct {
	s Security

	mu   sync.Mutex
	cfg  *tls.Config
	read time.Time
}

func (d *tlsDialer) config() *tls.Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cfg == nil || time.Since(d.read) >= tlsRereadEvery {
		d.cfg, d.read = d.s.clientTLS(), time.Now()
	}
	return d.cfg
}

// dial connects and completes the TLS handshake, as kafka-go's Dialer does with its TLS
// field (which stays nil so that it does not wrap the connection again); kafka-go runs SASL
// over the connection returned.
func (d *tlsDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	raw, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	cfg := d.config()
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			host = addr
		}
		cfg = cfg.Clone()
		cfg.ServerName = host
	}
	conn := tls.Client(raw, cfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("tls handshake: %w", err)
	}
	return conn, nil
}

// Dialer returns a dialer for single connections (probes, partition reads, the consumer
// group's coordinator), secured as configured; each connection reads the TLS files again
// (tlsDialer).
func (c Config) Dialer(timeout time.Duration) *kafkago.Dialer {
	m, _ := c.Security.mechanism() // as in secured
	d := &kafkago.Dialer{ClientID: c.ClientID, Timeout: timeout, SASLMechanism: m}
	if c.Security.TLS {
		d.DialFunc = (&tlsDialer{s: c.Security}).dial
	}
	return d
}

// Transport returns a pooled transport (producers, fetches, admin requests), secured as
// configured.
func (c Config) Transport(dialTimeout, metadataTTL time.Duration) *kafkago.Transport {
	t, m := c.secured()
	return &kafkago.Transport{ClientID: c.ClientID, DialTimeout: dialTimeout, MetadataTTL: metadataTTL, TLS: t, SASL: m}
}
