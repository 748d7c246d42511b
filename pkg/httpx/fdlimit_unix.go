//go:build unix

package httpx

import "syscall"

// descriptorLimit returns the soft RLIMIT_NOFILE, as Go raised it at start (to the hard one).
func descriptorLimit() (uint64, bool) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, false
	}
	return uint64(rl.Cur), true
}
