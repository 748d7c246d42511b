//go:build !linux

package eval

// threadCPU is unavailable off Linux; only wall-clock latency is reported there.
func threadCPU() (int64, bool) { return 0, false }
