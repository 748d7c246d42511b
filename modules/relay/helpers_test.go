package relay_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
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
	"recsys/pkg/testutil"
)

// env is one test's database, topics and clients.
type env struct {
	t       testing.TB
	dsn     string
	pool    *pgxpool.Pool
	brokers []string
	kcfg    kafka.Config
}

// newBenchEnv is newEnv on the shared broker for a benchmark.
func newBenchEnv(b *testing.B, partitions int) *env {
	return newEnv(b, testutil.KafkaBrokers(b), partitions)
}

func newEnv(t testing.TB, brokers []string, partitions int) *env {
	t.Helper()
	dsn := testutil.MigratedDatabase(t)
	kc := kafka.DefaultConfig()
	kc.Brokers = brokers
	kc.ClientID = "recsys-relay-test"
	kc.RequestTimeout = 5 * time.Second
	kc.TopicImpressions = testutil.KafkaTopic(t, "recsys.test.impressions.")
	kc.TopicWatches = testutil.KafkaTopic(t, "recsys.test.watches.")
	kc.Partitions = partitions
	kc.ReplicationFactor = 1
	// Room for the relays' workers and background loops plus a test's own open transactions.
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	return &env{t: t, dsn: dsn, pool: testutil.Pool(t, dsn+sep+"pool_max_conns=40"), brokers: brokers, kcfg: kc}
}

// deps builds what the runner would hand the module, with a private metrics set.
func (e *env) deps(logPrefix string) infra.Deps {
	lvl := slog.LevelWarn
	if testing.Verbose() {
		lvl = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(&testWriter{t: e.t, prefix: logPrefix}, &slog.HandlerOptions{Level: lvl}))
	return infra.Deps{Name: "relay", Log: log, Metrics: metrics.NewSet(), PG: e.pool, Kafka: kafka.New(e.kcfg),
		Config: infra.Config{Kafka: e.kcfg}}
}

type testWriter struct {
	t      testing.TB
	prefix string
	mu     sync.Mutex
	done   bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(w.prefix + strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// testConfig shortens every interval so failure paths run in test time.
func testConfig() *relay.Config {
	c := relay.NewConfig()
	c.BatchSize = 200
	c.PollInterval = 50 * time.Millisecond
	c.Lease = 2 * time.Second
	c.RetryBase = 20 * time.Millisecond
	c.RetryMax = 200 * time.Millisecond
	c.PublishTimeout = 3 * time.Second
	c.ProbeInterval = 100 * time.Millisecond
	c.StartupBackoff = 100 * time.Millisecond
	c.ShutdownTimeout = 5 * time.Second
	c.ReapInterval = 100 * time.Millisecond
	c.SnapshotInterval = 200 * time.Millisecond
	// Keep acked rows as 'published' so tests can read every row's final state; the
	// delete-on-ack default has its own test.
	c.Retention = time.Hour
	return c
}

// running is a relay run in a goroutine, stopped at the end of the test.
type running struct {
	r    *relay.Relay
	deps infra.Deps
	stop func()
}

func (e *env) start(cfg *relay.Config, name string, o relay.Options) *running {
	e.t.Helper()
	if err := cfg.Validate(); err != nil {
		e.t.Fatal(err)
	}
	d := e.deps(name + ": ")
	if o.Owner == "" {
		o.Owner = name
	}
	r, err := relay.NewRelay(cfg, d, o)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					e.t.Errorf("relay %s: %v", name, err)
				}
			case <-time.After(30 * time.Second):
				e.t.Errorf("relay %s did not stop", name)
			}
		})
	}
	e.t.Cleanup(stop)
	return &running{r: r, deps: d, stop: stop}
}

// insert writes n outbox rows for keys "u0".."u<keys-1>" (row i has key i % keys) to the
// watches topic with COPY, then notifies, and returns their event ids in id order.
func (e *env) insert(n, keys int, maxAttempts int) []string {
	e.t.Helper()
	return e.insertPadded(n, keys, maxAttempts, 0)
}

// fill pre-fills the outbox for a benchmark with payloads of about payloadBytes.
func (e *env) fill(n, keys, payloadBytes int) {
	e.t.Helper()
	e.insertPadded(n, keys, 25, payloadBytes)
}

func (e *env) insertPadded(n, keys int, maxAttempts int, payloadBytes int) []string {
	e.t.Helper()
	pad := ""
	if payloadBytes > 80 {
		pad = strings.Repeat("x", payloadBytes-80)
	}
	ctx := context.Background()
	ids := make([]string, n)
	src := make([][]any, n)
	prefix := testutil.Unique("ev")
	for i := range n {
		ids[i] = fmt.Sprintf("%s-%d", prefix, i)
		key := "u" + strconv.Itoa(i%keys)
		src[i] = []any{ids[i], "watch", e.kcfg.TopicWatches, key,
			[]byte(fmt.Sprintf(`{"event_id":%q,"user_id":%q,"seq":%d,"pad":%q}`, ids[i], key, i, pad)), int32(maxAttempts), "corr-" + ids[i]}
	}
	err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"event_outbox"},
			[]string{"event_id", "event_type", "topic", "msg_key", "payload", "max_attempts", "correlation_id"},
			pgx.CopyFromRows(src)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "SELECT pg_notify($1, '')", outbox.Channel)
		return err
	})
	if err != nil {
		e.t.Fatalf("insert outbox rows: %v", err)
	}
	if n >= 10_000 {
		// As autovacuum would soon after a bulk load: without statistics the planner may sort
		// every pending row to find a window's first few thousand.
		if _, err := e.pool.Exec(ctx, "ANALYZE event_outbox"); err != nil {
			e.t.Fatal(err)
		}
	}
	return ids
}

func (e *env) counts() map[string]int {
	e.t.Helper()
	rows, err := e.pool.Query(context.Background(), `SELECT status, count(*) FROM event_outbox GROUP BY status`)
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]int{}
	for rows.Next() {
		var s string
		var n int
		if err := rows.Scan(&s, &n); err != nil {
			e.t.Fatal(err)
		}
		out[s] = n
	}
	return out
}

// outboxRows counts the outbox's rows, whatever their status.
func (e *env) outboxRows() int {
	e.t.Helper()
	var n int
	if err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM event_outbox`).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitPublished waits until n rows are published, polling a count over the published rows'
// partial index (not the whole table, so the wait does not load the database it measures).
func (e *env) waitPublished(n int, timeout time.Duration) {
	e.t.Helper()
	waitFor(e.t, timeout, fmt.Sprintf("%d rows published", n), func() bool {
		var got int
		err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM event_outbox WHERE status = 'published'`).Scan(&got)
		if err == nil && got < n {
			time.Sleep(100 * time.Millisecond)
		}
		return err == nil && got >= n
	})
}

// logTimings logs the relay's mean claim, publish and complete durations and batch size.
func logTimings(t testing.TB, name string, set *metrics.Set) {
	t.Helper()
	mean := func(h string) string {
		n := metric(set, h+"_count")
		if n == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1fms", 1000*metric(set, h+"_sum")/n)
	}
	n := metric(set, "recsys_relay_batch_size_count")
	size := 0.0
	if n > 0 {
		size = metric(set, "recsys_relay_batch_size_sum") / n
	}
	t.Logf("%s: %v batches of %.0f events on average; claim mean %s p99 <= %s, publish mean %s p99 <= %s, complete mean %s", name, n, size,
		mean("recsys_relay_claim_duration_seconds"), p99Bucket(set, "recsys_relay_claim_duration_seconds"),
		mean("recsys_relay_publish_duration_seconds"), p99Bucket(set, "recsys_relay_publish_duration_seconds"),
		mean("recsys_relay_complete_duration_seconds"))
}

// p99Bucket is the upper bound of the histogram bucket holding the 99th percentile.
func p99Bucket(set *metrics.Set, h string) string {
	var b bytes.Buffer
	set.WritePrometheus(&b)
	total := metric(set, h+"_count")
	sc := bufio.NewScanner(&b)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, h+`_bucket{le="`)
		if !ok {
			continue
		}
		le, val, _ := strings.Cut(rest, `"} `)
		if n, _ := strconv.ParseFloat(val, 64); total > 0 && n >= 0.99*total {
			return le + "s"
		}
	}
	return "-"
}

// consumed is what a consumer read back from a topic, per partition in offset order.
type consumed struct {
	partitions [][]kafkago.Message
}

func (c consumed) all() []kafkago.Message {
	var out []kafkago.Message
	for _, p := range c.partitions {
		out = append(out, p...)
	}
	return out
}

func header(m kafkago.Message, key string) string {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// distinct returns the number of distinct event_id headers and of duplicate messages.
func (c consumed) distinct() (distinct, dups int) {
	seen := map[string]bool{}
	for _, m := range c.all() {
		id := header(m, "event_id")
		if seen[id] {
			dups++
			continue
		}
		seen[id] = true
	}
	return len(seen), dups
}

// readTopic reads every message of topic up to each partition's high-water mark at call time.
func readTopic(t testing.TB, brokers []string, topic string) consumed {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := kafkago.DialContext(ctx, "tcp", brokers[0])
	if err != nil {
		t.Fatal(err)
	}
	parts, err := conn.ReadPartitions(topic)
	conn.Close()
	if err != nil {
		t.Fatalf("read partitions of %s: %v", topic, err)
	}
	out := consumed{partitions: make([][]kafkago.Message, len(parts))}
	var wg sync.WaitGroup
	errc := make(chan error, len(parts))
	for _, p := range parts {
		wg.Go(func() {
			lc, err := kafkago.DialLeader(ctx, "tcp", brokers[0], topic, p.ID)
			if err != nil {
				errc <- err
				return
			}
			last, err := lc.ReadLastOffset()
			lc.Close()
			if err != nil || last == 0 {
				errc <- err
				return
			}
			r := kafkago.NewReader(kafkago.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p.ID,
				MinBytes: 1, MaxBytes: 16 << 20, MaxWait: 100 * time.Millisecond})
			defer r.Close()
			var msgs []kafkago.Message
			for {
				m, err := r.ReadMessage(ctx)
				if err != nil {
					errc <- fmt.Errorf("read partition %d: %w", p.ID, err)
					return
				}
				msgs = append(msgs, m)
				if m.Offset >= last-1 {
					break
				}
			}
			out.partitions[p.ID] = msgs
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// metric returns the value of one series of a metrics set ("" name prefix match on the
// whole series name including labels), 0 when absent.
func metric(set *metrics.Set, series string) float64 {
	var b bytes.Buffer
	set.WritePrometheus(&b)
	sc := bufio.NewScanner(&b)
	for sc.Scan() {
		line := sc.Text()
		if name, val, ok := strings.Cut(line, " "); ok && name == series {
			f, _ := strconv.ParseFloat(val, 64)
			return f
		}
	}
	return 0
}

// batchEvent is the i-th event of insertBatches, for user "bu<i % users>".
func batchEvent(prefix string, i, users int, pad string) outbox.Message {
	id := prefix + "-" + strconv.Itoa(i)
	user := "bu" + strconv.Itoa(i%users)
	return outbox.Message{EventID: id, EventType: "watch", Key: user, CorrelationID: "corr-" + id, SchemaVersion: 1,
		Payload: fmt.Appendf(nil, `{"event_id":%q,"user_id":%q,"seq":%d,"pad":%q}`, id, user, i, pad)}
}

// insertBatches writes events for users "bu0".."bu<users-1>" (event i belongs to user
// i % users) as the ingest writer does: per group commit of group events, one batch row
// (payload_format 2) per lane holding that group's events of the lane in event order, msg_key
// the lane key. It returns the events' ids in generation order (index i in the id's suffix)
// and the number of rows written.
func (e *env) insertBatches(events, users, lanes, group, payloadBytes, maxAttempts int) ([]string, int) {
	e.t.Helper()
	pad := ""
	if payloadBytes > 110 {
		pad = strings.Repeat("x", payloadBytes-110)
	}
	prefix := testutil.Unique("bev")
	ids := make([]string, events)
	var src [][]any
	for g := 0; g < events; g += group {
		payloads := make([][]byte, lanes)
		counts := make([]int32, lanes)
		first := make([]string, lanes)
		for i := g; i < min(g+group, events); i++ {
			m := batchEvent(prefix, i, users, pad)
			ids[i] = m.EventID
			l := outbox.Lane(m.Key, lanes)
			if counts[l] == 0 {
				first[l] = m.EventID
			}
			payloads[l] = outbox.AppendFrame(payloads[l], m)
			counts[l]++
		}
		for l := range lanes {
			if counts[l] > 0 {
				src = append(src, []any{"batch:" + first[l], "watch", e.kcfg.TopicWatches, outbox.LaneKey(l), payloads[l],
					int32(maxAttempts), int16(outbox.FormatBatch), counts[l]})
			}
		}
	}
	e.copyRows(src, []string{"event_id", "event_type", "topic", "msg_key", "payload", "max_attempts", "payload_format", "event_count"})
	return ids, len(src)
}

// insertBatchRow writes one batch row of msgs with msg_key key and returns its id.
func (e *env) insertBatchRow(key string, msgs []outbox.Message) int64 {
	e.t.Helper()
	var payload []byte
	for _, m := range msgs {
		payload = outbox.AppendFrame(payload, m)
	}
	return e.insertRawBatchRow(key, payload, len(msgs), "batch:"+msgs[0].EventID)
}

func (e *env) insertRawBatchRow(key string, payload []byte, count int, eventID string) int64 {
	e.t.Helper()
	var id int64
	err := e.pool.QueryRow(context.Background(), `
WITH ins AS (
    INSERT INTO event_outbox (event_id, event_type, topic, msg_key, payload, max_attempts, payload_format, event_count)
    VALUES ($1, 'watch', $2, $3, $4, 5, 2, $5) RETURNING id
)
SELECT id FROM ins, pg_notify('recsys_outbox', '')`, eventID, e.kcfg.TopicWatches, key, payload, count).Scan(&id)
	if err != nil {
		e.t.Fatalf("insert batch row: %v", err)
	}
	return id
}

// copyRows COPYs rows into event_outbox in one transaction that notifies the relays.
func (e *env) copyRows(src [][]any, cols []string) {
	e.t.Helper()
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"event_outbox"}, cols, pgx.CopyFromRows(src)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "SELECT pg_notify($1, '')", outbox.Channel)
		return err
	})
	if err != nil {
		e.t.Fatalf("insert outbox rows: %v", err)
	}
	if len(src) >= 1000 {
		if _, err := e.pool.Exec(ctx, "ANALYZE event_outbox"); err != nil {
			e.t.Fatal(err)
		}
	}
}

// genIndex is the generation index in an insertBatches event id.
func genIndex(t testing.TB, eventID string) int {
	t.Helper()
	i, err := strconv.Atoi(eventID[strings.LastIndexByte(eventID, '-')+1:])
	if err != nil {
		t.Fatalf("event id %q: %v", eventID, err)
	}
	return i
}

// createLimitedTopic creates topic with max.message.bytes limit before a relay provisions it
// (a topic created by ops, or a managed Kafka's lower default).
func (e *env) createLimitedTopic(topic string, limit int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := kafka.New(e.kcfg).Admin().CreateTopics(ctx, &kafkago.CreateTopicsRequest{Topics: []kafkago.TopicConfig{{
		Topic: topic, NumPartitions: e.kcfg.Partitions, ReplicationFactor: 1,
		ConfigEntries: []kafkago.ConfigEntry{{ConfigName: "max.message.bytes", ConfigValue: strconv.Itoa(limit)}},
	}}})
	if err == nil {
		err = resp.Errors[topic]
	}
	if err != nil {
		e.t.Fatalf("create topic %s: %v", topic, err)
	}
}

// describeDenied is the real broker for a relay without the DescribeConfigs ACL.
type describeDenied struct{ c *kafka.Client }

func (b describeDenied) EnsureTopics(ctx context.Context, topics ...string) error {
	return b.c.EnsureTopics(ctx, topics...)
}

func (b describeDenied) Probe(ctx context.Context) error { return b.c.Ping(ctx, time.Second) }

func (b describeDenied) MaxMessageBytes(_ context.Context, topics ...string) (map[string]int64, error) {
	return nil, fmt.Errorf("describe configs of topic %s: %w", topics[0], kafkago.TopicAuthorizationFailed)
}
