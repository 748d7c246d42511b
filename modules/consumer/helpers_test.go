package consumer_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"
	kafkago "github.com/segmentio/kafka-go"

	"recsys/modules/consumer"
	"recsys/pkg/events"
	"recsys/pkg/features"
	"recsys/pkg/featurestore"
	"recsys/pkg/featurestore/fstest"
	"recsys/pkg/infra"
	"recsys/pkg/kafka"
	"recsys/pkg/postgres"
	"recsys/pkg/ranking"
	"recsys/pkg/redis"
	"recsys/pkg/testutil"
)

// env is one test's isolated world on the shared servers: a database, topics, a consumer
// group and a Redis key prefix of its own.
type env struct {
	DSN, RedisURL, Prefix, Group string
	Brokers                      []string
	TopicImp, TopicWatch         string
	MaxBatch                     int
	MaxInFlight                  int           // 0: the default
	Linger                       time.Duration // 0: the default
	CommitInterval               time.Duration // 0: the default; < 0: after every batch
	NoImpressionsOverlay         bool          // the write path of a rollout from a release without overlays

	pool      *pgxpool.Pool
	rd        rueidis.Client
	redisPriv *testutil.Private
	kc        *kafka.Client
	w         *kafka.Producer
	fcfg      features.Config
	start     int64
}

func testFeatures() features.Config {
	c := features.DefaultConfig()
	c.HistorySize = 20
	c.WatchedCap = 40
	c.ImpressionMemory = 1000 // no impression trimming: it would depend on cross-topic order
	c.CovisWindow = 5
	c.NeighboursPerItem = 200
	return c
}

func newEnv(t testing.TB) *env {
	t.Helper()
	return newEnvOn(t, testutil.KafkaBrokers(t))
}

// newEnvOn is newEnv on the given Kafka brokers.
func newEnvOn(t testing.TB, brokers []string) *env {
	t.Helper()
	// A private Redis: other packages run load tests against the shared one, and a
	// blocked server would only test our 1 s client timeout.
	redisPriv := testutil.StartPrivate(t, "redis")
	e := &env{DSN: testutil.MigratedDatabase(t), RedisURL: redisPriv.URL, redisPriv: redisPriv, Brokers: brokers,
		Prefix: testutil.Unique("cons") + ":", Group: testutil.Unique("g-"), TopicImp: testutil.KafkaTopic(t, "imp-"),
		TopicWatch: testutil.KafkaTopic(t, "wat-"), MaxBatch: 500, fcfg: testFeatures(),
		start: time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC).UnixMilli()}
	e.pool = testutil.Pool(t, e.DSN)
	rcfg := redis.DefaultConfig()
	rcfg.URL = e.RedisURL
	rd, err := redis.Open(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	e.rd = rd
	kcfg := kafka.DefaultConfig()
	kcfg.Brokers = e.Brokers
	kcfg.Partitions = 3
	e.kc = kafka.New(kcfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.kc.EnsureTopics(ctx, e.TopicImp, e.TopicWatch); err != nil {
		t.Fatal(err)
	}
	e.w = e.kc.NewProducer(kafka.ProducerOptions{})
	t.Cleanup(func() {
		_ = e.w.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		deleteKeys(e.rd, e.Prefix)
		_, _ = e.kc.Admin().DeleteTopics(ctx, &kafkago.DeleteTopicsRequest{Topics: []string{e.TopicImp, e.TopicWatch}})
		rd.Close()
	})
	return e
}

func deleteKeys(rd rueidis.Client, prefix string) {
	ctx := context.Background()
	var cursor uint64
	for {
		e, err := rd.Do(ctx, rd.B().Scan().Cursor(cursor).Match(prefix+"*").Count(1000).Build()).AsScanEntry()
		if err != nil {
			return
		}
		if len(e.Elements) > 0 {
			_ = rd.Do(ctx, rd.B().Del().Key(e.Elements...).Build()).Error()
		}
		if cursor = e.Cursor; cursor == 0 {
			return
		}
	}
}

func (e *env) deps(t testing.TB, set *metrics.Set) infra.Deps {
	cfg := infra.DefaultConfig()
	cfg.Kafka.Brokers = e.Brokers
	cfg.Kafka.TopicImpressions, cfg.Kafka.TopicWatches = e.TopicImp, e.TopicWatch
	cfg.Kafka.Partitions = 3
	cfg.Redis.KeyPrefix = e.Prefix
	cfg.Redis.URL = e.RedisURL
	cfg.PG.DSN = e.DSN
	return infra.Deps{Name: "consumer", Log: slog.New(slog.DiscardHandler), Metrics: set, PG: e.pool, Redis: e.rd,
		Kafka: kafka.New(cfg.Kafka), Config: cfg}
}

func (e *env) config() *consumer.Config {
	c := consumer.NewConfig()
	c.GroupID = e.Group
	c.MaxBatch = e.MaxBatch
	if e.MaxInFlight > 0 {
		c.MaxInFlight = e.MaxInFlight
	}
	if e.Linger > 0 {
		c.Linger = e.Linger
	}
	if e.CommitInterval != 0 {
		c.CommitInterval = max(e.CommitInterval, 0)
	}
	c.HealInterval = 200 * time.Millisecond
	c.RetryMaxBackoff = 2 * time.Second
	c.Features = e.fcfg
	c.ImpressionsOverlay = !e.NoImpressionsOverlay
	return c
}

// running is an in-process consumer.
type running struct {
	set    *metrics.Set
	mod    interface{ Ready(context.Context) error }
	cancel context.CancelFunc
	done   chan error
	err    error // Run's, once stopped
}

func (e *env) startConsumer(t testing.TB) *running { return e.startWith(t, e.config(), nil) }

// startWith runs a consumer of cfg logging to log (nil: the deps' logger) until stop or the
// end of the test.
func (e *env) startWith(t testing.TB, cfg *consumer.Config, log *slog.Logger) *running {
	t.Helper()
	set := metrics.NewSet()
	d := e.deps(t, set)
	if log != nil {
		d.Log = log
	}
	m, err := consumer.New(cfg, d)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{set: set, mod: m.(interface{ Ready(context.Context) error }), cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- m.Run(ctx) }()
	t.Cleanup(r.stop)
	return r
}

// stop cancels the consumer and waits for Run, whose error is then r.err.
func (r *running) stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	r.err = <-r.done
}

// counter sums the series of the set whose line contains every part.
func counter(set *metrics.Set, parts ...string) float64 {
	var b bytes.Buffer
	set.WritePrometheus(&b)
	total := 0.0
	sc := bufio.NewScanner(&b)
next:
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		for _, p := range parts {
			if !strings.Contains(line, p) {
				continue next
			}
		}
		if i := strings.LastIndexByte(line, ' '); i > 0 {
			v, _ := strconv.ParseFloat(line[i+1:], 64)
			total += v
		}
	}
	return total
}

func (e *env) generate(seed uint64, n int) []events.Any {
	evs := fstest.Generate(fstest.GenConfig{Seed: seed, Users: 40, Items: 120, Events: n, StartMs: e.start, StepMs: 1000,
		Prefix: fmt.Sprintf("s%d", seed), DisjointImpressions: true})
	e.start += int64(n) * 2000
	return evs
}

func (e *env) message(t testing.TB, ev events.Any) kafkago.Message {
	b, err := events.Encode(ev)
	if err != nil {
		t.Fatal(err)
	}
	topic := e.TopicWatch
	if ev.Kind() == events.KindImpression {
		topic = e.TopicImp
	}
	return kafkago.Message{Topic: topic, Key: []byte(ev.User()), Value: b, Headers: []kafkago.Header{
		{Key: events.HeaderEventID, Value: []byte(ev.ID())},
		{Key: events.HeaderEventType, Value: []byte(ev.Kind())},
		{Key: events.HeaderSchemaVersion, Value: []byte("1")},
		{Key: events.HeaderCorrelationID, Value: []byte("test")},
	}}
}

func (e *env) produce(t testing.TB, evs []events.Any) {
	t.Helper()
	msgs := make([]kafkago.Message, len(evs))
	for i, ev := range evs {
		msgs[i] = e.message(t, ev)
	}
	e.produceRaw(t, msgs...)
}

func (e *env) produceRaw(t testing.TB, msgs ...kafkago.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := 0; i < len(msgs); i += 5000 {
		testutil.ProduceAll(t, ctx, e.w, msgs[i:min(i+5000, len(msgs))]...)
	}
}

// insertRaw writes the events into the ingest tables, as the API would have.
func (e *env) insertRaw(t testing.TB, evs []events.Any) {
	t.Helper()
	ctx := context.Background()
	for _, ev := range evs {
		var err error
		switch x := ev.(type) {
		case *events.Impression:
			positions, items := make([]int64, len(x.Items)), make([]string, len(x.Items))
			for i, it := range x.Items {
				positions[i], items[i] = it.Position, it.ItemID
			}
			_, err = e.pool.Exec(ctx, `INSERT INTO impression_events (event_id, positions, item_ids, user_id, session_id, request_id, ts_ms, ts,
  server_received_ts_ms) VALUES ($1,$2,$3,$4,$5,$6,$7::bigint, to_timestamp($7::bigint/1000.0), $8)`,
				x.EventID, positions, items, x.UserID, x.SessionID, x.RequestID, x.TsMs, x.ServerReceivedTsMs)
		case *events.Watch:
			_, err = e.pool.Exec(ctx, `INSERT INTO watches (event_id, user_id, session_id, request_id, item_id, watch_time_sec,
  percent_watched, ended, ts_ms, ts, server_received_ts_ms) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9::bigint, to_timestamp($9::bigint/1000.0), $10)`,
				x.EventID, x.UserID, x.SessionID, x.RequestID, x.ItemID, x.WatchTimeSec, x.PercentWatched, x.Ended, x.TsMs, x.ServerReceivedTsMs)
		case *events.Legacy:
			_, err = e.pool.Exec(ctx, `INSERT INTO legacy_events (event_id, user_id, item_id, event_type, ts, ts_ms) VALUES ($1,$2,$3,$4,$5,$6)`,
				x.EventID, x.UserID, x.ItemID, x.EventType, x.Ts, x.TimeMs())
		}
		if err != nil {
			t.Fatalf("insert raw event: %v", err)
		}
	}
}

func (e *env) applied(t testing.TB) int {
	t.Helper()
	var n int
	if err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM feature_applied`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *env) waitApplied(t testing.TB, n int, timeout time.Duration) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d applied events", n), timeout, func() bool { return e.applied(t) >= n })
	if got := e.applied(t); got != n {
		t.Fatalf("%d applied events, want %d", got, n)
	}
}

func (e *env) tables(t testing.TB, nowMs int64) fstest.Tables {
	t.Helper()
	tb, err := fstest.ReadTables(context.Background(), e.pool, nowMs)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

// rebuilt recomputes the durable state from the raw tables (features rebuild --from-events)
// and returns it.
func (e *env) rebuilt(t testing.TB, nowMs int64) fstest.Tables {
	t.Helper()
	st := featurestore.New(e.pool, e.rd, e.Prefix, e.fcfg, nil)
	if _, err := st.RebuildFromEvents(context.Background(), 700, nil); err != nil {
		t.Fatalf("rebuild from events: %v", err)
	}
	return e.tables(t, nowMs)
}

// compareRedisToPG checks that the Redis copy serves what PostgreSQL holds, for every user.
func (e *env) redisMatchesPG(t testing.TB, users []string, nowMs int64, report bool) bool {
	ctx := context.Background()
	rl := featurestore.NewRedisLoader(e.rd, e.Prefix, e.fcfg)
	pl := featurestore.NewPGLoader(e.pool, e.Prefix, e.fcfg)
	opts := snapshotOpts()
	var tb fstest.TB = quiet{}
	if report {
		tb = t
	}
	for _, u := range users {
		want, err := pl.Snapshot(ctx, u, nowMs, opts)
		if err != nil {
			t.Fatal(err)
		}
		got, err := rl.Snapshot(ctx, u, nowMs, opts)
		if err != nil {
			if report {
				t.Errorf("redis snapshot %s: %v", u, err)
			}
			return false
		}
		if !fstest.EqualSnapshots(tb, "redis vs postgres "+u, want, got) {
			return false
		}
	}
	return true
}

// listsMatch compares every co-visitation list in PostgreSQL with its Redis copy, whole
// (every member and its strength, not only the top N a Snapshot reads); the copy must hold no
// other list.
func (e *env) listsMatch(t testing.TB, report bool) bool {
	t.Helper()
	ctx := context.Background()
	rows, _ := e.pool.Query(ctx, `SELECT item_id, neighbours FROM feature_neighbours WHERE length(neighbours) > 0`)
	want := map[string]string{}
	var id string
	var blob []byte
	if _, err := pgx.ForEachRow(rows, []any{&id, &blob}, func() error {
		l, err := featurestore.DecodeNeighbours(blob)
		if err != nil {
			return err
		}
		parts := make([]string, len(l))
		for i, x := range l {
			parts[i] = fmt.Sprintf("%s=%v", x.ItemID, x.Score)
		}
		slices.Sort(parts)
		want[id] = strings.Join(parts, " ")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	keys, err := e.rd.Do(ctx, e.rd.B().Keys().Pattern(e.Prefix+"nb:*").Build()).AsStrSlice()
	if err != nil {
		t.Fatal(err)
	}
	ok := len(keys) == len(want)
	if !ok && report {
		t.Errorf("%d lists in redis, %d in postgres", len(keys), len(want))
	}
	for _, key := range keys {
		zs, err := e.rd.Do(ctx, e.rd.B().Zrange().Key(key).Min("0").Max("-1").Withscores().Build()).AsZScores()
		if err != nil {
			t.Fatal(err)
		}
		parts := make([]string, len(zs))
		for i, z := range zs {
			parts[i] = fmt.Sprintf("%s=%v", z.Member, z.Score)
		}
		slices.Sort(parts)
		item := strings.TrimPrefix(key, e.Prefix+"nb:")
		if got := strings.Join(parts, " "); got != want[item] {
			ok = false
			if report {
				t.Errorf("list of %s:\n redis    %s\n postgres %s", item, got, want[item])
			}
		}
	}
	return ok
}

type quiet struct{}

func (quiet) Helper()               {}
func (quiet) Errorf(string, ...any) {}

// checkConverged checks the end state of a run: the tables equal an in-order rebuild from the
// raw events, and the Redis copy matches PostgreSQL.
func (e *env) checkConverged(t testing.TB, evs []events.Any) {
	t.Helper()
	got := e.tables(t, e.start)
	if !e.redisMatchesPG(t, usersOf(evs), e.start, true) {
		t.Error("redis copy differs from postgres")
	}
	fstest.EqualTables(t, e.rebuilt(t, e.start), got)
}

func usersOf(evs []events.Any) []string {
	seen := map[string]bool{}
	var out []string
	for _, ev := range evs {
		if !seen[ev.User()] {
			seen[ev.User()] = true
			out = append(out, ev.User())
		}
	}
	return out
}

// childEnvVar carries a JSON env to a re-executed test binary that runs only the consumer
// (so the test can SIGKILL it).
const childEnvVar = "RECSYS_CONSUMER_TEST_CHILD"

func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnvVar); spec != "" {
		os.Exit(runChild(spec))
	}
	code := m.Run()
	testutil.RemoveRecsysBinary()
	os.Exit(code)
}

func runChild(spec string) int {
	var e env
	if err := json.Unmarshal([]byte(spec), &e); err != nil {
		fmt.Fprintln(os.Stderr, "child spec:", err)
		return 2
	}
	e.fcfg = testFeatures()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	pcfg := postgres.DefaultConfig()
	pcfg.DSN = e.DSN
	pool, err := postgres.Open(ctx, pcfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	rcfg := redis.DefaultConfig()
	rcfg.URL = e.RedisURL
	rd, err := redis.Open(rcfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	e.pool, e.rd = pool, rd
	d := e.deps(nil, metrics.NewSet())
	d.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	m, err := consumer.New(e.config(), d)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := m.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func snapshotOpts() ranking.SnapshotOptions {
	return ranking.SnapshotOptions{HistoryItems: 10, NeighboursPerItem: 20, TrendingN: 30, PopularN: 30, FreshN: 30}
}
