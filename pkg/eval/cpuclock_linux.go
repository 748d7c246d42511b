package eval

import "golang.org/x/sys/unix"

// threadCPU is the calling OS thread's CPU time in nanoseconds. On a shared machine the wall
// time of a call includes waiting for a core; the thread CPU time does not.
func threadCPU() (int64, bool) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0, false
	}
	return ts.Nano(), true
}
