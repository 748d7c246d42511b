package featurestore_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"

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
	for _, batch := range []int{5, 5000, 20000} {
		// batch=5 is the low-volume path (about what a consumer lane applies at 1,000
		// events/s): the cost per transaction, on the first 10,000 events.
		evs, pairs := evs, pairs
		if batch < 100 {
			evs, pairs = evs[:10_000], 0
		}
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			benchApply(b, applyBench{pool: pool, cpu: cpu, st: st, evs: evs, batch: batch, pairs: pairs, phases: phases})
		})
	}
}

// BenchmarkApplyFullUsers is BenchmarkApply for the steady state of a long-running feed: 2,000
// users whose documents are full before the run (HistorySize history entries, WatchedCap
// watched items, ImpressionMemory impression counts: ~30 kB of JSON per user) receive 20,000
// events. Rewriting those documents is then most of PostgreSQL's work, which BenchmarkApply's
// fresh users (5 events each, documents of a few hundred bytes) do not show. mix=stream is
// fstest's stream (70 % watches); mix=feed is a feed with the autolog on (90 % impressions,
// one per served list), applied with the impression counters' overlay as the consumer does.
//
//	go test ./pkg/featurestore -run '^$' -bench ApplyFullUsers -benchtime 1x -count 3
func BenchmarkApplyFullUsers(b *testing.B) {
	dsn := testutil.MigratedDatabase(b)
	pool, cpu := newCPUMeter(b, dsn)
	cfg := features.DefaultConfig()
	const users, n, batch = 2000, 20_000, 5000
	start := time.Now().UnixMilli()
	rows := fullUsers(b, cfg, users, "fuser%03d", start-int64(cfg.WatchedCap+cfg.ImpressionMemory+1)*1000)
	phases := map[string]time.Duration{}
	for _, mix := range []struct {
		name    string
		share   float64
		overlay bool
	}{{"stream", 0, false}, {"feed", 0.9, true}} {
		evs := toEvents(fstest.Generate(fstest.GenConfig{Seed: 5, Users: users, Items: 5000, Events: n,
			StartMs: start, StepMs: 10, Prefix: "f", ImpressionShare: mix.share}))
		for _, withRedis := range []bool{false, true} {
			b.Run(fmt.Sprintf("mix=%s/batch=%d/redis=%v", mix.name, batch, withRedis), func(b *testing.B) {
				var rd rueidis.Client
				if withRedis {
					rd = redisClient(b, testutil.StartPrivate(b, "redis").URL)
				}
				st := featurestore.New(pool, rd, "", cfg, nil)
				st.SetImpressionsOverlay(mix.overlay)
				st.SetHooks(featurestore.Hooks{Phase: func(p string, d time.Duration) { phases[p] += d }})
				prefill := func(b *testing.B) {
					ctx := context.Background()
					if _, err := pool.CopyFrom(ctx, pgx.Identifier{"feature_users"},
						[]string{"user_id", "history", "watched", "impressions", "version"}, pgx.CopyFromRows(rows)); err != nil {
						b.Fatal(err)
					}
					if rd == nil {
						return
					}
					// A live Redis copy of the full users: a first batch creates the decay meta, its
					// write finds no copy, and the repopulation copies every user.
					if _, err := st.Apply(ctx, &featurestore.Batch{Events: evs[:1]}); err != nil {
						b.Fatal(err)
					}
					if err := rd.Do(ctx, rd.B().Flushall().Build()).Error(); err != nil {
						b.Fatal(err)
					}
					if err := st.Repopulate(ctx, true); err != nil {
						b.Fatal(err)
					}
				}
				benchApply(b, applyBench{pool: pool, cpu: cpu, st: st, evs: evs[1:], batch: batch, phases: phases, prepare: prefill, rd: rd})
			})
		}
	}
}

// fullUsers builds users whose documents are full: each watched WatchedCap items and was
// shown ImpressionMemory others, one event per second before startMs, through features.ApplyInto.
// The rows are feature_users' (user_id, history, watched, impressions, version), the documents
// as the store writes them (its codec writes encoding/json's bytes).
func fullUsers(b *testing.B, cfg features.Config, users int, idFormat string, startMs int64) [][]any {
	rows := make([][]any, users)
	var d features.Delta
	pct := 80.0
	for u := range users {
		id := fmt.Sprintf(idFormat, u)
		var st features.UserState
		ts := startMs
		for w := range cfg.WatchedCap {
			ts += 1000
			st = features.ApplyInto(cfg, st, features.Interaction{Kind: features.KindWatch, UserID: id, TsMs: ts,
				ItemID: fmt.Sprintf("old-%d-%d", u%97, w), PercentWatched: &pct}, &d)
		}
		for i := range cfg.ImpressionMemory {
			ts += 1000
			st = features.ApplyInto(cfg, st, features.Interaction{Kind: features.KindImpression, UserID: id, TsMs: ts,
				Items: []string{fmt.Sprintf("shown-%d-%d", u%89, i)}}, &d)
		}
		h, err1 := json.Marshal(st.History)
		w, err2 := json.Marshal(st.Watched)
		im, err3 := json.Marshal(st.ImpressionCounts)
		if err := errors.Join(err1, err2, err3); err != nil {
			b.Fatal(err)
		}
		rows[u] = []any{id, string(h), string(w), string(im), int64(1)}
	}
	return rows
}

// applyBench is one run of benchApply: the events applied in batches of batch, and what
// else it measures and does.
type applyBench struct {
	pool    *pgxpool.Pool
	cpu     *cpuMeter
	st      *featurestore.Store
	evs     []featurestore.Event
	batch   int
	pairs   int // co-visitation increments of evs (reported when known)
	phases  map[string]time.Duration
	prepare func(*testing.B) // before each run, untimed
	rd      rueidis.Client   // the store's Redis: each batch is also written there
}

func benchApply(b *testing.B, r applyBench) {
	ctx := context.Background()
	n := len(r.evs)
	txs := (n + r.batch - 1) / r.batch
	for i := 0; i < b.N; i++ {
		if r.prepare != nil {
			b.StopTimer()
			r.prepare(b)
			b.StartTimer()
		}
		var rd0 time.Duration
		if r.rd != nil {
			rd0 = testutil.RedisCPU(b, r.rd)
		}
		var redisWall time.Duration
		t0 := time.Now()
		go0, pg0 := r.cpu.read()
		for j := 0; j < n; j += r.batch {
			a, err := r.st.Apply(ctx, &featurestore.Batch{Events: r.evs[j:min(j+r.batch, n)]})
			if err != nil {
				b.Fatal(err)
			}
			if r.rd != nil {
				t1 := time.Now()
				if err := r.st.WriteRedis(ctx, a); err != nil {
					b.Fatal(err)
				}
				redisWall += time.Since(t1)
			}
		}
		b.ReportMetric(float64(n)/time.Since(t0).Seconds(), "events/s")
		// CPU per event of both sides: the rate a quiet 2-core machine could reach is about
		// 2 cores / max(pg, go) when the two overlap, 1 / (pg + go) when they alternate.
		go1, pg1 := r.cpu.read()
		b.ReportMetric(float64((go1-go0).Microseconds())/float64(n), "go_cpu_us/event")
		b.ReportMetric(float64((pg1-pg0).Microseconds())/float64(n), "pg_cpu_us/event")
		if r.rd != nil {
			b.ReportMetric(float64((testutil.RedisCPU(b, r.rd)-rd0).Microseconds())/float64(n), "redis_cpu_us/event")
			b.ReportMetric(redisWall.Seconds()*1000/float64(txs), "redis_ms/tx")
		}
		if r.pairs > 0 {
			b.ReportMetric(float64(r.pairs)/float64(n), "pair_incr/event")
		}
		for p, d := range r.phases {
			b.ReportMetric(d.Seconds()*1000/float64(txs), p+"_ms/tx")
		}
		clear(r.phases)
		b.StopTimer()
		if _, err := r.pool.Exec(ctx, `TRUNCATE feature_users, feature_items, feature_neighbours, feature_applied, feature_meta, feature_redis_pending`); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkInMemoryApplyFloor applies the streams of the consumer's apply benchmark
// (modules/consumer BenchmarkApplyFromPrefilledTopic: 20,000 users, 5,000 items; 100,000
// events leave them young, 400,000 fill their histories and lists) to a features.MemoryStore:
// the Go cost of the feature updates alone, with no decoding, PostgreSQL, Redis or Kafka. It
// is the floor of a consumer that keeps each partition's state in memory and checkpoints it
// (docs/performance-log.md, "What 100,000 applied events/s would take here"). One core:
//
//	go test ./pkg/featurestore -run '^$' -bench InMemoryApplyFloor -benchtime 1x -count 3
func BenchmarkInMemoryApplyFloor(b *testing.B) {
	for _, n := range []int{100_000, 400_000} {
		evs := fstest.Generate(fstest.GenConfig{Seed: 7, Users: 20000, Items: 5000, Events: n,
			StartMs: time.Now().UnixMilli(), StepMs: 10, Prefix: "b1", DisjointImpressions: true})
		in := make([]features.Interaction, len(evs))
		for i, ev := range evs {
			in[i] = featurestore.FromEvent(ev).Interaction
		}
		b.Run(fmt.Sprintf("events=%d", n), func(b *testing.B) {
			for b.Loop() {
				m := features.NewMemoryStore(features.DefaultConfig())
				t0 := time.Now()
				for _, ev := range in {
					m.Apply(ev)
				}
				b.ReportMetric(float64(time.Since(t0).Nanoseconds())/float64(len(in))/1000, "us/event")
			}
		})
	}
}
