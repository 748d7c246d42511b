package consumer_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"recsys/modules/consumer"
	"recsys/pkg/events"
	"recsys/pkg/features"
	"recsys/pkg/featurestore/fstest"
	"recsys/pkg/gctune"
	"recsys/pkg/testutil"
)

// BenchmarkApplyFromPrefilledTopic measures the apply rate of one consumer draining a
// pre-filled topic pair, from its start (group join included) to the last event durable in
// PostgreSQL, with one transaction at a time and with the default --consumer.max-in-flight.
// Report, don't assert:
//
//	go test ./modules/consumer -run '^$' -bench ApplyFromPrefilledTopic -benchtime 1x -count 3
func BenchmarkApplyFromPrefilledTopic(b *testing.B) {
	// The collector settings `recsys consume` applies at start (pkg/gctune).
	b.Logf("gc %v", gctune.DefaultConfig().Apply())
	for _, inFlight := range []int{1, consumer.NewConfig().MaxInFlight} {
		b.Run(fmt.Sprintf("in-flight=%d", inFlight), func(b *testing.B) { benchApplyFromPrefilledTopic(b, inFlight) })
	}
}

func benchApplyFromPrefilledTopic(b *testing.B, inFlight int) {
	// CONSUMER_BENCH_EVENTS: 100,000 events leave the 20,000 users and their items young
	// (5 events per user); 400,000 show a stream whose histories and co-visitation lists
	// have filled, about half the rate (docs/performance-log.md, session 23).
	n := testutil.EnvInt("CONSUMER_BENCH_EVENTS", 100_000)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		e := newEnv(b)
		// The production defaults, not the tests' lighter settings (testFeatures: a
		// co-visitation window of 5 instead of 20, histories of 20 instead of 50, 40 watched
		// items instead of 500), which sessions 1–45 measured this target with.
		e.fcfg = features.DefaultConfig()
		e.MaxBatch = consumer.NewConfig().MaxBatch
		e.MaxInFlight = inFlight
		evs := benchEvents(e, n)
		watches := 0
		for _, ev := range evs {
			if ev.Kind() != events.KindImpression {
				watches++
			}
		}
		e.produce(b, evs)
		b.StartTimer()
		t0, cpu0 := time.Now(), testutil.SelfCPU()
		acct := testutil.StartCPUAccount(b, testutil.CPUAccountOptions{PG: e.pool, Redis: e.rd,
			Matches: map[string][]string{"kafka": {"kafka.Kafka"}}})
		c := e.startConsumer(b)
		// The consumer counts an event once its transaction committed. Watching that counter
		// ends the clock at the last commit; polling count(*) of the dedup table every 50 ms
		// overshot by up to a poll and was ~6 % of PostgreSQL's CPU in the run.
		applied := []*metrics.Counter{
			c.set.GetOrCreateCounter(`reco_feature_consumer_processed_total{topic="` + e.TopicImp + `",status="processed"}`),
			c.set.GetOrCreateCounter(`reco_feature_consumer_processed_total{topic="` + e.TopicWatch + `",status="processed"}`),
		}
		// The first commit also ends the start-up (group join, first fetch, first plans): the
		// rate from it to the last commit is the steady apply rate.
		var firstAt time.Time
		var firstN uint64
		for deadline := time.Now().Add(10 * time.Minute); ; time.Sleep(time.Millisecond) {
			got := applied[0].Get() + applied[1].Get()
			if got > 0 && firstAt.IsZero() {
				firstAt, firstN = time.Now(), got
			}
			if got >= uint64(n) {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%d of %d events applied after 10 minutes", got, n)
			}
		}
		el, cpu := time.Since(t0), testutil.SelfCPU()-cpu0
		steady := time.Since(firstAt)
		b.StopTimer()
		// Where the machine's CPU goes per event: 100,000 events/s on 2 cores leaves 20 µs
		// for all of it (this process, PostgreSQL, Redis, the broker serving the fetches).
		acct.Report(b, n, "event")
		e.waitApplied(b, n, time.Minute) // and durable in PostgreSQL, exactly once
		b.ReportMetric(float64(n)/el.Seconds(), "events/s")
		b.ReportMetric(float64(uint64(n)-firstN)/steady.Seconds(), "steady_events/s")
		b.ReportMetric(float64(firstAt.Sub(t0).Milliseconds()), "first_commit_ms")
		// The consumer's Go CPU (fetch, decode, apply; the test's own polling is small): less
		// sensitive than wall time to the other load on the shared machine.
		b.ReportMetric(float64(cpu.Microseconds())/float64(n), "go_cpu_us/event")
		b.ReportMetric(float64(watches)/float64(n), "watch_share")
		b.ReportMetric(counter(c.set, "recsys_consumer_apply_seconds_sum")/counter(c.set, "recsys_consumer_apply_seconds_count")*1000, "ms/tx")
		b.ReportMetric(counter(c.set, "recsys_consumer_batch_size_sum")/counter(c.set, "recsys_consumer_batch_size_count"), "events/tx")
		// Lists and users whose Redis copy a write found behind and sent whole (the lanes'
		// writes crossing): each costs a read from PostgreSQL and a full rewrite.
		b.ReportMetric(counter(c.set, "recsys_consumer_redis_resent_total", `kind="neighbours"`), "resent_lists")
		b.ReportMetric(counter(c.set, "recsys_consumer_redis_resent_total", `kind="user"`), "resent_users")
		// Where a transaction's wall time goes (featurestore.Hooks.Phase): with several in
		// flight, "write" (the list locks) includes the wait for another lane's commit.
		for _, ph := range []string{"lock", "compute", "write", "merge", "items"} {
			sel := `phase="` + ph + `"`
			b.ReportMetric(counter(c.set, "recsys_consumer_apply_phase_seconds_sum", sel)/counter(c.set, "recsys_consumer_apply_phase_seconds_count", sel)*1000, ph+"_ms/tx")
		}
		c.stop()
	}
}

func benchEvents(e *env, n int) []events.Any {
	return fstest.Generate(fstest.GenConfig{Seed: uint64(time.Now().UnixNano()), Users: 20000, Items: 5000, Events: n,
		StartMs: e.start, StepMs: 10, Prefix: fmt.Sprintf("b%d", time.Now().UnixNano()%1000), DisjointImpressions: true})
}
