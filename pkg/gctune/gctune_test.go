package gctune

import (
	"runtime/debug"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestParseLimit(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"max\n", 0},
		{"536870912\n", 536870912},
		{"9223372036854771712\n", 0}, // cgroup v1 "unlimited"
		{"", 0},
		{"-1", 0},
	} {
		if got := parseLimit(tc.in); got != tc.want {
			t.Errorf("parseLimit(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

func TestApply(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	c := DefaultConfig()
	limit := int64(1 << 30)
	want := int64(float64(limit) * c.MemoryLimitRatio)

	got := c.apply(env(nil), limit, 64<<30)
	if got["gc_percent"] != 1600 || got["memory_limit"] != want {
		t.Fatalf("defaults applied %v", got)
	}
	if p := debug.SetGCPercent(100); p != 1600 {
		t.Fatalf("GC percent %d, want 1600", p)
	}
	if l := debug.SetMemoryLimit(-1); l != want {
		t.Fatalf("memory limit %d", l)
	}

	debug.SetMemoryLimit(1 << 62)
	got = c.apply(env(map[string]string{"GOGC": "50", "GOMEMLIMIT": "2GiB"}), 1<<30, 64<<30)
	if got["gc_percent"] != "GOGC=50" || got["memory_limit"] != "GOMEMLIMIT=2GiB" {
		t.Fatalf("environment not respected: %v", got)
	}
	if p := debug.SetGCPercent(100); p != 100 {
		t.Fatalf("GC percent changed to %d although GOGC is set", p)
	}

	// Without a cgroup limit, a share of the machine's memory; without either, none.
	if got := c.apply(env(nil), 0, 8<<30); got["memory_limit"] != int64(2<<30) {
		t.Fatalf("no cgroup limit, 8 GiB machine: %v", got)
	}
	if l := debug.SetMemoryLimit(-1); l != 2<<30 {
		t.Fatalf("memory limit %d, want a quarter of 8 GiB", l)
	}
	if got := c.apply(env(nil), 0, 0); got["memory_limit"] != "none" {
		t.Fatalf("no cgroup limit, machine unknown: %v", got)
	}
	c.HostMemoryRatio = 0
	if got := c.apply(env(nil), 0, 8<<30); got["memory_limit"] != "none" {
		t.Fatalf("host ratio 0: %v", got)
	}
}

func TestParseMemTotal(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"MemTotal:       24683652 kB\nMemFree:        17000000 kB\n", 24683652 * 1024},
		{"MemFree: 1 kB\nMemTotal: 2048 kB\n", 2048 * 1024},
		{"MemTotal: 2048 MB\n", 0},
		{"MemTotal: x kB\n", 0},
		{"", 0},
	} {
		if got := parseMemTotal(tc.in); got != tc.want {
			t.Errorf("parseMemTotal(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

func TestValidateNamesTheFlag(t *testing.T) {
	c := DefaultConfig()
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	c.RegisterFlags(fs)
	if err := fs.Parse([]string{"--go.gc-percent=1", "--go.memory-limit-ratio=2", "--go.memory-limit-host-ratio=-1"}); err != nil {
		t.Fatal(err)
	}
	err := c.Validate()
	for _, want := range []string{"--go.gc-percent", "--go.memory-limit-ratio", "--go.memory-limit-host-ratio"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("error %v does not name %s", err, want)
		}
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}
