package deploy_test

import (
	"os"
	"os/exec"
	"path/filepath"
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
