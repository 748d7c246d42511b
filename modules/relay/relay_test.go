package relay_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	kafkago "github.com/segmentio/kafka-go"

	"recsys/modules/relay"
	"recsys/pkg/infra"
	"recsys/pkg/kafka"
	"recsys/pkg/outbox"
	"recsys/pkg/postgres"
	"recsys/pkg/testutil"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild())
	}
	os.Exit(m.Run())
}

func (e *env) insertRow(eventType, topic, key string, payload []byte, maxAttempts int) int64 {
	e.t.Helper()
	var id int64
	err := e.pool.QueryRow(context.Background(), `
INSERT INTO event_outbox (event_id, event_type, topic, msg_key, payload, max_attempts)
VALUES ($1, $2, $3, $4, $5, $6) RETURNING id`,
		testutil.Unique("ev-"), eventType, topic, key, payload, maxAttempts).Scan(&id)
	if err != nil {
		e.t.Fatal(err)
	}
	return id
}

func (e *env) row(id int64) (status string, attempts int, lastErr string) {
	e.t.Helper()
	var le *string
	if err := e.pool.QueryRow(context.Background(), `SELECT status, attempts, last_error FROM event_outbox WHERE id = $1`, id).
		Scan(&status, &attempts, &le); err != nil {
		e.t.Fatal(err)
	}
	if le != nil {
		lastErr = *le
	}
	return
}

func waitReady(t testing.TB, r *relay.Relay) {
	t.Helper()
	waitFor(t, 60*time.Second, "relay ready", func() bool { return r.Ready(context.Background()) == nil })
}

// startQuiet starts a relay that only notifications wake (the poll interval is a minute) and
// returns once its start-up claims have gone idle.
func (e *env) startQuiet(cfg *relay.Config, name string) *running {
	e.t.Helper()
	cfg.PollInterval = time.Minute
	run := e.start(cfg, name, relay.Options{})
	waitReady(e.t, run.r)
	time.Sleep(300 * time.Millisecond)
	return run
}

// notify announces a commit to the relays with payload, as the ingest writer does.
func (e *env) notify(payload string) {
	e.t.Helper()
	if _, err := e.pool.Exec(context.Background(), "SELECT pg_notify('recsys_outbox', $1)", payload); err != nil {
		e.t.Fatal(err)
	}
}

// A commit wakes the relay through LISTEN/NOTIFY (the poll interval is a minute here, so only
// the notification can explain a prompt publish), and every message carries the key and the
// headers of the contract.
func TestRelayPublishesOnNotifyWithKeyAndHeaders(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.KafkaBrokers(t), 3)
	run := e.startQuiet(testConfig(), "r1")
	ids := e.insert(50, 7, 5)
	e.waitPublished(50, 20*time.Second)

	got := readTopic(t, e.brokers, e.kcfg.TopicWatches)
	if d, dups := got.distinct(); d != 50 || dups != 0 {
		t.Fatalf("consumed %d distinct event ids and %d duplicates, want 50 and 0", d, dups)
	}
	want := map[string]int{}
	for i, id := range ids {
		want[id] = i
	}
	for _, m := range got.all() {
		id := header(m, "event_id")
		i, ok := want[id]
		if !ok {
			t.Fatalf("unexpected event_id %q", id)
		}
		if key := fmt.Sprint("u", i%7); string(m.Key) != key {
			t.Errorf("%s: key %q, want the user id %q", id, m.Key, key)
		}
		if !strings.Contains(string(m.Value), id) {
			t.Errorf("%s: value %s is not the payload", id, m.Value)
		}
		for h, v := range map[string]string{"event_type": "watch", "schema_version": "1", "correlation_id": "corr-" + id} {
			if header(m, h) != v {
				t.Errorf("%s: header %s = %q, want %q", id, h, header(m, h), v)
			}
		}
		if _, err := strconv.ParseInt(header(m, "outbox_id"), 10, 64); err != nil {
			t.Errorf("%s: outbox_id header %q", id, header(m, "outbox_id"))
		}
	}
	set := run.deps.Metrics
	if v := metric(set, `reco_outbox_relay_published_total{topic="`+e.kcfg.TopicWatches+`"}`); v != 50 {
		t.Errorf("published_total = %v, want 50", v)
	}
	if v := metric(set, "recsys_relay_commit_to_ack_seconds_count"); v != 50 {
		t.Errorf("commit_to_ack count = %v, want 50", v)
	}
	if v := metric(set, "reco_outbox_relay_event_lag_ms_count"); v != 50 {
		t.Errorf("event_lag count = %v, want 50", v)
	}
	waitFor(t, 5*time.Second, "snapshot showing 50 published", func() bool {
		eb := run.r.HealthDetails(context.Background())["event_backbone"].(map[string]any)
		b, ok := eb["outbox"].(outbox.Backlog)
		return eb["mode"] == "transactional_outbox" && ok && b.Published == 50 && b.Pending == 0
	})
	// The backlog gauges are the process' (shared with an api module, see
	// outbox.ExportBacklog), not the relay's set: other tests of this binary set them too, so
	// only their presence is checked.
	var all bytes.Buffer
	metrics.WritePrometheus(&all, false)
	if !strings.Contains(all.String(), `reco_outbox_backlog_events{status="pending"} `) {
		t.Errorf("the process exports no pending backlog gauge")
	}
}

// Commits arriving one at a time, each with its NOTIFY, while there is no backlog: with
// --relay.linger the relay starts at most one claim per linger, so the commits of a window go
// out in one claim instead of one claim each (without linger, each commit here starts its
// own claim of a row or two).
func TestRelayLingerCoalescesClaims(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.KafkaBrokers(t), 3)
	cfg := testConfig()
	cfg.Linger = time.Second
	run := e.startQuiet(cfg, "linger")
	for i := range 20 {
		e.insertRow("watch", e.kcfg.TopicWatches, fmt.Sprint("u", i), []byte(`{}`), 5)
		e.notify("")
	}
	e.waitPublished(20, 20*time.Second)
	// The first commit is claimed at once, the rest (committed well within the 1 s window)
	// in the claims at the ends of the windows after it: two, three on a slow machine.
	if claims := metric(run.deps.Metrics, "recsys_relay_batch_size_count"); claims < 1 || claims > 4 {
		t.Fatalf("20 rows went out in %v claims, want 1..4", claims)
	}
}

// Commits announced as impressions only are claimed at most every --relay.impression-linger,
// while a commit with anything else (a watch) hurries the next claim to --relay.linger: the
// watch goes out at once, though the last claim was moments ago.
func TestRelayImpressionLingerYieldsToWatches(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.KafkaBrokers(t), 3)
	cfg := testConfig()
	cfg.Linger = time.Millisecond
	cfg.ImpressionLinger = time.Second
	run := e.startQuiet(cfg, "imp-linger")
	for i := range 20 {
		e.insertRow("impression", e.kcfg.TopicImpressions, fmt.Sprint("u", i), []byte(`{}`), 5)
		e.notify(outbox.NotifyImpressionsOnly)
	}
	e.waitPublished(20, 20*time.Second)
	claims := metric(run.deps.Metrics, "recsys_relay_batch_size_count")
	if claims < 1 || claims > 4 {
		t.Fatalf("20 impressions went out in %v claims, want 1..4", claims)
	}
	// The claim that published the last impressions started moments ago: an impression now
	// waits for the rest of its linger, a watch does not.
	e.insertRow("watch", e.kcfg.TopicWatches, "w", []byte(`{}`), 5)
	start := time.Now()
	e.notify("")
	e.waitPublished(21, 20*time.Second)
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("the watch went out %v after its commit, want well within the 1 s impression linger", d)
	}
}

// Kafka stops mid-stream: rows stay pending (the batch in flight backs off; the relay stops
// claiming while probing, so attempts are not spent), readiness reports it, and once Kafka is
// back every row is published: the consumer sees exactly the rows written.
func TestRelaySurvivesBrokerOutage(t *testing.T) {
	t.Parallel()
	pk := testutil.StartPrivate(t, "kafka")
	e := newEnv(t, []string{pk.Addr}, 3)
	run := e.start(testConfig(), "r1", relay.Options{})
	waitReady(t, run.r)

	written := 0
	write := func(batches int) {
		for range batches {
			e.insert(20, 50, 25)
			written += 20
			time.Sleep(10 * time.Millisecond)
		}
	}
	write(20)
	e.waitPublished(200, 30*time.Second)

	pk.Stop()
	write(20) // keeps arriving during the outage
	waitFor(t, 30*time.Second, "readiness to report Kafka unreachable", func() bool {
		err := run.r.Ready(context.Background())
		return err != nil && strings.Contains(err.Error(), "unreachable")
	})
	var retrying, maxAttempts int
	if err := e.pool.QueryRow(context.Background(), `
SELECT count(*) FILTER (WHERE status = 'pending' AND attempts >= 1 AND last_error IS NOT NULL), coalesce(max(attempts), 0)
FROM event_outbox`).Scan(&retrying, &maxAttempts); err != nil {
		t.Fatal(err)
	}
	if retrying == 0 {
		t.Fatalf("no pending row with a failed attempt during the outage: %v", e.counts())
	}
	time.Sleep(time.Second) // the outage goes on: attempts must not keep growing
	var maxAfter int
	if err := e.pool.QueryRow(context.Background(), `SELECT max(attempts) FROM event_outbox`).Scan(&maxAfter); err != nil {
		t.Fatal(err)
	}
	if maxAfter > maxAttempts+1 {
		t.Fatalf("attempts grew from %d to %d in 1 s of outage: the relay spends attempts instead of probing", maxAttempts, maxAfter)
	}
	t.Logf("during the outage: %v, %d rows retrying with backoff, max attempts %d", e.counts(), retrying, maxAfter)

	pk.Start()
	write(10)
	e.waitPublished(written, 90*time.Second)
	c := e.counts()
	if c["dead"] != 0 || c["published"] != written {
		t.Fatalf("after recovery: %v, want all %d published", c, written)
	}
	got := readTopic(t, e.brokers, e.kcfg.TopicWatches)
	d, dups := got.distinct()
	t.Logf("consumer read %d distinct event ids (%d duplicates) for %d rows written", d, dups, written)
	if d != written {
		t.Fatalf("consumer saw %d distinct event ids, want %d", d, written)
	}
	waitReady(t, run.r)
}

const childEnv = "RECSYS_RELAY_TEST_CHILD"

// runChild is the relay process of TestRelayKill9MidBatch: a real relay whose Kafka writer
// announces the Nth acked batch on stdout and then hangs before returning, so the parent
// kills it while that batch is acked by Kafka but not yet recorded: the worst moment.
func runChild() int {
	get := func(k string) string { return os.Getenv(childEnv + "_" + k) }
	hangAfter, _ := strconv.Atoi(get("HANG_AFTER"))
	kc := kafka.DefaultConfig()
	kc.Brokers = strings.Split(get("BROKERS"), ",")
	kc.RequestTimeout = 5 * time.Second
	kc.TopicWatches, kc.TopicImpressions = get("WATCHES"), get("IMPRESSIONS")
	pool, err := pgxpool.New(context.Background(), get("DSN"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	cfg := testConfig()
	cfg.Workers = 1
	cfg.BatchSize = 100
	kcl := kafka.New(kc)
	d := infra.Deps{Name: "relay", Log: slog.New(slog.NewTextHandler(os.Stderr, nil)), Metrics: metrics.NewSet(),
		PG: pool, Kafka: kcl, Config: infra.Config{Kafka: kc}}
	w := relay.NewPublisher(kcl, cfg)
	r, err := relay.NewRelay(cfg, d, relay.Options{Publisher: &hangingPublisher{inner: w, after: int32(hangAfter)}, Owner: "child"})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	if err := r.Run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	return 0
}

type hangingPublisher struct {
	inner relay.Publisher
	after int32
	n     atomic.Int32
}

func (p *hangingPublisher) WriteMessages(ctx context.Context, msgs ...kafkago.Message) error {
	if err := p.inner.WriteMessages(ctx, msgs...); err != nil {
		return err
	}
	if p.n.Add(1) == p.after {
		fmt.Printf("ACKED %d\n", len(msgs))
		select {} // acked, never recorded: wait for SIGKILL
	}
	return nil
}

func (p *hangingPublisher) Close() error { return p.inner.Close() }

// kill -9 of a relay mid-batch: its acked-but-unrecorded batch stays leased until the lease
// expires, then another relay publishes it and everything after it. Delivery is at-least-once:
// the duplicates are exactly the batch that was in flight, bounded by the batch size.
func TestRelayKill9MidBatch(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.KafkaBrokers(t), 3)
	if err := e.deps("").Kafka.EnsureTopics(context.Background(), e.kcfg.TopicWatches, e.kcfg.TopicImpressions); err != nil {
		t.Fatal(err)
	}
	const rows, batch = 1000, 100
	e.insert(rows, 37, 5)

	cmd := testutil.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1", childEnv+"_DSN="+e.dsn, childEnv+"_BROKERS="+strings.Join(e.brokers, ","),
		childEnv+"_WATCHES="+e.kcfg.TopicWatches, childEnv+"_IMPRESSIONS="+e.kcfg.TopicImpressions, childEnv+"_HANG_AFTER=3")
	cmd.Stderr = &testWriter{t: t, prefix: "child: "}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := make(chan int, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if n, ok := strings.CutPrefix(sc.Text(), "ACKED "); ok {
				v, _ := strconv.Atoi(n)
				acked <- v
				return
			}
		}
		close(acked)
	}()
	var inFlight int
	select {
	case n, ok := <-acked:
		if !ok {
			_ = cmd.Wait()
			t.Fatal("child relay exited before acking its third batch")
		}
		inFlight = n
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("child relay did not ack its third batch")
	}
	// A worker records a batch's outcome while it publishes the next one: let the second
	// batch's recording land, so exactly the third batch is acked but unrecorded at the kill.
	waitFor(t, 10*time.Second, "the first two batches recorded", func() bool { return e.counts()["published"] == 2*batch })
	if err := cmd.Process.Signal(os.Kill); err != nil { // SIGKILL: no shutdown path runs
		t.Fatal(err)
	}
	_ = cmd.Wait()
	c := e.counts()
	t.Logf("after kill -9: %v (batch of %d acked by Kafka, not recorded)", c, inFlight)
	if c["publishing"] != inFlight || c["published"] != 2*batch {
		t.Fatalf("after the kill: %v, want %d published and the %d-row batch in flight still leased", c, 2*batch, inFlight)
	}

	run := e.start(testConfig(), "successor", relay.Options{})
	e.waitPublished(rows, 60*time.Second)
	got := readTopic(t, e.brokers, e.kcfg.TopicWatches)
	d, dups := got.distinct()
	t.Logf("consumer read %d distinct event ids and %d duplicates (in-flight batch %d, batch size %d)", d, dups, inFlight, batch)
	if d != rows {
		t.Fatalf("consumer saw %d distinct event ids, want %d", d, rows)
	}
	if dups != inFlight || dups > batch {
		t.Fatalf("%d duplicates, want exactly the in-flight batch (%d), at most the batch size %d", dups, inFlight, batch)
	}
	var twice int
	if err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM event_outbox WHERE attempts = 2`).Scan(&twice); err != nil {
		t.Fatal(err)
	}
	if twice != inFlight {
		t.Fatalf("%d rows with 2 attempts, want the %d reclaimed after the lease expired (each claim counts)", twice, inFlight)
	}
	if v := metric(run.deps.Metrics, `recsys_relay_reaped_total{outcome="requeued"}`); v != float64(inFlight) {
		t.Fatalf("reaped_total = %v, want %d", v, inFlight)
	}
}

// Two relays drain a large outbox concurrently: every row published, per-key order intact in
// Kafka, and no duplicates since no lease expired.
func TestTwoRelaysKeepPerKeyOrder(t *testing.T) {
	t.Parallel()
	rows, keys := 100_000, 2000
	if testing.Short() {
		rows, keys = 20_000, 500
	}
	e := newEnv(t, testutil.KafkaBrokers(t), 6)
	e.insert(rows, keys, 5)
	cfg := testConfig()
	cfg.BatchSize = 1000
	cfg.Lease = 30 * time.Second // a slow test machine must not expire leases: this test is about order
	start := time.Now()
	a := e.start(cfg, "relay-a", relay.Options{})
	b := e.start(cfg, "relay-b", relay.Options{})
	e.waitPublished(rows, 120*time.Second)
	elapsed := time.Since(start)
	pa := metric(a.deps.Metrics, `reco_outbox_relay_published_total{topic="`+e.kcfg.TopicWatches+`"}`)
	pb := metric(b.deps.Metrics, `reco_outbox_relay_published_total{topic="`+e.kcfg.TopicWatches+`"}`)
	t.Logf("%d rows over %d keys in %s by two relays (a %v, b %v)", rows, keys, elapsed.Round(time.Millisecond), pa, pb)
	logTimings(t, "relay-a", a.deps.Metrics)
	logTimings(t, "relay-b", b.deps.Metrics)
	if pa == 0 || pb == 0 {
		t.Fatalf("one relay did all the work (a %v, b %v): the test did not exercise two relays", pa, pb)
	}

	got := readTopic(t, e.brokers, e.kcfg.TopicWatches)
	d, dups := got.distinct()
	if d != rows {
		t.Fatalf("consumer saw %d distinct event ids, want %d", d, rows)
	}
	var reaped, fenced float64
	for _, r := range []*running{a, b} {
		reaped += metric(r.deps.Metrics, `recsys_relay_reaped_total{outcome="requeued"}`)
		fenced += metric(r.deps.Metrics, "recsys_relay_fenced_total")
	}
	if dups != 0 && reaped == 0 {
		t.Fatalf("%d duplicates without any lease expiry", dups)
	}
	t.Logf("duplicates %d, rows reaped after lease expiry %v, fenced outcomes %v", dups, reaped, fenced)
	for p, msgs := range got.partitions {
		last := map[string]int64{}
		for _, m := range msgs {
			id, _ := strconv.ParseInt(header(m, "outbox_id"), 10, 64)
			k := string(m.Key)
			if id <= last[k] {
				t.Fatalf("partition %d key %s: outbox id %d after %d: per-key order broken", p, k, id, last[k])
			}
			last[k] = id
		}
	}
}

// Writers' transactions commit in reverse id order, one rolls back: the relay skips no
// committed row (it follows row status, not an id high-water mark).
func TestRelayOutOfOrderCommits(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.KafkaBrokers(t), 3)
	run := e.start(testConfig(), "r1", relay.Options{})
	waitReady(t, run.r)
	ctx := context.Background()
	const n, rolledBack = 20, 7
	txs := make([]pgx.Tx, n)
	eventIDs := make([]string, n)
	for i := range n {
		tx, err := e.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		txs[i] = tx
		eventIDs[i] = testutil.Unique("ooo-")
		key := fmt.Sprint("u", i%3)
		if _, err := tx.Exec(ctx, `
INSERT INTO event_outbox (event_id, event_type, topic, msg_key, payload, max_attempts) VALUES ($1, 'watch', $2, $3, '{}', 5)`,
			eventIDs[i], e.kcfg.TopicWatches, key); err != nil {
			t.Fatal(err)
		}
	}
	for i := n - 1; i >= 0; i-- {
		var err error
		if i == rolledBack {
			err = txs[i].Rollback(ctx)
		} else {
			if _, err = txs[i].Exec(ctx, "SELECT pg_notify($1, '')", outbox.Channel); err == nil {
				err = txs[i].Commit(ctx)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(30 * time.Millisecond) // let the relay publish the later ids first
	}
	e.waitPublished(n-1, 20*time.Second)
	got := readTopic(t, e.brokers, e.kcfg.TopicWatches)
	seen := map[string]bool{}
	for _, m := range got.all() {
		seen[header(m, "event_id")] = true
	}
	for i, id := range eventIDs {
		if seen[id] != (i != rolledBack) {
			t.Errorf("row %d (%s): in Kafka = %t, want %t", i, id, seen[id], i != rolledBack)
		}
	}
	if len(seen) != n-1 {
		t.Fatalf("consumer saw %d events, want %d", len(seen), n-1)
	}
}

// A row that always fails (its topic does not exist, broker auto-creation is off) ends dead
// after max_attempts with its error, without holding up other keys; a message larger than the
// broker accepts goes dead at once and frees the later rows of its key; replay requeues the
// dead row, which is then published once its topic exists.
func TestRelayDeadRowsAndReplay(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.KafkaBrokers(t), 3)
	cfg := testConfig()
	// The producer serves topic metadata from a cache refreshed every MetadataTTL (10 s by
	// default): shortened so the topic created below is seen without a 10 s wait.
	w := e.deps("").Kafka.NewProducer(kafka.ProducerOptions{MaxBytes: cfg.MaxBatchBytes, MetadataTTL: 100 * time.Millisecond})
	run := e.start(cfg, "r1", relay.Options{Publisher: w})
	waitReady(t, run.r)
	missing := testutil.KafkaTopic(t, "recsys.test.missing.")
	doomed := e.insertRow("impression", missing, "u-doomed", []byte(`{"x":1}`), 3)
	huge := e.insertRow("watch", e.kcfg.TopicWatches, "u-huge", []byte(`"`+strings.Repeat("x", 2<<20)+`"`), 5)
	afterHuge := e.insertRow("watch", e.kcfg.TopicWatches, "u-huge", []byte(`{"after":"huge"}`), 5)
	others := e.insert(30, 5, 5)

	waitFor(t, 30*time.Second, "the failing rows to die", func() bool {
		s1, _, _ := e.row(doomed)
		s2, _, _ := e.row(huge)
		return s1 == "dead" && s2 == "dead"
	})
	e.waitPublished(len(others)+1, 20*time.Second)
	if st, attempts, lastErr := e.row(doomed); attempts != 3 || !strings.Contains(strings.ToLower(lastErr), "unknown topic") {
		t.Fatalf("missing-topic row: %s after %d attempts, last_error %q; want dead after max_attempts 3 with the broker's error", st, attempts, lastErr)
	}
	if _, attempts, lastErr := e.row(huge); attempts != 1 || !strings.Contains(lastErr, "larger than") {
		t.Fatalf("huge row: %d attempts, last_error %q; want dead at the first attempt, naming the size limit", attempts, lastErr)
	}
	if st, _, _ := e.row(afterHuge); st != "published" {
		t.Fatalf("row after the huge one on its key is %s, want published (dead rows free their key)", st)
	}
	// Counted when the outcome's Complete returns, just after the rows read dead.
	waitFor(t, 5*time.Second, "dead_total 2", func() bool { return metric(run.deps.Metrics, "recsys_relay_dead_total") == 2 })
	if v := metric(run.deps.Metrics, `reco_outbox_relay_failed_total{topic="`+missing+`"}`); v != 3 {
		t.Errorf("failed_total for the missing topic = %v, want 3", v)
	}

	if err := run.deps.Kafka.EnsureTopics(context.Background(), missing); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // > MetadataTTL above
	res, err := outbox.NewStore(e.pool).Replay(context.Background(), outbox.ReplayFilter{Status: "dead", EventType: "impression", Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requeued != 1 || len(res.IDs) != 1 || res.IDs[0] != doomed {
		t.Fatalf("replay = %+v, want the impression row %d only", res, doomed)
	}
	waitFor(t, 30*time.Second, "the replayed row to be published", func() bool {
		st, _, _ := e.row(doomed)
		return st == "published"
	})
	if st, _, _ := e.row(huge); st != "dead" {
		t.Fatalf("huge row is %s, want still dead (not selected by the replay)", st)
	}
	got := readTopic(t, e.brokers, missing)
	if d, _ := got.distinct(); d != 1 {
		t.Fatalf("topic %s holds %d events, want the replayed one", missing, d)
	}
}

// Without a reachable broker the relay keeps retrying topic provisioning, is not ready, and
// still reports the outbox snapshot.
func TestRelayNotReadyUntilTopicsProvisioned(t *testing.T) {
	t.Parallel()
	e := newEnv(t, []string{"127.0.0.1:1"}, 3)
	run := e.start(testConfig(), "r1", relay.Options{})
	waitFor(t, 10*time.Second, "a provisioning failure", func() bool {
		return metric(run.deps.Metrics, `reco_outbox_relay_errors_total{stage="startup"}`) >= 2
	})
	err := run.r.Ready(context.Background())
	if err == nil || !strings.Contains(err.Error(), "not provisioned") {
		t.Fatalf("Ready = %v, want an error about topic provisioning", err)
	}
	eb, ok := run.r.HealthDetails(context.Background())["event_backbone"].(map[string]any)
	if !ok || eb["mode"] != "transactional_outbox" {
		t.Fatalf("health details %v", eb)
	}
	if _, ok := eb["outbox"].(outbox.Backlog); !ok {
		t.Fatalf("outbox snapshot = %#v", eb["outbox"])
	}
}

// PostgreSQL refuses every claim (a trigger raising disk full, 53100, as a full disk or a
// revoked permission on event_outbox would), or every recording of a batch outcome while
// claims work (a trigger on the deletion of acked rows: the relay publishes every batch again
// after its lease and makes no progress). /readyz fails after --relay.unready-after-failures
// failures in a row, not after one, naming the step and the database's error, and the relay
// is ready again and finishes the rows once the step works.
func TestRelayUnreadyWhileTheDatabaseRefuses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		trigger string // BEFORE ... ON event_outbox FOR EACH ROW; $body$ is refuse()'s test
		body    string
		errcode string
		stage   string // of reco_outbox_relay_errors_total
		want    string // in the readiness error
		mutate  func(*relay.Config)
		done    func(e *env, n int) bool // the n rows inserted are done
	}{
		{"claims", "BEFORE UPDATE", "OLD.status = 'pending' AND NEW.status = 'publishing' AND", "53100", "claim", "claims of outbox rows failed",
			func(*relay.Config) {}, func(e *env, n int) bool { return e.counts()["published"] >= n }},
		{"recordings", "BEFORE DELETE", "", "42501", "process", "record outbox batch outcomes",
			func(c *relay.Config) {
				c.Retention = 0 // delete on ack: the trigger refuses the recording
				c.Workers = 1   // one batch in flight: one failed attempt is one failed attempt in a row
			}, func(e *env, _ int) bool { return e.outboxRows() == 0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, testutil.KafkaBrokers(t), 1)
			ctx := context.Background()
			// The step fails while attempts has not passed refuse_n.n (a sequence: its
			// increments survive the failed step's rollback).
			if _, err := e.pool.Exec(ctx, fmt.Sprintf(`
CREATE SEQUENCE attempts;
CREATE TABLE refuse_n (n bigint);
INSERT INTO refuse_n VALUES (0);
CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF %s nextval('attempts') <= (SELECT n FROM refuse_n) THEN
        RAISE EXCEPTION 'refused (test)' USING ERRCODE = '%s';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;
CREATE TRIGGER refuse %s ON event_outbox FOR EACH ROW EXECUTE FUNCTION refuse()`, tc.body, tc.errcode, tc.trigger)); err != nil {
				t.Fatal(err)
			}
			refuse := func(attempts int64) {
				t.Helper()
				if _, err := e.pool.Exec(ctx, `UPDATE refuse_n SET n = nextval('attempts') + $1`, attempts); err != nil {
					t.Fatal(err)
				}
			}
			cfg := testConfig()
			cfg.UnreadyAfter = 3
			tc.mutate(cfg)
			run := e.start(cfg, "r1", relay.Options{})
			waitReady(t, run.r)
			failures := func() float64 {
				return metric(run.deps.Metrics, fmt.Sprintf(`reco_outbox_relay_errors_total{stage=%q}`, tc.stage))
			}

			// One failure: the next attempt succeeds, and the relay stays ready throughout.
			refuse(1)
			e.insert(5, 5, 5)
			for deadline := time.Now().Add(30 * time.Second); !tc.done(e, 5); time.Sleep(2 * time.Millisecond) {
				if err := run.r.Ready(ctx); err != nil {
					t.Fatalf("Ready = %v after %v failures, want ready below --relay.unready-after-failures", err, failures())
				}
				if time.Now().After(deadline) {
					t.Fatalf("rows not done: %v", e.counts())
				}
			}
			if n := failures(); n != 1 {
				t.Fatalf("%s errors = %v, want 1", tc.stage, n)
			}

			// Every attempt fails: unready, naming the step and the database's error.
			refuse(1 << 40)
			e.insert(5, 5, 5)
			waitFor(t, 30*time.Second, "readiness to report the failures", func() bool {
				err := run.r.Ready(ctx)
				return err != nil && strings.Contains(err.Error(), tc.want) && strings.Contains(err.Error(), tc.errcode)
			})
			if n := failures(); n < 1+float64(cfg.UnreadyAfter) {
				t.Fatalf("unready after %v errors, want at least %d in a row", n-1, cfg.UnreadyAfter)
			}

			if _, err := e.pool.Exec(ctx, `DROP TRIGGER refuse ON event_outbox`); err != nil {
				t.Fatal(err)
			}
			waitReady(t, run.r)
			waitFor(t, 30*time.Second, "every row done", func() bool { return tc.done(e, 10) })
		})
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		mutate func(*relay.Config)
		want   string
	}{
		{"defaults", func(*relay.Config) {}, ""},
		{"batch size", func(c *relay.Config) { c.BatchSize = 0 }, "--relay.batch-size must be between 1 and 10000, got 0"},
		{"workers", func(c *relay.Config) { c.Workers = 100 }, "--relay.workers"},
		{"poll interval", func(c *relay.Config) { c.PollInterval = time.Millisecond }, "--relay.poll-interval must be >= 10ms"},
		{"lease", func(c *relay.Config) { c.Lease = 0 }, "--relay.lease"},
		{"retry order", func(c *relay.Config) { c.RetryMax = c.RetryBase / 2 }, "--relay.retry-max"},
		{"max batch bytes", func(c *relay.Config) { c.MaxBatchBytes = 10 }, "--relay.max-batch-bytes"},
		{"negative linger", func(c *relay.Config) { c.Linger = -time.Millisecond }, "--relay.linger must be between 0 and 1s"},
		{"long linger", func(c *relay.Config) { c.Linger = 2 * time.Second }, "--relay.linger must be between 0 and 1s"},
		{"negative retention", func(c *relay.Config) { c.Retention = -time.Second }, "--relay.retention must be >= 0s"},
		{"unready after", func(c *relay.Config) { c.UnreadyAfter = 0 }, "--relay.unready-after-failures must be between 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := relay.NewConfig()
			tc.mutate(c)
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want %q", err, tc.want)
			}
		})
	}
}

// slowPublisher makes every write take longer than the lease.
type slowPublisher struct {
	inner relay.Publisher
	delay time.Duration
}

func (p slowPublisher) WriteMessages(ctx context.Context, msgs ...kafkago.Message) error {
	time.Sleep(p.delay)
	return p.inner.WriteMessages(ctx, msgs...)
}

func (p slowPublisher) Close() error { return p.inner.Close() }

// A batch in flight for longer than the lease keeps it by renewal: a second relay reaping
// expired leases takes nothing over, and nothing is published twice.
func TestRelayRenewsLeaseWhileBatchInFlight(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.KafkaBrokers(t), 3)
	cfg := testConfig()
	cfg.Lease = time.Second
	cfg.PublishTimeout = 10 * time.Second
	w := relay.NewPublisher(e.deps("").Kafka, cfg)
	slow := e.start(cfg, "slow", relay.Options{Publisher: slowPublisher{inner: w, delay: 2500 * time.Millisecond}})
	waitReady(t, slow.r)
	e.insert(20, 4, 5)
	waitFor(t, 10*time.Second, "the batch in flight", func() bool { return e.counts()["publishing"] > 0 })
	// A second relay whose reaper would take over any expired lease.
	other := e.start(cfg, "other", relay.Options{})
	e.waitPublished(20, 30*time.Second)
	for _, r := range []*running{slow, other} {
		if v := metric(r.deps.Metrics, `recsys_relay_reaped_total{outcome="requeued"}`); v != 0 {
			t.Fatalf("%v rows reaped: the lease was not renewed while the batch was in flight", v)
		}
	}
	if v := metric(slow.deps.Metrics, "recsys_relay_fenced_total"); v != 0 {
		t.Fatalf("%v outcomes fenced", v)
	}
	if d, dups := readTopic(t, e.brokers, e.kcfg.TopicWatches).distinct(); d != 20 || dups != 0 {
		t.Fatalf("consumer saw %d distinct events and %d duplicates, want 20 and 0", d, dups)
	}
}

// A batch whose lease is taken over while it is in flight counts each lost row once however
// many renewals see it lost, and a row it would have moved to dead is not counted dead: the
// outcome is fenced off, the row is its new owner's.
func TestRelayLostLeaseCountsRowsOnceAndNoDeadOutcome(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.KafkaBrokers(t), 1)
	ctx := context.Background()
	e.insert(5, 5, 5)
	e.insertRawBatchRow(outbox.LaneKey(1), []byte("not frames"), 1, testutil.Unique("batch:poison"))
	const rows = 6
	cfg := testConfig()
	cfg.Workers = 1
	cfg.Lease = time.Second // renewed every 333 ms
	cfg.PublishTimeout = 10 * time.Second
	w := relay.NewPublisher(e.deps("").Kafka, cfg)
	run := e.start(cfg, "slow", relay.Options{Publisher: slowPublisher{inner: w, delay: 2500 * time.Millisecond}})
	waitFor(t, 10*time.Second, "the batch in flight", func() bool { return e.counts()["publishing"] == rows })
	// What a reap does once the lease expired; due in an hour, so nobody claims them again.
	if _, err := e.pool.Exec(ctx, `UPDATE event_outbox SET status = 'pending', lease_owner = NULL, lease_token = NULL,
    lease_expires_at = NULL, next_attempt_at = now() + interval '1 hour' WHERE status = 'publishing'`); err != nil {
		t.Fatal(err)
	}
	set := run.deps.Metrics
	waitFor(t, 10*time.Second, "the outcomes fenced off", func() bool { return metric(set, "recsys_relay_fenced_total") == rows })
	if v := metric(set, "recsys_relay_lease_lost_total"); v != rows {
		t.Errorf("lease_lost_total = %v, want %d (each row once)", v, rows)
	}
	if v := metric(set, "recsys_relay_dead_total"); v != 0 {
		t.Errorf("dead_total = %v, want 0: the poison row's outcome was fenced off", v)
	}
	if c := e.counts(); c["pending"] != rows {
		t.Errorf("rows %v, want all %d pending (their new owner's)", c, rows)
	}
}

// Published rows older than --relay.retention are deleted in bounded batches.
func TestRelayRetentionDeletesPublishedRows(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.KafkaBrokers(t), 3)
	cfg := testConfig()
	cfg.Retention = 300 * time.Millisecond
	cfg.RetentionInterval = 50 * time.Millisecond
	cfg.RetentionBatch = 7
	run := e.start(cfg, "r1", relay.Options{})
	waitReady(t, run.r)
	e.insert(50, 5, 5)
	waitFor(t, 30*time.Second, "published rows to be deleted", func() bool {
		return metric(run.deps.Metrics, "recsys_relay_retention_deleted_total") == 50
	})
	if c := e.counts(); len(c) != 0 {
		t.Fatalf("rows left after retention: %v", c)
	}
	if d, _ := readTopic(t, e.brokers, e.kcfg.TopicWatches).distinct(); d != 50 {
		t.Fatalf("consumer saw %d events, want 50", d)
	}
}

// With the default --relay.retention 0 acked rows are deleted when the ack is recorded: the
// outbox ends empty, every event reached Kafka once, each key's events in id order, and the
// snapshot shows nothing retained.
func TestRelayDeletesAckedRowsByDefault(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.KafkaBrokers(t), 3)
	cfg := testConfig()
	cfg.Retention = relay.NewConfig().Retention
	if cfg.Retention != 0 {
		t.Fatalf("default --relay.retention = %s, want 0 (delete on ack)", cfg.Retention)
	}
	cfg.BatchSize = 40
	run := e.start(cfg, "r1", relay.Options{})
	waitReady(t, run.r)
	const n = 500
	ids := e.insert(n, 13, 5)
	waitFor(t, 30*time.Second, "every row acked and deleted", func() bool {
		var left int
		err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM event_outbox`).Scan(&left)
		return err == nil && left == 0
	})
	got := readTopic(t, e.brokers, e.kcfg.TopicWatches)
	if d, dups := got.distinct(); d != n || dups != 0 {
		t.Fatalf("consumed %d distinct event ids and %d duplicates, want %d and 0", d, dups, n)
	}
	seq := map[string]int{}
	for i, id := range ids {
		seq[id] = i
	}
	last := map[string]int{}
	for _, m := range got.all() {
		i := seq[header(m, "event_id")]
		if prev, ok := last[string(m.Key)]; ok && i <= prev {
			t.Fatalf("key %s: event #%d after #%d", m.Key, i, prev)
		}
		last[string(m.Key)] = i
	}
	if v := metric(run.deps.Metrics, `reco_outbox_relay_published_total{topic="`+e.kcfg.TopicWatches+`"}`); v != n {
		t.Errorf("published_total = %v, want %d", v, n)
	}
	waitFor(t, 5*time.Second, "snapshot showing an empty outbox", func() bool {
		eb := run.r.HealthDetails(context.Background())["event_backbone"].(map[string]any)
		b, ok := eb["outbox"].(outbox.Backlog)
		return ok && b == (outbox.Backlog{})
	})
}

// At start the relay reads its topics' max.message.bytes and refuses to run with a larger
// --relay.max-batch-bytes, naming both settings: the broker would refuse its full record
// batches. Without the permission to describe the topics it warns and runs.
func TestRelayChecksTopicsMessageLimitAtStart(t *testing.T) {
	for _, tc := range []struct {
		name     string
		maxBatch int64
		denied   bool
		refused  bool
	}{
		{name: "max-batch-bytes above the topic's limit", maxBatch: 1 << 20, refused: true},
		{name: "max-batch-bytes at the topic's limit", maxBatch: 4096},
		{name: "not permitted to describe the topic", maxBatch: 1 << 20, denied: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, testutil.KafkaBrokers(t), 1)
			e.createLimitedTopic(e.kcfg.TopicWatches, 4096)
			cfg := testConfig()
			cfg.MaxBatchBytes = tc.maxBatch
			var o relay.Options
			if tc.denied {
				o.Broker = describeDenied{c: kafka.New(e.kcfg)}
			}
			if !tc.refused {
				waitReady(t, e.start(cfg, "r1", o).r)
				return
			}
			r, err := relay.NewRelay(cfg, e.deps("r1: "), o)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err = r.Run(ctx)
			if ctx.Err() != nil {
				t.Fatal("the relay started")
			}
			for _, want := range []string{"--relay.max-batch-bytes (1048576)", e.kcfg.TopicWatches, "max.message.bytes (4096)"} {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("Run: %v, want an error with %q", err, want)
				}
			}
			if strings.Contains(err.Error(), e.kcfg.TopicImpressions) {
				t.Errorf("Run: %v names the impressions topic, whose limit is the broker's default", err)
			}
		})
	}
}

// Stopping a relay (ctx cancelled) while a claim is in flight leaves no row leased: a claim
// the database committed is published and recorded like any batch in flight at shutdown,
// instead of waiting out --relay.lease (and a reap that counts an attempt, blocking its units
// meanwhile).
func TestRelayStopDuringClaimLeavesNoRowLeased(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.KafkaBrokers(t), 1)
	ctx := context.Background()
	stuck := 0
	for i := range 20 {
		e.insert(400, 400, 5)
		cfg := testConfig()
		cfg.Workers = 4
		cfg.BatchSize = 10
		cfg.Linger, cfg.ImpressionLinger = 0, 0
		cfg.Lease = time.Minute
		cfg.ReapInterval = time.Minute
		run := e.start(cfg, "r", relay.Options{})
		waitReady(t, run.r)
		// Workers claim back to back while 400 rows wait: a stop lands in a claim now and
		// then.
		time.Sleep(time.Duration(20+7*(i%5)) * time.Millisecond)
		run.stop()
		var n int
		if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM event_outbox WHERE status = 'publishing'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			t.Logf("stop %d: %d rows left 'publishing'", i, n)
			stuck += n
		}
		if _, err := e.pool.Exec(ctx, `UPDATE event_outbox SET status = 'published', lease_token = NULL WHERE status IN ('pending', 'publishing')`); err != nil {
			t.Fatal(err)
		}
	}
	if stuck > 0 {
		t.Errorf("%d rows left leased by 20 clean stops, want 0", stuck)
	}
}

// Replaying dead rows with the cursor (--after-id from the previous run's last_id) reaches a
// recoverable dead row behind more rows that go dead again at once than one run takes, and
// the loop ends: without it every run picks the same poison rows again.
func TestReplayCursorReachesRowsBehindPoisonRows(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.KafkaBrokers(t), 1)
	var poison []int64
	for range 3 {
		poison = append(poison, e.insertRawBatchRow(outbox.LaneKey(1), []byte("not frames"), 1, testutil.Unique("batch:poison")))
	}
	good := e.insertRow("watch", e.kcfg.TopicWatches, "u-good", []byte(`{"ok":1}`), 5)
	// The good row died earlier (its topic was missing then, say; the cause is fixed now).
	// Dead before the relay starts: a running relay could claim it between the insert and
	// this update, and then publish it.
	if _, err := e.pool.Exec(context.Background(), `UPDATE event_outbox SET status = 'dead', attempts = 5 WHERE id = $1`, good); err != nil {
		t.Fatal(err)
	}
	run := e.start(testConfig(), "r", relay.Options{})
	waitReady(t, run.r)
	dead := func(ids ...int64) func() bool {
		return func() bool {
			for _, id := range ids {
				if st, _, _ := e.row(id); st != outbox.StatusDead {
					return false
				}
			}
			return true
		}
	}
	waitFor(t, 10*time.Second, "the poison rows to die", dead(poison...))
	st := outbox.NewStore(e.pool)
	var after int64
	runs := 0
	requeued := map[int64]bool{}
	for ; runs < 8; runs++ {
		res, err := st.Replay(context.Background(), outbox.ReplayFilter{Status: outbox.StatusDead, Limit: 3, AfterID: after})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("run %d after %d: requeued %v, skipped %d, last_id %d", runs+1, after, res.IDs, res.Skipped, res.LastID)
		if res.Requeued == 0 && res.Skipped == 0 {
			if res.LastID != after {
				t.Errorf("an empty run's last_id = %d, want its after_id %d", res.LastID, after)
			}
			break
		}
		if res.Requeued > 0 && res.IDs[0] <= after || res.LastID < after {
			t.Fatalf("run %d after %d: ids %v, last_id %d; want ids past the cursor, and the cursor not back", runs+1, after, res.IDs, res.LastID)
		}
		for _, id := range res.IDs {
			requeued[id] = true
		}
		after = res.LastID
	}
	// Two runs when nothing holds the rows (the poison rows, then the good row); a run more
	// for each time the relay's claim held a poison row (skipped, the cursor before it).
	if runs < 2 || runs > 6 || !requeued[good] || !requeued[poison[0]] || !requeued[poison[2]] {
		t.Errorf("the loop ended after %d runs having requeued %v; want the good row and the poison rows, in 2 runs or a few more", runs, requeued)
	}
	waitFor(t, 10*time.Second, "the replayed good row to be published", func() bool {
		s, _, _ := e.row(good)
		return s == outbox.StatusPublished
	})
	waitFor(t, 10*time.Second, "the replayed poison rows to die again", dead(poison...))
}

// A batch whose outcome takes longer to record than the lease (a degraded database: here a
// trigger that sleeps on every row the recording deletes) keeps its lease by renewal until it
// is recorded: no relay reaps it, so a second relay does not publish it again, and a row
// acked on its last attempt is not sent to dead by the reap.
func TestRelayKeepsLeaseWhileRecording(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		maxAttempts int
	}{
		{"rows with attempts left are not published twice", 5},
		{"rows acked on their last attempt do not go dead", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, testutil.KafkaBrokers(t), 1)
			const rows = 8
			// 8 × 400 ms: over three leases, within one recording attempt's 5 s.
			cfg := e.slowRecording(t, "0.4")
			cfg.Lease = time.Second
			first := e.start(cfg, "first", relay.Options{})
			waitReady(t, first.r)
			e.insert(rows, rows, tc.maxAttempts)
			waitFor(t, 10*time.Second, "the batch recording", func() bool { return e.counts()["publishing"] == rows })
			// A second relay, whose reaper and claims would take over any expired lease.
			second := e.start(cfg, "second", relay.Options{})
			waitFor(t, 30*time.Second, "every row recorded", func() bool {
				c := e.counts()
				return c["publishing"]+c["pending"] == 0
			})
			if c := e.counts(); len(c) != 0 {
				t.Errorf("rows left %v, want none (all acked and deleted)", c)
			}
			for _, r := range []*running{first, second} {
				for _, s := range []string{`recsys_relay_reaped_total{outcome="requeued"}`, `recsys_relay_reaped_total{outcome="dead"}`,
					"recsys_relay_fenced_total", "recsys_relay_lease_lost_total"} {
					if v := metric(r.deps.Metrics, s); v != 0 {
						t.Errorf("%s = %v, want 0: the lease was not kept while recording", s, v)
					}
				}
			}
			if d, dups := readTopic(t, e.brokers, e.kcfg.TopicWatches).distinct(); d != rows || dups != 0 {
				t.Errorf("consumer saw %d distinct events and %d duplicates, want %d and 0", d, dups, rows)
			}
		})
	}
}

// A database that refuses to record for a moment (a failover, a restart) does not make the
// relay give up recording a batch Kafka acked while it still holds the lease: it keeps trying,
// so the batch is recorded once the database is back, instead of being reaped and published
// again by a second relay after the lease.
func TestRelayRetriesRecordingThroughDatabaseBlip(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.KafkaBrokers(t), 1)
	ctx := context.Background()
	const rows = 4
	// Recording fails while refuse_record has a row: in a test's database only the relay
	// deletes outbox rows.
	if _, err := e.pool.Exec(ctx, `
CREATE TABLE refuse_record (x int);
INSERT INTO refuse_record VALUES (1);
CREATE FUNCTION refuse_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM refuse_record) THEN RAISE EXCEPTION 'database unavailable (test)'; END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER refuse_record BEFORE DELETE ON event_outbox FOR EACH ROW EXECUTE FUNCTION refuse_record()`); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.Retention = 0 // delete on ack: the trigger refuses the recording
	cfg.Workers = 1
	cfg.Lease = 4 * time.Second
	first := e.start(cfg, "first", relay.Options{})
	waitReady(t, first.r)
	second := e.start(cfg, "second", relay.Options{})
	waitReady(t, second.r)
	e.insert(rows, rows, 5)
	waitFor(t, 10*time.Second, "a failed recording", func() bool {
		return metric(first.deps.Metrics, `reco_outbox_relay_errors_total{stage="process"}`)+
			metric(second.deps.Metrics, `reco_outbox_relay_errors_total{stage="process"}`) > 0
	})
	time.Sleep(1500 * time.Millisecond) // the blip: well within the lease
	if _, err := e.pool.Exec(ctx, `DELETE FROM refuse_record`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "every row recorded", func() bool { return len(e.counts()) == 0 })
	for _, r := range []*running{first, second} {
		for _, s := range []string{`recsys_relay_reaped_total{outcome="requeued"}`, "recsys_relay_fenced_total"} {
			if v := metric(r.deps.Metrics, s); v != 0 {
				t.Errorf("%s = %v, want 0: the recording gave up within the lease", s, v)
			}
		}
	}
	if d, dups := readTopic(t, e.brokers, e.kcfg.TopicWatches).distinct(); d != rows || dups != 0 {
		t.Errorf("consumer saw %d distinct events and %d duplicates, want %d and 0", d, dups, rows)
	}
}

// slowRecording has each acked row the relay's recording deletes take sleep seconds (a
// trigger): a slow database. The config it returns deletes rows on ack, so the trigger slows
// the recording, with one worker.
func (e *env) slowRecording(t *testing.T, sleep string) *relay.Config {
	t.Helper()
	if _, err := e.pool.Exec(context.Background(), `
CREATE FUNCTION slow_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(`+sleep+`); RETURN OLD; END $$;
CREATE TRIGGER slow_record BEFORE DELETE ON event_outbox FOR EACH ROW EXECUTE FUNCTION slow_record()`); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.Retention = 0
	cfg.Workers = 1
	return cfg
}

// A recording that takes longer than a first attempt's 5 s every time (a slow database: here
// a trigger sleeping 3 s on each of the batch's 2 acked rows it deletes) is recorded by a
// later, longer attempt. With a fixed 5 s per attempt it never was: each attempt was cancelled
// and rolled back, the rows were reaped after the lease and published again, and failed to
// record the same way, until they went dead. The relay's sessions are opened as in
// production (postgres.Open): their server-side statement_timeout, 5 s by default, cancelled
// the 6 s statement of every longer attempt too.
func TestRelayRecordsOnASlowDatabase(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.KafkaBrokers(t), 1)
	pc := postgres.DefaultConfig()
	pc.DSN, pc.MaxConns = e.dsn, 40
	pool, err := postgres.Open(context.Background(), pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	e.pool = pool
	const rows = 2
	cfg := e.slowRecording(t, "3")
	// Long enough that the rows' lease, which the renewals skip while an attempt holds
	// their locks, outlasts the first attempt and its retry.
	cfg.Lease = 12 * time.Second
	run := e.start(cfg, "r1", relay.Options{})
	waitReady(t, run.r)
	e.insert(rows, rows, 5)
	waitFor(t, 45*time.Second, "every row recorded", func() bool { return len(e.counts()) == 0 })
	for _, s := range []string{`recsys_relay_reaped_total{outcome="requeued"}`, `recsys_relay_reaped_total{outcome="dead"}`, "recsys_relay_fenced_total"} {
		if v := metric(run.deps.Metrics, s); v != 0 {
			t.Errorf("%s = %v, want 0", s, v)
		}
	}
	if d, dups := readTopic(t, e.brokers, e.kcfg.TopicWatches).distinct(); d != rows || dups != 0 {
		t.Errorf("consumer saw %d distinct events and %d duplicates, want %d and 0", d, dups, rows)
	}
}
