package testutil

import (
	"os/exec"
	"syscall"
)

// dieWithParent asks the kernel to SIGKILL cmd when the thread that started it exits. The
// signal survives exec (of a wrapper such as nice into the binary). Go's runtime does not end
// the threads it starts processes from while the program runs, so in practice the child dies
// with the test process.
func dieWithParent(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}
