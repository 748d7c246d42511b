package testutil

import (
	"net"
	"os"
	"os/exec"
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
	// Addr is host:port of the service; URL is its connection URL (pg, redis) or Addr (kafka).
	Addr, URL string
}

// StartPrivate starts service ("pg", "redis" or "kafka") and stops it when the test ends.
func StartPrivate(t testing.TB, service string) *Private {
	t.Helper()
	ServicesScript(t) // skip or fail early when the script is unknown
	dir, err := os.MkdirTemp("", "recsys-private-")
	if err != nil {
		t.Fatal(err)
	}
	p := &Private{t: t, service: service}
	port := freePort(t)
	p.env = append(os.Environ(), "RECSYS_SERVICES_DIR="+dir,
		"RECSYS_PG_PORT="+strconv.Itoa(port), "RECSYS_REDIS_PORT="+strconv.Itoa(port),
		"RECSYS_KAFKA_PORT="+strconv.Itoa(port), "RECSYS_KAFKA_CONTROLLER_PORT="+strconv.Itoa(freePort(t)))
	p.Addr = "127.0.0.1:" + strconv.Itoa(port)
	switch service {
	case "pg":
		p.URL = "postgres://postgres@" + p.Addr + "/recsys?sslmode=disable"
	case "redis":
		p.URL = "redis://" + p.Addr + "/0"
	default:
		p.URL = p.Addr
	}
	t.Cleanup(func() {
		p.run("stop")
		os.RemoveAll(dir)
	})
	p.Start()
	return p
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

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
