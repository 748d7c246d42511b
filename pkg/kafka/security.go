package kafka

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
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
	t, err := c.Security.tlsConfig()
	if err != nil {
		err = tlsFilesError{err}
		// Without InsecureSkipVerify the server's certificate is checked against the system's
		// roots first, and a broker signed by a private CA fails with "unknown authority",
		// not with what is wrong. Nothing is sent either way: VerifyConnection refuses every
		// handshake before it completes.
		t = &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true,
			VerifyConnection: func(tls.ConnectionState) error { return err },
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				return nil, err
			}}
	}
	// The mechanism depends on the settings alone, which Validate checked; a nil one would
	// only make a SASL listener refuse the connection.
	m, _ := c.Security.mechanism()
	return t, m
}

// tlsFilesError is a TLS file that could not be read when a transport or dialer was made.
type tlsFilesError struct{ err error }

func (e tlsFilesError) Error() string { return e.err.Error() }
func (e tlsFilesError) Unwrap() error { return e.err }

// Dialer returns a dialer for single connections (probes, partition reads, the consumer
// group's coordinator), secured as configured.
func (c Config) Dialer(timeout time.Duration) *kafkago.Dialer {
	t, m := c.secured()
	return &kafkago.Dialer{ClientID: c.ClientID, Timeout: timeout, TLS: t, SASLMechanism: m}
}

// Transport returns a pooled transport (producers, fetches, admin requests), secured as
// configured.
func (c Config) Transport(dialTimeout, metadataTTL time.Duration) *kafkago.Transport {
	t, m := c.secured()
	return &kafkago.Transport{ClientID: c.ClientID, DialTimeout: dialTimeout, MetadataTTL: metadataTTL, TLS: t, SASL: m}
}
