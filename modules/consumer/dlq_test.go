package consumer_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"recsys/pkg/events"
	"recsys/pkg/featurestore"
)

// A poison message whose header carries a NUL byte (binary headers are common: tracing,
// compression markers) lands in the DLQ like any other, its payload exact; the group moves
// past it only once it is stored.
func TestPoisonWithBinaryHeaderReachesDLQ(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	before := e.generate(2, 50)
	user := before[0].User()
	payload := []byte("not json at all \x00\xff")
	poison := kafkago.Message{Topic: e.TopicWatch, Key: []byte(user), Value: payload,
		Headers: []kafkago.Header{{Key: events.HeaderEventType, Value: []byte("watch")}, {Key: "trace-bin", Value: []byte{0x00, 0x01, 0xff}}}}
	e.produce(t, before)
	e.produceRaw(t, poison)
	after := e.generate(3, 50)
	e.produce(t, after)
	c := e.startConsumer(t)
	e.waitApplied(t, len(before)+len(after), 90*time.Second)
	waitFor(t, "the poison message in the dlq", 20*time.Second, func() bool {
		var n int
		_ = e.pool.QueryRow(context.Background(), `SELECT count(*) FROM feature_dlq`).Scan(&n)
		return n == 1
	})
	c.stop()
	var stored []byte
	var eventType, trace string
	if err := e.pool.QueryRow(context.Background(), `SELECT payload, headers->>'event_type', headers->>'trace-bin' FROM feature_dlq`).
		Scan(&stored, &eventType, &trace); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(stored, payload) || eventType != "watch" || trace != "\uFFFD\x01\uFFFD" {
		t.Errorf("dlq row: payload %q, event_type %q, trace-bin %q; want the payload exact, the headers with NUL and invalid bytes replaced",
			stored, eventType, trace)
	}
}

// A watch timed years ahead (another producer on the topics: the API refuses more than
// --ingest.max-event-future) would move the decay landmarks to its time and zero every
// popularity and co-visitation value. It goes to the DLQ as invalid, the stream flows past
// it, and replay-dlq keeps refusing it while it is still in the future.
func TestFutureEventGoesToDLQ(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	before := e.generate(4, 50)
	user := before[0].User()
	future := time.Now().Add(3 * 365 * 24 * time.Hour).UnixMilli()
	payload, err := events.Encode(&events.Watch{Common: events.Common{EventID: "future-1", UserID: user, SessionID: "s", RequestID: "r",
		TsMs: future, ServerReceivedTsMs: time.Now().UnixMilli()}, EventType: "watch", ItemID: "far-item", WatchTimeSec: 30})
	if err != nil {
		t.Fatal(err)
	}
	e.produce(t, before)
	e.produceRaw(t, kafkago.Message{Topic: e.TopicWatch, Key: []byte(user), Value: payload,
		Headers: []kafkago.Header{{Key: events.HeaderEventType, Value: []byte("watch")}}})
	after := e.generate(5, 50)
	e.produce(t, after)
	c := e.startConsumer(t)
	e.waitApplied(t, len(before)+len(after), 90*time.Second)
	var dlqErr string
	waitFor(t, "the future event in the dlq", 20*time.Second, func() bool {
		return e.pool.QueryRow(context.Background(), `SELECT error FROM feature_dlq`).Scan(&dlqErr) == nil
	})
	c.stop()
	if !strings.Contains(dlqErr, "max-event-future") {
		t.Errorf("dlq error %q, want it to name --consumer.max-event-future", dlqErr)
	}
	var lm int64
	if err := e.pool.QueryRow(context.Background(), `SELECT greatest(lm_short_ms, lm_long_ms, lm_covis_ms) FROM feature_meta`).Scan(&lm); err != nil {
		t.Fatal(err)
	}
	if lm >= future {
		t.Errorf("a decay landmark moved to the future event's time (%d >= %d)", lm, future)
	}
	st := featurestore.New(e.pool, e.rd, e.Prefix, e.fcfg, nil)
	rep, err := st.ReplayDLQ(context.Background(), featurestore.ReplayOptions{Limit: 10})
	if err != nil || rep.Invalid != 1 || rep.Applied != 0 {
		t.Errorf("replay of the future event: %+v, %v; want it still invalid", rep, err)
	}
}

// refuseKeyedDLQEntries makes PostgreSQL refuse every DLQ entry with a key, with a data error
// as an invalid key or header would raise.
func refuseKeyedDLQEntries(t *testing.T, e *env) {
	t.Helper()
	if _, err := e.pool.Exec(context.Background(), `CREATE FUNCTION refuse_keyed_dlq() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.msg_key IS NOT NULL THEN RAISE EXCEPTION 'injected data error' USING ERRCODE = '22P02'; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refuse_keyed_dlq BEFORE INSERT ON feature_dlq FOR EACH ROW EXECUTE FUNCTION refuse_keyed_dlq();`); err != nil {
		t.Fatal(err)
	}
}

// A DLQ entry PostgreSQL refuses whole (a data error on its key or headers) is stored again
// with its coordinates, payload, event type and error alone, and the stream flows past it only
// then: dropping it would commit the poison message's offset with no trace of it anywhere.
func TestRefusedDLQEntryIsStoredWithoutKeyAndHeaders(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	refuseKeyedDLQEntries(t, e)
	before, after := e.generate(5, 40), e.generate(6, 40)
	payload := []byte("not json at all")
	poison := kafkago.Message{Topic: e.TopicWatch, Key: []byte(before[0].User()), Value: payload,
		Headers: []kafkago.Header{{Key: events.HeaderEventType, Value: []byte("watch")}, {Key: "trace", Value: []byte("t-1")}}}
	e.produce(t, before)
	e.produceRaw(t, poison)
	e.produce(t, after)
	c := e.startConsumer(t)
	e.waitApplied(t, len(before)+len(after), 90*time.Second)
	waitFor(t, "the poison message in the dlq", 20*time.Second, func() bool {
		var n int
		_ = e.pool.QueryRow(ctx, `SELECT count(*) FROM feature_dlq`).Scan(&n)
		return n == 1
	})
	c.stop()
	var stored []byte
	var headers, errText string
	var keyed bool
	if err := e.pool.QueryRow(ctx, `SELECT payload, headers::text, error, msg_key IS NOT NULL FROM feature_dlq`).
		Scan(&stored, &headers, &errText, &keyed); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(stored, payload) || keyed || headers != `{"event_type": "watch"}` || !strings.Contains(errText, "headers and key dropped") {
		t.Errorf("dlq row: payload %q, key stored %v, headers %s, error %q; want the payload, no key, the event type alone, the reason",
			stored, keyed, headers, errText)
	}
	if n := counter(c.set, "reco_feature_consumer_errors_total", `stage="dlq_store"`); n < 1 {
		t.Errorf("dlq_store errors = %v, want the refused entry counted", n)
	}
}

// The entry stored again without its key is still judged against erasures, by the ids in its
// payload and its receive time: that of a user who came back after their erasure (received
// after it) is stored. Stored without its receive time, it counted as received before the
// erasure and was dropped, leaving no trace of the poison message.
func TestRefusedDLQEntryOfAReturningUserIsStored(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	refuseKeyedDLQEntries(t, e)
	const back = "erased-then-back"
	now := time.Now().UnixMilli()
	if _, err := e.pool.Exec(ctx, `INSERT INTO forgotten_users (user_id, forgotten_at_ms) VALUES ($1, $2)`, back, now-time.Hour.Milliseconds()); err != nil {
		t.Fatal(err)
	}
	payload := []byte(fmt.Sprintf(`{"user_id":%q,"server_received_ts_ms":%d,"item_id":7}`, back, now))
	e.produceRaw(t, kafkago.Message{Topic: e.TopicWatch, Key: []byte(back), Value: payload,
		Headers: []kafkago.Header{{Key: events.HeaderEventType, Value: []byte("watch")}}})
	after := e.generate(7, 20)
	e.produce(t, after)
	c := e.startConsumer(t)
	e.waitApplied(t, len(after), 90*time.Second)
	waitFor(t, "the returning user's poison message in the dlq", 20*time.Second, func() bool {
		var n int
		_ = e.pool.QueryRow(ctx, `SELECT count(*) FROM feature_dlq WHERE payload = $1`, payload).Scan(&n)
		return n == 1
	})
	c.stop()
}
