package relay_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"recsys/modules/relay"
	"recsys/pkg/kafka"
	"recsys/pkg/outbox"
	"recsys/pkg/testutil"
)

// Batch rows (payload_format 2) and single rows (payload_format 1, as deployed databases hold)
// are published side by side: one message per event with the event's user id as key and the
// contract's headers; metrics and the snapshot count events. A batch row that does not decode
// goes dead at once with the decode error, and the rows behind it on its lane still go out.
func TestRelayPublishesBatchAndSingleRows(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.KafkaBrokers(t), 3)
	run := e.start(testConfig(), "r1", relay.Options{})
	waitReady(t, run.r)

	batchIDs, batchRows := e.insertBatches(200, 20, 4, 50, 0, 5) // 4 group commits over 4 lanes
	singleIDs := e.insert(30, 7, 5)
	corruptPayload := outbox.AppendFrame(nil, batchEvent("corrupt", 0, 1, ""))
	corrupt := e.insertRawBatchRow(outbox.LaneKey(0), corruptPayload[:len(corruptPayload)-2], 1, "batch:corrupt-0")
	afterMsgs := []outbox.Message{batchEvent("after", 0, 3, ""), batchEvent("after", 1, 3, ""), batchEvent("after", 2, 3, "")}
	after := e.insertBatchRow(outbox.LaneKey(0), afterMsgs)

	rows := batchRows + len(singleIDs) + 1
	e.waitPublished(rows, 30*time.Second)
	waitFor(t, 10*time.Second, "the corrupt row to die", func() bool { st, _, _ := e.row(corrupt); return st == "dead" })
	if st, attempts, lastErr := e.row(corrupt); attempts != 1 || !strings.Contains(lastErr, "decode outbox batch") {
		t.Fatalf("corrupt row %s after %d attempts, last_error %q; want dead at once with the decode error", st, attempts, lastErr)
	}
	if st, _, _ := e.row(after); st != "published" {
		t.Fatalf("row behind the corrupt one on its lane is %s, want published", st)
	}

	events := len(batchIDs) + len(singleIDs) + len(afterMsgs)
	got := readTopic(t, e.brokers, e.kcfg.TopicWatches)
	if d, dups := got.distinct(); d != events || dups != 0 {
		t.Fatalf("consumed %d distinct event ids and %d duplicates, want %d and 0", d, dups, events)
	}
	single := map[string]int{}
	for i, id := range singleIDs {
		single[id] = i
	}
	seqs := map[string]map[string]bool{} // outbox_id -> outbox_seq values seen
	for _, m := range got.all() {
		id := header(m, "event_id")
		if i, ok := single[id]; ok {
			if string(m.Key) != "u"+strconv.Itoa(i%7) || header(m, "outbox_seq") != "" || header(m, "correlation_id") != "corr-"+id {
				t.Errorf("single event %s: key %q outbox_seq %q correlation_id %q", id, m.Key, header(m, "outbox_seq"), header(m, "correlation_id"))
			}
			continue
		}
		var users int
		switch {
		case strings.HasPrefix(id, "after-"):
			users = 3
		case strings.HasPrefix(id, "corrupt-"):
			t.Fatalf("an event of the corrupt row was published: %s", id)
		default:
			users = 20
		}
		want := "bu" + strconv.Itoa(genIndex(t, id)%users)
		for h, v := range map[string]string{"event_type": "watch", "schema_version": "1", "correlation_id": "corr-" + id} {
			if header(m, h) != v {
				t.Errorf("%s: header %s = %q, want %q", id, h, header(m, h), v)
			}
		}
		if string(m.Key) != want || !strings.Contains(string(m.Value), `"event_id":"`+id+`"`) {
			t.Errorf("%s: key %q value %s; want key %q and the event's JSON", id, m.Key, m.Value, want)
		}
		oid := header(m, "outbox_id")
		if seqs[oid] == nil {
			seqs[oid] = map[string]bool{}
		}
		seqs[oid][header(m, "outbox_seq")] = true
	}
	if len(seqs) != batchRows+1 {
		t.Errorf("batch events came from %d outbox ids, want %d rows", len(seqs), batchRows+1)
	}
	for oid, s := range seqs {
		for i := range len(s) {
			if !s[strconv.Itoa(i)] {
				t.Errorf("row %s: outbox_seq values %v are not 0..%d", oid, s, len(s)-1)
			}
		}
	}
	set := run.deps.Metrics
	for series, want := range map[string]float64{
		`reco_outbox_relay_published_total{topic="` + e.kcfg.TopicWatches + `"}`: float64(events),
		"recsys_relay_commit_to_ack_seconds_count":                               float64(events),
		"recsys_relay_dead_total":                                                1,
		"recsys_relay_undecodable_rows_total":                                    1,
		`reco_outbox_relay_failed_total{topic="` + e.kcfg.TopicWatches + `"}`:    1,
	} {
		if v := metric(set, series); v != want {
			t.Errorf("%s = %v, want %v", series, v, want)
		}
	}
	waitFor(t, 5*time.Second, "snapshot counting events", func() bool {
		b, ok := run.r.HealthDetails(context.Background())["event_backbone"].(map[string]any)["outbox"].(outbox.Backlog)
		return ok && b.Published == int64(events) && b.Dead == 1 && b.Pending == 0
	})
}

// failOnce sends every message but reports one chosen message as failed, the first time it
// is in a call: as when Kafka acked a batch row's other messages.
type failOnce struct {
	inner   relay.Publisher
	eventID string
	mu      sync.Mutex
	done    bool
}

func (p *failOnce) WriteMessages(ctx context.Context, msgs ...kafkago.Message) error {
	if err := p.inner.WriteMessages(ctx, msgs...); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, m := range msgs {
		if !p.done && header(m, "event_id") == p.eventID {
			p.done = true
			errs := make(kafkago.WriteErrors, len(msgs))
			errs[i] = kafkago.NotLeaderForPartition
			return errs
		}
	}
	return nil
}

func (p *failOnce) Close() error { return p.inner.Close() }

// One message of a batch row fails although Kafka took its other messages: the whole row is
// retried (its acked messages are sent again), the later row of its lane waits behind it (held
// back and sent again after it even though Kafka acked it too), another lane is not held, and
// each user's events still end in order (the last copy of each event follows the user's
// earlier events' last copies).
func TestRelayRetriesPartlyFailedBatchRowWhole(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testutil.KafkaBrokers(t), 3)
	mk := func(from int) []outbox.Message {
		var out []outbox.Message
		for i := from; i < from+4; i++ {
			out = append(out, batchEvent("part", i, 4, ""))
		}
		return out
	}
	first, second := mk(0), mk(4) // users bu0..bu3 twice, on one lane
	otherMsgs := []outbox.Message{batchEvent("other", 0, 1, "")}

	cfg := testConfig()
	w := relay.NewPublisher(e.deps("").Kafka, cfg)
	run := e.start(cfg, "r1", relay.Options{Publisher: &failOnce{inner: w, eventID: first[1].EventID}})
	waitReady(t, run.r)
	time.Sleep(300 * time.Millisecond) // let the start-up claims go idle
	// One transaction, so one claim takes the three rows.
	var src [][]any
	for i, msgs := range [][]outbox.Message{first, second, otherMsgs} {
		var payload []byte
		for _, m := range msgs {
			payload = outbox.AppendFrame(payload, m)
		}
		src = append(src, []any{"batch:" + msgs[0].EventID, "watch", e.kcfg.TopicWatches, outbox.LaneKey([]int{0, 0, 1}[i]), payload,
			int32(5), int16(outbox.FormatBatch), int32(len(msgs))})
	}
	e.copyRows(src, []string{"event_id", "event_type", "topic", "msg_key", "payload", "max_attempts", "payload_format", "event_count"})
	var r1, r2, other int64
	if err := e.pool.QueryRow(context.Background(), `SELECT min(id), min(id) + 1, max(id) FROM event_outbox`).Scan(&r1, &r2, &other); err != nil {
		t.Fatal(err)
	}
	e.waitPublished(3, 30*time.Second)

	if _, attempts, lastErr := e.row(r1); attempts != 2 || lastErr == "" {
		t.Errorf("failed row: %d attempts, last_error %q; want 2 attempts and the error kept", attempts, lastErr)
	}
	if _, attempts, _ := e.row(r2); attempts != 1 {
		t.Errorf("held-back row: %d attempts, want 1 (the held-back claim is refunded)", attempts)
	}
	if _, attempts, _ := e.row(other); attempts != 1 {
		t.Errorf("other lane's row: %d attempts, want 1", attempts)
	}
	set := run.deps.Metrics
	if v := metric(set, `reco_outbox_relay_failed_total{topic="`+e.kcfg.TopicWatches+`"}`); v != 4 {
		t.Errorf("failed_total = %v, want 4 (every event of the failed row)", v)
	}
	if v := metric(set, "recsys_relay_held_back_total"); v != 1 {
		t.Errorf("held_back_total = %v, want 1", v)
	}

	got := readTopic(t, e.brokers, e.kcfg.TopicWatches)
	copies := map[string]int{}
	for _, m := range got.all() {
		copies[header(m, "event_id")]++
	}
	for _, m := range append(append([]outbox.Message{}, first...), second...) {
		if copies[m.EventID] != 2 {
			t.Errorf("%s reached Kafka %d times, want 2 (sent whole again)", m.EventID, copies[m.EventID])
		}
	}
	if copies["other-0"] != 1 {
		t.Errorf("other lane's event reached Kafka %d times, want once", copies["other-0"])
	}
	for p, msgs := range got.partitions {
		// Per user, the last copy of each event, in partition order, must be in generation order.
		lastPos := map[string]int{}
		for pos, m := range msgs {
			lastPos[header(m, "event_id")] = pos
		}
		order := map[string][]int{}
		for pos, m := range msgs {
			id := header(m, "event_id")
			if lastPos[id] == pos && strings.HasPrefix(id, "part-") {
				order[string(m.Key)] = append(order[string(m.Key)], genIndex(t, id))
			}
		}
		for user, idx := range order {
			if len(idx) != 2 || idx[0] > idx[1] {
				t.Errorf("partition %d user %s: last copies in order %v, want two, ascending", p, user, idx)
			}
		}
	}
}

// Two relays drain batch rows (the ingest writer's shape: per group commit one row per lane)
// of 100k events: every event is published and each user's events reach Kafka in the order
// they were written, duplicates only from lease expiry.
func TestTwoRelaysKeepPerUserOrderOnBatchRows(t *testing.T) {
	t.Parallel()
	events, users := 100_000, 2000
	if testing.Short() {
		events, users = 20_000, 500
	}
	e := newEnv(t, testutil.KafkaBrokers(t), 6)
	ids, rows := e.insertBatches(events, users, 32, 3200, 0, 5)
	cfg := testConfig()
	cfg.BatchEvents = 2000 // several claims per relay, so the two relays interleave on lanes
	cfg.Lease = 30 * time.Second
	start := time.Now()
	a := e.start(cfg, "relay-a", relay.Options{})
	b := e.start(cfg, "relay-b", relay.Options{})
	e.waitPublished(rows, 120*time.Second)
	elapsed := time.Since(start)
	pa := metric(a.deps.Metrics, `reco_outbox_relay_published_total{topic="`+e.kcfg.TopicWatches+`"}`)
	pb := metric(b.deps.Metrics, `reco_outbox_relay_published_total{topic="`+e.kcfg.TopicWatches+`"}`)
	t.Logf("%d events in %d rows over %d users in %s by two relays (a %v, b %v events)", events, rows, users,
		elapsed.Round(time.Millisecond), pa, pb)
	if pa == 0 || pb == 0 {
		t.Fatalf("one relay did all the work (a %v, b %v): the test did not exercise two relays", pa, pb)
	}
	if pa+pb < float64(events) {
		t.Fatalf("published_total a+b = %v, want >= %d events", pa+pb, events)
	}

	got := readTopic(t, e.brokers, e.kcfg.TopicWatches)
	d, dups := got.distinct()
	if d != len(ids) {
		t.Fatalf("consumer saw %d distinct event ids, want %d", d, len(ids))
	}
	// Duplicates come only from lease expiry (reaped rows) or from rows retried whole after a
	// failed publish (a failed row's acked events, and the later rows of its lane held back
	// after Kafka acked them, are sent again); a row here holds at most one group's events.
	var reaped, failedEvents, heldBack float64
	for _, r := range []*running{a, b} {
		reaped += metric(r.deps.Metrics, `recsys_relay_reaped_total{outcome="requeued"}`)
		failedEvents += metric(r.deps.Metrics, `reco_outbox_relay_failed_total{topic="`+e.kcfg.TopicWatches+`"}`)
		heldBack += metric(r.deps.Metrics, "recsys_relay_held_back_total")
	}
	if bound := failedEvents + (reaped+heldBack)*3200; float64(dups) > bound {
		t.Fatalf("%d duplicates; lease expiry (%v rows), failed events (%v) and held-back rows (%v) explain at most %v",
			dups, reaped, failedEvents, heldBack, bound)
	}
	t.Logf("duplicates %d, rows reaped after lease expiry %v, failed events %v, held-back rows %v", dups, reaped, failedEvents, heldBack)
	// Per user, the first copy of each event (what a consumer deduplicating on event_id
	// keeps) is in write order.
	for p, msgs := range got.partitions {
		last := map[string]int{}
		seen := map[string]bool{}
		for _, m := range msgs {
			id := header(m, "event_id")
			if seen[id] {
				continue
			}
			seen[id] = true
			i, k := genIndex(t, id), string(m.Key)
			if prev, ok := last[k]; ok && i <= prev {
				t.Fatalf("partition %d user %s: event %d after %d: per-user order broken", p, k, i, prev)
			}
			last[k] = i
		}
	}
}

// TestOversizedEventGoesDeadAlone: a batch row holding one event larger than the relay can
// publish (an API with a larger --ingest.max-event-bytes, say) publishes its other events,
// other clients' ones, and moves only that event to a dead row of its own; a replay of the
// dead rows acts on it alone and publishes nothing twice.
func TestOversizedEventGoesDeadAlone(t *testing.T) {
	e := newEnv(t, testutil.KafkaBrokers(t), 1)
	prefix := testutil.Unique("big")
	ev := func(n, user, payload string) outbox.Message {
		return outbox.Message{EventID: prefix + "-" + n, EventType: "watch", Key: user, CorrelationID: "corr-" + n, SchemaVersion: 1,
			Payload: []byte(payload)}
	}
	big := ev("big", "attacker", `{"user_agent":"`+strings.Repeat("A", 1<<20+100)+`"}`)
	row := e.insertBatchRow(outbox.LaneKey(3), []outbox.Message{ev("v1", "victim", `{"n":1}`), big, ev("v2", "victim", `{"n":2}`)})
	later := e.insertBatchRow(outbox.LaneKey(3), []outbox.Message{ev("v3", "victim", `{"n":3}`)})
	run := e.start(testConfig(), "r1", relay.Options{})
	waitReady(t, run.r)
	settled := func() bool {
		var n int
		_ = e.pool.QueryRow(context.Background(), "SELECT count(*) FROM event_outbox WHERE status IN ('pending','publishing')").Scan(&n)
		return n == 0
	}
	waitFor(t, 20*time.Second, "the outbox to settle", settled)
	status := func(id int64) string {
		var st string
		_ = e.pool.QueryRow(context.Background(), "SELECT status FROM event_outbox WHERE id = $1", id).Scan(&st)
		return st
	}
	if s, l := status(row), status(later); s != outbox.StatusPublished || l != outbox.StatusPublished {
		t.Errorf("batch rows: %s, %s; want both published", s, l)
	}
	var st, key, lastErr string
	var format int16
	var count int
	err := e.pool.QueryRow(context.Background(), `SELECT status, msg_key, payload_format, event_count, coalesce(last_error, '')
FROM event_outbox WHERE event_id = $1 AND event_type = 'watch'`, big.EventID).Scan(&st, &key, &format, &count, &lastErr)
	if err != nil || st != outbox.StatusDead || key != "attacker" || format != outbox.FormatSingle || count != 1 || !strings.Contains(lastErr, "max-batch-bytes") {
		t.Errorf("dead letter row: %v %s %s %d %d %q", err, st, key, format, count, lastErr)
	}
	// Counted when the outcome's Complete returns, just after the rows read settled.
	waitFor(t, 5*time.Second, "dead_total 1", func() bool { return metric(run.deps.Metrics, `recsys_relay_dead_total`) == 1 })

	res, err := outbox.NewStore(e.pool).Replay(context.Background(), outbox.ReplayFilter{Status: outbox.StatusDead, Limit: 10})
	if err != nil || res.Requeued != 1 {
		t.Fatalf("replay: %v %+v, want the dead letter alone requeued", err, res)
	}
	waitFor(t, 20*time.Second, "the replay to settle", settled)
	published := map[string]int{}
	for _, m := range readTopic(t, e.brokers, e.kcfg.TopicWatches).all() {
		published[header(m, "event_id")]++
	}
	for _, n := range []string{"v1", "v2", "v3"} {
		if published[prefix+"-"+n] != 1 {
			t.Errorf("%s published %d times, want once", n, published[prefix+"-"+n])
		}
	}
	if published[big.EventID] != 0 {
		t.Errorf("the oversized event was published")
	}
}

// TestSmallerTopicLimitDeadLettersOnlyTheOversizedEvent: with a topic's max.message.bytes
// below --relay.max-batch-bytes (a relay that may not describe the topic, so the start-up
// check could not stop it), the broker refuses the relay's record batches whole. The small
// events of the batch rows are published exactly once all the same, and only the event the
// broker refuses alone goes dead, as a row of its own.
func TestSmallerTopicLimitDeadLettersOnlyTheOversizedEvent(t *testing.T) {
	e := newEnv(t, testutil.KafkaBrokers(t), 2)
	e.createLimitedTopic(e.kcfg.TopicWatches, 2000)
	prefix := testutil.Unique("limit")
	ev := func(n, user string, size int) outbox.Message {
		return outbox.Message{EventID: prefix + "-" + n, EventType: "watch", Key: user, CorrelationID: "corr-" + n, SchemaVersion: 1,
			Payload: []byte(`{"pad":"` + strings.Repeat("p", size) + `"}`)}
	}
	var small []string
	var first, second []outbox.Message
	for i := range 12 {
		m := ev(fmt.Sprintf("s%d", i), fmt.Sprintf("user-%d", i%5), 300)
		small = append(small, m.EventID)
		if i < 8 {
			first = append(first, m)
		} else {
			second = append(second, m)
		}
	}
	big := ev("big", "user-1", 3000)
	first = append(first[:4], append([]outbox.Message{big}, first[4:]...)...)
	rows := []int64{e.insertBatchRow(outbox.LaneKey(1), first), e.insertBatchRow(outbox.LaneKey(1), second)}
	cfg := testConfig()
	cfg.BatchSize = 10 // both rows in one claim
	run := e.start(cfg, "r1", relay.Options{Broker: describeDenied{c: kafka.New(e.kcfg)}})
	waitReady(t, run.r)
	waitFor(t, 20*time.Second, "the outbox to settle", func() bool {
		var n int
		_ = e.pool.QueryRow(context.Background(), "SELECT count(*) FROM event_outbox WHERE status IN ('pending','publishing')").Scan(&n)
		return n == 0
	})
	for _, id := range rows {
		var st string
		var attempts int
		_ = e.pool.QueryRow(context.Background(), "SELECT status, attempts FROM event_outbox WHERE id = $1", id).Scan(&st, &attempts)
		if st != outbox.StatusPublished || attempts != 1 {
			t.Errorf("batch row %d: %s after %d attempts, want published after 1", id, st, attempts)
		}
	}
	var dead []string
	var lastErr string
	r, err := e.pool.Query(context.Background(), "SELECT event_id, coalesce(last_error, '') FROM event_outbox WHERE status = 'dead'")
	if err != nil {
		t.Fatal(err)
	}
	for r.Next() {
		var id string
		if err := r.Scan(&id, &lastErr); err != nil {
			t.Fatal(err)
		}
		dead = append(dead, id)
	}
	if len(dead) != 1 || dead[0] != big.EventID || !strings.Contains(lastErr, "Message Size Too Large") {
		t.Errorf("dead rows %v (last error %q), want the oversized event alone, refused by the broker", dead, lastErr)
	}
	published := map[string]int{}
	for _, m := range readTopic(t, e.brokers, e.kcfg.TopicWatches).all() {
		published[header(m, "event_id")]++
	}
	for _, id := range small {
		if published[id] != 1 {
			t.Errorf("%s published %d times, want once", id, published[id])
		}
	}
	if published[big.EventID] != 0 || len(published) != len(small) {
		t.Errorf("published %v, want the %d small events alone", published, len(small))
	}
}
