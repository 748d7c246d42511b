package reco

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"recsys/pkg/events"
	"recsys/pkg/ingest"
	"recsys/pkg/testutil"
)

func servedImpression(id string) *events.Impression {
	now := time.Now().UnixMilli()
	return &events.Impression{Common: events.Common{EventID: "autolog-" + id, UserID: "u-" + id, SessionID: "s1", RequestID: "r-" + id,
		TsMs: now, ServerReceivedTsMs: now}, EventType: "impression",
		Items: []events.ImpressionItem{{ItemID: "item-1", Position: 0}, {ItemID: "item-2", Position: 1}}}
}

// TestAutologSubmitsToTheIngestWriter: with pkg/ingest's Writer (real PostgreSQL) the autolog
// queues each served list with Submit, no goroutine waiting on it, and counts the commit. A
// write that times out is retried by a persist goroutine until it commits. At a shutdown whose
// timeout passes with lists still queued in the writer, closing the writer commits them and
// they are counted persisted; a writer the shutdown cannot close has them counted dropped
// once, and their commit after that changes no count: every list is persisted or counted
// dropped, never both.
func TestAutologSubmitsToTheIngestWriter(t *testing.T) {
	ctx := context.Background()
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	newAutologOn := func(w *ingest.Writer) (*autolog, *recoMetrics) {
		cfg := NewConfig()
		cfg.AutologRetryMax = 20 * time.Millisecond
		m := newRecoMetrics(metrics.NewSet())
		return newAutolog(cfg, w, newBreaker(100, nil), m, slog.New(slog.DiscardHandler)), m
	}
	stored := func(ids ...string) int {
		var n int
		for i := range ids {
			ids[i] = "autolog-" + ids[i]
		}
		if err := pool.QueryRow(ctx, `SELECT count(DISTINCT event_id) FROM impressions WHERE event_id = ANY($1)`, ids).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	// Queued while the writer has not started: Submit holds them, no goroutine does.
	wcfg := ingest.DefaultConfig()
	wcfg.Timeout = 200 * time.Millisecond
	w := ingest.New(pool, wcfg)
	t.Cleanup(w.Close)
	a, m := newAutologOn(w)
	for i := range 3 {
		a.Log(ctx, servedImpression(fmt.Sprintf("sub-%d", i)), "")
	}
	if a.Pending() != 3 || a.submitted.Load() != 3 {
		t.Fatalf("pending %d, submitted %d, want 3 and 3", a.Pending(), a.submitted.Load())
	}
	// The next commit waits on a lock beyond the writer's timeout: the callback hands the
	// events to persist goroutines, which retry until the lock is gone.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `LOCK TABLE impression_events IN EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	w.Start()
	eventually(t, 10*time.Second, "a failed commit retried", func() bool { return m.autologRetries.Get() > 0 })
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the lists persisted", func() bool { return a.Pending() == 0 })
	if got := m.autologPersisted.Get(); got != 3 || m.droppedTotal() != 0 || a.submitted.Load() != 0 {
		t.Fatalf("persisted %d dropped %d submitted %d, want 3, 0, 0", got, m.droppedTotal(), a.submitted.Load())
	}
	if n := stored("sub-0", "sub-1", "sub-2"); n != 3 {
		t.Fatalf("%d of 3 lists stored", n)
	}
	if left := a.Shutdown(time.Second, nil); left != 0 {
		t.Fatalf("shutdown of a drained autolog left %d", left)
	}

	// A shutdown whose wait ends with lists queued in the writer closes it: they commit and
	// are counted persisted, not dropped.
	w3 := ingest.New(pool, ingest.DefaultConfig())
	a3, m3 := newAutologOn(w3)
	a3.Log(ctx, servedImpression("closed-0"), "")
	a3.Log(ctx, servedImpression("closed-1"), "")
	if dropped := a3.Shutdown(50*time.Millisecond, w3.Close); dropped != 0 {
		t.Fatalf("shutdown dropped %d, want 0: closing the writer commits its queue", dropped)
	}
	if p, d := m3.autologPersisted.Get(), m3.droppedTotal(); p != 2 || d != 0 || a3.Pending() != 0 {
		t.Fatalf("persisted %d dropped %d pending %d, want 2, 0, 0", p, d, a3.Pending())
	}
	if n := stored("closed-0", "closed-1"); n != 2 {
		t.Fatalf("%d of 2 queued lists stored by Close", n)
	}

	// A writer the shutdown cannot close: its queued lists are counted dropped once, and their
	// later commit counts nothing.
	w2 := ingest.New(pool, ingest.DefaultConfig())
	t.Cleanup(w2.Close)
	a2, m2 := newAutologOn(w2)
	a2.Log(ctx, servedImpression("late-0"), "")
	a2.Log(ctx, servedImpression("late-1"), "")
	if left := a2.Shutdown(50*time.Millisecond, nil); left != 2 {
		t.Fatalf("shutdown left %d, want 2", left)
	}
	if n := m2.autologDropped[dropShutdown].Get(); n != 2 || a2.Pending() != 0 {
		t.Fatalf("dropped(shutdown) %d pending %d, want 2 and 0", n, a2.Pending())
	}
	w2.Close() // commits the queue: the callbacks come after the shutdown
	if n := stored("late-0", "late-1"); n != 2 {
		t.Fatalf("%d of 2 queued lists stored by Close", n)
	}
	if p, d := m2.autologPersisted.Get(), m2.droppedTotal(); p != 0 || d != 2 {
		t.Fatalf("after the late commit: persisted %d dropped %d, want 0 and 2", p, d)
	}
	// After the shutdown a list is counted, not queued.
	a2.Log(ctx, servedImpression("after"), "")
	if n := m2.autologDropped[dropShutdown].Get(); n != 3 {
		t.Fatalf("dropped(shutdown) %d after a late list, want 3", n)
	}
}

// TestAutologRetryRestampsThePreparedEvent: a list queued with Submit was encoded when served;
// when its commit fails, the retry writes it again stamped with the retry's time (see autolog),
// so the stored row (and its outbox frame, encoded from the same event) carries the time the server could take it durably.
func TestAutologRetryRestampsThePreparedEvent(t *testing.T) {
	ctx := context.Background()
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	wcfg := ingest.DefaultConfig()
	wcfg.Timeout = 100 * time.Millisecond
	w := ingest.New(pool, wcfg)
	t.Cleanup(w.Close)
	cfg := NewConfig()
	cfg.AutologRetryMax = 20 * time.Millisecond
	m := newRecoMetrics(metrics.NewSet())
	a := newAutolog(cfg, w, newBreaker(100, nil), m, slog.New(slog.DiscardHandler))
	t.Cleanup(func() { a.Shutdown(time.Second, nil) })

	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `LOCK TABLE impression_events IN EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	w.Start()
	ev := servedImpression("restamp")
	a.Log(ctx, ev, "")
	eventually(t, 10*time.Second, "a failed commit retried", func() bool { return m.autologRetries.Get() > 0 })
	time.Sleep(300 * time.Millisecond)
	unlocked := time.Now().UnixMilli()
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the list persisted", func() bool { return a.Pending() == 0 })
	var tsMs, srvMs int64
	if err := pool.QueryRow(ctx, `SELECT ts_ms, server_received_ts_ms FROM impression_events WHERE event_id = $1`, ev.EventID).Scan(&tsMs, &srvMs); err != nil {
		t.Fatal(err)
	}
	// A retry that began before the unlock waited at most the writer's timeout for the lock.
	if tsMs != ev.TsMs || srvMs < unlocked-wcfg.Timeout.Milliseconds()-50 {
		t.Fatalf("stored ts_ms %d (served %d), server_received_ts_ms %d ms before the unlock", tsMs, ev.TsMs, unlocked-srvMs)
	}
}

// TestAutologListQueuedPastTheTimeoutIsRestamped: a served list that waits in the writer's
// queue past --reco.autolog-write-timeout (PostgreSQL slow, not down) is not written under its
// serve time: the writer answers it unavailable, and the retry stores it stamped with the
// time it was written. The KPI roll-ups trust receive times up to their commit margin.
func TestAutologListQueuedPastTheTimeoutIsRestamped(t *testing.T) {
	ctx := context.Background()
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	w := ingest.New(pool, ingest.DefaultConfig()) // not started yet: the list waits
	t.Cleanup(w.Close)
	cfg := NewConfig()
	cfg.AutologWriteTimeout = 100 * time.Millisecond
	cfg.AutologRetryMax = 20 * time.Millisecond
	m := newRecoMetrics(metrics.NewSet())
	a := newAutolog(cfg, w, newBreaker(100, nil), m, slog.New(slog.DiscardHandler))
	t.Cleanup(func() { a.Shutdown(time.Second, nil) })

	ev := servedImpression("queued")
	a.Log(ctx, ev, "")
	time.Sleep(300 * time.Millisecond)
	started := time.Now().UnixMilli()
	w.Start()
	eventually(t, 10*time.Second, "the list persisted", func() bool { return a.Pending() == 0 })
	if r, p, d := m.autologRetries.Get(), m.autologPersisted.Get(), m.droppedTotal(); r == 0 || p != 1 || d != 0 {
		t.Fatalf("retries %d persisted %d dropped %d, want >0, 1, 0", r, p, d)
	}
	var tsMs, srvMs int64
	if err := pool.QueryRow(ctx, `SELECT ts_ms, server_received_ts_ms FROM impression_events WHERE event_id = $1`, ev.EventID).Scan(&tsMs, &srvMs); err != nil {
		t.Fatal(err)
	}
	if tsMs != ev.TsMs || srvMs < started {
		t.Fatalf("stored ts_ms %d (served %d), server_received_ts_ms %d ms before the writer started", tsMs, ev.TsMs, started-srvMs)
	}
}

// With --reco.autolog-async=false /reco waits for its list's commit. A client gone meanwhile
// does not cancel that write (the list may have been delivered): it commits under the serve
// time. A write that fails (here: past --reco.autolog-write-timeout in the writer's queue) is
// buffered and retried stamped with the time after the failure, as in async mode: the KPI
// roll-ups trust receive times up to their commit margin.
func TestAutologSyncWrites(t *testing.T) {
	ctx := context.Background()
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	received := func(ev *events.Impression) int64 {
		t.Helper()
		var ms int64
		if err := pool.QueryRow(ctx, `SELECT server_received_ts_ms FROM impression_events WHERE event_id = $1`, ev.EventID).Scan(&ms); err != nil {
			t.Fatal(err)
		}
		return ms
	}
	cfg := NewConfig()
	cfg.AutologAsync = false
	cfg.AutologWriteTimeout = 100 * time.Millisecond
	cfg.AutologRetryMax = 20 * time.Millisecond
	newSync := func(w *ingest.Writer) (*autolog, *recoMetrics) {
		m := newRecoMetrics(metrics.NewSet())
		a := newAutolog(cfg, w, newBreaker(100, nil), m, slog.New(slog.DiscardHandler))
		t.Cleanup(func() { a.Shutdown(time.Second, nil) })
		return a, m
	}

	t.Run("client gone", func(t *testing.T) {
		w := ingest.New(pool, ingest.DefaultConfig())
		w.Start()
		t.Cleanup(w.Close)
		a, m := newSync(w)
		gone, cancel := context.WithCancel(ctx)
		cancel()
		ev := servedImpression("sync-gone")
		a.Log(gone, ev, "")
		if p, b, d := m.autologPersisted.Get(), m.autologBuffered.Get(), m.droppedTotal(); p != 1 || b != 0 || d != 0 {
			t.Fatalf("persisted %d buffered %d dropped %d, want the list committed inline: 1, 0, 0", p, b, d)
		}
		if ms := received(ev); ms != ev.ServerReceivedTsMs {
			t.Fatalf("server_received_ts_ms %d, want the serve time %d", ms, ev.ServerReceivedTsMs)
		}
	})
	t.Run("failed write retried restamped", func(t *testing.T) {
		w := ingest.New(pool, ingest.DefaultConfig()) // not started: the inline write times out in its queue
		t.Cleanup(w.Close)
		a, m := newSync(w)
		ev := servedImpression("sync-retried")
		a.Log(ctx, ev, "")
		w.Start()
		eventually(t, 10*time.Second, "the list persisted", func() bool { return a.Pending() == 0 })
		if b, p, d := m.autologBuffered.Get(), m.autologPersisted.Get(), m.droppedTotal(); b != 1 || p != 1 || d != 0 {
			t.Fatalf("buffered %d persisted %d dropped %d, want 1, 1, 0", b, p, d)
		}
		if ms := received(ev); ms < ev.ServerReceivedTsMs+cfg.AutologWriteTimeout.Milliseconds() {
			t.Fatalf("server_received_ts_ms %d ms after the serve time, want the time after the failed write (>= %s)",
				ms-ev.ServerReceivedTsMs, cfg.AutologWriteTimeout)
		}
	})
}

// TestAutologRefusedListIsCountedOnce: a list the writer refuses (larger than
// --ingest.max-event-bytes) is counted dropped as rejected, and not also as enqueued.
func TestAutologRefusedListIsCountedOnce(t *testing.T) {
	pool := testutil.Pool(t, testutil.MigratedDatabase(t))
	wcfg := ingest.DefaultConfig()
	wcfg.MaxEventBytes = 64
	w := ingest.New(pool, wcfg)
	t.Cleanup(w.Close)
	m := newRecoMetrics(metrics.NewSet())
	a := newAutolog(NewConfig(), w, newBreaker(100, nil), m, slog.New(slog.DiscardHandler))
	a.Log(context.Background(), servedImpression("too-large"), "")
	if r, e, p := m.autologDropped[dropRejected].Get(), m.autologEnqueued.Get(), a.Pending(); r != 1 || e != 0 || p != 0 {
		t.Errorf("a refused list: dropped(rejected) %d, enqueued %d, pending %d; want 1, 0, 0", r, e, p)
	}
}
