// Package gctune sets the Go garbage collector's goals for a long-running recsys process.
//
// Go's default (GOGC=100: collect whenever the heap doubles its live size) suits small
// programs. A recsys process keeps a modest live heap (caches, pools) and allocates fast
// per request, so at GOGC=100 it collects several times a second and the collector took a
// third of /reco's CPU (BenchmarkRecoHTTP: 196 µs of CPU per request at GOGC=100, 134 µs at
// 400). Past the CPU, each collection's mark phase takes a quarter of the cores for tens of
// milliseconds, and on a busy node the requests of that moment queue behind it: with the
// whole pipeline at 5,000 lists/s for 30 s, p99 after the first 10 s was 95 / 103 / 172 ms
// at 400 against 48 / 57 / 60 ms at 1,600 (a collection every ~1 s against every few
// seconds). So the percentage is high, and a soft memory limit keeps that trade safe: 90 %
// of the container's cgroup limit, or a quarter of the machine's memory when the process has
// none (RSS reached 2 GB in that benchmark without a limit). Near the limit the collector
// runs as often as it must instead of the process being OOM-killed. The standard GOGC and
// GOMEMLIMIT variables win over these settings, so operators keep the knobs they know.
package gctune

import (
	"math"
	"os"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"recsys/pkg/flagenv"
)

// Config holds the settings (flags go.*).
type Config struct {
	GCPercent        int
	MemoryLimitRatio float64 // of the cgroup's memory limit
	HostMemoryRatio  float64 // of the machine's memory, without a cgroup limit
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{GCPercent: 1600, MemoryLimitRatio: 0.9, HostMemoryRatio: 0.25}
}

// RegisterFlags adds the go.* flags.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.IntVar(&c.GCPercent, "go.gc-percent", c.GCPercent, "garbage collection target percentage (GOGC); the GOGC environment variable wins when set")
	fs.Float64Var(&c.MemoryLimitRatio, "go.memory-limit-ratio", c.MemoryLimitRatio, "soft memory limit as a share of the container's cgroup memory limit, 0 = none; the GOMEMLIMIT environment variable wins when set")
	fs.Float64Var(&c.HostMemoryRatio, "go.memory-limit-host-ratio", c.HostMemoryRatio, "soft memory limit as a share of the machine's memory when the process has no cgroup memory limit, 0 = none; the GOMEMLIMIT environment variable wins when set")
}

// Validate reports every invalid setting.
func (c Config) Validate() error {
	var p flagenv.Problems
	p.IntBetween("go.gc-percent", c.GCPercent, 10, 10000)
	if c.MemoryLimitRatio < 0 || c.MemoryLimitRatio > 1 {
		p.Addf("--go.memory-limit-ratio must be between 0 and 1, got %g", c.MemoryLimitRatio)
	}
	if c.HostMemoryRatio < 0 || c.HostMemoryRatio > 1 {
		p.Addf("--go.memory-limit-host-ratio must be between 0 and 1, got %g", c.HostMemoryRatio)
	}
	return p.Err()
}

// Apply sets the collector's goals and returns what it set, for the start-up log.
func (c Config) Apply() map[string]any {
	return c.apply(os.Getenv, cgroupMemoryLimit(), hostMemory())
}

func (c Config) apply(getenv func(string) string, cgroupLimit, host int64) map[string]any {
	out := map[string]any{}
	if v := getenv("GOGC"); v != "" {
		out["gc_percent"] = "GOGC=" + v
	} else {
		debug.SetGCPercent(c.GCPercent)
		out["gc_percent"] = c.GCPercent
	}
	switch {
	case getenv("GOMEMLIMIT") != "":
		out["memory_limit"] = "GOMEMLIMIT=" + getenv("GOMEMLIMIT")
	case c.MemoryLimitRatio > 0 && cgroupLimit > 0:
		limit := int64(float64(cgroupLimit) * c.MemoryLimitRatio)
		debug.SetMemoryLimit(limit)
		out["memory_limit"] = limit
	case cgroupLimit <= 0 && c.HostMemoryRatio > 0 && host > 0:
		limit := int64(float64(host) * c.HostMemoryRatio)
		debug.SetMemoryLimit(limit)
		out["memory_limit"] = limit
	default:
		out["memory_limit"] = "none"
	}
	return out
}

// cgroupMemoryLimit is the memory limit of this process' cgroup in bytes (v2, then v1), or 0
// when there is none or it cannot be read.
func cgroupMemoryLimit() int64 {
	for _, p := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		return parseLimit(string(b))
	}
	return 0
}

// hostMemory is the machine's memory in bytes (MemTotal of /proc/meminfo), or 0.
func hostMemory() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	return parseMemTotal(string(b))
}

// parseMemTotal reads the "MemTotal: N kB" line of /proc/meminfo.
func parseMemTotal(s string) int64 {
	for line := range strings.Lines(s) {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			f := strings.Fields(rest)
			if len(f) != 2 || f[1] != "kB" {
				return 0
			}
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil || n <= 0 || n > math.MaxInt64/1024 {
				return 0
			}
			return n * 1024
		}
	}
	return 0
}

// parseLimit reads a cgroup limit file: "max" (v2) or a page-rounded huge number (v1) mean
// no limit.
func parseLimit(s string) int64 {
	s = strings.TrimSpace(s)
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n >= math.MaxInt64/2 {
		return 0
	}
	return n
}
