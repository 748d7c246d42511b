package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var recsysBin struct {
	once      sync.Once
	dir, path string
	err       error
}

// BuildRecsys returns the recsys binary for tests that run the real process: the one
// RECSYS_TEST_BINARY names (a build made beforehand, to compare two builds on the same
// benchmark), else the working tree's recsys, built once per test process into a temporary
// directory that RemoveRecsysBinary deletes.
func BuildRecsys() (string, error) {
	if p := os.Getenv("RECSYS_TEST_BINARY"); p != "" {
		return p, nil
	}
	recsysBin.once.Do(func() {
		if recsysBin.dir, recsysBin.err = os.MkdirTemp("", "recsys-bin-"); recsysBin.err != nil {
			return
		}
		recsysBin.path = filepath.Join(recsysBin.dir, "recsys")
		if out, err := exec.Command("go", "build", "-o", recsysBin.path, "recsys").CombinedOutput(); err != nil {
			recsysBin.err = fmt.Errorf("build recsys: %v\n%s", err, out)
		}
	})
	return recsysBin.path, recsysBin.err
}

// RecsysBinary is BuildRecsys for a test: a build failure fails it.
func RecsysBinary(tb testing.TB) string {
	tb.Helper()
	p, err := BuildRecsys()
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// RemoveRecsysBinary deletes what BuildRecsys built (never a RECSYS_TEST_BINARY). Packages
// that run the binary call it from TestMain after m.Run: each test run used to leave a
// 48 MB binary in the temporary directory.
func RemoveRecsysBinary() {
	if recsysBin.dir != "" {
		_ = os.RemoveAll(recsysBin.dir)
	}
}
