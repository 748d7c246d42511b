package featurestore_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/rueidis"

	"recsys/pkg/events"
	"recsys/pkg/featurestore"
	"recsys/pkg/outbox"
	"recsys/pkg/testutil"
)

// `recsys consume replay-dlq` skips a DLQ entry of an erased user whose event the API
// received before the erasure. Forget deletes the DLQ entries created up to the erasure time;
// one the consumer dead-letters later (a lagging consumer meeting a message it cannot decode
// yet, e.g. a newer schema_version during a rolling upgrade) stays pending, and its replay is
// reported as ignored and deletes it, never applied: marked replayed, it kept the erased
// user's raw event until --consumer.dedup-retention.
func TestReplayDLQSkipsErasedUsers(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	st := featurestore.New(pool, rd, testutil.Unique("fg")+":", testConfig(), nil)
	const gone = "user-gone"
	rep, err := st.Forget(ctx, []string{gone}, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	// The event was received before the erasure; it reaches the DLQ after it.
	w := &events.Watch{Common: events.Common{EventID: "dlq-gone-1", UserID: gone, SessionID: "s", RequestID: "r",
		TsMs: rep.ForgottenAtMs - 60_000, ServerReceivedTsMs: rep.ForgottenAtMs - 30_000}, EventType: "watch", ItemID: "i1", WatchTimeSec: 30}
	p, err := events.Encode(w)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO feature_dlq (topic, kafka_partition, kafka_offset, msg_key, headers, payload, error)
VALUES ('t', 0, 1, $1, '{"event_type":"watch","schema_version":"1"}', $2, 'unknown schema_version')`, []byte(gone), p); err != nil {
		t.Fatal(err)
	}
	rep2, err := st.ReplayDLQ(ctx, featurestore.ReplayOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep2.Ignored != 1 || rep2.Applied != 0 || len(rep2.Entries) != 1 || rep2.Entries[0].Outcome != "ignored" {
		t.Errorf("replay report %+v, want the entry ignored", rep2)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM feature_dlq WHERE msg_key = $1`, []byte(gone)).Scan(&n); err != nil || n != 0 {
		t.Errorf("%d dlq entries of the erased user after its replay was ignored (%v), want it deleted", n, err)
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM feature_users WHERE user_id = $1`, gone).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("replay-dlq brought the erased user's features back (event received %d ms before the erasure)", rep.ForgottenAtMs-w.ServerReceivedTsMs)
	}
}

// A repopulation of the Redis copy copies a snapshot page by page for as long as it runs: one
// whose snapshot still held an erased user writes the user's hash after both of Forget's
// deletions. Forget's second pass waits until no repopulation holds the lock, then deletes
// the hash once more.
func TestForgetOutlastsARunningRepopulation(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	prefix := testutil.Unique("fr") + ":"
	st := featurestore.New(pool, rd, prefix, testConfig(), nil)
	const gone = "user-gone-during-repopulation"
	lock := prefix + "repopulating" // held by a repopulation in another process
	if err := rd.Do(ctx, rd.B().Set().Key(lock).Value("another-process").Px(time.Minute).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rd.Do(context.Background(), rd.B().Del().Key(lock).Build()) })
	const settle = 100 * time.Millisecond
	done := make(chan error, 1)
	go func() {
		_, err := st.Forget(ctx, []string{gone}, settle)
		done <- err
	}()
	// Past both of Forget's usual passes (the erasure time plus 1 s, then 2 s more), the
	// repopulation writes the user's hash from its snapshot.
	time.Sleep(settle + 3*time.Second + 500*time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("Forget returned (error %v) while a repopulation held its lock", err)
	default:
	}
	key := st.UserKey(gone)
	if err := rd.Do(ctx, rd.B().Hset().Key(key).FieldValue().FieldValue("v", "7").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	// The repopulation ends.
	if err := rd.Do(ctx, rd.B().Del().Key(lock).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Forget did not return 10 s after the repopulation ended")
	}
	n, err := rd.Do(ctx, rd.B().Exists().Key(key).Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Error("the hash a repopulation wrote back during the erasure is still in the Redis copy")
	}
}

// A repopulation that outlasts the wait's bound fails the erasure with a request to rerun it,
// rather than returning as if the copy were clear.
func TestForgetGivesUpOnALongRepopulation(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	prefix := testutil.Unique("fl") + ":"
	st := featurestore.New(pool, rd, prefix, testConfig(), nil)
	if err := st.AwaitRepopulation(ctx, time.Second); err != nil {
		t.Fatalf("no repopulation running: %v", err)
	}
	lock := prefix + "repopulating"
	if err := rd.Do(ctx, rd.B().Set().Key(lock).Value("another-process").Px(time.Minute).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rd.Do(context.Background(), rd.B().Del().Key(lock).Build()) })
	err := st.AwaitRepopulation(ctx, 600*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "run the erasure again") {
		t.Errorf("waiting past the bound: %v, want an error asking for a rerun", err)
	}
}

// A raw row of an event received before the erasure whose transaction commits after Forget's
// first pass (the API may take a request up to --ingest.write-timeout after receiving it and
// commit it as long after) is deleted by the second pass; an event received after the
// erasure (the user came back) is kept.
func TestForgetDeletesRawRowsCommittedLate(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	st := featurestore.New(pool, rd, testutil.Unique("fl")+":", testConfig(), nil)
	const gone, settle = "user-gone-late-row", 300 * time.Millisecond
	start := time.Now().UnixMilli()
	insert := func(id string, receivedMs int64) {
		t.Helper()
		if _, err := pool.Exec(ctx, `INSERT INTO watches (event_id, user_id, session_id, request_id, item_id, watch_time_sec, ts_ms, ts, server_received_ts_ms)
VALUES ($1, $2, 's', 'r', 'i', 1, $3::bigint, to_timestamp($3::bigint / 1000.0), $3::bigint)`, id, gone, receivedMs); err != nil {
			t.Fatal(err)
		}
	}
	count := func(id string) int {
		t.Helper()
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM watches WHERE event_id = $1`, id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	insert("on-time", start)
	done := make(chan featurestore.ForgetReport, 1)
	go func() {
		rep, err := st.Forget(ctx, []string{gone}, settle)
		if err != nil {
			t.Error(err)
		}
		done <- rep
	}()
	for deadline := time.Now().Add(10 * time.Second); count("on-time") != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("Forget's first pass did not delete the user's watch within 10 s")
		}
	}
	// Committed now, after the first pass: received before the erasure, and after it.
	insert("committed-late", start)
	insert("came-back", start+settle.Milliseconds()+60_000)
	rep := <-done
	if n := count("committed-late"); n != 0 {
		t.Errorf("the row committed after the first pass survived the erasure")
	}
	if n := count("came-back"); n != 1 {
		t.Errorf("the event received after the erasure was deleted")
	}
	if rep.Deleted["watches"] != 2 {
		t.Errorf("report counts %d watches deleted, want 2", rep.Deleted["watches"])
	}
}

// Dead outbox rows are never published, so the relay's retention never deletes them: an erased
// user's events in them (ids, sessions, client context) outlived the erasure until someone
// replayed them. Forget deletes the user's dead single-event rows and takes the user's frames
// out of dead batch rows, keeping the other users' events and the rows of a user who came back.
func TestForgetErasesDeadOutboxRows(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	st := featurestore.New(pool, rd, testutil.Unique("fo")+":", testConfig(), nil)
	const gone, other = "user-gone-dead", "user-stays"
	msg := func(id, user string) outbox.Message {
		return outbox.Message{EventID: id, EventType: "watch", Key: user, SchemaVersion: 1, Payload: []byte(`{"user_id":"` + user + `"}`)}
	}
	batch := func(msgs ...outbox.Message) []byte {
		var b []byte
		for _, m := range msgs {
			b = outbox.AppendFrame(b, m)
		}
		return b
	}
	insert := func(eventID, key string, format int16, payload []byte, count int, createdAt string) {
		t.Helper()
		if _, err := pool.Exec(ctx, `INSERT INTO event_outbox (event_id, event_type, topic, msg_key, payload, status, attempts, max_attempts,
payload_format, event_count, created_at) VALUES ($1, 'watch', 't', $2, $3, 'dead', 5, 5, $4, $5, `+createdAt+`)`,
			eventID, key, payload, format, count); err != nil {
			t.Fatal(err)
		}
	}
	insert("single-gone", gone, outbox.FormatSingle, []byte(`{"user_id":"`+gone+`"}`), 1, "now()")
	insert("single-other", other, outbox.FormatSingle, []byte(`{"user_id":"`+other+`"}`), 1, "now()")
	insert("single-back", gone, outbox.FormatSingle, []byte(`{"user_id":"`+gone+`"}`), 1, "now() + interval '1 hour'")
	insert("batch:e1/"+gone+"@g1", "~lane/1", outbox.FormatBatch, batch(msg("e1", gone), msg("e2", other), msg("e3", gone), msg("e4", other)), 4, "now()")
	insert("batch:e5/"+gone+"@g2", "~lane/2", outbox.FormatBatch, batch(msg("e5", gone)), 1, "now()")
	insert("batch:e6/"+other+"@g3", "~lane/3", outbox.FormatBatch, batch(msg("e6", other), msg("e7", gone)), 2, "now()")

	rep, err := st.Forget(ctx, []string{gone}, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Deleted["event_outbox"] != 5 {
		t.Errorf("report counts %d outbox events erased, want 5", rep.Deleted["event_outbox"])
	}
	got := map[string][]string{}
	rows, _ := pool.Query(ctx, `SELECT event_id, payload_format, payload, event_count FROM event_outbox`)
	var id string
	var format int16
	var payload []byte
	var count int
	if _, err := pgx.ForEachRow(rows, []any{&id, &format, &payload, &count}, func() error {
		if format == outbox.FormatSingle {
			got[id] = []string{string(payload)}
			return nil
		}
		msgs, err := outbox.DecodeBatch(payload, count)
		if err != nil {
			return err
		}
		for _, m := range msgs {
			got[id] = append(got[id], m.EventID+"/"+m.Key)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"single-other":              {`{"user_id":"` + other + `"}`},
		"single-back":               {`{"user_id":"` + gone + `"}`},
		"batch:e2/" + other + "@g1": {"e2/" + other, "e4/" + other},
		"batch:e6/" + other + "@g3": {"e6/" + other},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("outbox after the erasure:\n got %v\nwant %v", got, want)
	}
	for id, evs := range got {
		for _, e := range append(evs, id) {
			if strings.Contains(e, gone) && id != "single-back" {
				t.Errorf("row %s still holds the erased user: %s", id, e)
			}
		}
	}
}

// A row still pending when the erasure runs (the relay down, or backing off after failed
// attempts) is not dead yet, so Forget leaves it for the relay, which publishes it (the
// consumers skip the user's events) or, after its last attempt, makes it dead: then the
// erased user's events leave it instead of staying dead for good. Another user's events
// stay dead for a replay.
func TestForgetErasesRowsThatGoDeadLater(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	st := featurestore.New(pool, rd, testutil.Unique("fl")+":", testConfig(), nil)
	const gone, other = "user-gone-later", "user-stays-later"
	msg := func(id, user string) outbox.Message {
		return outbox.Message{EventID: id, EventType: "watch", Key: user, SchemaVersion: 1,
			Payload: []byte(`{"user_id":"` + user + `","session_id":"s-` + user + `"}`)}
	}
	var lane []byte
	for _, m := range []outbox.Message{msg("e1", gone), msg("e2", other), msg("e3", gone)} {
		lane = outbox.AppendFrame(lane, m)
	}
	for _, r := range []struct {
		eventID, key string
		format       int16
		payload      []byte
		count        int
	}{
		{"single-gone", gone, outbox.FormatSingle, msg("single-gone", gone).Payload, 1},
		{"single-other", other, outbox.FormatSingle, msg("single-other", other).Payload, 1},
		{"batch:e1/" + gone + "@g", "~lane/1", outbox.FormatBatch, lane, 3},
	} {
		if _, err := pool.Exec(ctx, `INSERT INTO event_outbox (event_id, event_type, topic, msg_key, payload, max_attempts,
payload_format, event_count) VALUES ($1, 'watch', 't', $2, $3, 1, $4, $5)`, r.eventID, r.key, r.payload, r.format, r.count); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := st.Forget(ctx, []string{gone}, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Deleted["event_outbox"] != 0 {
		t.Errorf("the erasure took %d events out of dead rows, want 0 (all pending)", rep.Deleted["event_outbox"])
	}
	// The relay's last attempt fails.
	ob := outbox.NewStore(pool)
	c, err := ob.Claim(ctx, outbox.ClaimRequest{Owner: "relay", Limit: 10, Lease: time.Minute})
	if err != nil || len(c.Rows) != 3 {
		t.Fatalf("claim: %v, %v", c, err)
	}
	res := map[int64]outbox.Result{}
	for _, r := range c.Rows {
		res[r.ID] = outbox.Result{Err: errors.New("kafka unreachable")}
	}
	done, err := ob.Complete(ctx, c, outbox.Settle(c.Rows, res, outbox.Backoff{Base: time.Second, Max: time.Second}))
	if err != nil {
		t.Fatal(err)
	}
	if done.Dead != 3 || done.Erased != 3 {
		t.Errorf("complete = %+v, want 3 rows dead and 3 events erased", done)
	}
	var left []string
	rows, _ := pool.Query(ctx, `SELECT status, event_id, payload FROM event_outbox ORDER BY id`)
	var status, id string
	var payload []byte
	if _, err := pgx.ForEachRow(rows, []any{&status, &id, &payload}, func() error {
		if strings.Contains(id, gone) || strings.Contains(string(payload), gone) {
			t.Errorf("%s row %s still holds the erased user: %q", status, id, payload)
		}
		left = append(left, status+" "+id)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if want := []string{"dead single-other", "dead batch:e2/" + other + "@g"}; !reflect.DeepEqual(left, want) {
		t.Errorf("outbox rows %v, want %v", left, want)
	}
}

// User ids are arbitrary text (`/log/*` takes '*', '?', '[' and ':'): an erasure deletes the
// named users' hashes and rows only, never a key another user's id matches as a pattern.
func TestForgetGlobLikeUserIDsTouchNoOtherUser(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	prefix := testutil.Unique("fg") + ":"
	st := featurestore.New(pool, rd, prefix, testConfig(), nil)
	gone := []string{"*", "u*", "?", "[a-z]*", `\*`, "x:*"}
	kept := []string{"alice", "u1", "b", "x:y", "x:", `\`}
	for _, u := range append(append([]string(nil), gone...), kept...) {
		if err := rd.Do(ctx, rd.B().Hset().Key(prefix+"u:"+u).FieldValue().FieldValue("v", "1").Build()).Error(); err != nil {
			t.Fatal(err)
		}
		if _, err := pool.Exec(ctx, `INSERT INTO feature_users (user_id, version) VALUES ($1, 1)`, u); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.Forget(ctx, gone, 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	for _, u := range kept {
		n, err := rd.Do(ctx, rd.B().Exists().Key(prefix+"u:"+u).Build()).AsInt64()
		if err != nil || n != 1 {
			t.Errorf("user %q's hash: exists %d (%v), want kept", u, n, err)
		}
		var rows int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM feature_users WHERE user_id = $1`, u).Scan(&rows); err != nil || rows != 1 {
			t.Errorf("user %q's feature row: %d (%v), want kept", u, rows, err)
		}
	}
	for _, u := range gone {
		if n, err := rd.Do(ctx, rd.B().Exists().Key(prefix+"u:"+u).Build()).AsInt64(); err != nil || n != 0 {
			t.Errorf("erased user %q's hash: exists %d (%v)", u, n, err)
		}
	}
}

// The raw tables have no index by user, so Forget's first pass reads each whole: on a real
// deployment's tables (months of events) that takes far longer than the sessions'
// statement_timeout (--pg.statement-timeout, 5 s), which cancelled every erasure after the
// users were recorded and before anything was deleted. A trigger stands for the long scan.
func TestForgetOutlastsTheStatementTimeout(t *testing.T) {
	ctx := context.Background()
	dsn := testutil.MigratedDatabase(t)
	pool := testutil.Pool(t, dsn+"&statement_timeout=300")
	rd := redisClient(t, testutil.StartPrivate(t, "redis").URL)
	if _, err := pool.Exec(ctx, `CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(1); RETURN OLD; END $$;
CREATE TRIGGER slow_delete BEFORE DELETE ON watches FOR EACH ROW EXECUTE FUNCTION slow_delete()`); err != nil {
		t.Fatal(err)
	}
	const gone = "user-gone-slow-scan"
	now := time.Now().UnixMilli()
	if _, err := pool.Exec(ctx, `INSERT INTO watches (event_id, user_id, session_id, request_id, item_id, watch_time_sec, ts_ms, ts, server_received_ts_ms)
VALUES ('slow-1', $1, 's', 'r', 'i', 1, $2::bigint, to_timestamp($2::bigint / 1000.0), $2::bigint)`, gone, now); err != nil {
		t.Fatal(err)
	}
	st := featurestore.New(pool, rd, testutil.Unique("fs")+":", testConfig(), nil)
	rep, err := st.Forget(ctx, []string{gone}, 100*time.Millisecond)
	if err != nil {
		t.Fatalf("forget with a scan longer than the statement timeout: %v", err)
	}
	if rep.Deleted["watches"] != 1 {
		t.Errorf("report counts %d watches deleted, want 1", rep.Deleted["watches"])
	}
}

// Forget records the erasure under the outbox's erasure lock, so that a relay making rows
// dead meanwhile either reads it or is done before EraseDead looks (outbox.eraseForgotten):
// a transaction holding that lock holds the recording back until it ends.
func TestForgetRecordsUnderTheOutboxErasureLock(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	st := featurestore.New(pool, rd, testutil.Unique("fg")+":", testConfig(), nil)
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // rolled back below
	if err := outbox.LockErasures(ctx, tx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := st.Forget(ctx, []string{"user-gone"}, 0)
		done <- err
	}()
	waitForLockWait(t, pool, "the erasure lock")
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM forgotten_users`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("forgotten_users holds %d rows (%v) while the erasure lock is held, want 0", n, err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := userRows(t, pool, "forgotten_users"); !slices.Equal(got, []string{"user-gone"}) {
		t.Errorf("forgotten_users holds %v, want [user-gone]", got)
	}
}

// doMultiSizes is a Redis client that records the size of each DoMulti.
type doMultiSizes struct {
	rueidis.Client
	mu    sync.Mutex
	sizes []int
}

func (c *doMultiSizes) DoMulti(ctx context.Context, cmds ...rueidis.Completed) []rueidis.RedisResult {
	c.mu.Lock()
	c.sizes = append(c.sizes, len(cmds))
	c.mu.Unlock()
	return c.Client.DoMulti(ctx, cmds...)
}

// A large erasure deletes the users' hashes in round trips of a thousand commands, both
// passes, not in one pipeline of every user's (up to 100,000 per run); every hash goes.
func TestForgetDeletesRedisHashesInChunks(t *testing.T) {
	ctx := context.Background()
	pool, rd := servers(t)
	rec := &doMultiSizes{Client: rd}
	st := featurestore.New(pool, rec, testutil.Unique("fc")+":", testConfig(), nil)
	users := make([]string, 2500)
	cmds := make(rueidis.Commands, len(users))
	for i := range users {
		users[i] = fmt.Sprintf("chunked-%04d", i)
		cmds[i] = rd.B().Hset().Key(st.UserKey(users[i])).FieldValue().FieldValue("v", "1").Build()
	}
	for _, r := range rd.DoMulti(ctx, cmds...) {
		if err := r.Error(); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := st.Forget(ctx, users, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	// The report says what went from the copy too, and a second run finds nothing left.
	if n := rep.Deleted["redis_user_hashes"]; n != int64(len(users)) {
		t.Errorf("report: %d redis hashes deleted, want %d (%v)", n, len(users), rep.Deleted)
	}
	rec.mu.Lock()
	sizes := rec.sizes
	rec.mu.Unlock()
	if want := []int{1000, 1000, 500, 1000, 1000, 500}; !slices.Equal(sizes, want) {
		t.Errorf("DoMulti sizes %v, want %v (two passes of 1,000 per round trip)", sizes, want)
	}
	left, err := rd.Do(ctx, rd.B().Keys().Pattern(st.UserKey("chunked-*")).Build()).AsStrSlice()
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Errorf("%d hashes of erased users left, e.g. %s", len(left), left[0])
	}
	if rep, err = st.Forget(ctx, users, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	for store, n := range rep.Deleted {
		if n != 0 {
			t.Errorf("second run of the erasure deleted %d from %s, want nothing (%v)", n, store, rep.Deleted)
		}
	}
}

// The erasure of dead outbox rows reads every dead row (and its pages, every dead row up to
// their 500th batch row): an outbox a Kafka outage filled with dead rows takes longer than
// the sessions' statement_timeout, which cancelled Forget there at every rerun, after the
// raw rows were gone and before the feature rows. A trigger stands for the long statement,
// on the deletion of a single-event row and on the rewrite of a batch row.
func TestForgetDeadOutboxRowsOutlastTheStatementTimeout(t *testing.T) {
	const gone, other = "user-gone-slow-outbox", "user-stays-slow-outbox"
	msg := func(id, user string) outbox.Message {
		return outbox.Message{EventID: id, EventType: "watch", Key: user, SchemaVersion: 1, Payload: []byte(`{"user_id":"` + user + `"}`)}
	}
	for _, tc := range []struct {
		name, event, eventID, key string
		format                    int16
		payload                   []byte
		count                     int
	}{
		{"single-event row", "DELETE", "single-gone", gone, outbox.FormatSingle, []byte(`{"user_id":"` + gone + `"}`), 1},
		{"batch row", "UPDATE", "batch:e1/" + gone + "@g1", "~lane/1", outbox.FormatBatch,
			outbox.AppendFrame(outbox.AppendFrame(nil, msg("e1", gone)), msg("e2", other)), 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dsn := testutil.MigratedDatabase(t)
			pool := testutil.Pool(t, dsn+"&statement_timeout=300")
			if _, err := pool.Exec(ctx, `INSERT INTO event_outbox (event_id, event_type, topic, msg_key, payload, status, attempts, max_attempts,
payload_format, event_count) VALUES ($1, 'watch', 't', $2, $3, 'dead', 5, 5, $4, $5)`, tc.eventID, tc.key, tc.payload, tc.format, tc.count); err != nil {
				t.Fatal(err)
			}
			if _, err := pool.Exec(ctx, `CREATE FUNCTION slow_write() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(1); RETURN COALESCE(NEW, OLD); END $$;
CREATE TRIGGER slow_write BEFORE `+tc.event+` ON event_outbox FOR EACH ROW EXECUTE FUNCTION slow_write()`); err != nil {
				t.Fatal(err)
			}
			st := featurestore.New(pool, nil, testutil.Unique("fd")+":", testConfig(), nil)
			rep, err := st.Forget(ctx, []string{gone}, 100*time.Millisecond)
			if err != nil {
				t.Fatalf("forget with an outbox statement longer than the statement timeout: %v", err)
			}
			if rep.Deleted["event_outbox"] != 1 {
				t.Errorf("report counts %d outbox events erased, want 1", rep.Deleted["event_outbox"])
			}
		})
	}
}
