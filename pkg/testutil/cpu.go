package testutil

import (
	"bytes"
	"context"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"
)

// Benchmarks report CPU time rather than wall time where they can: on the shared 2-core
// machine wall time mostly measures the other load. The servers run on the same machine, so
// their processes' CPU time is readable from /proc; where it is not (another host, no /proc)
// the readers below report nothing rather than fail.

// clockTick is USER_HZ, the unit of /proc's CPU times: 100 on every Linux platform Go runs on.
const clockTick = 10 * time.Millisecond

// SelfCPU is the user and system CPU time of this process so far.
func SelfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// ProcessCPU is the user and system CPU time of process pid (all its threads) so far, in
// clock ticks of 10 ms; false when /proc has no such process.
func ProcessCPU(pid int) (time.Duration, bool) {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	// The fields after the command name's closing parenthesis (the name may hold spaces and
	// parentheses): utime and stime are the 12th and 13th of them.
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(f) < 13 {
		return 0, false
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(ut+st) * clockTick, true
}

// CPUSample is the CPU time so far of a set of processes, by pid.
type CPUSample map[int]time.Duration

// Since is the CPU time the sample's processes used after before was taken; processes that
// started since count from zero, processes that exited meanwhile are lost (sample before
// they exit).
func (s CPUSample) Since(before CPUSample) time.Duration {
	var d time.Duration
	for pid, t := range s {
		d += t - before[pid]
	}
	return d
}

// BackendCPU samples the PostgreSQL backends connected to pool's database. It is empty when
// the server does not run on this machine.
func BackendCPU(tb testing.TB, pool *pgxpool.Pool) CPUSample {
	tb.Helper()
	rows, err := pool.Query(context.Background(), `SELECT pid FROM pg_stat_activity WHERE datname = current_database()`)
	if err != nil {
		tb.Fatalf("list PostgreSQL backends: %v", err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		tb.Fatalf("list PostgreSQL backends: %v", err)
	}
	out := CPUSample{}
	for _, pid := range pids {
		if t, ok := ProcessCPU(int(pid)); ok {
			out[int(pid)] = t
		}
	}
	return out
}

// ProcessesCPU samples every process whose command line contains all of match (for a
// server started by scripts/services.sh, say the Kafka broker's "kafka.Kafka").
func ProcessesCPU(match ...string) CPUSample {
	out := CPUSample{}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !containsAll(cmd, match) {
			continue
		}
		if t, ok := ProcessCPU(pid); ok {
			out[pid] = t
		}
	}
	return out
}

func containsAll(b []byte, subs []string) bool {
	for _, s := range subs {
		if !bytes.Contains(b, []byte(s)) {
			return false
		}
	}
	return len(subs) > 0
}

// MachineCPU is the time all the machine's CPUs spent busy so far (/proc/stat: user, nice,
// system, irq and softirq; guest time is inside user), and the time they were stolen: wanted
// by this virtual machine while the hypervisor ran something else, which shows how much a
// noisy run lost to the host.
func MachineCPU() (busy, steal time.Duration, ok bool) {
	stat, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, false
	}
	line, _, _ := bytes.Cut(stat, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, false
	}
	var ticks [8]int64 // user nice system idle iowait irq softirq steal
	for i := range ticks {
		if ticks[i], err = strconv.ParseInt(f[i+1], 10, 64); err != nil {
			return 0, 0, false
		}
	}
	b := ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]
	return time.Duration(b) * clockTick, time.Duration(ticks[7]) * clockTick, true
}

// CPUAccount splits the machine's CPU time over a benchmark run by process: where the time
// goes without a profiler, and less sensitive to the other load on the shared machine than
// throughput or latency. Start it when the measured work starts and Report when it has
// ended (callers with a pipeline behind them wait until it has drained, so that no unit's
// work falls outside the count).
type CPUAccount struct {
	opts             CPUAccountOptions
	pg0              CPUSample
	procs0           map[string]CPUSample
	redis0           time.Duration
	machine0, steal0 time.Duration
	start            time.Time
}

// CPUAccountOptions say which processes to count besides the machine as a whole.
type CPUAccountOptions struct {
	PG    *pgxpool.Pool  // its database's backends: pg_cpu_us
	Redis rueidis.Client // the server's own count (INFO cpu): redis_cpu_us
	// Processes by metric name (recsys: recsys_cpu_us), each a pid or, for servers the
	// services script started, a command line to match (see ProcessesCPU).
	PIDs    map[string]int
	Matches map[string][]string
}

// StartCPUAccount takes the first sample.
func StartCPUAccount(tb testing.TB, o CPUAccountOptions) *CPUAccount {
	tb.Helper()
	a := &CPUAccount{opts: o, procs0: sampleProcesses(o), start: time.Now()}
	if o.PG != nil {
		a.pg0 = BackendCPU(tb, o.PG)
	}
	if o.Redis != nil {
		a.redis0 = RedisCPU(tb, o.Redis)
	}
	a.machine0, a.steal0, _ = MachineCPU()
	return a
}

func sampleProcesses(o CPUAccountOptions) map[string]CPUSample {
	out := map[string]CPUSample{}
	for name, pid := range o.PIDs {
		t, _ := ProcessCPU(pid)
		out[name] = CPUSample{pid: t}
	}
	for name, match := range o.Matches {
		out[name] = ProcessesCPU(match...)
	}
	return out
}

// Report adds, in µs of CPU per unit of work (n units, "req" or "event"): pg_cpu_us, redis_cpu_us,
// one metric per named process, machine_cpu_us (every process of the machine: the
// benchmark's own, PostgreSQL's background writers, the kernel and any other load), and
// steal_%, the share of the machine's CPU time the hypervisor gave to others while this one
// wanted it (how much a noisy run lost to the host).
func (a *CPUAccount) Report(b *testing.B, n int, unit string) {
	b.Helper()
	per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(n) }
	suffix := "_cpu_us/" + unit
	if a.opts.PG != nil {
		b.ReportMetric(per(BackendCPU(b, a.opts.PG).Since(a.pg0)), "pg"+suffix)
	}
	if a.opts.Redis != nil {
		b.ReportMetric(per(RedisCPU(b, a.opts.Redis)-a.redis0), "redis"+suffix)
	}
	now := sampleProcesses(a.opts)
	names := make([]string, 0, len(now))
	for name := range now {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		b.ReportMetric(per(now[name].Since(a.procs0[name])), name+suffix)
	}
	if busy, steal, ok := MachineCPU(); ok {
		b.ReportMetric(per(busy-a.machine0), "machine"+suffix)
		b.ReportMetric(100*(steal-a.steal0).Seconds()/(time.Since(a.start).Seconds()*float64(runtime.NumCPU())), "steal_%")
	}
}
