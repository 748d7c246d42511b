package testutil

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// Private is a service instance of the test's own, started by scripts/services.sh in a
// private folder on free ports, so a test can kill and restart it (an outage) without
// disturbing the shared servers other tests use.
type Private struct {
	t       testing.TB
	service string // pg | redis | kafka
	env     []string
	dir     string
	// saslSSL: Kafka also listens with SASL_SSL on saslSSLAddr (StartPrivateKafkaSASLSSL).
	saslSSL bool
	// acls: the SASL_SSL user may do only what ACLs allow (StartPrivateKafkaACLs).
	acls        bool
	saslSSLAddr string
	// Addr is host:port of the service; URL is its connection URL (pg, redis) or Addr (kafka).
	Addr, URL string
}

// StartPrivate starts service ("pg", "redis" or "kafka") and stops it when the test ends.
//
// Its ports are picked free and released before the script binds them, so another process
// can take one meanwhile: the first start then tries again on other ports. Later starts
// (after an outage) must keep them, since the test's clients hold the address.
func StartPrivate(t testing.TB, service string) *Private {
	t.Helper()
	return startPrivate(t, &Private{t: t, service: service})
}

// startPrivate is StartPrivate for a p its caller has set up (service and options).
func startPrivate(t testing.TB, p *Private) *Private {
	t.Helper()
	service := p.service
	ServicesScript(t) // skip or fail early when the script is unknown
	dir, err := os.MkdirTemp("", "recsys-private-")
	if err != nil {
		t.Fatal(err)
	}
	p.dir = dir
	// scripts/test.sh stops the servers of a dir whose owner is gone (a test binary killed by
	// -timeout runs no cleanup).
	if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.run("stop")
		os.RemoveAll(dir)
	})
	for attempt := 1; ; attempt++ {
		p.listenOn(dir, pickPort(t), pickPort(t))
		if p.saslSSL {
			p.listenSASLSSLOn(pickPort(t))
		}
		out, err := p.run("start")
		if err == nil {
			return p
		}
		if attempt == 3 || !portTaken(out) {
			t.Fatalf("services.sh start %s: %v\n%s", service, err, out)
		}
		t.Logf("services.sh start %s: a port was taken meanwhile, trying others:\n%s", service, out)
		p.run("stop")
		if err := resetDir(dir); err != nil {
			t.Fatal(err)
		}
	}
}

// listenOn points the instance at port (and Kafka's controller at controller) in dir.
func (p *Private) listenOn(dir string, port, controller int) {
	p.env = append(os.Environ(), "RECSYS_SERVICES_DIR="+dir,
		"RECSYS_PG_PORT="+strconv.Itoa(port), "RECSYS_REDIS_PORT="+strconv.Itoa(port),
		"RECSYS_KAFKA_PORT="+strconv.Itoa(port), "RECSYS_KAFKA_CONTROLLER_PORT="+strconv.Itoa(controller),
		// Empty unless listenSASLSSLOn: a value inherited from the test's environment would
		// make every private broker open that one port.
		"RECSYS_KAFKA_SASL_SSL_PORT=", "RECSYS_KAFKA_ACLS=",
		// A broker that lives a test long starts on half the CPU without the optimizing
		// JIT: each restart of the Kafka-outage tests took 10-20 s of a loaded host.
		"RECSYS_KAFKA_JIT=quick")
	p.Addr = "127.0.0.1:" + strconv.Itoa(port)
	switch p.service {
	case "pg":
		p.URL = "postgres://postgres@" + p.Addr + "/recsys?sslmode=disable"
	case "redis":
		p.URL = "redis://" + p.Addr + "/0"
	default:
		p.URL = p.Addr
	}
}

// portTaken reports whether a failed start's output blames a port in use (the script's own
// check, or the server's bind error in the log it prints).
func portTaken(out []byte) bool {
	return bytes.Contains(bytes.ToLower(out), []byte("in use"))
}

// resetDir empties dir, so the next attempt starts from nothing (a server that failed to
// start may have written data or a pid file there).
func resetDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Name() == "owner.pid" {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// Stop stops the service (data is kept).
func (p *Private) Stop() { p.t.Helper(); p.mustRun("stop") }

// Start starts it again.
func (p *Private) Start() { p.t.Helper(); p.mustRun("start") }

func (p *Private) mustRun(verb string) {
	p.t.Helper()
	if out, err := p.run(verb); err != nil {
		p.t.Fatalf("services.sh %s %s: %v\n%s", verb, p.service, err, out)
	}
}

func (p *Private) run(verb string) ([]byte, error) {
	cmd := exec.Command("bash", ServicesScript(p.t), verb, p.service)
	cmd.Env = p.env
	return cmd.CombinedOutput()
}

// pickPort is freePort; a test replaces it to hand out a taken port.
var pickPort = freePort

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
