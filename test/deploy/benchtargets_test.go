package deploy_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestBenchTargetsSummary runs `scripts/bench-targets.sh --summary` over two earlier output
// directories and checks the verdicts it prints: the median over every run of both, the
// range, the direction of each bound, the targets no run measured, and the host-speed line
// (no verdict).
func TestBenchTargetsSummary(t *testing.T) {
	root := repoRoot(t)
	write := func(lines ...string) string {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "lines"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	first := write(
		"reco-off BenchmarkRecoHTTP/k=20/clients=64/autolog=false 61011 ns/op 9000 req/s 12.5 p99_ms 104.4 machine_cpu_us/req",
		"reco-off BenchmarkRecoHTTP/k=20/rate=10000/autolog=false 100000 ns/op 9990 req/s 30 p99_ms",
		"ingest BenchmarkLogBatch 100 ns/op 100000 events/s",
		"reco-p50 BenchmarkRecoHTTP/k=20/rate=1000/autolog=false 1000000 ns/op 1000 req/s 0.9 p50_ms",
		"reco-p50 BenchmarkRecoHTTP/k=20/rate=1000/autolog=true 1000000 ns/op 1000 req/s 1.3 p50_ms 0.4 added_p50_ms",
	)
	second := write(
		"reco-off BenchmarkRecoHTTP/k=20/clients=64/autolog=false 61011 ns/op 15000 req/s 9.5 p99_ms 96.3 machine_cpu_us/req",
		"reco-off BenchmarkRecoHTTP/k=20/clients=64/autolog=false 61011 ns/op 12000 req/s 8.0 p99_ms 99.7 machine_cpu_us/req",
		"reco-off BenchmarkRecoHTTP/k=20/rate=10000/autolog=false 100000 ns/op 10000 req/s 9 p99_ms",
		"ingest BenchmarkLogBatch 100 ns/op 90000 events/s",
		"reco-p50 BenchmarkRecoHTTP/k=20/rate=1000/autolog=true 1000000 ns/op 1000 req/s 2.3 p50_ms 1.4 added_p50_ms",
	)
	cmd := exec.Command("bash", "scripts/bench-targets.sh", "--summary", first, second)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bench-targets --summary: %v\n%s", err, out)
	}
	got := string(out)
	for _, want := range []string{
		`target \(2 runs each\)`, // runs counted by the /log/batch lines
		`closed loop: req/s +12000 +9000–15000 +met \(>= 10000\)`,
		`closed loop: p99 ms +9\.5 +8–12\.5 +met \(<= 10\)`,
		`open loop at 10,000/s: p99 ms +19\.5 +9–30 +NOT MET \(<= 10\)`, // even count: mean of the middle two
		`POST /log/batch: events/s +95000 +90000–100000 +NOT MET \(>= 100000\)`,
		`consumer apply, young stream: events/s +- +- +not measured`,
		`autolog's added p50 at 1,000 lists/s: ms +0\.9 +0\.4–1\.4 +met \(<= 1\)`,
		`host speed: machine CPU us per /reco, autolog off, closed +99\.7 +96\.3–104 +\(no target\)`,
	} {
		if !regexp.MustCompile(want).MatchString(got) {
			t.Errorf("summary has no line matching %q:\n%s", want, got)
		}
	}

	cmd = exec.Command("bash", "scripts/bench-targets.sh", "--summary", t.TempDir())
	cmd.Dir = root
	out, err = cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(string(out), "no benchmark lines") {
		t.Errorf("a directory without lines: want exit 2 naming it, got %v:\n%s", err, out)
	}
}
