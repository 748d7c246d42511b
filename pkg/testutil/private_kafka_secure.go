package testutil

import (
	"path/filepath"
	"strconv"
	"testing"
)

// The one user of the SASL_SSL listener, for both PLAIN and SCRAM-SHA-512 (scripts/services.sh
// KAFKA_SASL_USER, KAFKA_SASL_PASSWORD).
const (
	KafkaSASLUser     = "recsys"
	KafkaSASLPassword = "recsys-test-secret"
)

// PrivateKafkaSecure is a private broker that, besides its PLAINTEXT listener (Addr, where a
// test creates its topics as usual), listens with SASL_SSL on SASLSSLAddr: TLS with a
// certificate for 127.0.0.1 and localhost signed by the CA in CAFile, and SASL PLAIN or
// SCRAM-SHA-512 as User / Password. Stop and Start keep both ports and the credentials.
type PrivateKafkaSecure struct {
	*Private
	SASLSSLAddr string
	// CAFile is the PEM CA certificate clients must trust to reach SASLSSLAddr.
	CAFile         string
	User, Password string
}

// StartPrivateKafkaSASLSSL starts a private Kafka (StartPrivate) with a SASL_SSL listener
// too, for testing clients' TLS and SASL against a real broker.
func StartPrivateKafkaSASLSSL(t testing.TB) *PrivateKafkaSecure {
	t.Helper()
	p := startPrivate(t, &Private{t: t, service: "kafka", saslSSL: true})
	return &PrivateKafkaSecure{
		Private:     p,
		SASLSSLAddr: p.saslSSLAddr,
		CAFile:      filepath.Join(p.dir, "kafka", "tls", "ca.pem"),
		User:        KafkaSASLUser,
		Password:    KafkaSASLPassword,
	}
}

// StartPrivateKafkaACLs is StartPrivateKafkaSASLSSL on a broker that authorizes requests:
// clients of the PLAINTEXT listener (Addr) may do anything, granting ACLs among it; the
// SASL_SSL user may do only what those grant, as a least-privileged production client.
func StartPrivateKafkaACLs(t testing.TB) *PrivateKafkaSecure {
	t.Helper()
	p := startPrivate(t, &Private{t: t, service: "kafka", saslSSL: true, acls: true})
	return &PrivateKafkaSecure{
		Private:     p,
		SASLSSLAddr: p.saslSSLAddr,
		CAFile:      filepath.Join(p.dir, "kafka", "tls", "ca.pem"),
		User:        KafkaSASLUser,
		Password:    KafkaSASLPassword,
	}
}

// listenSASLSSLOn adds Kafka's SASL_SSL listener on port to what listenOn set.
func (p *Private) listenSASLSSLOn(port int) {
	p.env = append(p.env, "RECSYS_KAFKA_SASL_SSL_PORT="+strconv.Itoa(port))
	if p.acls {
		p.env = append(p.env, "RECSYS_KAFKA_ACLS=1")
	}
	p.saslSSLAddr = "127.0.0.1:" + strconv.Itoa(port)
}
