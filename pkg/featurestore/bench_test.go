package featurestore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/features"
	"recsys/pkg/featurestore"
	"recsys/pkg/featurestore/fstest"
	"recsys/pkg/testutil"
)

// BenchmarkApply measures Store.Apply alone (PostgreSQL transaction, no Kafka, no Redis), wall
// time and CPU time of both sides, on batches of 5000 and 20000 events with 20k users and 5k
// items. Report, don't assert:
//
//	go test ./pkg/featurestore -run '^$' -bench Apply -benchtime 1x -count 3
func BenchmarkApply(b *testing.B) {
	dsn := testutil.MigratedDatabase(b)
	pool, cpu := newCPUMeter(b, dsn)
	cfg := features.DefaultConfig()
	const n = 100_000
	evs := toEvents(fstest.Generate(fstest.GenConfig{Seed: 3, Users: 20000, Items: 5000, Events: n,
		StartMs: time.Now().UnixMilli(), StepMs: 10, Prefix: "b"}))
	pairs := 0
	mem := features.NewMemoryStore(cfg)
	for _, e := range evs {
		pairs += len(mem.Apply(e.Interaction).Pairs)
	}
	st := featurestore.New(pool, nil, "", cfg, nil)
	phases := map[string]time.Duration{}
	st.SetHooks(featurestore.Hooks{Phase: func(p string, d time.Duration) { phases[p] += d }})
	for _, batch := range []int{5000, 20000} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) { benchApply(b, pool, cpu, st, evs, batch, pairs, phases) })
	}
}

func benchApply(b *testing.B, pool *pgxpool.Pool, cpu *cpuMeter, st *featurestore.Store, evs []featurestore.Event, batch, pairs int, phases map[string]time.Duration) {
	ctx := context.Background()
	n := len(evs)
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		go0, pg0 := cpu.read()
		for j := 0; j < n; j += batch {
			if _, err := st.Apply(ctx, &featurestore.Batch{Events: evs[j : j+batch]}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(n)/time.Since(t0).Seconds(), "events/s")
		// CPU per event of both sides: the rate a quiet 2-core machine could reach is about
		// 2 cores / max(pg, go) when the two overlap, 1 / (pg + go) when they alternate.
		go1, pg1 := cpu.read()
		b.ReportMetric(float64((go1-go0).Microseconds())/float64(n), "go_cpu_us/event")
		b.ReportMetric(float64((pg1-pg0).Microseconds())/float64(n), "pg_cpu_us/event")
		b.ReportMetric(float64(pairs)/float64(n), "pair_incr/event")
		for p, d := range phases {
			b.ReportMetric(d.Seconds()*1000/float64(n/batch), p+"_ms/tx")
		}
		clear(phases)
		b.StopTimer()
		if _, err := pool.Exec(ctx, `TRUNCATE feature_users, feature_items, feature_neighbours, feature_applied, feature_meta`); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
