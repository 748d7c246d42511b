package testutil

import (
	"os"
	"runtime"
	"testing"
	"time"
)

// burn spins this goroutine on a CPU until the process has used d more CPU time.
func burn(d time.Duration) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	until := SelfCPU() + d
	x := 0
	for SelfCPU() < until {
		for i := range 100_000 {
			x += i
		}
	}
	_ = x
}

func TestCPUReadersFollowABusyProcess(t *testing.T) {
	if _, ok := ProcessCPU(os.Getpid()); !ok {
		t.Skip("no /proc on this system")
	}
	self0, mach0 := SelfCPU(), must(t, machineBusy)
	proc0 := must(t, func() (time.Duration, bool) { return ProcessCPU(os.Getpid()) })
	byCmd0 := ProcessesCPU(os.Args[0])
	if _, ok := byCmd0[os.Getpid()]; !ok {
		t.Fatalf("ProcessesCPU(%q) did not find this process: %v", os.Args[0], byCmd0)
	}

	const spin = 300 * time.Millisecond
	burn(spin)

	self := SelfCPU() - self0
	proc := must(t, func() (time.Duration, bool) { return ProcessCPU(os.Getpid()) }) - proc0
	mach := must(t, machineBusy) - mach0
	byCmd := ProcessesCPU(os.Args[0]).Since(byCmd0)
	if self < spin {
		t.Fatalf("SelfCPU grew %v while spinning for %v of CPU", self, spin)
	}
	// /proc counts in ticks of 10 ms; the kernel may also book a tick to the neighbour state.
	for name, got := range map[string]time.Duration{"ProcessCPU": proc, "ProcessesCPU": byCmd, "MachineCPU": mach} {
		if got < self/2 {
			t.Errorf("%s grew %v while this process used %v", name, got, self)
		}
	}
	if proc > self+100*time.Millisecond {
		t.Errorf("ProcessCPU grew %v, more than this process' %v", proc, self)
	}
}

func TestProcessCPUOfNoProcess(t *testing.T) {
	if _, ok := ProcessCPU(-1); ok {
		t.Fatal("ProcessCPU(-1) reported a process")
	}
	if got := ProcessesCPU(); len(got) != 0 {
		t.Fatalf("ProcessesCPU() with nothing to match found %d processes", len(got))
	}
}

func TestCPUSampleSince(t *testing.T) {
	for _, tc := range []struct {
		name          string
		before, after CPUSample
		want          time.Duration
	}{
		{"same processes", CPUSample{1: 10, 2: 20}, CPUSample{1: 15, 2: 50}, 35},
		{"a process started since counts from zero", CPUSample{1: 10}, CPUSample{1: 10, 3: 7}, 7},
		{"a process gone since counts nothing", CPUSample{1: 10, 2: 99}, CPUSample{1: 12}, 2},
		{"empty", nil, CPUSample{}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.after.Since(tc.before); got != tc.want {
				t.Fatalf("Since = %d, want %d", got, tc.want)
			}
		})
	}
}

func machineBusy() (time.Duration, bool) {
	busy, _, ok := MachineCPU()
	return busy, ok
}

func must(t *testing.T, f func() (time.Duration, bool)) time.Duration {
	t.Helper()
	d, ok := f()
	if !ok {
		t.Fatal("CPU time not readable")
	}
	return d
}

func TestCPUAccountReportsEachProcess(t *testing.T) {
	if _, ok := ProcessCPU(os.Getpid()); !ok {
		t.Skip("no /proc on this system")
	}
	const units, spin = 10, 60 * time.Millisecond
	res := testing.Benchmark(func(b *testing.B) {
		a := StartCPUAccount(b, CPUAccountOptions{PIDs: map[string]int{"self": os.Getpid()},
			Matches: map[string][]string{"none": {"no process has this in its command line \x01"}}})
		burn(spin)
		a.Report(b, units, "op")
	})
	perUnit := float64(spin.Microseconds()) / units
	for _, tc := range []struct {
		metric   string
		min, max float64
	}{
		{"self_cpu_us/op", perUnit / 2, perUnit * 3},
		{"machine_cpu_us/op", perUnit / 2, -1},
		{"none_cpu_us/op", 0, 0},
		{"steal_%", 0, 100},
	} {
		got, ok := res.Extra[tc.metric]
		if !ok {
			t.Errorf("%s not reported: %v", tc.metric, res.Extra)
			continue
		}
		if got < tc.min || (tc.max >= 0 && got > tc.max) {
			t.Errorf("%s = %v, want in [%v, %v]", tc.metric, got, tc.min, tc.max)
		}
	}
	if _, ok := res.Extra["pg_cpu_us/op"]; ok {
		t.Error("pg_cpu_us reported without a pool")
	}
}
