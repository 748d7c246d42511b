// Package gctune sets the Go garbage collector's goals for a long-running recsys process.
//
// Go's default (GOGC=100: collect whenever the heap doubles its live size) suits small
// programs. A recsys process keeps a modest live heap (caches, pools) and allocates fast
// per request, so at GOGC=100 it collects several times a second and the collector took a
// third of /reco's CPU (BenchmarkRecoHTTP: 196 µs of CPU per request at GOGC=100, 134 µs at
// 400). A higher percentage trades memory for CPU; a memory limit taken from the container's
// cgroup keeps that trade safe: near the limit the collector runs as often as it must
// instead of the process being OOM-killed. The standard GOGC and GOMEMLIMIT variables win
// over both settings, so operators keep the knobs they know.
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
	MemoryLimitRatio float64
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config { return Config{GCPercent: 400, MemoryLimitRatio: 0.9} }

// RegisterFlags adds the go.* flags.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.IntVar(&c.GCPercent, "go.gc-percent", c.GCPercent, "garbage collection target percentage (GOGC); the GOGC environment variable wins when set")
	fs.Float64Var(&c.MemoryLimitRatio, "go.memory-limit-ratio", c.MemoryLimitRatio, "soft memory limit as a share of the container's cgroup memory limit, 0 = none; the GOMEMLIMIT environment variable wins when set")
}

// Validate reports every invalid setting.
func (c Config) Validate() error {
	var p flagenv.Problems
	p.IntBetween("go.gc-percent", c.GCPercent, 10, 10000)
	if c.MemoryLimitRatio < 0 || c.MemoryLimitRatio > 1 {
		p.Addf("--go.memory-limit-ratio must be between 0 and 1, got %g", c.MemoryLimitRatio)
	}
	return p.Err()
}

// Apply sets the collector's goals and returns what it set, for the start-up log.
func (c Config) Apply() map[string]any {
	return c.apply(os.Getenv, cgroupMemoryLimit())
}

func (c Config) apply(getenv func(string) string, cgroupLimit int64) map[string]any {
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
