package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/outbox"
	"recsys/pkg/testutil"
)

const (
	erased   = "user-erased"
	kept     = "user-kept"
	cameBack = "user-came-back" // erased before their rows were created
)

// eraseFixture records the erasures: erased's an hour ahead (an erasure in its --settle, or
// one whose EraseDead ran before these rows went dead), cameBack's an hour ago.
func eraseFixture(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), `INSERT INTO forgotten_users (user_id, forgotten_at_ms) VALUES
($1, (extract(epoch FROM now()) * 1000)::bigint + 3600000), ($2, (extract(epoch FROM now()) * 1000)::bigint - 3600000)`,
		erased, cameBack); err != nil {
		t.Fatal(err)
	}
}

func frame(id, user string) outbox.Message {
	return outbox.Message{EventID: id, EventType: "watch", Key: user, SchemaVersion: 1, Payload: []byte(`{"user_id":"` + user + `"}`)}
}

// insertRow writes a pending row: a single-event row of its one message, a batch row of
// several, and returns its id.
func insertRow(t *testing.T, pool *pgxpool.Pool, lane string, maxAttempts int, msgs ...outbox.Message) int64 {
	t.Helper()
	eventID, key, format, payload := msgs[0].EventID, msgs[0].Key, outbox.FormatSingle, msgs[0].Payload
	if lane != "" {
		eventID, key, format, payload = "batch:"+msgs[0].EventID+"/"+msgs[0].Key+"@g", lane, outbox.FormatBatch, nil
		for _, m := range msgs {
			payload = outbox.AppendFrame(payload, m)
		}
	}
	var id int64
	if err := pool.QueryRow(context.Background(), `INSERT INTO event_outbox (event_id, event_type, topic, msg_key, payload, max_attempts,
payload_format, event_count) VALUES ($1, 'watch', 't', $2, $3, $4, $5, $6) RETURNING id`,
		eventID, key, payload, maxAttempts, format, len(msgs)).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

// outboxEvents is every row's events as event_id/user, by row status.
func outboxEvents(t *testing.T, pool *pgxpool.Pool) map[string][]string {
	t.Helper()
	got := map[string][]string{}
	rows, _ := pool.Query(context.Background(), `SELECT status, event_id, msg_key, payload_format, payload, event_count FROM event_outbox ORDER BY id`)
	var st, id, key string
	var format int16
	var payload []byte
	var count int
	if _, err := pgx.ForEachRow(rows, []any{&st, &id, &key, &format, &payload, &count}, func() error {
		if format == outbox.FormatSingle {
			got[st] = append(got[st], id+"/"+key)
			return nil
		}
		msgs, err := outbox.DecodeBatch(payload, count)
		if err != nil {
			return err
		}
		for _, m := range msgs {
			got[st] = append(got[st], m.EventID+"/"+m.Key)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, evs := range got {
		slices.Sort(evs)
	}
	return got
}

// A row still pending when `recsys users forget` ran (EraseDead only scrubs rows already
// dead) that goes dead later, by a failed last attempt, a permanent error, a dead letter or a
// reap, loses the erased users' events received before their erasure: kept dead, they held
// the users' ids, sessions and client context for good. Other users' events, and those of a
// user who came back after the erasure, stay dead for a replay.
func TestRowsGoingDeadLoseErasedUsersEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fail := func(c *outbox.Claim) map[int64]outbox.Result {
		res := map[int64]outbox.Result{}
		for _, r := range c.Rows {
			res[r.ID] = outbox.Result{Err: errors.New("topic gone"), Permanent: true}
		}
		return res
	}
	for _, tc := range []struct {
		name string
		// goDead makes every row dead and returns the erased events the store reported.
		goDead     func(t *testing.T, s *outbox.Store, pool *pgxpool.Pool) int
		want       []string
		wantErased int
	}{
		{"complete", func(t *testing.T, s *outbox.Store, _ *pgxpool.Pool) int {
			c := claim(t, s, "r", 10)
			done, err := s.Complete(ctx, c, outbox.Settle(c.Rows, fail(c), backoff))
			if err != nil {
				t.Fatal(err)
			}
			if done.Dead != len(c.Rows) {
				t.Errorf("complete = %+v, want %d rows dead", done, len(c.Rows))
			}
			return done.Erased
		}, []string{"e2/" + kept, "e4/" + kept, "e6/" + kept, "e7/" + cameBack, "s2/" + kept, "s3/" + cameBack}, 5},
		{"reap", func(t *testing.T, s *outbox.Store, pool *pgxpool.Pool) int {
			c := claim(t, s, "crasher", 10)
			if _, err := pool.Exec(ctx, `UPDATE event_outbox SET lease_expires_at = now() - interval '1 second'`); err != nil {
				t.Fatal(err)
			}
			r, err := s.Reap(ctx, 10, backoff)
			if err != nil {
				t.Fatal(err)
			}
			if r.Dead != len(c.Rows) {
				t.Errorf("reap = %+v, want %d rows dead", r, len(c.Rows))
			}
			return r.Erased
		}, []string{"e2/" + kept, "e4/" + kept, "e6/" + kept, "e7/" + cameBack, "s2/" + kept, "s3/" + cameBack}, 5},
		{"dead letters", func(t *testing.T, s *outbox.Store, _ *pgxpool.Pool) int {
			c := claim(t, s, "r", 10)
			res := map[int64]outbox.Result{}
			for _, r := range c.Rows {
				msgs, err := r.Messages()
				if err != nil {
					t.Fatal(err)
				}
				if r.PayloadFormat != outbox.FormatBatch {
					continue // a single row too large goes dead whole: the complete case
				}
				var dls []outbox.DeadLetter
				for _, m := range msgs {
					dls = append(dls, outbox.DeadLetter{Message: m, Err: "too large"})
				}
				res[r.ID] = outbox.Result{DeadLetters: dls}
			}
			done, err := s.Complete(ctx, c, outbox.Settle(c.Rows, res, backoff))
			if err != nil {
				t.Fatal(err)
			}
			return done.Erased
		}, []string{"e2/" + kept, "e4/" + kept, "e6/" + kept, "e7/" + cameBack}, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, pool := newStore(t)
			eraseFixture(t, pool)
			insertRow(t, pool, "", 1, frame("s1", erased))
			insertRow(t, pool, "", 1, frame("s2", kept))
			insertRow(t, pool, "", 1, frame("s3", cameBack))
			insertRow(t, pool, "~lane/1", 1, frame("e1", erased), frame("e2", kept), frame("e3", erased), frame("e4", kept))
			insertRow(t, pool, "~lane/2", 1, frame("e5", erased))
			insertRow(t, pool, "~lane/3", 1, frame("e6", kept), frame("e7", cameBack), frame("e8", erased))
			n := tc.goDead(t, s, pool)
			got := outboxEvents(t, pool)
			want := map[string][]string{"dead": tc.want}
			if tc.name == "dead letters" {
				// Acked rows stay published (no DeleteOnAck): published rows are not dead.
				want["published"] = []string{"e1/" + erased, "e2/" + kept, "e3/" + erased, "e4/" + kept, "e5/" + erased,
					"e6/" + kept, "e7/" + cameBack, "e8/" + erased, "s1/" + erased, "s2/" + kept, "s3/" + cameBack}
				slices.Sort(want["published"])
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("outbox after the rows went dead:\n got %v\nwant %v", got, want)
			}
			if n != tc.wantErased {
				t.Errorf("erased events reported %d, want %d", n, tc.wantErased)
			}
		})
	}
}

// A batch row named after an erased user's event is renamed after its first remaining one,
// as EraseDead does: the name held the erased event's id and user.
func TestRowGoingDeadRenamedAfterItsFirstKeptEvent(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	eraseFixture(t, pool)
	insertRow(t, pool, "~lane/1", 1, frame("e1", erased), frame("e2", kept))
	c := claim(t, s, "r", 10)
	if _, err := s.Complete(context.Background(), c, outbox.Settle(c.Rows, map[int64]outbox.Result{
		c.Rows[0].ID: {Err: errors.New("x")}}, backoff)); err != nil {
		t.Fatal(err)
	}
	var id string
	if err := pool.QueryRow(context.Background(), `SELECT event_id FROM event_outbox`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("batch:e2/%s@g", kept); id != want {
		t.Errorf("event_id %q, want %q", id, want)
	}
}

// A dead letter split off a batch row after an erasure holds an event the API received
// before it: it is judged by its batch row's creation, not by the split.
func TestDeadLetterSplitAfterAnErasureLosesTheErasedEvent(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := context.Background()
	insertRow(t, pool, "~lane/1", 1, frame("e1", erased), frame("e2", kept))
	if _, err := pool.Exec(ctx, `UPDATE event_outbox SET created_at = now() - interval '2 hours'`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO forgotten_users (user_id, forgotten_at_ms)
VALUES ($1, (extract(epoch FROM now()) * 1000)::bigint - 3600000)`, erased); err != nil {
		t.Fatal(err)
	}
	c := claim(t, s, "r", 10)
	msgs, err := c.Rows[0].Messages()
	if err != nil {
		t.Fatal(err)
	}
	res := map[int64]outbox.Result{c.Rows[0].ID: {DeadLetters: []outbox.DeadLetter{{Message: msgs[0], Err: "too large"}, {Message: msgs[1], Err: "too large"}}}}
	done, err := s.Complete(ctx, c, outbox.Settle(c.Rows, res, backoff))
	if err != nil {
		t.Fatal(err)
	}
	if got := outboxEvents(t, pool)["dead"]; !reflect.DeepEqual(got, []string{"e2/" + kept}) || done.Erased != 1 {
		t.Errorf("dead rows %v (erased %d), want only e2/%s (1)", got, done.Erased, kept)
	}
}

// An erasure being recorded while a row goes dead: the relay's transaction waits for it to
// commit and then takes the user's events out. Reading forgotten_users without that wait
// could miss an erasure committing meanwhile, and the erasure's EraseDead could miss the row
// if the relay committed after it looked.
func TestRowGoingDeadWaitsForAnErasureBeingRecorded(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := context.Background()
	insertRow(t, pool, "", 1, frame("s1", erased))
	c := claim(t, s, "r", 10)
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // committed below
	// As `recsys users forget` records an erasure (featurestore.Forget).
	if err := outbox.LockErasures(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO forgotten_users (user_id, forgotten_at_ms)
VALUES ($1, (extract(epoch FROM now()) * 1000)::bigint + 20000)`, erased); err != nil {
		t.Fatal(err)
	}
	type result struct {
		done outbox.Completed
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		done, err := s.Complete(ctx, c, outbox.Settle(c.Rows, map[int64]outbox.Result{c.Rows[0].ID: {Err: errors.New("x")}}, backoff))
		ch <- result{done, err}
	}()
	// Until the relay's transaction waits for the erasure's lock.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var waiting bool
		if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting {
			break
		}
		select {
		case r := <-ch:
			t.Fatalf("complete ended (%+v, %v) while the erasure was being recorded", r.done, r.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the relay's transaction never waited for the erasure")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil || r.done.Dead != 1 || r.done.Erased != 1 {
		t.Errorf("complete = %+v, %v; want the row dead and its event erased", r.done, r.err)
	}
	if got := outboxEvents(t, pool); len(got) != 0 {
		t.Errorf("outbox %v, want empty", got)
	}
}

// relayPool connects to the database of pool as a new role granted only what the relay
// needs: the outbox, and reading the erasures (a deployment's least-privilege relay role).
func relayPool(t *testing.T, pool *pgxpool.Pool) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	role := testutil.Unique("relay_")
	// Roles are the server's, not the test database's: dropped when the test ends.
	if _, err := pool.Exec(ctx, `CREATE ROLE `+role+` LOGIN`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		if _, err := pool.Exec(ctx, `DROP OWNED BY `+role); err != nil {
			t.Errorf("drop %s's privileges: %v", role, err)
		}
		if _, err := pool.Exec(ctx, `DROP ROLE `+role); err != nil {
			t.Errorf("drop role %s: %v", role, err)
		}
	})
	for _, grant := range []string{
		`GRANT SELECT, INSERT, UPDATE, DELETE ON event_outbox TO ` + role,
		`GRANT USAGE ON SEQUENCE event_outbox_id_seq, event_outbox_lease_token_seq TO ` + role,
		`GRANT SELECT ON forgotten_users TO ` + role,
	} {
		if _, err := pool.Exec(ctx, grant); err != nil {
			t.Fatal(err)
		}
	}
	cfg := pool.Config().ConnConfig
	u, err := url.Parse(cfg.ConnString())
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(role)
	return testutil.Pool(t, u.String())
}

// A relay whose role may only read forgotten_users still makes rows dead, erasing the erased
// users' events, by recording outcomes and by reaping expired leases. Taking a table lock on
// forgotten_users to order this against `recsys users forget` needed UPDATE there: every such
// recording and every reap (one transaction) failed, so expired leases were never reaped.
func TestRowsGoDeadUnderARelayRoleThatOnlyReadsErasures(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, pool := newStore(t)
	s := outbox.NewStore(relayPool(t, pool))
	eraseFixture(t, pool)

	insertRow(t, pool, "", 1, frame("s1", erased))
	insertRow(t, pool, "~lane/1", 1, frame("e1", erased), frame("e2", kept))
	c := claim(t, s, "r", 10)
	res := map[int64]outbox.Result{}
	for _, r := range c.Rows {
		res[r.ID] = outbox.Result{Err: errors.New("topic gone"), Permanent: true}
	}
	done, err := s.Complete(ctx, c, outbox.Settle(c.Rows, res, backoff))
	if err != nil || done.Dead != 2 || done.Erased != 2 {
		t.Fatalf("complete = %+v, %v; want 2 rows dead and 2 events erased", done, err)
	}

	insertRow(t, pool, "", 1, frame("s2", erased))
	insertRow(t, pool, "", 1, frame("s3", kept))
	claim(t, s, "crasher", 10)
	if _, err := pool.Exec(ctx, `UPDATE event_outbox SET lease_expires_at = now() - interval '1 second' WHERE status = 'publishing'`); err != nil {
		t.Fatal(err)
	}
	r, err := s.Reap(ctx, 10, backoff)
	if err != nil || r.Dead != 2 || r.Erased != 1 {
		t.Fatalf("reap = %+v, %v; want 2 rows dead and 1 event erased", r, err)
	}
	if got, want := outboxEvents(t, pool), map[string][]string{"dead": {"e2/" + kept, "s3/" + kept}}; !reflect.DeepEqual(got, want) {
		t.Errorf("outbox %v, want %v", got, want)
	}
}

// stamped is frame with the API's receive stamp in its payload.
func stamped(id, user string, receivedMs int64) outbox.Message {
	m := frame(id, user)
	m.Payload = fmt.Appendf(nil, `{"user_id":%q,"server_received_ts_ms":%d}`, user, receivedMs)
	return m
}

// The API stamps an event when it receives it and writes its outbox row up to
// --ingest.write-timeout later: an event received just before the erasure time can sit in a
// row created just after it. Judged by the row's creation, such a row that went dead (before
// `users forget` looked, or later, in the relay) kept the erased user's event for good. The
// event's receive stamp decides now; events received after the erasure (the user came back)
// and those without a stamp in a row created after it stay.
func TestDeadRowCreatedAfterTheErasureLosesAnEventReceivedBefore(t *testing.T) {
	t.Parallel()
	for _, path := range []string{"erase dead", "going dead"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			s, pool := newStore(t)
			at := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
			if _, err := pool.Exec(ctx, `INSERT INTO forgotten_users (user_id, forgotten_at_ms) VALUES ($1, $2)`, erased, at.UnixMilli()); err != nil {
				t.Fatal(err)
			}
			before, after := at.UnixMilli()-500, at.UnixMilli()+500
			insertRow(t, pool, "", 1, stamped("s1", erased, before))
			insertRow(t, pool, "", 1, stamped("s2", erased, after))
			insertRow(t, pool, "", 1, frame("s3", erased))
			insertRow(t, pool, "~lane/1", 1, stamped("b1", erased, before), stamped("b2", kept, before), stamped("b3", erased, after))
			if _, err := pool.Exec(ctx, `UPDATE event_outbox SET created_at = $1`, at.Add(1500*time.Millisecond)); err != nil {
				t.Fatal(err)
			}
			var n int64
			if path == "erase dead" {
				if _, err := pool.Exec(ctx, `UPDATE event_outbox SET status = 'dead'`); err != nil {
					t.Fatal(err)
				}
				var err error
				if n, err = s.EraseDead(ctx, []string{erased}, at); err != nil {
					t.Fatal(err)
				}
			} else {
				c := claim(t, s, "r", 10)
				res := map[int64]outbox.Result{}
				for _, r := range c.Rows {
					res[r.ID] = outbox.Result{Err: errors.New("topic gone"), Permanent: true}
				}
				done, err := s.Complete(ctx, c, outbox.Settle(c.Rows, res, backoff))
				if err != nil {
					t.Fatal(err)
				}
				n = int64(done.Erased)
			}
			want := []string{"b2/" + kept, "b3/" + erased, "s2/" + erased, "s3/" + erased}
			if got := outboxEvents(t, pool)["dead"]; !reflect.DeepEqual(got, want) || n != 2 {
				t.Errorf("dead events %v (%d erased), want %v (2)", got, n, want)
			}
		})
	}
}
