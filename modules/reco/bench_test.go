package reco

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"

	"recsys/pkg/features"
	"recsys/pkg/featurestore"
	"recsys/pkg/gctune"
	"recsys/pkg/ranking"
	rds "recsys/pkg/redis"
	"recsys/pkg/testutil"
)

// Load benchmarks of GET /reco over real HTTP on loopback, 64 keep-alive clients, against the
// real PostgreSQL and Redis (the targets: k=20 autolog off >= 10,000 req/s with
// p99 <= 10 ms; autolog on with the full pipeline >= 5,000 req/s with p99 <= 20 ms).
// Each autolog setting runs twice: closed loop (clients=64: the maximum throughput) and open
// loop at the target rate (rate=N: latency from each request's scheduled send time, the
// honest "p99 at N req/s"; RECO_BENCH_RATE sets N, 0 skips it). With 64 closed-loop clients
// p99 is set by the queue the clients themselves build (Little's law), not by the server.
//
//	eval "$(bash scripts/services.sh env)"
//	go test -run XXX -bench BenchmarkRecoHTTP -benchtime 40000x ./modules/reco/
//
// RECO_BENCH_ACCESS_LOG=1 gives the in-process server the production access log (JSON at
// info, one line per request, into a drained pipe); without it the log is discarded.
//
// RECO_BENCH_DUMP=file writes each request's due time and latency there.
//
// RECO_BENCH_USER_CACHE_TTL and RECO_BENCH_ITEM_CACHE_TTL set the in-process module's
// --reco.user-cache-ttl and --reco.item-cache-ttl (a minute: no item entry turns stale
// during a run, which isolates the cost of refreshing them).
//
// RECO_BENCH_FULL=1 runs the built binary `recsys all` instead of the in-process module: the
// whole pipeline, where every auto-logged impression goes through the outbox, the relay,
// Kafka and the consumer (which updates the features the requests read) during the run;
// RECO_BENCH_RECSYS_ENV="NAME=value ..." adds settings of that binary. RECO_BENCH_SPLIT=1
// runs the roles as the k8s base deploys them, each in its own process (`recsys serve
// --roles api`, `recsys relay`, `recsys consume`), and RECO_BENCH_BACKGROUND_NICE=N runs the
// relay and the consumer at that nice level, as a node that favours serving would.
//
// RECO_BENCH_SEED_IMPRESSIONS=N also seeds each user with N served lists of 20 items before
// the run. A user shown 15 lists or more has the 300 impression counters of a feed's steady
// state (features.Config.ImpressionMemory, ~15 kB), which every list then reads, merges and
// writes; without it users start with none and the run measures young documents.

const (
	benchUsers       = 5000
	benchItems       = 2000
	benchWatchesUser = 12
	benchClients     = 64
)

// benchSeed applies a synthetic world: 5000 users with 12 watches each over 2000 items with
// a popularity skew, so every user has history, neighbours and a realistic candidate set.
func benchSeed(s *stack, redisURL string) error {
	ctx := context.Background()
	// Repopulating the whole copy runs longer than a serving timeout: its own client.
	rcfg := rds.DefaultConfig()
	rcfg.URL, rcfg.Timeout, rcfg.KeyPrefix = redisURL, time.Minute, s.prefix
	rd, err := rds.Open(rcfg)
	if err != nil {
		return err
	}
	defer rd.Close()
	store := featurestore.New(s.pg, rd, s.prefix, features.DefaultConfig(), testLogger())
	var batch []featurestore.Event
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		_, err := store.Apply(ctx, &featurestore.Batch{Events: batch})
		batch = batch[:0]
		return err
	}
	now := time.Now().UnixMilli()
	add := func(in features.Interaction, lastOfUser bool) error {
		batch = append(batch, featurestore.Event{Interaction: in})
		if lastOfUser && len(batch) >= 2000 {
			return flush()
		}
		return nil
	}
	if err := benchWatches(now, s.prefix, add); err != nil {
		return err
	}
	if err := flush(); err != nil {
		return err
	}
	lists := 0
	if v := os.Getenv("RECO_BENCH_SEED_IMPRESSIONS"); v != "" {
		if lists, err = strconv.Atoi(v); err != nil || lists < 0 {
			return fmt.Errorf("RECO_BENCH_SEED_IMPRESSIONS must be a number of lists per user, got %q", v)
		}
	}
	if err := benchImpressions(now, s.prefix, lists, add); err != nil {
		return err
	}
	if err := flush(); err != nil {
		return err
	}
	return store.Repopulate(ctx, false)
}

// benchWatches generates the benchmark world's watches, user by user: for each of benchUsers
// users, benchWatchesUser watches over the last 6 hours along a walk of mostly nearby items
// (co-visitation structure) with sometimes a popular jump. Event ids carry idPrefix.
func benchWatches(now int64, idPrefix string, emit func(in features.Interaction, lastOfUser bool) error) error {
	rng := rand.New(rand.NewPCG(7, 11))
	n := 0
	for u := 1; u <= benchUsers; u++ {
		ts := now - 6*3600_000 + int64(rng.IntN(3600_000))
		item := rng.IntN(benchItems)
		for w := 0; w < benchWatchesUser; w++ {
			if rng.IntN(4) == 0 {
				item = int(float64(benchItems) * rng.Float64() * rng.Float64())
			} else {
				item = (item + rng.IntN(20) + 1) % benchItems
			}
			ts += int64(rng.IntN(600_000))
			pct := float64(rng.IntN(101))
			n++
			in := features.Interaction{Kind: features.KindWatch, EventID: fmt.Sprintf("%sb%07d", idPrefix, n),
				UserID: fmt.Sprintf("load-user-%d", u), TsMs: ts, ItemID: fmt.Sprintf("item-%04d", item), PercentWatched: &pct}
			if err := emit(in, w == benchWatchesUser-1); err != nil {
				return err
			}
		}
	}
	return nil
}

// benchImpressions generates lists served lists of 20 items per user, over the hour before
// now, drawn like the watches (nearby items, sometimes a popular one).
func benchImpressions(now int64, idPrefix string, lists int, emit func(in features.Interaction, lastOfUser bool) error) error {
	rng := rand.New(rand.NewPCG(13, 17))
	n := 0
	for u := 1; u <= benchUsers && lists > 0; u++ {
		item := rng.IntN(benchItems)
		for l := 0; l < lists; l++ {
			in := features.Interaction{Kind: features.KindImpression, UserID: fmt.Sprintf("load-user-%d", u),
				TsMs: now - 3600_000 + int64(l)*3600_000/int64(lists) + int64(rng.IntN(60_000))}
			for range 20 {
				if rng.IntN(4) == 0 {
					item = int(float64(benchItems) * rng.Float64() * rng.Float64())
				} else {
					item = (item + rng.IntN(20) + 1) % benchItems
				}
				in.Items = append(in.Items, fmt.Sprintf("item-%04d", item))
			}
			n++
			in.EventID = fmt.Sprintf("%si%07d", idPrefix, n)
			if err := emit(in, l == lists-1); err != nil {
				return err
			}
		}
	}
	return nil
}

func BenchmarkRecoHTTP(b *testing.B) {
	// The collector settings `recsys` applies at start (pkg/gctune), so the in-process server
	// is measured as it runs in production.
	b.Logf("gc %v", gctune.DefaultConfig().Apply())
	var base string
	var mod *Reco
	var rd rueidis.Client
	var pool *pgxpool.Pool
	var recsysPIDs map[string]int // full mode: the recsys processes by CPU metric name
	if os.Getenv("RECO_BENCH_FULL") != "" {
		base, pool, rd, recsysPIDs = fullStack(b)
	} else {
		// Built once for the sub-benchmarks (the parent function runs once; its cleanups run
		// after every sub-benchmark).
		// A private Redis: the shared one also serves other packages' tests, whose long write
		// scripts block a single-threaded server for milliseconds at a time.
		redisURL := testutil.StartPrivate(b, "redis").URL
		s := newStack(b, testutil.MigratedDatabase(b), redisURL, func(c *Config) {
			c.ProbeInterval, c.GlobalRefresh = time.Second, time.Second
			for name, into := range map[string]*time.Duration{
				"RECO_BENCH_USER_CACHE_TTL": &c.UserCacheTTL, "RECO_BENCH_ITEM_CACHE_TTL": &c.ItemCacheTTL} {
				if v := os.Getenv(name); v != "" {
					d, err := time.ParseDuration(v)
					if err != nil {
						b.Fatalf("%s: %v", name, err)
					}
					*into = d
				}
			}
		})
		start := time.Now()
		if err := benchSeed(s, redisURL); err != nil {
			b.Fatal(err)
		}
		b.Logf("seeded %d users x %d watches in %s", benchUsers, benchWatchesUser, time.Since(start).Round(time.Millisecond))
		s.waitServing()
		base, mod, rd, pool = s.srv.URL, s.mod, s.rd, s.pg
	}
	clients := benchClients
	if v, err := strconv.Atoi(os.Getenv("RECO_BENCH_CLIENTS")); err == nil && v > 0 {
		// Fewer clients than cores' worth of work measure latency without queueing (the p50
		// cost of autolog); 64 measure throughput.
		clients = v
	}
	k := 20
	if v, err := strconv.Atoi(os.Getenv("RECO_BENCH_K")); err == nil && v >= kMin && v <= kMax {
		// k=1 against k=20 with autolog isolates what the 19 extra impression rows cost the
		// database (pg_cpu_us/req).
		k = v
	}
	// The p50 of each load mode without autolog, to report what autolog adds to it in the same
	// mode (the issue: autolog adds at most 1 ms to the p50). At a rate the machine holds with
	// room to spare (RECO_BENCH_RATE=1000) that is the handler's own cost plus the pipeline's
	// work competing for the cores, not a queue.
	offP50 := map[string]float64{}
	for _, autolog := range []bool{false, true} {
		for _, rate := range benchRates(b, autolog) {
			mode := fmt.Sprintf("k=%d/clients=%d", k, clients)
			if rate > 0 {
				mode = fmt.Sprintf("k=%d/rate=%d", k, rate)
			}
			name := fmt.Sprintf("%s/autolog=%v", mode, autolog)
			b.Run(name, func(b *testing.B) {
				var before map[string]uint64
				if mod != nil {
					before = servedBy(mod)
				}
				// CPU per request by process. In full mode it counts from a drained pipeline
				// before the first timed request to a drained pipeline after the last answer,
				// so every list's relay and consumer work is in, however far they lagged.
				opts := testutil.CPUAccountOptions{PG: pool, Redis: rd}
				if recsysPIDs != nil {
					opts.PIDs = recsysPIDs
					opts.Matches = map[string][]string{"kafka": {"kafka.Kafka"}}
				}
				var cpu *testutil.CPUAccount
				p50 := runLoad(b, base, k, autolog, clients, rate, func() {
					if recsysPIDs != nil {
						waitPipelineDrained(b, pool)
					}
					cpu = testutil.StartCPUAccount(b, opts)
				})
				if recsysPIDs != nil {
					// How far the pipeline lagged behind the answers: work the served
					// rate did not pay for while it was measured.
					t0 := time.Now()
					waitPipelineDrained(b, pool)
					b.Logf("pipeline drained %.1f s after the last answer", time.Since(t0).Seconds())
				}
				cpu.Report(b, b.N, "req")
				if off, ok := offP50[mode]; autolog && ok {
					b.ReportMetric(p50-off, "added_p50_ms")
				} else if !autolog {
					offP50[mode] = p50
				}
				if mod != nil {
					after, total := servedBy(mod), uint64(0)
					for k := range after {
						total += after[k] - before[k]
					}
					if total > 0 {
						b.ReportMetric(100*float64(after[sourceRedis]-before[sourceRedis])/float64(total), "redis_%")
					}
					b.Logf("served %v, redis errors %d, breaker openings %d, pg shed %d", after, mod.m.sourceErrors["redis"].Get(),
						mod.m.breakerOpened["redis"].Get(), mod.m.pgShed.Get())
				}
			})
		}
	}
}

// benchRates are the load modes of one autolog setting: 0 is the closed loop (every client
// sends its next request when the previous answer arrives: the maximum throughput), a
// positive rate an open loop at that many requests per second. RECO_BENCH_RATE overrides the
// open-loop rate of both settings ("0": closed loop only); by default the open loop runs at
// the throughput target, 10,000 req/s without autolog and 5,000 with.
func benchRates(b *testing.B, autolog bool) []int {
	rate := 10000
	if autolog {
		rate = 5000
	}
	if v := os.Getenv("RECO_BENCH_RATE"); v != "" {
		r, err := strconv.Atoi(v)
		if err != nil || r < 0 {
			b.Fatalf("RECO_BENCH_RATE must be a non-negative integer (requests per second, 0: closed loop only), got %q", v)
		}
		rate = r
	}
	if rate == 0 {
		return []int{0}
	}
	return []int{0, rate}
}

// waitPipelineDrained waits until every impression logged so far is published and applied:
// no outbox row left to publish, and none of the impression events missing from the
// consumer's dedup record. The cheap outbox count goes first; the anti-join runs only once
// the outbox is empty. Both run on the benchmark's pool, whose backend the PostgreSQL share
// counts: polling every 200 ms keeps that small.
func waitPipelineDrained(b *testing.B, pool *pgxpool.Pool) {
	ctx := context.Background()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		var left int64
		err := pool.QueryRow(ctx, `SELECT count(*) FROM event_outbox WHERE status IN ('pending', 'publishing')`).Scan(&left)
		if err == nil && left == 0 {
			err = pool.QueryRow(ctx, `SELECT count(*) FROM impression_events e
WHERE NOT EXISTS (SELECT 1 FROM feature_applied a WHERE a.event_id = e.event_id AND a.user_id = e.user_id)`).Scan(&left)
		}
		if err != nil {
			b.Fatalf("wait for the pipeline to drain: %v", err)
		}
		if left == 0 {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("pipeline not drained after 3 minutes: %d events left", left)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// fullStack seeds a private Redis and a fresh database and starts `recsys all` on them with
// its own Kafka topics and consumer group (or the roles in three processes, RECO_BENCH_SPLIT).
// pids name the processes for the CPU accounting: recsys (the one serving /reco), and in
// split mode relay and consumer.
func fullStack(b *testing.B) (base string, pool *pgxpool.Pool, rd rueidis.Client, pids map[string]int) {
	redisURL := testutil.StartPrivate(b, "redis").URL
	dsn := testutil.MigratedDatabase(b)
	prefix := testutil.Unique("recobench") + ":"
	pool = testutil.Pool(b, dsn)
	s := &stack{t: b, pg: pool, prefix: prefix}
	start := time.Now()
	if err := benchSeed(s, redisURL); err != nil {
		b.Fatal(err)
	}
	b.Logf("seeded in %s", time.Since(start).Round(time.Millisecond))
	rd = testutil.RedisClient(b, redisURL)
	id := testutil.Unique("recobench")
	env := []string{"DATABASE_URL=" + dsn, "ONLINE_CACHE_REDIS_URL=" + redisURL, "RECSYS_REDIS_KEY_PREFIX=" + prefix,
		"KAFKA_BOOTSTRAP_SERVERS=" + testutil.KafkaBrokers(b)[0], "KAFKA_TOPIC_IMPRESSIONS=" + testutil.KafkaTopic(b, id+".impressions."),
		"KAFKA_TOPIC_WATCHES=" + testutil.KafkaTopic(b, id+".watches."), "FEATURE_CONSUMER_GROUP_ID=" + id, "LOG_LEVEL=warn", "RECSYS_HTTP_PPROF=true"}
	// RECO_BENCH_RECSYS_ENV adds settings of the binary (space-separated NAME=value), to compare
	// them on the same pipeline.
	env = append(env, strings.Fields(os.Getenv("RECO_BENCH_RECSYS_ENV"))...)
	if os.Getenv("RECO_BENCH_SPLIT") == "" {
		p := startRecsys(b, []string{"all"}, env...)
		b.Logf("recsys all at %s; profile it while the benchmark runs: go tool pprof %s/debug/pprof/profile?seconds=10", p.base, p.base)
		return p.base, pool, rd, map[string]int{"recsys": p.cmd.Process.Pid}
	}
	nice := 0
	if v := os.Getenv("RECO_BENCH_BACKGROUND_NICE"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 19 {
			b.Fatalf("RECO_BENCH_BACKGROUND_NICE must be a nice level from 0 to 19, got %q", v)
		}
		nice = n
	}
	relay := startRecsysNice(b, nice, []string{"relay"}, env...)
	consumer := startRecsysNice(b, nice, []string{"consume"}, env...)
	api := startRecsys(b, []string{"serve", "--roles", "api"}, env...)
	b.Logf("recsys roles in three processes (relay and consumer at nice %d); the api at %s", nice, api.base)
	return api.base, pool, rd, map[string]int{"recsys": api.cmd.Process.Pid, "relay": relay.cmd.Process.Pid, "consumer": consumer.cmd.Process.Pid}
}

func servedBy(r *Reco) map[string]uint64 {
	out := map[string]uint64{}
	for k, c := range r.m.served {
		out[k] = c.Get()
	}
	return out
}

// statusError is a request answered with a status other than 200.
type statusError int

func (e statusError) Error() string { return fmt.Sprintf("status %d", int(e)) }

// runLoad sends b.N GET /reco?k=k over benchClients keep-alive connections and reports
// throughput, latency percentiles and CPU per request.
//
// rate 0 is a closed loop: each client sends back to back, latency is the round trip. A
// positive rate is an open loop: request n is due at start + n/rate whatever the server's
// pace, and its latency is measured from that due time, so time spent waiting for a free
// connection behind a slow answer counts (no coordinated omission: a closed loop hides a
// stall by sending less during it). The clients only bound the requests in flight; when all
// are busy the backlog shows as latency and as a lower achieved rate. It returns the p50.
func runLoad(b *testing.B, base string, k int, autolog bool, benchClients, rate int, begin func()) (p50ms float64) {
	conns := make([]*testutil.RawClient, benchClients)
	for i := range conns {
		c, err := testutil.NewRawClient(base)
		if err != nil {
			b.Fatal(err)
		}
		conns[i] = c
		defer c.Close()
	}
	do := func(c int, rng *rand.Rand) error {
		target := "/reco?user_id=load-user-" + strconv.Itoa(rng.IntN(benchUsers)+1) + "&session_id=session-" +
			strconv.Itoa(rng.IntN(500000)+1) + "&k=" + strconv.Itoa(k) + "&x_autolog_impressions=" + strconv.FormatBool(autolog)
		status, err := conns[c].Do("GET", target, nil, 5*time.Second)
		if err != nil {
			return err
		}
		if status != 200 {
			return statusError(status)
		}
		return nil
	}
	// Warm-up: connections, Lua script cache, pools. At most ~3,200 requests in all: 50 per
	// connection over 1,000 connections would auto-log 50,000 lists first, a different
	// database and pipeline state from the other runs' (and minutes of draining).
	warm := min(50, max(2, 3200/benchClients))
	var wg sync.WaitGroup
	for c := 0; c < benchClients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), 99))
			for i := 0; i < warm; i++ {
				_ = do(c, rng)
			}
		}(c)
	}
	wg.Wait()

	lat := make([][]time.Duration, benchClients)
	refused := make([][]time.Duration, benchClients) // 503 answers (the admission limit)
	dueAt := make([][]time.Duration, benchClients)   // for RECO_BENCH_DUMP: due time from start
	var interval time.Duration
	if rate > 0 {
		interval = time.Second / time.Duration(rate)
	}
	begin()
	cpu0 := testutil.SelfCPU()
	var next, failed, maxLag atomic.Int64
	var firstErr atomic.Value
	b.ResetTimer()
	start := time.Now()
	for c := 0; c < benchClients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), uint64(time.Now().UnixNano())))
			for {
				n := next.Add(1) - 1
				if n >= int64(b.N) {
					return
				}
				due := time.Now()
				if interval > 0 {
					due = start.Add(time.Duration(n) * interval)
					if d := time.Until(due); d > 0 {
						time.Sleep(d)
					} else {
						for lag, cur := int64(-d), maxLag.Load(); lag > cur && !maxLag.CompareAndSwap(cur, lag); cur = maxLag.Load() {
						}
					}
				}
				if err := do(c, rng); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					if err == statusError(http.StatusServiceUnavailable) {
						refused[c] = append(refused[c], time.Since(due))
					}
					continue
				}
				lat[c] = append(lat[c], time.Since(due))
				dueAt[c] = append(dueAt[c], due.Sub(start))
			}
		}(c)
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := testutil.SelfCPU() - cpu0
	b.StopTimer()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	if path := os.Getenv("RECO_BENCH_DUMP"); path != "" {
		// One line per request: due time after the start and latency, in ms, to see when the
		// slow ones happened.
		var buf []byte
		for c := range lat {
			for i, l := range lat[c] {
				buf = fmt.Appendf(buf, "%.3f %.3f\n", float64(dueAt[c][i].Microseconds())/1000, float64(l.Microseconds())/1000)
			}
		}
		if err := os.WriteFile(path, buf, 0o644); err != nil {
			b.Fatalf("RECO_BENCH_DUMP: %v", err)
		}
	}
	slices.Sort(all)
	if len(all) == 0 {
		b.Fatalf("no successful request: %v", firstErr.Load())
	}
	q := func(p float64) float64 { return float64(all[int(float64(len(all)-1)*p)].Microseconds()) / 1000 }
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "req/s")
	b.ReportMetric(q(0.50), "p50_ms")
	b.ReportMetric(q(0.99), "p99_ms")
	b.ReportMetric(float64(failed.Load()), "failed")
	if r := slices.Concat(refused...); len(r) > 0 {
		// How soon a refused client heard so (from its due time, like the latencies).
		slices.Sort(r)
		b.ReportMetric(float64(r[(len(r)-1)/2].Microseconds())/1000, "refused_p50_ms")
		b.ReportMetric(float64(r[(len(r)-1)*99/100].Microseconds())/1000, "refused_p99_ms")
	}
	// CPU of this process (server, load generator, and in-process mode the autolog writer) per
	// request: with the wall-clock figures on a shared machine, what the code costs.
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu_us/req")
	if interval > 0 {
		// Above a few ms the clients could not keep the schedule (all busy): that delay is
		// already in the latencies, and the achieved req/s is below the rate.
		b.Logf("open loop at %d req/s: max send lag %.1f ms", rate, float64(maxLag.Load())/1e6)
	}
	if f := failed.Load(); f > 0 {
		b.Logf("%d failed requests, first: %v", f, firstErr.Load())
	}
	return q(0.50)
}

// BenchmarkLoaderSnapshot measures one RedisLoader.Snapshot round trip for the options /reco
// uses, sequentially (the Redis cost per request).
func BenchmarkLoaderSnapshot(b *testing.B) {
	redisURL := testutil.RedisURL(b)
	s := newStack(b, testutil.MigratedDatabase(b), redisURL, nil)
	if err := benchSeed(s, redisURL); err != nil {
		b.Fatal(err)
	}
	ld := featurestore.NewRedisLoader(s.rd, s.prefix, features.DefaultConfig())
	cfg := NewConfig()
	for _, c := range []struct {
		name string
		opts func() rankingOpts
	}{
		{"full", func() rankingOpts { return cfg.snapshotOptions(true) }},
		{"personal", func() rankingOpts { return cfg.snapshotOptions(false) }},
		{"user-only", func() rankingOpts { o := cfg.snapshotOptions(false); o.HistoryItems = 0; return o }},
	} {
		b.Run(c.name, func(b *testing.B) {
			opts := c.opts()
			rng := rand.New(rand.NewPCG(1, 2))
			cands := 0
			for i := 0; i < b.N; i++ {
				snap, err := ld.Snapshot(context.Background(), fmt.Sprintf("load-user-%d", rng.IntN(benchUsers)+1), time.Now().UnixMilli(), opts)
				if err != nil {
					b.Fatal(err)
				}
				cands += len(snap.Items)
			}
			b.ReportMetric(float64(cands)/float64(b.N), "items/op")
		})
	}
}

type rankingOpts = ranking.SnapshotOptions
