package relay_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"recsys/modules/relay"
	"recsys/pkg/events"
	"recsys/pkg/gctune"
	"recsys/pkg/infra"
	"recsys/pkg/ingest"
	"recsys/pkg/outbox"
	"recsys/pkg/testutil"
)

// BenchmarkRelayThroughput drains a pre-filled outbox to the local broker and reports
// messages (events) per second (one drain per iteration, on a fresh database and topic).
// "batch" fills what the ingest writer writes under load: per group commit one batch row
// (payload_format 2) per lane, about 500 events of ~300 bytes per row over the default lanes
// (--ingest.outbox-lanes). "single"
// fills one row per event (payload_format 1, the rows written before migration 0008), for
// comparison.
//
//	go test -run '^$' -bench BenchmarkRelayThroughput -benchtime 1x -count 3 ./modules/relay/
//
// RELAY_BENCH_EVENTS (batch: 200000), RELAY_BENCH_ROWS (single: 100000), RELAY_BENCH_KEYS
// (users, 10000), RELAY_BENCH_LANES (the default lanes), RELAY_BENCH_ROW_EVENTS (events per batch row, 500),
// RELAY_BENCH_BATCH (rows per claim, the default), RELAY_BENCH_BATCH_EVENTS (events per claim,
// the default), RELAY_BENCH_WORKERS (the default), RELAY_BENCH_RELAYS (1) and
// RELAY_BENCH_PAYLOAD (300 bytes) vary it.
func BenchmarkRelayThroughput(b *testing.B) {
	// The collector settings `recsys relay` applies at start (pkg/gctune).
	b.Logf("gc %v", gctune.DefaultConfig().Apply())
	keys, payload := testutil.EnvInt("RELAY_BENCH_KEYS", 10_000), testutil.EnvInt("RELAY_BENCH_PAYLOAD", 300)
	b.Run("batch", func(b *testing.B) {
		events, lanes := testutil.EnvInt("RELAY_BENCH_EVENTS", 200_000), testutil.EnvInt("RELAY_BENCH_LANES", infra.DefaultConfig().OutboxLanes)
		perRow := testutil.EnvInt("RELAY_BENCH_ROW_EVENTS", 500)
		benchDrain(b, events, func(e *env) { e.insertBatches(events, keys, lanes, perRow*lanes, payload, 25) })
	})
	b.Run("single", func(b *testing.B) {
		rows := testutil.EnvInt("RELAY_BENCH_ROWS", 100_000)
		benchDrain(b, rows, func(e *env) { e.fill(rows, keys, payload) })
	})
}

// benchDrain measures relays draining events pre-filled by fill.
func benchDrain(b *testing.B, events int, fill func(*env)) {
	relays := testutil.EnvInt("RELAY_BENCH_RELAYS", 1)
	for b.Loop() {
		b.StopTimer()
		e := newBenchEnv(b, 6)
		fill(e)
		if err := e.deps("").Kafka.EnsureTopics(context.Background(), e.kcfg.TopicWatches, e.kcfg.TopicImpressions); err != nil {
			b.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		cfg := relay.NewConfig()
		cfg.BatchSize = testutil.EnvInt("RELAY_BENCH_BATCH", cfg.BatchSize)
		cfg.BatchEvents = testutil.EnvInt("RELAY_BENCH_BATCH_EVENTS", cfg.BatchEvents)
		cfg.Workers = testutil.EnvInt("RELAY_BENCH_WORKERS", cfg.Workers)
		var runs []*running
		cpu0, db0 := testutil.SelfCPU(), testutil.BackendCPU(b, e.pool)
		b.StartTimer()
		start := time.Now()
		for i := range relays {
			runs = append(runs, e.start(cfg, fmt.Sprint("bench-", i), relay.Options{}))
		}
		published := func() float64 {
			var n float64
			for _, r := range runs {
				n += metric(r.deps.Metrics, `reco_outbox_relay_published_total{topic="`+e.kcfg.TopicWatches+`"}`)
			}
			return n
		}
		for published() < float64(events) {
			time.Sleep(5 * time.Millisecond)
		}
		elapsed := time.Since(start)
		b.StopTimer()
		// CPU spent, much less sensitive to how busy the machine is than msg/s: the database
		// backends serving this benchmark's database, and this process (relay plus harness).
		relayCPU := testutil.SelfCPU() - cpu0
		dbCPU := testutil.BackendCPU(b, e.pool).Since(db0)
		for _, r := range runs {
			logTimings(e.t, r.r.Owner(), r.deps.Metrics)
			r.stop()
		}
		b.ReportMetric(float64(events)/elapsed.Seconds(), "msg/s")
		b.ReportMetric(dbCPU.Seconds()*1e6/float64(events), "db_cpu_us/msg")
		b.ReportMetric(relayCPU.Seconds()*1e6/float64(events), "relay_cpu_us/msg")
		b.StartTimer()
	}
}

// BenchmarkRelayCommitToAck writes watches at 1,000 events/s while a relay runs with its
// default settings, and reports the time from each commit returning to Kafka acking the event
// (same process, same clock).
//
//	go test -run '^$' -bench BenchmarkRelayCommitToAck -benchtime 1x -count 3 ./modules/relay/
//
// By default the events go through the API's own ingest writer (pkg/ingest, its defaults: group
// commits of what arrives within 1 ms, at most 2 transactions in flight), called by 16 client
// goroutines, one event per call as POST /log/watch does; write_p99_ms is the time from an
// event's turn to its Write returning. RELAY_BENCH_WRITER=raw instead inserts one
// single-event outbox row per autocommit transaction (INSERT + NOTIFY) on 16 connections at
// once: the commits of a fleet of API processes sharing one database, 16 backends contending
// for the claim's CPU. Until session 13 that was the only mode.
//
// The first RELAY_BENCH_WARMUP_SECONDS (1) of writes are published but left out of the
// percentiles: they open the writers' connections and the relay's (a backend fork and a
// catalog cache load each, and every statement's first plan), which a running API and relay
// did long before; in the runs of session 7 that start alone put ~150 events past 20 ms.
// with_warmup_p99_ms keeps them in.
//
// RELAY_BENCH_RATE (1000 events/s), RELAY_BENCH_SECONDS (10), RELAY_BENCH_WORKERS (the relay's
// default), RELAY_BENCH_LANES (the default lanes), RELAY_BENCH_PARTITIONS (6 per topic) and, for the raw
// writer, RELAY_BENCH_FORMAT (2; 1 writes payload_format 1 rows keyed by user, as before
// migration 0008) vary it; RELAY_BENCH_DUMP=file writes every event's latencies there.
func BenchmarkRelayCommitToAck(b *testing.B) {
	// The collector settings `recsys relay` applies at start (pkg/gctune).
	b.Logf("gc %v", gctune.DefaultConfig().Apply())
	rate, secs := testutil.EnvInt("RELAY_BENCH_RATE", 1000), testutil.EnvInt("RELAY_BENCH_SECONDS", 10)
	for b.Loop() {
		b.StopTimer()
		e := newBenchEnv(b, testutil.EnvInt("RELAY_BENCH_PARTITIONS", 6))
		// Long-lived topics, as in production: created, leaders settled, before the relay's
		// writer first fetches metadata.
		if err := e.deps("").Kafka.EnsureTopics(context.Background(), e.kcfg.TopicWatches, e.kcfg.TopicImpressions); err != nil {
			b.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		cfg := relay.NewConfig()
		cfg.Workers = testutil.EnvInt("RELAY_BENCH_WORKERS", cfg.Workers)
		cfg.Linger = time.Duration(testutil.EnvInt("RELAY_BENCH_LINGER_US", int(cfg.Linger.Microseconds()))) * time.Microsecond
		w := relay.NewPublisher(e.deps("").Kafka, cfg)
		rec := &ackRecorder{inner: w, acked: map[string]time.Time{}, sent: map[string]time.Time{}}
		run := e.start(cfg, "bench", relay.Options{Publisher: rec})
		waitFor(e.t, 60*time.Second, "relay ready", func() bool { return run.r.Ready(context.Background()) == nil })
		// CPU per event (warm-up included) of the database (the writers' inserts and the
		// relay's claims and acks), this process (writers and relay) and the broker: at this
		// rate most of it is per claim, not per event, which --relay.linger trades for latency.
		cpu := testutil.StartCPUAccount(b, testutil.CPUAccountOptions{PG: e.pool, PIDs: map[string]int{"process": os.Getpid()},
			Matches: map[string][]string{"kafka": {"kafka.Kafka"}}})
		b.StartTimer()

		warm := rate * testutil.EnvInt("RELAY_BENCH_WARMUP_SECONDS", 1)
		n := warm + rate*secs
		committed := make([]time.Time, n)
		ids := make([]string, n)
		prefix := testutil.Unique("lat")
		format, lanes := testutil.EnvInt("RELAY_BENCH_FORMAT", 2), testutil.EnvInt("RELAY_BENCH_LANES", infra.DefaultConfig().OutboxLanes)
		write, closeWriter := benchWriter(b, e, lanes, format)
		turn := make([]time.Time, n)
		jobs := make(chan int, n)
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() {
				for i := range jobs {
					ids[i] = prefix + "-" + strconv.Itoa(i)
					if err := write(i, ids[i]); err != nil {
						b.Error(err)
						return
					}
					committed[i] = time.Now()
				}
			})
		}
		tick := time.NewTicker(time.Second / time.Duration(rate))
		for i := range n {
			<-tick.C
			turn[i] = time.Now()
			jobs <- i
		}
		tick.Stop()
		close(jobs)
		wg.Wait()
		closeWriter()
		deadline := time.Now().Add(60 * time.Second)
		for rec.count() < n {
			if time.Now().After(deadline) {
				b.Fatalf("%d of %d events acked after 60 s; outbox %v", rec.count(), n, e.counts())
			}
			time.Sleep(10 * time.Millisecond)
		}
		b.StopTimer()
		cpu.Report(b, n, "event")
		// lat splits into toSend (commit to the relay handing the event to the writer: wake-up,
		// waiting for a free worker, claim) and toAck (the writer to Kafka's ack).
		lat, toSend, toAck := make([]float64, 0, n), make([]float64, 0, n), make([]float64, 0, n)
		toCommit := make([]float64, 0, n)
		withWarmup := make([]float64, 0, n)
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		rec.mu.Lock()
		for i, id := range ids {
			if at, ok := rec.acked[id]; ok {
				withWarmup = append(withWarmup, ms(at.Sub(committed[i])))
				if i < warm {
					continue
				}
				lat = append(lat, ms(at.Sub(committed[i])))
				toSend = append(toSend, ms(rec.sent[id].Sub(committed[i])))
				toAck = append(toAck, ms(at.Sub(rec.sent[id])))
				toCommit = append(toCommit, ms(committed[i].Sub(turn[i])))
			}
		}
		if path := os.Getenv("RELAY_BENCH_DUMP"); path != "" {
			// One line per acked event (commit time in Unix seconds, then total, send and ack
			// ms), to line the slow events up with other traces of the same run.
			var buf []byte
			for i, id := range ids {
				if at, ok := rec.acked[id]; ok {
					buf = fmt.Appendf(buf, "%.4f %.2f %.2f %.2f\n", float64(committed[i].UnixMicro())/1e6,
						ms(at.Sub(committed[i])), ms(rec.sent[id].Sub(committed[i])), ms(at.Sub(rec.sent[id])))
				}
			}
			if err := os.WriteFile(path, buf, 0o644); err != nil {
				b.Fatalf("RELAY_BENCH_DUMP: %v", err)
			}
		}
		rec.mu.Unlock()
		q := func(v []float64, p float64) float64 {
			slices.Sort(v)
			return v[int(p*float64(len(v)-1))]
		}
		b.ReportMetric(q(lat, 0.5), "p50_ms")
		b.ReportMetric(q(lat, 0.99), "p99_ms")
		b.ReportMetric(lat[len(lat)-1], "max_ms")
		b.ReportMetric(q(toSend, 0.99), "send_p99_ms")
		b.ReportMetric(q(toAck, 0.99), "ack_p99_ms")
		b.ReportMetric(q(toCommit, 0.99), "write_p99_ms")
		b.ReportMetric(q(withWarmup, 0.99), "with_warmup_p99_ms")
		logTimings(e.t, "bench", run.deps.Metrics)
		run.stop()
		b.StartTimer()
	}
}

// benchWriter returns what BenchmarkRelayCommitToAck's clients call to write event i (user
// u<i%5000>) and what to call once they are done: the API's ingest writer, or with
// RELAY_BENCH_WRITER=raw one autocommit INSERT + NOTIFY per event.
func benchWriter(b *testing.B, e *env, lanes, format int) (write func(i int, id string) error, done func()) {
	user := func(i int) string { return "u" + strconv.Itoa(i%5000) }
	switch mode := os.Getenv("RELAY_BENCH_WRITER"); mode {
	case "", "ingest":
		cfg := ingest.DefaultConfig()
		cfg.TopicWatches, cfg.TopicImpressions, cfg.OutboxLanes = e.kcfg.TopicWatches, e.kcfg.TopicImpressions, lanes
		w := ingest.New(e.pool, cfg)
		w.Start()
		return func(i int, id string) error {
			ev := &events.Watch{Common: events.Common{EventID: id, UserID: user(i), SessionID: "s", RequestID: "r",
				TsMs: time.Now().UnixMilli()}, EventType: "watch", ItemID: "i" + strconv.Itoa(i%500), WatchTimeSec: 12.5}
			_, err := w.Write(context.Background(), []events.Any{ev}, "")
			return err
		}, w.Close
	case "raw":
		return func(i int, id string) error {
			body := []byte(`{"event_id":"` + id + `","watch_time_sec":12.5}`)
			key, payload, eventID := user(i), body, id
			if format == int(outbox.FormatBatch) {
				key, eventID = outbox.LaneKey(outbox.Lane(user(i), lanes)), "batch:"+id
				payload = outbox.AppendFrame(nil, outbox.Message{EventID: id, EventType: "watch", Key: user(i),
					SchemaVersion: 1, Payload: body})
			}
			_, err := e.pool.Exec(context.Background(), `
WITH ins AS (
    INSERT INTO event_outbox (event_id, event_type, topic, msg_key, payload, max_attempts, payload_format, event_count)
    VALUES ($1, 'watch', $2, $3, $4, 25, $5, 1) RETURNING 1
)
SELECT pg_notify('recsys_outbox', '') FROM ins`, eventID, e.kcfg.TopicWatches, key, payload, int16(format))
			return err
		}, func() {}
	default:
		b.Fatalf("RELAY_BENCH_WRITER=%q: want ingest or raw", mode)
		return nil, nil
	}
}

// ackRecorder notes when each event was handed to the writer and when Kafka acked it.
type ackRecorder struct {
	inner relay.Publisher
	mu    sync.Mutex
	acked map[string]time.Time
	sent  map[string]time.Time
}

func (a *ackRecorder) WriteMessages(ctx context.Context, msgs ...kafkago.Message) error {
	sent := time.Now()
	err := a.inner.WriteMessages(ctx, msgs...)
	var werrs kafkago.WriteErrors
	if err != nil && !errors.As(err, &werrs) {
		return err
	}
	now := time.Now()
	a.mu.Lock()
	for i, m := range msgs {
		if werrs != nil && werrs[i] != nil {
			continue
		}
		if id := header(m, "event_id"); id != "" {
			if _, dup := a.acked[id]; !dup {
				a.acked[id], a.sent[id] = now, sent
			}
		}
	}
	a.mu.Unlock()
	return err
}

func (a *ackRecorder) Close() error { return a.inner.Close() }

func (a *ackRecorder) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.acked)
}
