package testutil

import "os/exec"

// Command is exec.Command for a process a test starts (the recsys binary, a copy of the test
// binary): on Linux the child is killed when the test process dies. A test that times out
// panics and exits without running its cleanups, and children started with a plain
// exec.Command then kept running (serving ports, holding consumer-group members, burning
// CPU) into the next test run.
func Command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	dieWithParent(cmd)
	return cmd
}
