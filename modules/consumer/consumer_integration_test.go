package consumer_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	kafkago "github.com/segmentio/kafka-go"

	"recsys/pkg/events"
	"recsys/pkg/featurestore"
	"recsys/pkg/featurestore/fstest"
	"recsys/pkg/migrate"
	"recsys/pkg/testutil"
)

// Redelivering every message (a new consumer group reads the topics from the start) changes
// nothing: every event is counted as a duplicate and no row moves. It runs the write path
// without the impression counters' overlay (a rollout from a release without it); the other
// tests run the default.
func TestRedeliveryChangesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.NoImpressionsOverlay = true
	evs := e.generate(1, 1500)
	e.produce(t, evs)
	c1 := e.startConsumer(t)
	e.waitApplied(t, len(evs), 90*time.Second)
	waitFor(t, "consumer ready", 30*time.Second, func() bool { return c1.mod.Ready(context.Background()) == nil })
	// kafka-go's reader statistics are exported as they accumulate (its own counters restart
	// at every read of them).
	waitFor(t, "reader statistics exported", 10*time.Second, func() bool {
		return counter(c1.set, "recsys_consumer_kafka_rebalances_total") >= 1 && counter(c1.set, "recsys_consumer_kafka_dials_total") >= 1 &&
			counter(c1.set, "recsys_consumer_kafka_fetches_total") >= 1
	})
	c1.stop()
	if n := counter(c1.set, "recsys_consumer_user_writes_total", `kind="overlay"`); n != 0 {
		t.Errorf("%v users written through the overlay with it off", n)
	}
	if n := counter(c1.set, "recsys_consumer_user_writes_total"); n == 0 {
		t.Error("no user write counted")
	}
	now := e.start
	before := e.tables(t, now)
	var versions int64
	if err := e.pool.QueryRow(context.Background(), `SELECT sum(version) FROM feature_users`).Scan(&versions); err != nil {
		t.Fatal(err)
	}

	e.Group += "-again" // offsets reset: everything is delivered once more
	c2 := e.startConsumer(t)
	waitFor(t, "every message redelivered", 90*time.Second, func() bool {
		return counter(c2.set, "reco_feature_consumer_processed_total", `status="duplicate"`) >= float64(len(evs))
	})
	if n := counter(c2.set, "reco_feature_consumer_processed_total", `status="processed"`); n != 0 {
		t.Errorf("%v events applied again on redelivery", n)
	}
	if n := counter(c2.set, "recsys_consumer_user_writes_total"); n != 0 {
		t.Errorf("%v users written again on redelivery", n)
	}
	c2.stop()
	after := e.tables(t, now)
	fstest.EqualTables(t, before, after)
	var versions2 int64
	if err := e.pool.QueryRow(context.Background(), `SELECT sum(version) FROM feature_users`).Scan(&versions2); err != nil {
		t.Fatal(err)
	}
	if versions2 != versions {
		t.Errorf("user rows rewritten by redelivery: version sum %d -> %d", versions, versions2)
	}
	if !e.redisMatchesPG(t, usersOf(evs), now, true) {
		t.Error("redis copy differs from postgres")
	}
}

// Poison messages land in the DLQ with their raw bytes and coordinates while the partition
// keeps flowing; a replay after the payload is fixed applies the event exactly once.
func TestPoisonGoesToDLQAndReplayAppliesOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	before := e.generate(2, 300)
	after := e.generate(3, 300)
	user := before[0].User()
	poison := []kafkago.Message{
		{Topic: e.TopicWatch, Key: []byte(user), Value: []byte("not json at all"),
			Headers: []kafkago.Header{{Key: events.HeaderEventType, Value: []byte("watch")}}},
		{Topic: e.TopicWatch, Key: []byte(user), Value: []byte(`{"event_id":"short","user_id":"","session_id":"s","request_id":"r","ts_ms":1,"item_id":"x","watch_time_sec":-1,"event_type":"watch"}`),
			Headers: []kafkago.Header{{Key: events.HeaderEventType, Value: []byte("watch")}}},
		{Topic: e.TopicWatch, Key: []byte(user), Value: []byte(`{}`),
			Headers: []kafkago.Header{{Key: events.HeaderEventType, Value: []byte("rating")}}},
		{Topic: e.TopicImp, Key: []byte(user), Value: []byte(`{"event_type":"impression"}`),
			Headers: []kafkago.Header{{Key: events.HeaderEventType, Value: []byte("impression")}, {Key: events.HeaderSchemaVersion, Value: []byte("99")}}},
	}
	e.produce(t, before)
	e.produceRaw(t, poison...)
	e.produce(t, after)
	c := e.startConsumer(t)
	t0 := time.Now()
	e.waitApplied(t, len(before)+len(after), 90*time.Second) // the partition moved past the poison
	t.Logf("applied after %s", time.Since(t0))
	waitFor(t, "dlq metric", 10*time.Second, func() bool {
		return counter(c.set, `reco_feature_consumer_dlq_events_total{outcome="stored"}`) == 4
	})
	if n := counter(c.set, "reco_feature_consumer_processed_total", `status="invalid_payload"`); n != 3 {
		t.Errorf("invalid_payload = %v, want 3", n)
	}
	if n := counter(c.set, "reco_feature_consumer_processed_total", `status="invalid_event"`); n != 1 {
		t.Errorf("invalid_event = %v, want 1", n)
	}
	t.Logf("dlq metric after %s", time.Since(t0))
	ctx := context.Background()
	rows, err := e.pool.Query(ctx, `SELECT id, topic, kafka_partition, kafka_offset, payload, error, status FROM feature_dlq ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	type dl struct {
		id          int64
		topic       string
		part        int
		off         int64
		payload     []byte
		err, status string
	}
	var dlq []dl
	for rows.Next() {
		var d dl
		if err := rows.Scan(&d.id, &d.topic, &d.part, &d.off, &d.payload, &d.err, &d.status); err != nil {
			t.Fatal(err)
		}
		dlq = append(dlq, d)
	}
	if len(dlq) != 4 {
		t.Fatalf("%d dlq rows, want 4", len(dlq))
	}
	found := map[string]bool{}
	for _, d := range dlq {
		found[string(d.payload)] = true
		if d.err == "" || d.status != "pending" || d.topic == "" {
			t.Errorf("dlq row %+v: want an error, pending, a topic", d)
		}
		// The coordinates point at the poison message itself.
		conn, err := kafkago.DialLeader(ctx, "tcp", e.Brokers[0], d.topic, d.part)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := conn.Seek(d.off, kafkago.SeekAbsolute); err != nil {
			t.Fatal(err)
		}
		m, err := conn.ReadMessage(1 << 20)
		conn.Close()
		if err != nil || !bytes.Equal(m.Value, d.payload) {
			t.Errorf("dlq row %d: message at %s/%d/%d is %q (%v), stored %q", d.id, d.topic, d.part, d.off, m.Value, err, d.payload)
		}
	}
	for _, p := range poison {
		if !found[string(p.Value)] {
			t.Errorf("poison %q not in the dlq", p.Value)
		}
	}

	t.Logf("dlq checked after %s", time.Since(t0))
	// An operator fixes the undecodable payload; the replay applies it once.
	pct := 80.0
	fixed := &events.Watch{Common: events.Common{EventID: "fixed-event-0001", UserID: user, SessionID: "s", RequestID: "r",
		TsMs: 1_000_000_000_000 /* 2001: old events apply */}, EventType: "watch", ItemID: "replayed-item", WatchTimeSec: 30, PercentWatched: &pct}
	payload, _ := events.Encode(fixed)
	if _, err := e.pool.Exec(ctx, `UPDATE feature_dlq SET payload = $1 WHERE payload = 'not json at all'`, payload); err != nil {
		t.Fatal(err)
	}
	st := featurestore.New(e.pool, e.rd, e.Prefix, e.fcfg, nil)
	rep, err := st.ReplayDLQ(ctx, featurestore.ReplayOptions{Limit: 100, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.WouldApply != 1 || rep.Invalid != 3 || e.applied(t) != len(before)+len(after) {
		t.Fatalf("dry run: %+v, applied %d", rep, e.applied(t))
	}
	for range 2 {
		rep, err = st.ReplayDLQ(ctx, featurestore.ReplayOptions{Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
	}
	// The second replay sees only the three still-invalid entries.
	if rep.Applied != 0 || rep.Invalid != 3 || rep.Examined != 3 {
		t.Errorf("second replay: %+v", rep)
	}
	var watches int64
	if err := e.pool.QueryRow(ctx, `SELECT watches FROM feature_items WHERE item_id = 'replayed-item'`).Scan(&watches); err != nil || watches != 1 {
		t.Errorf("replayed item watches = %d (%v), want 1", watches, err)
	}
	var status string
	var attempts int
	if err := e.pool.QueryRow(ctx, `SELECT status, replay_attempts FROM feature_dlq WHERE payload = $1`, payload).Scan(&status, &attempts); err != nil ||
		status != "replayed" || attempts != 1 {
		t.Errorf("fixed entry: status %q attempts %d (%v)", status, attempts, err)
	}
	// Replaying an event that was applied before (same event_id) is a duplicate.
	dup, _ := events.Encode(before[1])
	if _, err := e.pool.Exec(ctx, `UPDATE feature_dlq SET payload = $1, headers = jsonb_build_object('event_type', $2::text)
WHERE id = (SELECT min(id) FROM feature_dlq WHERE status = 'pending')`, dup, string(before[1].Kind())); err != nil {
		t.Fatal(err)
	}
	rep, err = st.ReplayDLQ(ctx, featurestore.ReplayOptions{Limit: 100})
	if err != nil || rep.Duplicates != 1 || rep.Applied != 0 {
		t.Errorf("duplicate replay: %+v %v", rep, err)
	}
	if n := e.applied(t); n != len(before)+len(after)+1 {
		t.Errorf("applied %d, want %d", n, len(before)+len(after)+1)
	}
	waitFor(t, "redis copy of the replayed watch", 20*time.Second, func() bool {
		return e.redisMatchesPG(t, []string{user}, e.start, false)
	})
}

// Flushing the Redis copy while the consumer runs: the copy comes back by itself and new
// events keep landing in it.
func TestRedisFlushRepopulates(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	first := e.generate(4, 800)
	e.produce(t, first)
	c := e.startConsumer(t)
	e.waitApplied(t, len(first), 90*time.Second)
	users := usersOf(first)
	waitFor(t, "redis copy", 60*time.Second, func() bool { return e.redisMatchesPG(t, users, e.start, false) })

	deleteKeys(e.rd, e.Prefix) // FLUSHALL of our keys only: the Redis is shared
	rl := featurestore.NewRedisLoader(e.rd, e.Prefix, e.fcfg)
	if _, err := rl.Snapshot(context.Background(), users[0], e.start, snapshotOpts()); err == nil {
		// The heal loop may already have repopulated it (it runs every 200 ms here).
		t.Log("copy repopulated before the first read")
	}
	second := e.generate(5, 800)
	e.produce(t, second)
	e.waitApplied(t, len(first)+len(second), 90*time.Second)
	all := append(users, usersOf(second)...)
	waitFor(t, "redis copy after flush", 60*time.Second, func() bool { return e.redisMatchesPG(t, all, e.start, false) })
	if !e.redisMatchesPG(t, all, e.start, true) {
		t.Fatal("redis copy differs")
	}
	if n := counter(c.set, "recsys_consumer_redis_repopulations_total"); n < 2 {
		t.Errorf("repopulations = %v, want >= 2 (start and after the flush)", n)
	}
	waitFor(t, "consumer ready", 10*time.Second, func() bool { return c.mod.Ready(context.Background()) == nil })
}

// A fresh database: the consumer's first heal pass completes the copy of the empty store, and
// the first events then create the generation. Their write used to be refused as another
// generation's, which deleted the ready marker (/reco fell back to PostgreSQL and warned that
// Redis had lost its data) and repopulated the copy, on every `recsys dev` start and new
// deployment. The copy must take the first events and stay ready.
func TestFreshDatabaseKeepsTheFirstCopy(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.startConsumer(t)
	waitFor(t, "consumer ready", 60*time.Second, func() bool { return c.mod.Ready(context.Background()) == nil })
	if n := counter(c.set, "recsys_consumer_redis_repopulations_total"); n != 1 {
		t.Fatalf("repopulations at start = %v, want 1", n)
	}
	evs := e.generate(6, 300)
	e.produce(t, evs)
	e.waitApplied(t, len(evs), 90*time.Second)
	users := usersOf(evs)
	waitFor(t, "redis copy", 60*time.Second, func() bool { return e.redisMatchesPG(t, users, e.start, false) })
	if n := counter(c.set, "recsys_consumer_redis_repopulations_total"); n != 1 {
		t.Errorf("repopulations = %v, want 1 (the start's only)", n)
	}
	if err := c.mod.Ready(context.Background()); err != nil {
		t.Errorf("not ready after the first events: %v", err)
	}
}

// Two consumers in one group with rebalances in the middle (the second joins, then the
// first leaves): the durable state equals a rebuild from the raw events.
func TestRebalanceStateEqualsRebuild(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.MaxBatch = 100
	evs := e.generate(6, 4000)
	e.insertRaw(t, evs)
	e.produce(t, evs[:2000])
	c1 := e.startConsumer(t)
	waitFor(t, "first consumer progress", 60*time.Second, func() bool { return e.applied(t) > 200 })
	c2 := e.startConsumer(t)
	// The rest goes out in small steps while c2 has processed nothing: c1 keeps consuming
	// until the group has rebalanced, and could apply all of it at once before c2 gets a
	// partition, leaving c2 nothing to process (seen on a quiet machine).
	rest := evs[2000:]
	for len(rest) > 0 && counter(c2.set, "reco_feature_consumer_processed_total") == 0 {
		n := min(20, len(rest))
		e.produce(t, rest[:n])
		rest = rest[n:]
		time.Sleep(100 * time.Millisecond)
	}
	e.produce(t, rest)
	waitFor(t, "second consumer takes partitions", 60*time.Second, func() bool {
		return counter(c2.set, "reco_feature_consumer_processed_total") > 0
	})
	c1.stop() // another rebalance: c2 takes everything
	e.waitApplied(t, len(evs), 120*time.Second)
	c2.stop()
	e.checkConverged(t, evs)
	// The counters' overlay (the default) took the raises of users with impressions only.
	writes := func(kind string) float64 {
		return counter(c1.set, "recsys_consumer_user_writes_total", kind) + counter(c2.set, "recsys_consumer_user_writes_total", kind)
	}
	if writes(`kind="overlay"`) == 0 || writes(`kind="documents"`) == 0 {
		t.Errorf("user writes: overlay %v, fold %v, documents %v; want overlay and documents", writes(`kind="overlay"`), writes(`kind="fold"`), writes(`kind="documents"`))
	}
}

// Two consumers apply one stream side by side while the co-visitation lists are cut back to
// their top M again and again (M = 3 over 120 items). Lists are per item and partitions per
// user, so both consumers write the same lists and their Redis writes cross: every list in
// Redis still equals PostgreSQL's, member for member and strength for strength (the lists'
// versions; without them a neighbour one batch cut came back when an earlier batch's write
// landed after it). The tables are not compared with a rebuild: with cuts they depend on the
// order in which the two consumers' batches reached each list.
func TestTwoConsumersKeepListsExact(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.MaxBatch = 40
	e.fcfg.NeighboursPerItem = 3
	evs := e.generate(8, 5000)
	c1 := e.startConsumer(t)
	c2 := e.startConsumer(t)
	// Small steps until both have applied something (the group has settled on two members).
	rest := evs
	processed := func(c *running) float64 { return counter(c.set, "reco_feature_consumer_processed_total") }
	for len(rest) > 0 && (processed(c1) == 0 || processed(c2) == 0) {
		n := min(20, len(rest))
		e.produce(t, rest[:n])
		rest = rest[n:]
		time.Sleep(100 * time.Millisecond)
	}
	e.produce(t, rest)
	e.waitApplied(t, len(evs), 120*time.Second)
	if processed(c1) == 0 || processed(c2) == 0 {
		t.Fatalf("processed %v and %v events: the consumers did not share the stream", processed(c1), processed(c2))
	}
	// The last batches' Redis writes follow their commits.
	for deadline := time.Now().Add(30 * time.Second); !e.listsMatch(t, false) && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
	if !e.listsMatch(t, true) {
		t.Error("redis lists differ from postgres")
	}
	// What `recsys features verify` checks: users, items and lists, value for value.
	rep, err := featurestore.New(e.pool, e.rd, e.Prefix, e.fcfg, nil).Verify(context.Background(), featurestore.VerifyOptions{Sample: 1000, Grace: time.Second})
	if err != nil || !rep.OK() || rep.Users == 0 || rep.Lists == 0 {
		t.Errorf("verify: %+v (%v)", rep, err)
	}
	var cut int
	if err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM feature_neighbours WHERE length(neighbours) > 0`).Scan(&cut); err != nil || cut < 50 {
		t.Fatalf("%d lists (%v): the stream should make most of the 120 items' lists", cut, err)
	}
	t.Logf("processed %v + %v events; lists resent whole: %v + %v", processed(c1), processed(c2),
		counter(c1.set, "recsys_consumer_redis_resent_total", `kind="neighbours"`), counter(c2.set, "recsys_consumer_redis_resent_total", `kind="neighbours"`))
}

// kill -9 of a consumer process in the middle of its work, then a restart: the durable state
// equals a rebuild from the raw events, and the Redis copy matches PostgreSQL. The consumer
// keeps impression counters' overlays, as every test but TestRedeliveryChangesNothing does.
func TestKill9MidBatchThenRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.MaxBatch = 150
	evs := e.generate(7, 8000)
	e.insertRaw(t, evs)
	e.produce(t, evs)
	spec, _ := json.Marshal(e)
	start := func() *exec.Cmd {
		cmd := testutil.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnvVar+"="+string(spec))
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	for round := range 2 {
		cmd := start()
		base := e.applied(t)
		waitFor(t, "child progress", 90*time.Second, func() bool { return e.applied(t) > base+300 })
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = cmd.Wait()
		t.Logf("round %d: killed at %d/%d applied", round, e.applied(t), len(evs))
		if e.applied(t) >= len(evs) {
			t.Fatal("the child finished before it was killed: not a mid-stream kill")
		}
	}
	cmd := start()
	defer func() { _ = cmd.Process.Signal(syscall.SIGKILL); _ = cmd.Wait() }()
	e.waitApplied(t, len(evs), 120*time.Second)
	now := e.start
	got := e.tables(t, now)
	users := usersOf(evs)
	deadline := time.Now().Add(90 * time.Second)
	for !e.redisMatchesPG(t, users, now, false) {
		if time.Now().After(deadline) {
			var pending int
			_ = e.pool.QueryRow(context.Background(), `SELECT count(*) FROM feature_redis_pending`).Scan(&pending)
			e.redisMatchesPG(t, users, now, true)
			t.Fatalf("redis copy not healed after 90s (%d journal rows)", pending)
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	fstest.EqualTables(t, e.rebuilt(t, now), got)
}

// A PostgreSQL outage and a Redis restart (empty) in the middle of the stream: batches retry
// with backoff, no valid event reaches the DLQ, every event is applied once, and the Redis
// copy is repopulated and healed by itself.
func TestOutagesRetryWithoutDLQ(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	pg := testutil.StartPrivate(t, "pg")
	m, err := migrate.Open(pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Up(context.Background()); err != nil {
		t.Fatal(err)
	}
	m.Close()
	e.DSN, e.pool = pg.URL, testutil.Pool(t, pg.URL)
	e.MaxBatch = 200
	first, second := e.generate(8, 3000), e.generate(9, 2000)
	e.produce(t, first)
	c := e.startConsumer(t)
	waitFor(t, "progress", 60*time.Second, func() bool { return e.applied(t) > 300 })

	pg.Stop()
	e.produce(t, second)
	waitFor(t, "retries during the outage", 30*time.Second, func() bool {
		return counter(c.set, "recsys_consumer_batch_retries_total") >= 2
	})
	waitFor(t, "unready during the outage", 30*time.Second, func() bool { return c.mod.Ready(context.Background()) != nil })
	pg.Start()

	waitFor(t, "progress after postgres is back", 60*time.Second, func() bool { return e.applied(t) > len(first) })
	e.redisPriv.Stop()
	time.Sleep(time.Second)
	e.redisPriv.Start() // empty: no persistence

	e.waitApplied(t, len(first)+len(second), 120*time.Second)
	var dlq int
	if err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM feature_dlq`).Scan(&dlq); err != nil {
		t.Fatal(err)
	}
	if dlq != 0 {
		t.Errorf("%d valid events sent to the dlq by transient errors", dlq)
	}
	users := usersOf(append(first, second...))
	deadline := time.Now().Add(60 * time.Second)
	for !e.redisMatchesPG(t, users, e.start, false) {
		if time.Now().After(deadline) {
			var pending int
			_ = e.pool.QueryRow(context.Background(), `SELECT count(*) FROM feature_redis_pending`).Scan(&pending)
			ready, rerr := featurestore.New(e.pool, e.rd, e.Prefix, e.fcfg, nil).RedisReady(context.Background())
			e.redisMatchesPG(t, users, e.start, true)
			t.Fatalf("redis copy not back after 60s (%d journal rows, ready %v %v, heal errors %v, repopulations %v)", pending, ready, rerr,
				counter(c.set, `stage="heal"`), counter(c.set, "recsys_consumer_redis_repopulations_total"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	waitFor(t, "ready again", 30*time.Second, func() bool { return c.mod.Ready(context.Background()) == nil })
	var pending int
	waitFor(t, "journal healed", 30*time.Second, func() bool {
		_ = e.pool.QueryRow(context.Background(), `SELECT count(*) FROM feature_redis_pending`).Scan(&pending)
		return pending <= 1
	})
}

// The broker stops mid-stream and comes back (a restart): the consumer's fetches and its
// group's heartbeats fail and back off; once the broker is back it rejoins, resumes from the
// committed offsets and applies the rest. Every event is applied once, and the durable state
// equals the rebuild from the raw events.
func TestKafkaOutageResumesExactlyOnce(t *testing.T) {
	t.Parallel()
	pk := testutil.StartPrivate(t, "kafka")
	e := newEnvOn(t, []string{pk.Addr})
	e.MaxBatch = 200
	evs := e.generate(10, 3000)
	e.insertRaw(t, evs)
	e.produce(t, evs[:1500])
	c := e.startConsumer(t)
	e.waitApplied(t, 1500, 90*time.Second)

	pk.Stop()
	waitFor(t, "fetch errors during the outage", 30*time.Second, func() bool {
		return counter(c.set, "recsys_consumer_kafka_errors_total") >= 1
	})
	pk.Start()
	e.produce(t, evs[1500:])
	e.waitApplied(t, len(evs), 120*time.Second)
	waitFor(t, "the consumer counted every event", 30*time.Second, func() bool {
		return counter(c.set, "reco_feature_consumer_processed_total", `status="processed"`) >= float64(len(evs))
	})
	c.stop()
	if n := counter(c.set, "reco_feature_consumer_processed_total", `status="processed"`); n != float64(len(evs)) {
		t.Errorf("%v events applied for %d produced", n, len(evs))
	}
	t.Logf("rebalances %v, fetch errors %v, duplicates redelivered %v", counter(c.set, "recsys_consumer_kafka_rebalances_total"),
		counter(c.set, "recsys_consumer_kafka_errors_total"), counter(c.set, "reco_feature_consumer_processed_total", `status="duplicate"`))
	e.checkConverged(t, evs)
}

// Two lanes applying at once (--consumer.max-in-flight 2), small batches and few users, so
// every user has events in many consecutive batches in flight: each user's history in
// PostgreSQL and Redis is the one an in-order rebuild from the raw events gives.
func TestInFlightBatchesKeepEachUsersOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.MaxBatch, e.MaxInFlight = 40, 2
	evs := e.generate(10, 4000)
	e.insertRaw(t, evs)
	e.produce(t, evs)
	c := e.startConsumer(t)
	e.waitApplied(t, len(evs), 120*time.Second)
	if n := counter(c.set, "recsys_consumer_batch_size_count"); n < 2*float64(len(evs))/float64(2*e.MaxBatch) {
		t.Errorf("%v transactions for %d events in batches of at most 2x%d: the lanes did not split the batches", n, len(evs), e.MaxBatch)
	}
	c.stop()
	e.checkConverged(t, evs)
}

// At low volume a collected batch is a handful of events over users of both lanes: applied as
// one transaction on one lane instead of one per lane (each costs about 1 ms of PostgreSQL
// whatever it holds), and the state is still the in-order rebuild.
func TestSmallBatchesApplyInOneTransaction(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// A linger long enough that each round's events are collected as one batch.
	e.MaxBatch, e.MaxInFlight, e.Linger = 500, 2, 300*time.Millisecond
	const rounds, per = 8, 10
	evs := e.generate(12, rounds*per)
	e.insertRaw(t, evs)
	c := e.startConsumer(t)
	for r := range rounds {
		e.produce(t, evs[r*per:(r+1)*per])
		e.waitApplied(t, (r+1)*per, 60*time.Second)
	}
	// Split over the two lanes, each round would take two transactions (10 events of 40
	// users all falling in one lane has odds of 1 in 512 per round).
	if n := counter(c.set, "recsys_consumer_batch_size_count"); n > rounds+2 {
		t.Errorf("%v transactions for %d rounds of %d events: small batches were split over the lanes", n, rounds, per)
	}
	c.stop()
	e.checkConverged(t, evs)
}

// Offset commits are spaced by --consumer.commit-interval whatever the batches do, and a
// stop commits everything applied: the group's offsets then sit at the topics' ends. Committed
// after every batch (interval 0), the same traffic takes about a commit per round (batches
// released while a commit is in flight share the next one).
func TestOffsetCommitsAreSpacedAndFlushedAtStop(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		interval time.Duration
		check    func(commits, batches float64, took time.Duration) bool
	}{
		{"every batch", -1, func(commits, _ float64, _ time.Duration) bool { return commits >= 12/2 }},
		// One commit per interval at most, plus the one at the stop.
		{"spaced", 500 * time.Millisecond, func(commits, batches float64, took time.Duration) bool {
			return commits <= float64(took/(500*time.Millisecond))+2 && commits < batches
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.CommitInterval = tc.interval
			const rounds, per = 12, 10
			evs := e.generate(13, rounds*per)
			e.insertRaw(t, evs)
			c := e.startConsumer(t)
			start := time.Now()
			for r := range rounds {
				e.produce(t, evs[r*per:(r+1)*per])
				e.waitApplied(t, (r+1)*per, 60*time.Second)
			}
			c.stop()
			took := time.Since(start)
			commits, batches := counter(c.set, "recsys_consumer_offset_commits_total"), counter(c.set, "recsys_consumer_batch_size_count")
			t.Logf("%v offset commits for %v batches over %v", commits, batches, took)
			if !tc.check(commits, batches, took) {
				t.Errorf("%v offset commits for %v batches in %d rounds over %v", commits, batches, rounds, took)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for _, topic := range []string{e.TopicImp, e.TopicWatch} {
				res, err := e.kc.Admin().OffsetFetch(ctx, &kafkago.OffsetFetchRequest{GroupID: e.Group, Topics: map[string][]int{topic: {0, 1, 2}}})
				if err != nil {
					t.Fatal(err)
				}
				var committed, end int64
				for _, p := range res.Topics[topic] {
					committed += max(p.CommittedOffset, 0)
					conn, err := kafkago.DialLeader(ctx, "tcp", e.Brokers[0], topic, p.Partition)
					if err != nil {
						t.Fatal(err)
					}
					last, err := conn.ReadLastOffset()
					conn.Close()
					if err != nil {
						t.Fatal(err)
					}
					end += last
				}
				if committed != end || end == 0 {
					t.Errorf("%s: committed offsets sum to %d after the stop, the partitions end at %d", topic, committed, end)
				}
			}
		})
	}
}

// A transient failure of one transaction (PostgreSQL refuses one event's dedup row twice,
// as a serialization failure) while later batches of the same users are in flight: the
// failed batch is retried before any later event of its users applies, so the final state
// is still the in-order rebuild, and nothing reaches the DLQ.
func TestFailedBatchKeepsLaterBatchesOfItsUsersBack(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.MaxBatch, e.MaxInFlight = 30, 2
	evs := e.generate(11, 3000)
	// The victim: an event in the first third whose user has many events after it.
	victim := evs[len(evs)/4]
	later := 0
	for _, ev := range evs[len(evs)/4+1:] {
		if ev.User() == victim.User() {
			later++
		}
	}
	if later < 10 {
		t.Fatalf("victim user %s has only %d later events", victim.User(), later)
	}
	ctx := context.Background()
	// nextval is not rolled back with the failing transaction: the event fails exactly twice.
	if _, err := e.pool.Exec(ctx, `CREATE SEQUENCE test_failures;
CREATE FUNCTION test_fail_twice() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.event_id = '`+victim.ID()+`' AND nextval('test_failures') <= 2 THEN
    RAISE EXCEPTION 'injected failure' USING ERRCODE = '40001';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER test_fail_twice BEFORE INSERT ON feature_applied FOR EACH ROW EXECUTE FUNCTION test_fail_twice();`); err != nil {
		t.Fatal(err)
	}
	e.insertRaw(t, evs)
	e.produce(t, evs)
	c := e.startConsumer(t)
	e.waitApplied(t, len(evs), 120*time.Second)
	if n := counter(c.set, "recsys_consumer_batch_retries_total"); n < 2 {
		t.Fatalf("%v retries: the injected failure did not happen", n)
	}
	c.stop()
	var dlq int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM feature_dlq`).Scan(&dlq); err != nil {
		t.Fatal(err)
	}
	if dlq != 0 {
		t.Errorf("%d events sent to the dlq by a transient error", dlq)
	}
	if _, err := e.pool.Exec(ctx, `DROP TRIGGER test_fail_twice ON feature_applied`); err != nil {
		t.Fatal(err)
	}
	e.checkConverged(t, evs)
}

// lagSeries maps each reco_feature_consumer_partition_lag series of set to its value.
func lagSeries(set *metrics.Set) map[string]float64 {
	var b bytes.Buffer
	set.WritePrometheus(&b)
	out := map[string]float64{}
	for _, l := range strings.Split(b.String(), "\n") {
		if rest, ok := strings.CutPrefix(l, "reco_feature_consumer_partition_lag{"); ok {
			labels, v, _ := strings.Cut(rest, "} ")
			out[labels], _ = strconv.ParseFloat(v, 64)
		}
	}
	return out
}

func sum(m map[string]float64) (s float64) {
	for _, v := range m {
		s += v
	}
	return s
}

// reco_feature_consumer_partition_lag grows while nothing can be applied (the transactions
// wait on a lock), falls to 0 once the backlog is applied, and a member that loses partitions
// to a rebalance stops reporting them: each partition is reported by its owner only.
func TestPartitionLagGrowsWhileBlockedAndFollowsTheAssignment(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t)
	evs := e.generate(7, 600)
	c1 := e.startConsumer(t)
	e.produce(t, evs[:200])
	e.waitApplied(t, 200, 90*time.Second)
	waitFor(t, "no lag once applied", 30*time.Second, func() bool { l := lagSeries(c1.set); return len(l) > 0 && sum(l) == 0 })

	tx, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(ctx) }) // before the consumer stops, should the test fail
	if _, err := tx.Exec(ctx, `LOCK TABLE feature_applied IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	e.produce(t, evs[200:400])
	waitFor(t, "the lag of the blocked backlog", 30*time.Second, func() bool { return sum(lagSeries(c1.set)) >= 200 })
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	e.waitApplied(t, 400, 90*time.Second)
	waitFor(t, "no lag once the backlog is applied", 30*time.Second, func() bool { return sum(lagSeries(c1.set)) == 0 })
	before := lagSeries(c1.set)

	c2 := e.startConsumer(t)
	// A partition gets a series once its owner fetched from it or read its high-water mark:
	// feed the topics in small steps until the second member has (c1 would otherwise take
	// everything before the rebalance).
	rest := evs[400:]
	for len(rest) > 0 && len(lagSeries(c2.set)) == 0 {
		n := min(10, len(rest))
		e.produce(t, rest[:n])
		rest = rest[n:]
		time.Sleep(200 * time.Millisecond)
	}
	e.produce(t, rest)
	e.waitApplied(t, len(evs), 90*time.Second)
	waitFor(t, "each partition reported by its owner only", 60*time.Second, func() bool {
		l1, l2 := lagSeries(c1.set), lagSeries(c2.set)
		if len(l2) == 0 {
			return false
		}
		for k := range l2 {
			if _, both := l1[k]; both {
				return false
			}
		}
		return len(l1) < len(before)
	})
}

// The high-water marks are read on their own schedule: a heal pass that cannot finish (its
// purge of applied event ids waits on the same lock as the transactions, as it would on a
// PostgreSQL that hangs, or a long repopulation of Redis) does not freeze the lag at what the
// reader last handed over, which the full pipeline stopped taking.
func TestPartitionLagGrowsWhileHealIsStuck(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t)
	e.MaxBatch = 5 // a pipeline of a few dozen messages
	evs := e.generate(11, 600)
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `LOCK TABLE feature_applied IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	c := e.startConsumer(t)
	t.Cleanup(func() { _ = tx.Rollback(ctx) }) // before the consumer stops
	e.produce(t, evs[:200])
	waitFor(t, "the lag of what was fetched", 60*time.Second, func() bool { return sum(lagSeries(c.set)) >= 200 })
	e.produce(t, evs[200:])
	waitFor(t, "the lag of everything produced", 30*time.Second, func() bool { return sum(lagSeries(c.set)) == float64(len(evs)) })
}

// TestSharedEventIDsApplyPerUser: clients that number events per user send ids other users
// send too (api-contract §16.10). Every user's event is applied once, a resend by the same
// user (delivered again after the others) is a duplicate, and the state equals the rebuild
// from the raw events (`features rebuild --from-events` keeps the users apart as well).
func TestSharedEventIDsApplyPerUser(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	evs := fstest.Generate(fstest.GenConfig{Seed: 22, Users: 8, Items: 60, Events: 400, StartMs: e.start, StepMs: 1000,
		Prefix: "pu", DisjointImpressions: true, PerUserIDs: true})
	e.start += int64(len(evs)) * 2000
	ids := map[string]bool{}
	for _, ev := range evs {
		ids[ev.ID()] = true
	}
	if len(ids) > len(evs)/4 {
		t.Fatalf("%d distinct ids among %d events: users do not share ids", len(ids), len(evs))
	}
	e.insertRaw(t, evs)
	resent := evs[:100]
	e.produce(t, append(slices.Clone(evs), resent...))
	c := e.startConsumer(t)
	e.waitApplied(t, len(evs), 90*time.Second)
	waitFor(t, "the resends counted as duplicates", 30*time.Second, func() bool {
		return counter(c.set, "reco_feature_consumer_processed_total", `status="duplicate"`) >= float64(len(resent))
	})
	if n := counter(c.set, "reco_feature_consumer_processed_total", `status="processed"`); n != float64(len(evs)) {
		t.Errorf("%v events applied, want %d", n, len(evs))
	}
	waitFor(t, "consumer ready", 30*time.Second, func() bool { return c.mod.Ready(context.Background()) == nil })
	c.stop()
	e.checkConverged(t, evs)
}

// An event whose batch hit a data error is applied alone; when that apply then fails
// transiently (here twice, as a serialization failure) it is retried, and each failed attempt
// counts its event under processed_total{status="error"} as the batch path does: dashboards
// and alerts on that series must not miss the retries of an isolated batch.
func TestIsolatedRetriesCountAsProcessedErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	evs := e.generate(13, 60)
	victim := evs[len(evs)/2]
	ctx := context.Background()
	// The first insert of the victim's dedup row is refused as bad data (the batch is split),
	// the next two as serialization failures (the victim's own apply retries); nextval is not
	// rolled back with the failing transaction.
	if _, err := e.pool.Exec(ctx, `CREATE SEQUENCE test_failures;
CREATE FUNCTION test_fail() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
  IF NEW.event_id = '`+victim.ID()+`' THEN
    n := nextval('test_failures');
    IF n = 1 THEN RAISE EXCEPTION 'injected data error' USING ERRCODE = '22P02'; END IF;
    IF n <= 3 THEN RAISE EXCEPTION 'injected failure' USING ERRCODE = '40001'; END IF;
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER test_fail BEFORE INSERT ON feature_applied FOR EACH ROW EXECUTE FUNCTION test_fail();`); err != nil {
		t.Fatal(err)
	}
	e.produce(t, evs)
	c := e.startConsumer(t)
	e.waitApplied(t, len(evs), 90*time.Second)
	waitFor(t, "every event counted", 30*time.Second, func() bool {
		return counter(c.set, "reco_feature_consumer_processed_total", `status="processed"`) >= float64(len(evs))
	})
	c.stop()
	var n int64
	if err := e.pool.QueryRow(ctx, `SELECT last_value FROM test_failures`).Scan(&n); err != nil || n != 4 {
		t.Fatalf("the victim's dedup row was inserted %d times (%v), want 4: the injected failures did not happen as planned", n, err)
	}
	topic := `topic="` + e.TopicWatch + `"`
	if victim.Kind() == events.KindImpression {
		topic = `topic="` + e.TopicImp + `"`
	}
	for _, tc := range []struct {
		series []string
		want   float64
	}{
		{[]string{"reco_feature_consumer_processed_total", `status="error"`}, 2},
		{[]string{"reco_feature_consumer_processed_total", `status="error"`, topic}, 2},
		{[]string{"reco_feature_consumer_errors_total", `stage="process"`}, 2},
		{[]string{"recsys_consumer_batch_retries_total"}, 2},
		{[]string{"reco_feature_consumer_processed_total", `status="processed"`}, float64(len(evs))},
		{[]string{"reco_feature_consumer_processed_total", `status="dlq"`}, 0},
	} {
		if got := counter(c.set, tc.series...); got != tc.want {
			t.Errorf("%v = %v, want %v", tc.series, got, tc.want)
		}
	}
}
