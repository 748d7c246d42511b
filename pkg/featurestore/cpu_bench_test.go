package featurestore_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/testutil"
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
	pgCPU, _ = testutil.ProcessCPU(m.pgPid)
	return testutil.SelfCPU(), pgCPU
}
