package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
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

// notAsRoot makes cmd run as the postgres user when the test runs as root (CI), for a server
// that refuses root (PgBouncer), and hands it dir. The user exists wherever the test server
// was installed (scripts/services.sh).
func notAsRoot(cmd *exec.Cmd, dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("run %s as postgres, not root: %w", cmd.Path, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(dir, uid, gid); err != nil {
		return fmt.Errorf("hand %s to postgres: %w", dir, err)
	}
	// Set before Pdeathsig by the runtime, which a change of credentials would clear.
	cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	return nil
}
