package featurestore_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// cpuMeter measures CPU time rather than wall time: on the shared 2-core machine wall time
// mostly measures the other engineers' load. It reads the Go process's rusage and, through
// /proc, the CPU time of the one PostgreSQL backend of a single-connection pool (the server
// runs on the same machine); both read 0 where that is not possible.
type cpuMeter struct {
	pgPid int
}

func newCPUMeter(b *testing.B, dsn string) (*pgxpool.Pool, *cpuMeter) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns, cfg.MinConns = 1, 1
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	m := &cpuMeter{}
	if err := pool.QueryRow(context.Background(), `SELECT pg_backend_pid()`).Scan(&m.pgPid); err != nil {
		b.Fatal(err)
	}
	return pool, m
}

func (m *cpuMeter) read() (goCPU, pgCPU time.Duration) {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		goCPU = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", m.pgPid))
	if err != nil {
		return goCPU, 0
	}
	f := strings.Fields(string(st[bytes.LastIndexByte(st, ')')+1:]))
	if len(f) > 12 {
		u, _ := strconv.ParseInt(f[11], 10, 64) // utime, clock ticks (USER_HZ = 100)
		s, _ := strconv.ParseInt(f[12], 10, 64) // stime
		pgCPU = time.Duration(u+s) * 10 * time.Millisecond
	}
	return goCPU, pgCPU
}
