package consumer_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/jackc/pgx/v5"
	kafkago "github.com/segmentio/kafka-go"

	"recsys/modules/consumer"
	"recsys/pkg/events"
	"recsys/pkg/featurestore"
)

// TestForgetErasesAUserForGood: `recsys users forget` (featurestore.Forget) with a consumer
// running, on the real Kafka, PostgreSQL and Redis. The erased user's raw events, feature
// row, Redis hash and DLQ entries go; another user's stay. Events of the erased user received
// before the erasure that reach the consumer afterwards (still in Kafka, the outbox or the
// DLQ then) are skipped and counted as ignored; an event received after it applies: the user
// comes back with that event only.
func TestForgetErasesAUserForGood(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const gone, kept = "user-erased", "user-kept"
	seq := 0
	watch := func(user, item string, receivedMs int64) events.Any {
		seq++
		return &events.Watch{Common: events.Common{EventID: fmt.Sprintf("forget-%s-%04d", user, seq), UserID: user, SessionID: "s",
			RequestID: "r", TsMs: e.start + int64(seq)*1000, ServerReceivedTsMs: receivedMs}, EventType: "watch", ItemID: item, WatchTimeSec: 30}
	}
	impression := func(user string, receivedMs int64, items ...string) events.Any {
		seq++
		im := &events.Impression{Common: events.Common{EventID: fmt.Sprintf("forget-%s-%04d", user, seq), UserID: user, SessionID: "s",
			RequestID: "r", TsMs: e.start + int64(seq)*1000, ServerReceivedTsMs: receivedMs}, EventType: "impression"}
		for i, it := range items {
			im.Items = append(im.Items, events.ImpressionItem{ItemID: it, Position: int64(i)})
		}
		return im
	}
	now := time.Now().UnixMilli()
	var before []events.Any
	for _, u := range []string{gone, kept} {
		before = append(before, impression(u, now, "a", "b", "c"), watch(u, "a", now), watch(u, "b", now), watch(u, "c", now))
	}
	e.insertRaw(t, before)
	e.produce(t, before)
	for _, u := range []string{gone, kept} {
		if _, err := e.pool.Exec(ctx, `INSERT INTO feature_dlq (topic, kafka_partition, kafka_offset, msg_key, payload, error)
VALUES ($1, 0, $2, $3, 'not json', 'invalid payload')`, e.TopicWatch, 1_000_000+len(u), []byte(u)); err != nil {
			t.Fatal(err)
		}
	}
	c := e.startConsumer(t)
	e.waitApplied(t, len(before), time.Minute)
	userKey := func(u string) string { return e.Prefix + "u:" + u }
	exists := func(u string) bool {
		n, err := e.rd.Do(ctx, e.rd.B().Exists().Key(userKey(u)).Build()).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
	waitFor(t, "both users in the redis copy", 30*time.Second, func() bool { return exists(gone) && exists(kept) })

	st := featurestore.New(e.pool, e.rd, e.Prefix, e.fcfg, slog.New(slog.DiscardHandler))
	rep, err := st.Forget(ctx, []string{gone}, 7*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"watches": 3, "impression_events": 1, "legacy_events": 0, "feature_dlq": 1, "feature_users": 1}
	for table, n := range want {
		if rep.Deleted[table] != n {
			t.Errorf("deleted %d rows of %s, want %d (report %+v)", rep.Deleted[table], table, n, rep)
		}
	}
	count := func(sql string, args ...any) int {
		var n int
		if err := e.pool.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, tc := range []struct {
		sql        string
		gone, kept int
	}{
		{`SELECT count(*) FROM watches WHERE user_id = $1`, 0, 3},
		{`SELECT count(*) FROM impression_events WHERE user_id = $1`, 0, 1},
		{`SELECT count(*) FROM feature_users WHERE user_id = $1`, 0, 1},
		{`SELECT count(*) FROM feature_dlq WHERE msg_key = convert_to($1, 'UTF8')`, 0, 1},
	} {
		if g, k := count(tc.sql, gone), count(tc.sql, kept); g != tc.gone || k != tc.kept {
			t.Errorf("%s: erased user %d, kept user %d; want %d and %d", tc.sql, g, k, tc.gone, tc.kept)
		}
	}
	if exists(gone) || !exists(kept) {
		t.Errorf("redis copy after the erasure: erased user present %v, kept user present %v", exists(gone), exists(kept))
	}

	// Events received before the erasure that were still on their way, then one received after.
	late := []events.Any{watch(gone, "d", rep.ForgottenAtMs-1), impression(gone, rep.ForgottenAtMs-5000, "d", "e")}
	e.produce(t, late)
	ignored := func() float64 { return counter(c.set, "reco_feature_consumer_processed_total", `status="ignored"`) }
	waitFor(t, "the late events skipped", 30*time.Second, func() bool { return ignored() >= float64(len(late)) })
	back := watch(gone, "f", rep.ForgottenAtMs+1000)
	e.produce(t, []events.Any{back})
	e.waitApplied(t, len(before)+1, time.Minute)
	var history string
	if err := e.pool.QueryRow(ctx, `SELECT history FROM feature_users WHERE user_id = $1`, gone).Scan(&history); err != nil {
		t.Fatalf("the user's event after the erasure was not applied: %v", err)
	}
	if u, err := featurestore.DecodeHistory(history); err != nil || len(u) != 1 || u[0].ItemID != "f" {
		t.Errorf("history after coming back = %v (%v), want only the new watch of f", u, err)
	}
	if got := ignored(); got != float64(len(late)) {
		t.Errorf("%v events ignored, want the %d late ones", got, len(late))
	}
}

// The consumer rereads the erased users every featurestore.ForgottenRefresh on its own, not
// as often as --consumer.heal-interval (which may be 30 s) or when a repopulation lets heal
// go on: with the CLI's shortest --settle, an event received before the erasure and consumed
// after it is skipped.
func TestForgottenUsersRereadWhateverTheHealInterval(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const gone = "user-erased-heal"
	cfg := e.config()
	cfg.HealInterval = 30 * time.Second
	if err := cfg.Validate(); err != nil {
		t.Fatalf("config: %v", err)
	}
	set := metrics.NewSet()
	m, err := consumer.New(cfg, e.deps(t, set))
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(rctx) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := waitReady(m); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the heal loop's first pass (and its forgotten_users read) is done

	st := featurestore.New(e.pool, e.rd, e.Prefix, e.fcfg, slog.New(slog.DiscardHandler))
	rep, err := st.Forget(ctx, []string{gone}, 10*time.Second) // the CLI's minimum
	if err != nil {
		t.Fatal(err)
	}
	w := &events.Watch{Common: events.Common{EventID: fmt.Sprintf("forget-heal-%d", rep.ForgottenAtMs), UserID: gone, SessionID: "s",
		RequestID: "r", TsMs: rep.ForgottenAtMs - 60_000, ServerReceivedTsMs: rep.ForgottenAtMs - 5_000}, EventType: "watch", ItemID: "i", WatchTimeSec: 30}
	e.produce(t, []events.Any{w})
	waitFor(t, "the late watch processed", 30*time.Second, func() bool {
		return counter(set, "reco_feature_consumer_processed_total", `status="ignored"`) >= 1 || e.applied(t) >= 1
	})
	var n int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM feature_users WHERE user_id = $1`, gone).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("a watch received %d ms before the erasure was applied after it (heal interval %s)", rep.ForgottenAtMs-w.ServerReceivedTsMs, cfg.HealInterval)
	}
}

func waitReady(m any) error {
	r := m.(interface{ Ready(context.Context) error })
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := r.Ready(context.Background())
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A legacy event (POST /event) of an erased user that the API received before the erasure
// but the relay publishes after it (the relay down or lagging past --settle) is skipped: its
// payload carries the API's receive time, as the other kinds do, not only the Kafka time of
// its publication.
func TestLegacyEventRelayedAfterErasureIsSkipped(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const gone = "user-erased-legacy"
	ts := time.Now().Add(-time.Minute).UnixMilli()
	// Received (raw row written, outbox row pending) before the erasure; the relay is down.
	late := &events.Legacy{EventID: "forget-legacy-0001", UserID: gone, ItemID: "item-x", EventType: events.LegacyView, Ts: ts,
		ServerReceivedTsMs: time.Now().UnixMilli()}
	e.insertRaw(t, []events.Any{late})
	c := e.startConsumer(t)
	st := featurestore.New(e.pool, e.rd, e.Prefix, e.fcfg, slog.New(slog.DiscardHandler))
	rep, err := st.Forget(ctx, []string{gone}, 7*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Deleted["legacy_events"] != 1 {
		t.Fatalf("report %+v, want the legacy raw row erased", rep)
	}
	// The relay comes back and publishes the pending outbox row.
	e.produce(t, []events.Any{late})
	waitFor(t, "the late legacy event processed", 30*time.Second, func() bool {
		return counter(c.set, "reco_feature_consumer_processed_total", `status="ignored"`) >= 1 || e.applied(t) >= 1
	})
	var n int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM feature_users WHERE user_id = $1`, gone).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("the erased user's feature row is back: a legacy event received before the erasure was applied after it")
	}
}

// While the erased users cannot be read (the table unreachable here; PostgreSQL failing that
// query, or at start), the consumer applies no batch: with the list it has (none at start) it
// would apply an erased user's event that `users forget` then does not find to delete. Once
// the list is read, the user's event is skipped and the others are applied.
func TestBatchesWaitForTheErasedUsersList(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const gone, kept = "user-erased-unread", "user-kept-unread"
	now := time.Now().UnixMilli()
	for _, sql := range []string{
		fmt.Sprintf(`INSERT INTO forgotten_users (user_id, forgotten_at_ms) VALUES ('%s', %d)`, gone, now+60_000),
		`ALTER TABLE forgotten_users RENAME TO forgotten_users_away`,
	} {
		if _, err := e.pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	var evs []events.Any
	for i, u := range []string{gone, kept} {
		evs = append(evs, &events.Watch{Common: events.Common{EventID: fmt.Sprintf("unread-%d", i), UserID: u, SessionID: "s", RequestID: "r",
			TsMs: now, ServerReceivedTsMs: now}, EventType: "watch", ItemID: "item", WatchTimeSec: 30})
	}
	e.produce(t, evs)
	c := e.startConsumer(t)
	failedReads := func() float64 { return counter(c.set, "reco_feature_consumer_errors_total", `stage="forgotten_users"`) }
	waitFor(t, "reads of the erased users failing while a batch waits", 60*time.Second, func() bool { return failedReads() >= 3 })
	if n := e.applied(t); n != 0 {
		t.Errorf("%d events applied without a list of the erased users", n)
	}
	if _, err := e.pool.Exec(ctx, `ALTER TABLE forgotten_users_away RENAME TO forgotten_users`); err != nil {
		t.Fatal(err)
	}
	e.waitApplied(t, 1, time.Minute)
	var users []string
	rows, _ := e.pool.Query(ctx, `SELECT user_id FROM feature_users ORDER BY user_id`)
	users, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(users) != 1 || users[0] != kept {
		t.Errorf("feature users %v, want only %s (%s erased)", users, kept, gone)
	}
}

// A poison message of an erased user published before the erasure is not dead-lettered: its
// raw bytes would outlive the erasure, which cleared the DLQ up to its time. Another user's
// poison still is.
func TestErasedUsersPoisonIsNotDeadLettered(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const gone, kept = "user-erased-poison", "user-kept-poison"
	if _, err := e.pool.Exec(ctx, `INSERT INTO forgotten_users (user_id, forgotten_at_ms) VALUES ($1, $2)`, gone, time.Now().UnixMilli()+60_000); err != nil {
		t.Fatal(err)
	}
	var poison []kafkago.Message
	for _, u := range []string{gone, kept} {
		poison = append(poison, kafkago.Message{Topic: e.TopicWatch, Key: []byte(u), Value: []byte("not json: " + u),
			Headers: []kafkago.Header{{Key: events.HeaderEventType, Value: []byte("watch")}}})
	}
	e.produceRaw(t, poison...)
	c := e.startConsumer(t)
	waitFor(t, "both poison messages handled", time.Minute, func() bool {
		return counter(c.set, `reco_feature_consumer_dlq_events_total{outcome="stored"}`) >= 1 &&
			counter(c.set, "reco_feature_consumer_processed_total", `status="ignored"`) >= 1
	})
	var keys []string
	rows, _ := e.pool.Query(ctx, `SELECT convert_from(msg_key, 'UTF8') FROM feature_dlq ORDER BY id`)
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0] != kept {
		t.Errorf("dead letters of %v, want only %s's (%s erased)", keys, kept, gone)
	}
}

// An undecodable message of an erased user received before the erasure but published after
// it (the relay was behind by more than --settle) is not dead-lettered either: a payload that
// still carries the API's receive time (here an event of a schema version this consumer does
// not know) is judged by it, not by the Kafka time, which took it for the user's return and
// stored it after the erasure had cleared the DLQ.
func TestErasedUsersPoisonRelayedLateIsNotDeadLettered(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const gone, kept = "user-erased-late-poison", "user-kept-late-poison"
	now := time.Now()
	if _, err := e.pool.Exec(ctx, `INSERT INTO forgotten_users (user_id, forgotten_at_ms) VALUES ($1, $2)`, gone, now.Add(-time.Minute).UnixMilli()); err != nil {
		t.Fatal(err)
	}
	var poison []kafkago.Message
	for _, u := range []string{gone, kept} {
		payload := fmt.Sprintf(`{"event_type":"watch","event_id":"late-%s","user_id":%q,"server_received_ts_ms":%d}`, u, u, now.Add(-2*time.Minute).UnixMilli())
		poison = append(poison, kafkago.Message{Topic: e.TopicWatch, Key: []byte(u), Value: []byte(payload),
			Headers: []kafkago.Header{{Key: events.HeaderEventType, Value: []byte("watch")}, {Key: events.HeaderSchemaVersion, Value: []byte("99")}}})
	}
	e.produceRaw(t, poison...)
	c := e.startConsumer(t)
	waitFor(t, "both poison messages handled", time.Minute, func() bool {
		return counter(c.set, `reco_feature_consumer_dlq_events_total{outcome="stored"}`)+
			counter(c.set, "reco_feature_consumer_processed_total", `status="ignored"`) >= 2
	})
	rows, _ := e.pool.Query(ctx, `SELECT convert_from(msg_key, 'UTF8') FROM feature_dlq ORDER BY id`)
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0] != kept {
		t.Errorf("dead letters of %v, want only %s's (%s erased before it was published)", keys, kept, gone)
	}
}

// A batch judged by a list of erased users from before an erasure that keeps failing until
// after it (`users forget` deletes --settle after recording it) loses the erased user's
// events and undecodable messages before its next attempt: applied as judged, it would bring
// the features back after their deletion, and store the message in the DLQ after the
// erasure cleared it. Another user's events in the batch apply.
func TestErasureDuringARetriedBatchDropsTheUsersEvents(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const gone, kept = "user-erased-retry", "user-kept-retry"
	now := time.Now().UnixMilli()
	watch := func(user, id string) events.Any {
		return &events.Watch{Common: events.Common{EventID: "retry-event-" + id, UserID: user, SessionID: "s", RequestID: "r",
			TsMs: now, ServerReceivedTsMs: now}, EventType: "watch", ItemID: "i-" + id, WatchTimeSec: 30}
	}
	e.produce(t, []events.Any{watch(kept, "warm-up")})
	cfg := e.config()
	cfg.DrainTimeout = 3 * time.Second // each blocked attempt fails after it
	c := e.startWith(t, cfg, nil)
	e.waitApplied(t, 1, time.Minute)

	// The feature store refuses nothing, it only blocks: every attempt times out.
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // rolled back below
	if _, err := tx.Exec(ctx, `LOCK TABLE feature_users, feature_dlq IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	e.produceRaw(t, kafkago.Message{Topic: e.TopicWatch, Key: []byte(gone), Value: []byte("not json"),
		Headers: []kafkago.Header{{Key: events.HeaderEventType, Value: []byte("watch")}}})
	e.produce(t, []events.Any{watch(gone, "g1"), watch(kept, "k1")})
	waitFor(t, "a failed attempt", time.Minute, func() bool {
		return counter(c.set, `reco_feature_consumer_errors_total{stage="process"}`) >= 1
	})
	if _, err := e.pool.Exec(ctx, `INSERT INTO forgotten_users (user_id, forgotten_at_ms) VALUES ($1, $2)`, gone, time.Now().UnixMilli()); err != nil {
		t.Fatal(err)
	}
	// Past the oldest list a batch is applied with.
	time.Sleep(featurestore.ForgottenRefresh + 2*time.Second)
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	e.waitApplied(t, 2, time.Minute)
	checkErasedLeftNothing(t, e, c, kept, gone, 2)
}

// checkErasedLeftNothing checks that of the users only kept has features, that the erased
// user gone's ignored messages (of them) were counted, and that no dead letter was stored.
func checkErasedLeftNothing(t *testing.T, e *env, c *running, kept, gone string, ignored float64) {
	t.Helper()
	rows, _ := e.pool.Query(context.Background(), `SELECT user_id FROM feature_users ORDER BY user_id`)
	users, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(users) != 1 || users[0] != kept {
		t.Errorf("feature users %v, want only %s (%s erased)", users, kept, gone)
	}
	if n := counter(c.set, "reco_feature_consumer_processed_total", `status="ignored"`); n != ignored {
		t.Errorf("%v messages ignored, want the erased user's %v", n, ignored)
	}
	var dlq int
	if err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM feature_dlq`).Scan(&dlq); err != nil || dlq != 0 {
		t.Errorf("%d dlq entries (%v), want none (the erased user's poison message ignored)", dlq, err)
	}
}

// An erasure the consumer's list of erased users does not have is found in the batch's own
// transaction (featurestore.ErasedError): the user's events received up to the erasure time
// and undecodable messages are dropped and counted as ignored, on the batch path and on the
// event-by-event path a data error leads to (whose dead letters were stored as judged before
// it), and the others apply. The list misses it here because the row's xid
// is below every incremental reread's watermark (no real write's is); it stands for a list
// up to 6 s old, and for an attempt judged by it that lasts past --settle (the erasure's
// record waits for an attempt that holds the user, see featurestore.Forget).
func TestErasureTheListMissedIsFoundInTheBatch(t *testing.T) {
	for _, tc := range []struct {
		name   string
		poison bool // the batch hits a data error first and is applied event by event
	}{
		{name: "batch"},
		{name: "event by event after a data error", poison: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			ctx := context.Background()
			const gone, kept = "user-erased-unlisted", "user-kept-unlisted"
			if tc.poison {
				if _, err := e.pool.Exec(ctx, `CREATE SEQUENCE test_failures;
CREATE FUNCTION test_fail() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.event_id = 'unlisted-gone-1' AND nextval('test_failures') = 1 THEN
    RAISE EXCEPTION 'injected data error' USING ERRCODE = '22P02';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER test_fail BEFORE INSERT ON feature_applied FOR EACH ROW EXECUTE FUNCTION test_fail();`); err != nil {
					t.Fatal(err)
				}
			}
			c := e.startConsumer(t)
			if err := waitReady(c.mod); err != nil {
				t.Fatal(err)
			}
			now := time.Now().UnixMilli()
			if _, err := e.pool.Exec(ctx, `ALTER TABLE forgotten_users DISABLE TRIGGER forgotten_users_xid;
INSERT INTO forgotten_users (user_id, forgotten_at_ms, xid) VALUES ('`+gone+`', `+fmt.Sprint(now+60_000)+`, '0')`); err != nil {
				t.Fatal(err)
			}
			var evs []events.Any
			for i, u := range []string{gone, gone, kept} {
				evs = append(evs, &events.Watch{Common: events.Common{EventID: fmt.Sprintf("unlisted-%s-%d", u[5:9], i), UserID: u,
					SessionID: "s", RequestID: "r", TsMs: now, ServerReceivedTsMs: now}, EventType: "watch", ItemID: "item", WatchTimeSec: 30})
			}
			evs[0].(*events.Watch).EventID = "unlisted-gone-1"
			// And an undecodable message of the erased user in the same batch: its dead letter
			// must go with the events the transaction finds erased, on both paths.
			msgs := []kafkago.Message{{Topic: e.TopicWatch, Key: []byte(gone), Value: []byte("not json"),
				Headers: []kafkago.Header{{Key: events.HeaderEventType, Value: []byte("watch")}}}}
			for _, ev := range evs {
				msgs = append(msgs, e.message(t, ev))
			}
			e.produceRaw(t, msgs...)
			waitFor(t, "every message ignored, applied or dead-lettered", 60*time.Second, func() bool {
				return counter(c.set, "reco_feature_consumer_processed_total", `status="ignored"`)+float64(e.applied(t))+
					counter(c.set, `reco_feature_consumer_dlq_events_total{outcome="stored"}`) >= 4
			})
			checkErasedLeftNothing(t, e, c, kept, gone, 3)
			if tc.poison {
				var n int64
				if err := e.pool.QueryRow(ctx, `SELECT last_value FROM test_failures`).Scan(&n); err != nil || n < 2 {
					t.Errorf("the poisoned dedup row was inserted %d times (%v), want the batch's and its own apply's", n, err)
				}
			}
		})
	}
}
