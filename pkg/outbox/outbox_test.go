package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"recsys/pkg/outbox"
	"recsys/pkg/testutil"
)

// row describes an outbox row to insert.
type row struct {
	key, topic, eventType string
	maxAttempts           int
}

func newStore(t *testing.T) (*outbox.Store, *pgxpool.Pool) {
	t.Helper()
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	return outbox.NewStore(pool), pool
}

// insert writes rows the way the API does and returns their ids in order.
func insert(t *testing.T, pool *pgxpool.Pool, rows ...row) []int64 {
	t.Helper()
	ids := make([]int64, 0, len(rows))
	for _, r := range rows {
		if r.topic == "" {
			r.topic = "t"
		}
		if r.eventType == "" {
			r.eventType = "watch"
		}
		if r.maxAttempts == 0 {
			r.maxAttempts = 5
		}
		var id int64
		err := pool.QueryRow(context.Background(), `
INSERT INTO event_outbox (event_id, event_type, topic, msg_key, payload, max_attempts, correlation_id)
VALUES ($1, $2, $3, $4, $5, $6, 'corr') RETURNING id`,
			testutil.Unique("ev-"), r.eventType, r.topic, r.key, []byte(`{"k":"`+r.key+`"}`), r.maxAttempts).Scan(&id)
		if err != nil {
			t.Fatalf("insert outbox row: %v", err)
		}
		ids = append(ids, id)
	}
	return ids
}

func claim(t *testing.T, s *outbox.Store, owner string, limit int) *outbox.Claim {
	t.Helper()
	c, err := s.Claim(context.Background(), outbox.ClaimRequest{Owner: owner, Limit: limit, Lease: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ids(c *outbox.Claim) []int64 { return c.IDs() }

func equal(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

type state struct {
	status   string
	attempts int
	due      bool
	lastErr  string
}

func stateOf(t *testing.T, pool *pgxpool.Pool, id int64) state {
	t.Helper()
	var s state
	var lastErr *string
	if err := pool.QueryRow(context.Background(),
		`SELECT status, attempts, next_attempt_at <= now(), last_error FROM event_outbox WHERE id = $1`, id).
		Scan(&s.status, &s.attempts, &s.due, &lastErr); err != nil {
		t.Fatal(err)
	}
	if lastErr != nil {
		s.lastErr = *lastErr
	}
	return s
}

var backoff = outbox.Backoff{Base: time.Minute, Max: time.Hour}

func publishAll(t *testing.T, s *outbox.Store, c *outbox.Claim) {
	t.Helper()
	done, err := s.Complete(context.Background(), c, outbox.Settle(c.Rows, nil, backoff))
	if err != nil {
		t.Fatal(err)
	}
	if done.Published != len(c.Rows) {
		t.Fatalf("published %d of %d", done.Published, len(c.Rows))
	}
}

// A unit is claimed as one consecutive run from its head; a retrying head holds back the rest
// of its unit (attempts refunded) while other units go on; once due, the whole run comes back
// in order.
func TestClaimPerKeyOrderAcrossRetries(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := context.Background()
	// u1 a, u2 a, u1 b, u3 a, u1 c, u2 b
	id := insert(t, pool, row{key: "u1"}, row{key: "u2"}, row{key: "u1"}, row{key: "u3"}, row{key: "u1"}, row{key: "u2"})

	c := claim(t, s, "r1", 100)
	if !equal(ids(c), id) {
		t.Fatalf("first claim = %v, want every row %v", ids(c), id)
	}
	if c.Token == 0 {
		t.Fatal("claim has no fencing token")
	}
	// u1's head fails; Kafka acked its later rows, which must still not be marked published.
	out := outbox.Settle(c.Rows, map[int64]outbox.Result{id[0]: {Err: errors.New("broker says no")}}, backoff)
	done, err := s.Complete(ctx, c, out)
	if err != nil {
		t.Fatal(err)
	}
	if done.Published != 3 || done.Retried != 3 || done.Fenced != 0 {
		t.Fatalf("completed %+v, want 3 published (u2 a, u3 a, u2 b) and 3 retried (u1 a, b, c)", done)
	}
	for i, want := range []state{
		{status: "pending", attempts: 1, due: false, lastErr: "broker says no"},
		{status: "published", attempts: 1, due: true},
		{status: "pending", attempts: 0, due: true}, // held back: attempt refunded
		{status: "published", attempts: 1, due: true},
		{status: "pending", attempts: 0, due: true},
		{status: "published", attempts: 1, due: true},
	} {
		if got := stateOf(t, pool, id[i]); got != want {
			t.Errorf("row %d: %+v, want %+v", i, got, want)
		}
	}

	// u1 a is backing off: u1 b and c are due but must wait; a new unit goes on.
	id4 := insert(t, pool, row{key: "u4"})
	if c := claim(t, s, "r1", 100); !equal(ids(c), id4) {
		t.Fatalf("claim during u1's backoff = %v, want only u4 %v", ids(c), id4)
	}
	if _, err := pool.Exec(ctx, `UPDATE event_outbox SET next_attempt_at = now() WHERE id = $1`, id[0]); err != nil {
		t.Fatal(err)
	}
	c = claim(t, s, "r1", 100)
	if want := []int64{id[0], id[2], id[4]}; !equal(ids(c), want) {
		t.Fatalf("claim after backoff = %v, want u1's run %v", ids(c), want)
	}
	if c.Rows[0].Attempts != 2 || c.Rows[1].Attempts != 1 {
		t.Fatalf("attempts after claim = %d, %d; want 2 (second try) and 1", c.Rows[0].Attempts, c.Rows[1].Attempts)
	}
}

// While a unit's rows are in flight (publishing), nothing else of the unit is claimable, by the
// same or another owner.
func TestClaimSkipsUnitsInFlight(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	id := insert(t, pool, row{key: "u1"}, row{key: "u1"}, row{key: "u2"})
	a := claim(t, s, "a", 1)
	if !equal(ids(a), id[:1]) {
		t.Fatalf("claim a = %v, want %v", ids(a), id[:1])
	}
	b := claim(t, s, "b", 10)
	if !equal(ids(b), id[2:]) {
		t.Fatalf("claim b = %v, want only u2 %v (u1 is in flight)", ids(b), id[2:])
	}
	publishAll(t, s, a)
	if c := claim(t, s, "b", 10); !equal(ids(c), id[1:2]) {
		t.Fatalf("claim after u1's head was published = %v, want %v", ids(c), id[1:2])
	}
}

// A dead row replayed while a later row of its unit is in flight (an operator's replay during
// traffic) waits for that row: its run starts below the row in flight, so only the check for
// rows of the unit in flight anywhere keeps the unit in one claim at a time.
func TestReplayedRowWaitsForItsUnitInFlight(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := context.Background()
	id := insert(t, pool, row{key: "u1"}, row{key: "u1"})
	if _, err := pool.Exec(ctx, `UPDATE event_outbox SET status = 'dead', attempts = 5 WHERE id = $1`, id[0]); err != nil {
		t.Fatal(err)
	}
	a := claim(t, s, "a", 10)
	if !equal(ids(a), id[1:]) {
		t.Fatalf("claim a = %v, want u1's pending row %v", ids(a), id[1:])
	}
	if res, err := s.Replay(ctx, outbox.ReplayFilter{Status: "dead", Limit: 10}); err != nil || res.Requeued != 1 {
		t.Fatalf("replay = %+v, %v; want the dead row requeued", res, err)
	}
	if b := claim(t, s, "b", 10); len(b.Rows) != 0 {
		t.Fatalf("claim b = %v while u1's row %d is in flight, want nothing", ids(b), id[1])
	}
	publishAll(t, s, a)
	if c := claim(t, s, "c", 10); !equal(ids(c), id[:1]) {
		t.Fatalf("claim after u1's row was published = %v, want the replayed row %v", ids(c), id[:1])
	}
}

// Many concurrent claimers over many rows of few keys: no unit is ever in flight in two claims
// at once, every claim of a unit starts after the previous one's end, and every row is
// published exactly once.
func TestConcurrentClaimsKeepUnitsExclusiveAndOrdered(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		opts []outbox.StoreOption
	}{
		{"mark published", nil},
		{"delete on ack", []outbox.StoreOption{outbox.DeleteOnAck()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			testConcurrentClaims(t, tc.opts...)
		})
	}
}

func testConcurrentClaims(t *testing.T, opts ...outbox.StoreOption) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	s := outbox.NewStore(pool, opts...)
	ctx := context.Background()
	const rows, keys, workers = 3000, 40, 6
	if _, err := pool.Exec(ctx, `
INSERT INTO event_outbox (event_id, event_type, topic, msg_key, payload, max_attempts)
SELECT 'e' || g, 'watch', 't', 'u' || (g % $2), '{}', 5 FROM generate_series(1, $1) g`, rows, keys); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	inFlight := map[string]int64{} // key -> token
	lastID := map[string]int64{}
	published := 0
	errc := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			idle := 0
			for idle < 20 {
				c, err := s.Claim(ctx, outbox.ClaimRequest{Owner: fmt.Sprint("w", w), Limit: 1 + rand.IntN(50), Lease: time.Minute})
				if err != nil {
					errc <- err
					return
				}
				if len(c.Rows) == 0 {
					idle++
					time.Sleep(time.Millisecond)
					continue
				}
				idle = 0
				mu.Lock()
				for _, r := range c.Rows {
					if tok, busy := inFlight[r.Key]; busy && tok != c.Token {
						mu.Unlock()
						errc <- fmt.Errorf("key %s claimed by token %d while token %d has it in flight", r.Key, c.Token, tok)
						return
					}
					if r.ID <= lastID[r.Key] {
						mu.Unlock()
						errc <- fmt.Errorf("key %s: row %d claimed after row %d", r.Key, r.ID, lastID[r.Key])
						return
					}
					inFlight[r.Key], lastID[r.Key] = c.Token, r.ID
				}
				mu.Unlock()
				time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond) // "publishing"
				mu.Lock()
				for _, r := range c.Rows {
					delete(inFlight, r.Key)
				}
				mu.Unlock()
				done, err := s.Complete(ctx, c, outbox.Settle(c.Rows, nil, backoff))
				if err != nil {
					errc <- err
					return
				}
				mu.Lock()
				published += done.Published
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if published != rows {
		t.Fatalf("published %d rows, want %d", published, rows)
	}
	var left int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM event_outbox WHERE status <> 'published'`).Scan(&left); err != nil || left != 0 {
		t.Fatalf("%d rows not published (err %v)", left, err)
	}
}

// With DeleteOnAck, acked rows are deleted (only while the claim still holds their lease)
// and the rest of a mixed batch is recorded as before.
func TestDeleteOnAck(t *testing.T) {
	t.Parallel()
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	s := outbox.NewStore(pool, outbox.DeleteOnAck())
	ctx := context.Background()
	exists := func(id int64) bool {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM event_outbox WHERE id = $1`, id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 1
	}

	// u1 a, u2 a, u1 b: u1's head fails, so u1 b is held back although Kafka acked it.
	id := insert(t, pool, row{key: "u1"}, row{key: "u2"}, row{key: "u1"})
	c := claim(t, s, "r1", 10)
	done, err := s.Complete(ctx, c, outbox.Settle(c.Rows, map[int64]outbox.Result{id[0]: {Err: errors.New("boom")}}, backoff))
	if err != nil {
		t.Fatal(err)
	}
	if done != (outbox.Completed{Published: 1, Retried: 2}) {
		t.Fatalf("mixed complete = %+v, want 1 published (deleted) and 2 retried", done)
	}
	if exists(id[1]) {
		t.Fatalf("acked row %d still in the table", id[1])
	}
	if got := stateOf(t, pool, id[0]); got.status != "pending" || got.attempts != 1 || got.lastErr != "boom" {
		t.Fatalf("failed head = %+v, want pending, 1 attempt, last error boom", got)
	}
	if got := stateOf(t, pool, id[2]); got.status != "pending" || got.attempts != 0 {
		t.Fatalf("held-back row = %+v, want pending with its attempt refunded", got)
	}

	// A claim whose lease was taken over deletes nothing.
	if _, err := pool.Exec(ctx, `UPDATE event_outbox SET next_attempt_at = now()`); err != nil {
		t.Fatal(err)
	}
	old := claim(t, s, "old", 10)
	if !equal(ids(old), []int64{id[0], id[2]}) {
		t.Fatalf("claim = %v, want %v", ids(old), []int64{id[0], id[2]})
	}
	if _, err := pool.Exec(ctx, `UPDATE event_outbox SET lease_expires_at = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Reap(ctx, 100, outbox.Backoff{Base: time.Millisecond, Max: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	cur := claim(t, s, "new", 10)
	if done, err := s.Complete(ctx, old, outbox.Settle(old.Rows, nil, backoff)); err != nil || done.Fenced != 2 || done.Published != 0 {
		t.Fatalf("fenced complete = %+v, %v; want 2 fenced, none deleted", done, err)
	}
	if !exists(id[0]) || !exists(id[2]) {
		t.Fatal("a fenced complete deleted rows")
	}
	publishAll(t, s, cur)
	var left int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM event_outbox`).Scan(&left); err != nil || left != 0 {
		t.Fatalf("%d rows left after every row was acked (err %v), want 0", left, err)
	}
}

// The scan window skips a congested front (one key's long backlog behind a retrying head)
// by moving the cursor, so rows behind it are not starved.
func TestClaimCursorPassesCongestedFront(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := context.Background()
	hot := insert(t, pool, row{key: "hot"})
	if _, err := pool.Exec(ctx, `
INSERT INTO event_outbox (event_id, event_type, topic, msg_key, payload, max_attempts)
SELECT 'hot' || g, 'watch', 't', 'hot', '{}', 5 FROM generate_series(1, 100) g`); err != nil {
		t.Fatal(err)
	}
	cold := insert(t, pool, row{key: "cold"})
	if _, err := pool.Exec(ctx, `UPDATE event_outbox SET next_attempt_at = now() + interval '1 hour', attempts = 1 WHERE id = $1`, hot[0]); err != nil {
		t.Fatal(err)
	}
	req := outbox.ClaimRequest{Owner: "r", Limit: 5, Lease: time.Minute, Window: 20}
	var got []int64
	for range 10 { // 102 pending rows, windows of 20: the cold row is reached within 6 claims
		c, err := s.Claim(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, c.IDs()...)
		if len(got) > 0 {
			break
		}
		req.After = c.NextAfter(req.Limit)
	}
	if !equal(got, cold) {
		t.Fatalf("claimed %v, want the cold row %v past the hot key's blocked backlog", got, cold)
	}
}

// A relay that lost its lease cannot record an outcome over the new owner's (fencing), and
// renewals report the loss.
func TestFencingAfterLeaseExpiry(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := context.Background()
	id := insert(t, pool, row{key: "u1"}, row{key: "u2"})
	old := claim(t, s, "old", 10)
	if n, err := s.Renew(ctx, old); err != nil || n != (outbox.Renewal{Renewed: 2, Held: 2}) {
		t.Fatalf("renew = %+v, %v; want 2 renewed", n, err)
	}
	if _, err := pool.Exec(ctx, `UPDATE event_outbox SET lease_expires_at = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	r, err := s.Reap(ctx, 100, outbox.Backoff{Base: time.Millisecond, Max: time.Millisecond})
	if err != nil || r.Requeued != 2 || r.Dead != 0 {
		t.Fatalf("reap = %+v, %v; want 2 requeued", r, err)
	}
	time.Sleep(5 * time.Millisecond)
	cur := claim(t, s, "new", 10)
	if !equal(ids(cur), id) || cur.Token == old.Token {
		t.Fatalf("new claim = %v token %d, want %v with a new token", ids(cur), cur.Token, id)
	}
	if n, err := s.Renew(ctx, old); err != nil || n != (outbox.Renewal{}) {
		t.Fatalf("renew by the old owner = %+v, %v; want none renewed or held", n, err)
	}
	// The old owner "fails" the rows: fenced, nothing changes.
	done, err := s.Complete(ctx, old, outbox.Settle(old.Rows, map[int64]outbox.Result{id[0]: {Err: errors.New("late")}}, backoff))
	if err != nil {
		t.Fatal(err)
	}
	if done.Fenced != 2 || done.Published+done.Retried+done.Dead != 0 {
		t.Fatalf("old owner's complete = %+v, want all fenced", done)
	}
	if got := stateOf(t, pool, id[0]); got.status != "publishing" || got.attempts != 2 {
		t.Fatalf("row after fenced complete = %+v, want still publishing by the new owner, 2 attempts", got)
	}
	// Its batch acked whole (the statement of the common case): fenced too.
	done, err = s.Complete(ctx, old, outbox.Settle(old.Rows, nil, backoff))
	if err != nil {
		t.Fatal(err)
	}
	if done.Fenced != 2 || done.Published != 0 {
		t.Fatalf("old owner's all-acked complete = %+v, want all fenced", done)
	}
	for _, i := range id {
		if got := stateOf(t, pool, i); got.status != "publishing" {
			t.Fatalf("row %d after the old owner's all-acked complete = %+v, want still publishing by the new owner", i, got)
		}
	}
	publishAll(t, s, cur)
}

// A renewal does not wait for a row another transaction holds locked (the claim's own
// recording, slowed down): it extends the others, whose lease would otherwise run out behind
// it, and counts the locked row as still held, not lost. Once the lock is gone it is renewed.
func TestRenewSkipsLockedRows(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := context.Background()
	id := insert(t, pool, row{key: "u1"}, row{key: "u2"}, row{key: "u3"})
	c := claim(t, s, "owner", 10)
	if _, err := pool.Exec(ctx, `UPDATE event_outbox SET lease_expires_at = now()`); err != nil {
		t.Fatal(err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT 1 FROM event_outbox WHERE id = $1 FOR UPDATE`, id[0]); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	n, err := s.Renew(rctx, c)
	if err != nil || n != (outbox.Renewal{Renewed: 2, Held: 3}) {
		t.Fatalf("renew with a row locked = %+v, %v; want 2 renewed, 3 held", n, err)
	}
	var extended int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM event_outbox WHERE lease_expires_at > now() + interval '10 seconds'`).Scan(&extended); err != nil {
		t.Fatal(err)
	}
	if extended != 2 {
		t.Fatalf("%d leases extended, want the 2 unlocked rows'", extended)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Renew(ctx, c); err != nil || n != (outbox.Renewal{Renewed: 3, Held: 3}) {
		t.Fatalf("renew after the lock = %+v, %v; want 3 renewed", n, err)
	}
}

// Each claim counts an attempt, so a row whose relay dies every time ends dead.
func TestReapKillsRowsThatCrashEveryRelay(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := context.Background()
	id := insert(t, pool, row{key: "u1", maxAttempts: 2})
	b := outbox.Backoff{Base: time.Millisecond, Max: time.Millisecond}
	for attempt := 1; attempt <= 2; attempt++ {
		c := claim(t, s, fmt.Sprint("crasher-", attempt), 10)
		if !equal(ids(c), id) {
			t.Fatalf("claim %d = %v, want %v", attempt, ids(c), id)
		}
		if _, err := pool.Exec(ctx, `UPDATE event_outbox SET lease_expires_at = now() - interval '1 second'`); err != nil {
			t.Fatal(err)
		}
		r, err := s.Reap(ctx, 10, b)
		if err != nil {
			t.Fatal(err)
		}
		want := outbox.Reaped{Requeued: 1}
		if attempt == 2 {
			want = outbox.Reaped{Dead: 1}
		}
		if r != want {
			t.Fatalf("reap after crash %d = %+v, want %+v", attempt, r, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	got := stateOf(t, pool, id[0])
	if got.status != "dead" || got.attempts != 2 || !strings.Contains(got.lastErr, "crasher-2") {
		t.Fatalf("row = %+v, want dead after 2 attempts with the last owner in last_error", got)
	}
}

func TestSettle(t *testing.T) {
	t.Parallel()
	rows := func(specs ...string) []outbox.Row { // "key:attempts/max"
		var out []outbox.Row
		for i, s := range specs {
			var key string
			var a, m int
			fmt.Sscanf(strings.Replace(strings.Replace(s, ":", " ", 1), "/", " ", 1), "%s %d %d", &key, &a, &m)
			out = append(out, outbox.Row{ID: int64(i + 1), Key: key, Topic: "t", Attempts: a, MaxAttempts: m})
		}
		return out
	}
	boom := errors.New("boom")
	for _, tc := range []struct {
		name    string
		rows    []outbox.Row
		results map[int64]outbox.Result
		want    []string // status[+refund]
	}{
		{"all acked", rows("a:1/5", "b:1/5"), nil, []string{"published", "published"}},
		{"retrying head holds its unit back, not others", rows("a:1/5", "b:1/5", "a:1/5", "a:1/5"),
			map[int64]outbox.Result{1: {Err: boom}}, []string{"pending", "published", "pending+refund", "pending+refund"}},
		{"failure mid-unit keeps the acked prefix", rows("a:1/5", "a:1/5", "a:1/5"),
			map[int64]outbox.Result{2: {Err: boom}}, []string{"published", "pending", "pending+refund"}},
		{"last attempt goes dead and frees the unit", rows("a:5/5", "a:1/5"),
			map[int64]outbox.Result{1: {Err: boom}}, []string{"dead", "published"}},
		{"permanent error goes dead at once", rows("a:1/5", "a:1/5"),
			map[int64]outbox.Result{1: {Err: boom, Permanent: true}}, []string{"dead", "published"}},
		{"not sent is held back", rows("a:1/5", "a:1/5"),
			map[int64]outbox.Result{1: {Err: boom, Permanent: true}, 2: {NotSent: true}}, []string{"dead", "pending+refund"}},
		{"same key, other topic is another unit", append(rows("a:1/5"), outbox.Row{ID: 2, Key: "a", Topic: "other", Attempts: 1, MaxAttempts: 5}),
			map[int64]outbox.Result{1: {Err: boom}}, []string{"pending", "published"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := outbox.Settle(tc.rows, tc.results, outbox.Backoff{Base: time.Second, Max: time.Minute})
			var got []string
			for _, o := range out {
				s := o.Status
				if o.Refund {
					s += "+refund"
				}
				got = append(got, s)
				if o.Status == "pending" && !o.Refund && (o.Delay < 500*time.Millisecond || o.Delay > time.Second) {
					t.Errorf("row %d: delay %s after attempt 1, want in [0.5s, 1s]", o.ID, o.Delay)
				}
				if o.Status == "dead" && o.Err != "boom" {
					t.Errorf("row %d: dead with error %q, want the last error", o.ID, o.Err)
				}
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("outcomes = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestBackoffDelay(t *testing.T) {
	t.Parallel()
	b := outbox.Backoff{Base: 100 * time.Millisecond, Max: 2 * time.Second}
	for _, tc := range []struct {
		attempt int
		ceil    time.Duration
	}{{0, 100 * time.Millisecond}, {1, 100 * time.Millisecond}, {2, 200 * time.Millisecond}, {4, 800 * time.Millisecond},
		{5, 1600 * time.Millisecond}, {6, 2 * time.Second}, {60, 2 * time.Second}} {
		seen := map[time.Duration]bool{}
		for range 200 {
			d := b.Delay(tc.attempt)
			if d < tc.ceil/2 || d > tc.ceil {
				t.Fatalf("attempt %d: delay %s outside [%s, %s]", tc.attempt, d, tc.ceil/2, tc.ceil)
			}
			seen[d] = true
		}
		if len(seen) < 10 {
			t.Fatalf("attempt %d: only %d distinct delays in 200 draws: no jitter", tc.attempt, len(seen))
		}
	}
}

func TestDeletePublishedIsBoundedAndByAge(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := context.Background()
	id := insert(t, pool, row{key: "a"}, row{key: "b"}, row{key: "c"}, row{key: "d"}, row{key: "e"})
	if _, err := pool.Exec(ctx, `
UPDATE event_outbox SET status = 'published', published_at = now() - interval '2 hours' WHERE id = ANY($1);
`, id[:3]); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE event_outbox SET status = 'published', published_at = now() WHERE id = $1`, id[3]); err != nil {
		t.Fatal(err)
	}
	for _, want := range []int{2, 1, 0} {
		n, err := s.DeletePublished(ctx, time.Hour, 2)
		if err != nil || n != want {
			t.Fatalf("delete = %d, %v; want %d", n, err, want)
		}
	}
	var left []int64
	rows, _ := pool.Query(ctx, `SELECT id FROM event_outbox ORDER BY id`)
	for rows.Next() {
		var i int64
		_ = rows.Scan(&i)
		left = append(left, i)
	}
	if !equal(left, id[3:]) {
		t.Fatalf("rows left = %v, want the recent published and the pending one %v", left, id[3:])
	}
}

func TestReplay(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := context.Background()
	id := insert(t, pool, row{key: "a", eventType: "watch"}, row{key: "b", eventType: "impression"},
		row{key: "c", eventType: "watch"}, row{key: "d", eventType: "watch"}, row{key: "e", eventType: "watch"})
	if _, err := pool.Exec(ctx, `UPDATE event_outbox SET status = 'dead', attempts = 5, last_error = 'x' WHERE id = ANY($1)`, id[:4]); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE event_outbox SET created_at = now() - interval '3 days' WHERE id = $1`, id[0]); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		f       outbox.ReplayFilter
		wantIDs []int64
	}{
		{"dry run, all dead", outbox.ReplayFilter{Status: "dead", Limit: 10, DryRun: true}, id[:4]},
		{"dry run, by type", outbox.ReplayFilter{Status: "dead", EventType: "impression", Limit: 10, DryRun: true}, id[1:2]},
		{"dry run, since", outbox.ReplayFilter{Status: "dead", Since: time.Now().Add(-time.Hour), Limit: 10, DryRun: true}, id[1:4]},
		{"dry run, published only", outbox.ReplayFilter{Status: "published", Limit: 10, DryRun: true}, nil},
		{"requeue watches, limit 2, oldest first", outbox.ReplayFilter{Status: "dead", EventType: "watch", Limit: 2}, []int64{id[0], id[2]}},
	} {
		res, err := s.Replay(ctx, tc.f)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if !equal(res.IDs, tc.wantIDs) || res.Matched != len(tc.wantIDs) {
			t.Fatalf("%s: ids %v matched %d, want %v", tc.name, res.IDs, res.Matched, tc.wantIDs)
		}
		if tc.f.DryRun != (res.Requeued == 0) {
			t.Fatalf("%s: requeued %d with dry_run=%t", tc.name, res.Requeued, tc.f.DryRun)
		}
	}
	for i, want := range []string{"pending", "dead", "pending", "dead", "pending"} {
		got := stateOf(t, pool, id[i])
		if got.status != want {
			t.Fatalf("row %d status %s, want %s", i, got.status, want)
		}
		if want == "pending" && (got.attempts != 0 || !got.due) {
			t.Fatalf("row %d requeued as %+v, want attempts 0 and due now", i, got)
		}
	}
	for _, bad := range []outbox.ReplayFilter{{Status: "pending", Limit: 1}, {Status: "dead", Limit: 0}} {
		if _, err := s.Replay(ctx, bad); err == nil || !strings.Contains(err.Error(), "--") {
			t.Fatalf("replay %+v: err %v, want a message naming the flag", bad, err)
		}
	}
}

// TestReplayCursorStopsBeforeAHeldRow: a dead row another transaction holds (a relay's
// claim scanning its lane) is skipped and counted, and the cursor stays before it, so the
// next run with --after-id takes it; before, the cursor moved past it for good.
func TestReplayCursorStopsBeforeAHeldRow(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := context.Background()
	id := insert(t, pool, row{key: "a"}, row{key: "b"}, row{key: "c"})
	if _, err := pool.Exec(ctx, `UPDATE event_outbox SET status = 'dead', attempts = 5 WHERE id = ANY($1)`, id); err != nil {
		t.Fatal(err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT id FROM event_outbox WHERE id = $1 FOR UPDATE`, id[1]); err != nil {
		t.Fatal(err)
	}
	res, err := s.Replay(ctx, outbox.ReplayFilter{Status: "dead", Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if want := []int64{id[0], id[2]}; !equal(res.IDs, want) || res.Skipped != 1 || res.Matched != 3 || res.LastID != id[0] {
		t.Fatalf("with row %d held: ids %v skipped %d matched %d last_id %d; want %v, 1 skipped, 3 matched, last_id %d",
			id[1], res.IDs, res.Skipped, res.Matched, res.LastID, want, id[0])
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	res, err = s.Replay(ctx, outbox.ReplayFilter{Status: "dead", Limit: 10, AfterID: res.LastID})
	if err != nil {
		t.Fatal(err)
	}
	if !equal(res.IDs, id[1:2]) || res.Skipped != 0 || res.LastID != id[1] {
		t.Fatalf("next run: ids %v skipped %d last_id %d; want the held row %d", res.IDs, res.Skipped, res.LastID, id[1])
	}
}

func TestSnapshot(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := context.Background()
	empty, err := outbox.Snapshot(ctx, pool)
	if err != nil || empty != (outbox.Backlog{}) {
		t.Fatalf("empty snapshot = %+v, %v", empty, err)
	}
	id := insert(t, pool, row{key: "a"}, row{key: "b"}, row{key: "c"}, row{key: "d"}, row{key: "e"}, row{key: "f"})
	if _, err := pool.Exec(ctx, `UPDATE event_outbox SET created_at = now() - interval '90 seconds' WHERE id = $1`, id[0]); err != nil {
		t.Fatal(err)
	}
	c := claim(t, s, "r", 1) // a: publishing
	if !equal(ids(c), id[:1]) {
		t.Fatalf("claimed %v", ids(c))
	}
	if _, err := pool.Exec(ctx, `UPDATE event_outbox SET status = 'dead' WHERE id = $1`, id[1]); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE event_outbox SET status = 'published', published_at = now() WHERE id = $1`, id[2]); err != nil {
		t.Fatal(err)
	}
	b, err := outbox.Snapshot(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if b.Pending != 3 || b.Publishing != 1 || b.Dead != 1 || b.Published != 1 || b.Capped {
		t.Fatalf("snapshot = %+v, want 3 pending, 1 publishing, 1 dead, 1 published", b)
	}
	if b.OldestLagMS < 89_000 || b.OldestLagMS > 200_000 {
		t.Fatalf("oldest_lag_ms = %d, want about 90 s (the row in flight)", b.OldestLagMS)
	}
	capped, err := outbox.SnapshotLimit(ctx, pool, 2)
	if err != nil || capped.Pending != 2 || !capped.Capped {
		t.Fatalf("limited snapshot = %+v, %v; want pending capped at 2", capped, err)
	}
}

// TestCompleteStoresDeadLetters: an acked row's dead letters become dead single-event rows
// (their own unit, replayable alone) in the transaction that records the row, with delete on
// ack too; a fenced outcome stores none (the row's new owner splits it again).
func TestCompleteStoresDeadLetters(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		opts   []outbox.StoreOption
		fenced bool
	}{{"mark published", nil, false}, {"delete on ack", []outbox.StoreOption{outbox.DeleteOnAck()}, false}, {"fenced", nil, true}} {
		t.Run(tc.name, func(t *testing.T) {
			pool := testutil.Pool(t, testutil.MigratedDatabase(t))
			s := outbox.NewStore(pool, tc.opts...)
			ctx := context.Background()
			insert(t, pool, row{key: "~lane/1"}, row{key: "~lane/2"})
			c := claim(t, s, "r", 10)
			if tc.fenced {
				if _, err := pool.Exec(ctx, `UPDATE event_outbox SET lease_token = lease_token + 1000`); err != nil {
					t.Fatal(err)
				}
			}
			dl := outbox.DeadLetter{Message: outbox.Message{EventID: "big-event-1", EventType: "legacy", Key: "user-9", CorrelationID: "corr-9",
				SchemaVersion: 1, Payload: []byte(`{"big":true}`)}, Err: "too large"}
			res := map[int64]outbox.Result{c.Rows[0].ID: {DeadLetters: []outbox.DeadLetter{dl}}}
			done, err := s.Complete(ctx, c, outbox.Settle(c.Rows, res, backoff))
			if err != nil {
				t.Fatal(err)
			}
			want := outbox.Completed{Published: 2, DeadLettered: 1}
			if tc.fenced {
				want = outbox.Completed{Fenced: 2}
			}
			if done != want {
				t.Errorf("complete = %+v, want %+v", done, want)
			}
			var n int
			var st, topic, key, cid, lastErr string
			var payload []byte
			var format int16
			var attempts int
			err = pool.QueryRow(ctx, `SELECT count(*) OVER (), status, topic, msg_key, payload, correlation_id, last_error, payload_format, attempts
FROM event_outbox WHERE event_id = 'big-event-1' AND event_type = 'legacy'`).Scan(&n, &st, &topic, &key, &payload, &cid, &lastErr, &format, &attempts)
			if tc.fenced {
				if !errors.Is(err, pgx.ErrNoRows) {
					t.Errorf("fenced outcome stored a dead letter (%v)", err)
				}
				return
			}
			if err != nil || n != 1 || st != outbox.StatusDead || topic != "t" || key != "user-9" || string(payload) != `{"big":true}` ||
				cid != "corr-9" || lastErr != "too large" || format != outbox.FormatSingle || attempts != 1 {
				t.Errorf("dead letter row: %v %d %s %s %s %s %s %q %d %d", err, n, st, topic, key, payload, cid, lastErr, format, attempts)
			}
			res2, err := s.Replay(ctx, outbox.ReplayFilter{Status: outbox.StatusDead, Limit: 10})
			if err != nil || res2.Requeued != 1 || res2.Events != 1 {
				t.Errorf("replay = %+v, %v; want the dead letter alone", res2, err)
			}
		})
	}
}
