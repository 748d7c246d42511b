package deploy_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"recsys/pkg/testutil"
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
		testutil.Missing(t, "no bash")
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

// scripts/test-verdict.sh fails a make test run that executed no test or skipped one (a
// skip under RECSYS_INTEGRATION=1 hides a test: CI passed without it), and lets the rest
// stand; packages without test files, reported as skipped, do not count.
func TestTestVerdictFailsRunsThatSkipped(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		testutil.Missing(t, "no bash")
	}
	const (
		pass    = `{"Time":"2026-01-01T00:00:00Z","Action":"pass","Package":"recsys/pkg/a","Test":"TestA","Elapsed":0.1}`
		noFiles = `{"Time":"2026-01-01T00:00:00Z","Action":"skip","Package":"recsys/pkg/b","Elapsed":0}`
		skipped = `{"Time":"2026-01-01T00:00:00Z","Action":"skip","Package":"recsys/pkg/eval","Test":"TestIntegrationML100K","Elapsed":0}`
		pkgPass = `{"Time":"2026-01-01T00:00:00Z","Action":"pass","Package":"recsys/pkg/a","Elapsed":0.2}`
		subSkip = `{"Time":"2026-01-01T00:00:00Z","Action":"skip","Package":"recsys/pkg/c","Test":"TestC/sub","Elapsed":0}`
		noData  = `{"Time":"2026-01-01T00:00:00Z","Action":"output","Package":"recsys/pkg/eval","Test":"TestIntegrationML100K","Output":"    eval_test.go:224: data set absent: MovieLens data not found\n"}`
	)
	for _, tc := range []struct {
		name  string
		lines []string
		fail  string // "" when the run stands
		note  string // what a run that stands prints
	}{
		{"tests passed", []string{pass, noFiles, pkgPass}, "", ""},
		{"a data set absent", []string{pass, noData, skipped, pkgPass}, "", "skipped, data set absent: recsys/pkg/eval TestIntegrationML100K"},
		{"a data set absent and another skip", []string{pass, noData, skipped, subSkip}, "recsys/pkg/c TestC/sub", ""},
		{"a test skipped", []string{pass, skipped, pkgPass}, "recsys/pkg/eval TestIntegrationML100K", ""},
		{"a subtest skipped", []string{pass, subSkip}, "recsys/pkg/c TestC/sub", ""},
		{"no test ran", []string{noFiles, pkgPass}, "no test was executed", ""},
		{"no log", nil, "no test was executed", ""},
	} {
		log := filepath.Join(t.TempDir(), "go-test.json")
		if tc.lines != nil {
			if err := os.WriteFile(log, []byte(strings.Join(tc.lines, "\n")+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		out, err := exec.Command("bash", filepath.Join(repoRoot(t), "scripts", "test-verdict.sh"), log).CombinedOutput()
		switch {
		case tc.fail == "" && (err != nil || strings.TrimSpace(string(out)) != tc.note):
			t.Errorf("%s: %v %q, want exit 0 and output %q", tc.name, err, out, tc.note)
		case tc.fail != "" && (err == nil || !strings.Contains(string(out), tc.fail)):
			t.Errorf("%s: %v %s, want a failure naming %q", tc.name, err, out, tc.fail)
		}
	}
}

// TestServicesSweepStopsOrphanedPrivateServers: `services.sh sweep` (run by scripts/test.sh
// before and after the tests) stops the servers of a private instance whose test process is
// gone, as after a test binary killed by -timeout, and leaves a live test's instance alone.
func TestServicesSweepStopsOrphanedPrivateServers(t *testing.T) {
	if os.Geteuid() != 0 {
		testutil.Missing(t, "services.sh runs the servers as root's service users")
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		testutil.Missing(t, "no redis-server")
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

// freeLoopbackPort returns a port nothing listens on (at the time of asking).
func freeLoopbackPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// servicesScript runs scripts/services.sh with args against a services dir and PostgreSQL
// port of the test's own (never the shared servers).
func servicesScript(t *testing.T, dir string, pgPort int, args ...string) (string, error) {
	t.Helper()
	c := exec.Command("bash", append([]string{filepath.Join(repoRoot(t), "scripts", "services.sh")}, args...)...)
	c.Env = append(os.Environ(), "RECSYS_SERVICES_DIR="+dir, "RECSYS_PG_PORT="+strconv.Itoa(pgPort), "RECSYS_PG_START_TIMEOUT=15")
	out, err := c.CombinedOutput()
	return string(out), err
}

// TestServicesPostgresStaleLockWithReusedPid: a killed PostgreSQL leaves postmaster.pid behind,
// and on a host with pid_max 32768 and every test's PostgreSQL running as postgres, its pid is
// soon another postgres process. `services.sh start pg` must then start the server (PostgreSQL
// alone refuses: "lock file already exists") and `stop pg` must not signal that process.
func TestServicesPostgresStaleLockWithReusedPid(t *testing.T) {
	if os.Geteuid() != 0 {
		testutil.Missing(t, "services.sh runs PostgreSQL as the postgres user")
	}
	pgUser, err := user.Lookup("postgres")
	if err != nil {
		testutil.Missing(t, "no postgres user")
	}
	if m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb"); len(m) == 0 {
		testutil.Missing(t, "no PostgreSQL binaries")
	}
	dir, port := t.TempDir(), freeLoopbackPort(t)
	t.Cleanup(func() {
		if out, err := servicesScript(t, dir, port, "stop", "pg"); err != nil {
			t.Logf("stop pg: %v\n%s", err, out)
		}
	})
	if out, err := servicesScript(t, dir, port, "start", "pg"); err != nil {
		t.Fatalf("start pg: %v\n%s", err, out)
	}
	lockFile := filepath.Join(dir, "pg", "data", "postmaster.pid")
	uid, _ := strconv.Atoi(pgUser.Uid)
	gid, _ := strconv.Atoi(pgUser.Gid)
	// Another process of the postgres user, standing in for one that got the killed
	// server's pid.
	other := exec.Command("sleep", "300")
	other.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	otherDone := make(chan struct{})
	go func() { _ = other.Wait(); close(otherDone) }()
	t.Cleanup(func() { _ = other.Process.Kill(); <-otherDone })

	// killServer SIGKILLs the postmaster, waits for it to go, and points its lock file at pid
	// as though that process had got the pid an hour after the server started.
	killServer := func(pid int) {
		t.Helper()
		b, err := os.ReadFile(lockFile)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(b), "\n")
		postmaster, err := strconv.Atoi(strings.TrimSpace(lines[0]))
		if err != nil {
			t.Fatalf("postmaster.pid: %v", err)
		}
		if err := syscall.Kill(postmaster, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		for i := 0; syscall.Kill(postmaster, 0) == nil; i++ {
			if i > 100 {
				t.Fatalf("postmaster %d still alive", postmaster)
			}
			time.Sleep(50 * time.Millisecond)
		}
		// Its backends leave the port with it.
		for i := 0; ; i++ {
			c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
			if err != nil {
				break
			}
			c.Close()
			if i > 100 {
				t.Fatal("the killed server's port still answers")
			}
			time.Sleep(50 * time.Millisecond)
		}
		// The pid is reused some time after the server started, as it would be (the file
		// records the server's start time, in epoch seconds).
		started, err := strconv.ParseInt(strings.TrimSpace(lines[2]), 10, 64)
		if err != nil {
			t.Fatalf("postmaster.pid start time: %v", err)
		}
		lines[0], lines[2] = strconv.Itoa(pid), strconv.FormatInt(started-3600, 10)
		if err := os.WriteFile(lockFile, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	otherAlive := func(after string) {
		t.Helper()
		select {
		case <-otherDone:
			t.Errorf("services.sh %s signalled the process that reused the killed server's pid", after)
		case <-time.After(200 * time.Millisecond):
		}
	}

	killServer(other.Process.Pid)
	if out, err := servicesScript(t, dir, port, "start", "pg"); err != nil {
		t.Errorf("start pg after a kill, with the lock's pid reused: %v\n%s", err, out)
	}
	otherAlive("start pg")
	if t.Failed() {
		return
	}
	// The killed server not reaped yet (a container's pid 1 may never reap): a zombie of the
	// postgres user, which answers kill -0 as though alive.
	zombie := exec.Command("true")
	zombie.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	if err := zombie.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = zombie.Wait() }()
	for i := 0; ; i++ {
		stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", zombie.Process.Pid))
		if _, state, _ := strings.Cut(string(stat), ") "); strings.HasPrefix(state, "Z") {
			break
		}
		if i > 100 {
			t.Fatalf("pid %d is no zombie: %s", zombie.Process.Pid, stat)
		}
		time.Sleep(20 * time.Millisecond)
	}
	killServer(zombie.Process.Pid)
	if out, err := servicesScript(t, dir, port, "start", "pg"); err != nil {
		t.Errorf("start pg after a kill, the lock's pid a zombie: %v\n%s", err, out)
	}
	if t.Failed() {
		return
	}
	killServer(other.Process.Pid)
	// As `sweep` stops a private instance: without its port, so with the default one, which
	// another server (the shared one) listens on.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	if out, err := servicesScript(t, dir, busy.Addr().(*net.TCPAddr).Port, "stop", "pg"); err != nil {
		t.Errorf("stop pg after a kill, with the lock's pid reused: %v\n%s", err, out)
	}
	otherAlive("stop pg")
}

// TestServicesRedisPidFileOfAnotherRedis: a killed Redis leaves its pid file behind, and its
// pid may then be another redis-server (every test's private Redis is one). `stop redis` must
// not kill that one and `start redis` must start a server of its own.
func TestServicesRedisPidFileOfAnotherRedis(t *testing.T) {
	if os.Geteuid() != 0 {
		testutil.Missing(t, "services.sh runs as root")
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		testutil.Missing(t, "no redis-server")
	}
	script := filepath.Join(repoRoot(t), "scripts", "services.sh")
	run := func(dir string, port int, args ...string) (string, error) {
		c := exec.Command("bash", append([]string{script}, args...)...)
		c.Env = append(os.Environ(), "RECSYS_SERVICES_DIR="+dir, "RECSYS_REDIS_PORT="+strconv.Itoa(port), "RECSYS_REDIS_START_TIMEOUT=5")
		out, err := c.CombinedOutput()
		return string(out), err
	}
	answers := func(port int) bool {
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err == nil {
			c.Close()
		}
		return err == nil
	}
	otherDir, otherPort := t.TempDir(), freeLoopbackPort(t)
	if out, err := run(otherDir, otherPort, "start", "redis"); err != nil {
		t.Fatalf("start the other redis: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = run(otherDir, otherPort, "stop", "redis") })
	dir, port := t.TempDir(), freeLoopbackPort(t)
	t.Cleanup(func() { _, _ = run(dir, port, "stop", "redis") })
	// This services dir's Redis was killed and its pid now is the other redis-server's.
	stalePid := func() {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(dir, "redis"), 0o755); err != nil {
			t.Fatal(err)
		}
		pid, err := os.ReadFile(filepath.Join(otherDir, "redis", "redis.pid"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "redis", "redis.pid"), pid, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	stalePid()
	if out, err := run(dir, port, "stop", "redis"); err != nil {
		t.Errorf("stop redis: %v\n%s", err, out)
	}
	if !answers(otherPort) {
		t.Fatal("stop redis killed another services dir's redis-server that had the stale pid")
	}
	stalePid()
	if out, err := run(dir, port, "start", "redis"); err != nil {
		t.Errorf("start redis with a stale pid file: %v\n%s", err, out)
	}
	if !answers(port) {
		t.Error("no redis on this services dir's port after start")
	}
}

// TestServicesPostgresAfterKilledInitdb: initdb writes PG_VERSION before the catalogs, so one
// SIGKILLed half-way (a CI job's kill, the OOM killer) left a data dir that `services.sh`
// took for a made one on every later run, and PostgreSQL did not start from it. The next
// `start pg` must make a whole data dir and start.
func TestServicesPostgresAfterKilledInitdb(t *testing.T) {
	if os.Geteuid() != 0 {
		testutil.Missing(t, "services.sh runs PostgreSQL as the postgres user")
	}
	if _, err := user.Lookup("postgres"); err != nil {
		testutil.Missing(t, "no postgres user")
	}
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(bins) == 0 {
		testutil.Missing(t, "no PostgreSQL binaries")
	}
	version := filepath.Base(filepath.Dir(filepath.Dir(bins[len(bins)-1])))
	// An initdb that gets as far as PG_VERSION and is killed; it runs as postgres, so its
	// dir must be one that user can reach.
	stubs, err := os.MkdirTemp("", "recsys-initdb-stub-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(stubs) })
	if err := os.Chmod(stubs, 0o755); err != nil {
		t.Fatal(err)
	}
	stub(t, stubs, "initdb", `mkdir -p "$2" && echo `+version+` >"$2/PG_VERSION" && kill -9 $$`)
	stub(t, stubs, "pg_ctl", `exit 3`)

	dir, port := t.TempDir(), freeLoopbackPort(t)
	t.Cleanup(func() {
		if out, err := servicesScript(t, dir, port, "stop", "pg"); err != nil {
			t.Logf("stop pg: %v\n%s", err, out)
		}
	})
	t.Setenv("RECSYS_PG_BIN", stubs)
	if out, err := servicesScript(t, dir, port, "start", "pg"); err == nil {
		t.Fatalf("start pg succeeded with an initdb that was killed:\n%s", out)
	}
	os.Unsetenv("RECSYS_PG_BIN")
	if out, err := servicesScript(t, dir, port, "start", "pg"); err != nil {
		t.Fatalf("start pg after a killed initdb: %v\n%s", err, out)
	}
}
