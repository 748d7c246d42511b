package ingest_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"recsys/pkg/events"
	"recsys/pkg/ingest"
	"recsys/pkg/testutil"
)

// TestWriterRefusesOversizedEvent: an event whose outbox frame is larger than MaxEventBytes
// fails the whole call before anything is written, naming the event and the field that
// alone makes it too large (none when no single field does).
func TestWriterRefusesOversizedEvent(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	const limit = 4096
	w := newWriter(t, pool, func(c *ingest.Config) { c.MaxEventBytes = limit })
	bigUA := func(id string) events.Any {
		e := watch(id, "u1")
		ua := strings.Repeat("A", limit)
		e.Context = &events.Context{UserAgent: &ua}
		return e
	}
	bigFeed := func(id string) events.Any {
		e := impression(id, "u1", "a", "b", "c")
		feed := strings.Repeat("f", limit)
		e.Items[2].FeedID = &feed
		return e
	}
	manyItems := func(id string) events.Any {
		items := make([]string, 200)
		for i := range items {
			items[i] = fmt.Sprintf("item-with-a-longish-id-%05d", i)
		}
		return impression(id, "u1", items...)
	}
	cases := []struct {
		name  string
		evs   []events.Any
		index int
		field []any
	}{
		{"context field", []events.Any{bigUA("big-ua-00001")}, 0, []any{"context", "user_agent"}},
		{"item feed_id", []events.Any{bigFeed("big-feed-0001")}, 0, []any{"items", 2, "feed_id"}},
		{"no single field", []events.Any{manyItems("many-items-01")}, 0, nil},
		{"second event of a batch", []events.Any{watch("fits-000001", "u2"), bigUA("big-ua-00002")}, 1, []any{"context", "user_agent"}},
	}
	for _, tc := range cases {
		_, err := w.Write(context.Background(), tc.evs, "")
		var big *ingest.EventTooLargeError
		if !errors.As(err, &big) {
			t.Errorf("%s: err = %v, want EventTooLargeError", tc.name, err)
			continue
		}
		if big.Index != tc.index || !slices.Equal(big.Field, tc.field) || big.Max != limit || big.Bytes <= limit {
			t.Errorf("%s: %+v, want index %d field %v", tc.name, big, tc.index, tc.field)
		}
	}
	if n := count(t, pool, "SELECT count(*) FROM event_dedup"); n != 0 {
		t.Errorf("refused events left %d dedup rows", n)
	}
	if n := count(t, pool, "SELECT count(*) FROM event_outbox"); n != 0 {
		t.Errorf("refused events left %d outbox rows", n)
	}
	// Within the limit, and with the default one, the same kinds of event are stored.
	if _, err := w.Write(context.Background(), []events.Any{watch("fits-000002", "u1")}, ""); err != nil {
		t.Errorf("event within the limit: %v", err)
	}
	def := newWriter(t, pool, nil)
	if _, err := def.Write(context.Background(), []events.Any{bigUA("big-ua-00003"), manyItems("many-items-02")}, ""); err != nil {
		t.Errorf("events within the default limit: %v", err)
	}
}

// TestWriterTransientErrorsAreUnavailable: errors about the transaction's circumstances (a
// read-only standby after a failover, a serialization failure, a deadlock), the schema or the
// grants are outages, not a request's bad data: the whole group fails as ErrUnavailable
// without retrying request by request (and /reco's autolog buffers instead of dropping). A
// data error (a check violation, a value too long, a program limit) still fails only its
// request.
func TestWriterTransientErrorsAreUnavailable(t *testing.T) {
	for _, tc := range []struct {
		code        string
		unavailable bool
	}{
		{"25006", true}, // read_only_sql_transaction
		{"40001", true}, // serialization_failure
		{"40P01", true}, // deadlock_detected
		{"55P03", true}, // lock_not_available: a lock timeout behind a migration
		{"42501", true}, // insufficient_privilege: a grant revoked
		{"42P10", true}, // invalid_column_reference: an ON CONFLICT the schema lacks (a rollout)
		{"P0001", true}, // raise_exception: a trigger of someone else's
		{"23514", false},
		{"22001", false}, // string_data_right_truncation
		{"54001", false}, // statement_too_complex
	} {
		t.Run(tc.code, func(t *testing.T) {
			pool := testutil.Pool(t, testutil.MigratedDatabase(t))
			_, err := pool.Exec(context.Background(), fmt.Sprintf(`
CREATE FUNCTION fail_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.user_id = 'poison' THEN RAISE EXCEPTION 'injected' USING ERRCODE = '%s'; END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER fail_poison BEFORE INSERT ON watches FOR EACH ROW EXECUTE FUNCTION fail_poison();`, tc.code))
			if err != nil {
				t.Fatal(err)
			}
			set := metrics.NewSet()
			w := newWriter(t, pool, func(c *ingest.Config) { c.Workers = 1; c.MaxWait = 200 * time.Millisecond; c.Metrics = set })
			var wg sync.WaitGroup
			errs := make([]error, 2)
			for i, user := range []string{"poison", "u1"} {
				wg.Go(func() {
					_, errs[i] = w.Write(context.Background(), []events.Any{watch(fmt.Sprintf("wat-%05d", i), user)}, "")
				})
			}
			wg.Wait()
			if got := errors.Is(errs[0], ingest.ErrUnavailable); errs[0] == nil || got != tc.unavailable {
				t.Errorf("failing request: err = %v, want unavailable %v", errs[0], tc.unavailable)
			}
			fallbacks := set.GetOrCreateCounter(`recsys_ingest_group_fallbacks_total{writer="ingest"}`).Get()
			if tc.unavailable {
				if !errors.Is(errs[1], ingest.ErrUnavailable) || fallbacks != 0 {
					t.Errorf("other request: err = %v, fallbacks %d; want the group failed as unavailable", errs[1], fallbacks)
				}
			} else if errs[1] != nil || fallbacks != 1 {
				t.Errorf("other request: err = %v, fallbacks %d; want it saved by the fallback", errs[1], fallbacks)
			}
		})
	}
}

// TestWriterConnectErrorsAreUnavailable: a server that refuses the connection itself (its
// database is gone, the password was rotated, pg_hba rejects us during a failover) answers
// with an error of its own, which says nothing about any request's data: the group fails as
// ErrUnavailable, which callers retry (reco's autolog buffers it), and is not retried request
// by request.
func TestWriterConnectErrorsAreUnavailable(t *testing.T) {
	u, err := url.Parse(testutil.PGDSN(t))
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + testutil.Unique("missing_") // 3D000 invalid_catalog_name at connect
	pool := testutil.Pool(t, u.String())
	set := metrics.NewSet()
	w := newWriter(t, pool, func(c *ingest.Config) { c.Workers = 1; c.MaxWait = 200 * time.Millisecond; c.Metrics = set })
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() {
			_, errs[i] = w.Write(context.Background(), []events.Any{watch(fmt.Sprintf("con-%05d", i), "u1")}, "")
		})
	}
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, ingest.ErrUnavailable) {
			t.Errorf("request %d: err = %v, want ErrUnavailable", i, err)
		}
	}
	if n := set.GetOrCreateCounter(`recsys_ingest_group_fallbacks_total{writer="ingest"}`).Get(); n != 0 {
		t.Errorf("%d group fallbacks, want none: no request is to blame", n)
	}
}

// TestFallbackKeepsTheWriteTimeout: a group that fails for one request's data is retried
// request by request, and the callers of a taken request wait for its outcome past their
// own deadline; so the retries share the group's write timeout, and a request not retried in
// it is answered unavailable with nothing of it written.
func TestFallbackKeepsTheWriteTimeout(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	// One request's data fails the group at once; every single-event statement (the
	// one-by-one retries) takes 200 ms.
	_, err := pool.Exec(context.Background(), `
CREATE FUNCTION fail_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.user_id = 'poison' THEN RAISE EXCEPTION 'injected' USING ERRCODE = '23514'; END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER fail_poison BEFORE INSERT ON watches FOR EACH ROW EXECUTE FUNCTION fail_poison();
CREATE FUNCTION slow_single() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF (SELECT count(*) FROM added) = 1 THEN PERFORM pg_sleep(0.2); END IF;
	RETURN NULL;
END $$;
CREATE TRIGGER slow_single AFTER INSERT ON watches REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION slow_single();`)
	if err != nil {
		t.Fatal(err)
	}
	const timeout = time.Second
	w := newWriter(t, pool, func(c *ingest.Config) { c.Workers = 1; c.MaxWait = 300 * time.Millisecond; c.Timeout = timeout })
	const n = 20 // 20 retries of 200 ms: four times the write timeout
	var wg sync.WaitGroup
	errs, took := make([]error, n), make([]time.Duration, n)
	for i := range n {
		user := fmt.Sprintf("u%d", i)
		if i == 0 {
			user = "poison"
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			t0 := time.Now()
			_, errs[i] = w.Write(ctx, []events.Any{watch(fmt.Sprintf("wat-%05d", i), user)}, "")
			took[i] = time.Since(t0)
		})
	}
	wg.Wait()
	stored, unavailable := 0, 0
	for i, err := range errs {
		var rows int
		if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM watches WHERE event_id = $1`, fmt.Sprintf("wat-%05d", i)).Scan(&rows); err != nil {
			t.Fatal(err)
		}
		switch {
		case i == 0:
			if err == nil || rows != 0 {
				t.Errorf("poison: err %v, %d rows", err, rows)
			}
		case err == nil && rows == 1:
			stored++
		case errors.Is(err, ingest.ErrUnavailable) && rows == 0:
			unavailable++
		default:
			t.Errorf("request %d: err %v, %d rows: an answer must say what was written", i, err, rows)
		}
	}
	// The bound is the write timeout plus the queue wait and the first attempt, with room
	// for a slow machine; without the shared budget the last caller waited ~4 s.
	if slowest := slices.Max(took); slowest > 3*timeout {
		t.Errorf("slowest caller waited %s, the write timeout is %s", slowest, timeout)
	}
	if stored == 0 || unavailable == 0 {
		t.Errorf("%d stored, %d unavailable: want the retries cut by the write timeout", stored, unavailable)
	}
}

// TestWriterPoolWaitIsBoundedByAcquireTimeout: with every pooled connection held elsewhere, a
// group gives up after AcquireTimeout (--pg.acquire-timeout) and its requests are answered
// unavailable, naming the setting, instead of after the whole transaction Timeout; once a
// connection is free the same event is written.
func TestWriterPoolWaitIsBoundedByAcquireTimeout(t *testing.T) {
	forEachPath(t, func(t *testing.T, path func(*ingest.Config)) {
		ctx := context.Background()
		dsn := testutil.MigratedDatabase(t)
		sep := "?"
		if strings.Contains(dsn, "?") {
			sep = "&"
		}
		pool := testutil.Pool(t, dsn+sep+"pool_max_conns=1")
		w := newWriter(t, pool, func(c *ingest.Config) {
			path(c)
			c.Timeout, c.AcquireTimeout = time.Minute, 100*time.Millisecond
		})
		held, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, err = w.Write(ctx, []events.Any{watch("pool-wait-0001", "u1")}, "")
		held.Release()
		if !errors.Is(err, ingest.ErrUnavailable) || !strings.Contains(err.Error(), "--pg.acquire-timeout") {
			t.Fatalf("write with the pool held: %v, want unavailable naming --pg.acquire-timeout", err)
		}
		res, err := w.Write(ctx, []events.Any{watch("pool-wait-0001", "u1")}, "")
		if err != nil || res[0].Status != ingest.StatusOK {
			t.Fatalf("write once the connection is free: %v %+v, want it stored", err, res)
		}
	})
}
