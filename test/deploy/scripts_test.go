package deploy_test

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// stub writes an executable shell script named name into dir.
func stub(t *testing.T, dir, name, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

// scripts/test.sh stops when `services.sh up` fails: eval "$(...)" of the empty output would
// succeed and run every check against no services. services.sh is made to fail at once (not
// root, per a stubbed id); go is stubbed so a regression runs nothing expensive.
func TestTestScriptStopsWhenServicesFail(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	bin := t.TempDir()
	stub(t, bin, "id", `if [ "$1" = "-u" ]; then echo 1000; else exec /usr/bin/id "$@"; fi`)
	stub(t, bin, "go", `echo "[stub go] $*" >&2`)
	cmd := exec.Command("bash", filepath.Join(repoRoot(t), "scripts", "test.sh"))
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "ARTIFACTS="+t.TempDir(),
		"RECSYS_SERVICES_DIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("scripts/test.sh succeeded although services.sh up failed:\n%s", out)
	}
	if !strings.Contains(string(out), "must run as root") {
		t.Errorf("output lacks services.sh's reason:\n%s", out)
	}
	if strings.Contains(string(out), "== gofmt") || strings.Contains(string(out), "[stub go]") {
		t.Errorf("scripts/test.sh went on after services.sh up failed:\n%s", out)
	}
}

// TestServicesSweepStopsOrphanedPrivateServers: `services.sh sweep` (run by scripts/test.sh
// before and after the tests) stops the servers of a private instance whose test process is
// gone, as after a test binary killed by -timeout, and leaves a live test's instance alone.
func TestServicesSweepStopsOrphanedPrivateServers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("services.sh runs the servers as root's service users")
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("no redis-server")
	}
	script := filepath.Join(repoRoot(t), "scripts", "services.sh")
	tmp := t.TempDir() // the sweep's TMPDIR: other runs' instances are not in it
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	instance := func(owner int) string {
		d, err := os.MkdirTemp(tmp, "recsys-private-")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "owner.pid"), []byte(strconv.Itoa(owner)), 0o644); err != nil {
			t.Fatal(err)
		}
		return d
	}
	orphan, live := instance(dead.Process.Pid), instance(os.Getpid())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	start := exec.Command("bash", script, "start", "redis")
	start.Env = append(os.Environ(), "RECSYS_SERVICES_DIR="+orphan, "RECSYS_REDIS_PORT="+strconv.Itoa(port))
	if out, err := start.CombinedOutput(); err != nil {
		t.Fatalf("start redis: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		stop := exec.Command("bash", script, "stop", "redis")
		stop.Env = append(os.Environ(), "RECSYS_SERVICES_DIR="+orphan, "RECSYS_REDIS_PORT="+strconv.Itoa(port))
		_ = stop.Run()
	})
	addr := "127.0.0.1:" + strconv.Itoa(port)
	if c, err := net.Dial("tcp", addr); err != nil {
		t.Fatalf("the orphan's redis is not up: %v", err)
	} else {
		c.Close()
	}
	sweep := exec.Command("bash", script, "sweep")
	sweep.Env = append(os.Environ(), "TMPDIR="+tmp)
	if out, err := sweep.CombinedOutput(); err != nil {
		t.Fatalf("sweep: %v\n%s", err, out)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Errorf("the orphan's redis still answers on %s after the sweep", addr)
	}
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Errorf("the orphan's dir is still there (%v)", err)
	}
	if _, err := os.Stat(filepath.Join(live, "owner.pid")); err != nil {
		t.Errorf("the sweep touched a live test's instance: %v", err)
	}
}
