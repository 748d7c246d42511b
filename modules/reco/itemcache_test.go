package reco

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"recsys/pkg/features"
	"recsys/pkg/ranking"
)

// cloningReader returns every id as a new string, as decoding a Redis reply does.
type cloningReader struct{ itemReader }

func (r cloningReader) Neighbours(ctx context.Context, items []string, n int, nowMs int64) (map[string][]ranking.Scored, error) {
	m, err := r.itemReader.Neighbours(ctx, items, n, nowMs)
	for _, l := range m {
		for i := range l {
			l[i].ItemID = strings.Clone(l[i].ItemID)
		}
	}
	return m, err
}

// TestItemIDsAreShared: the same item in two cached lists and in a decoded history is one
// string (ranking then compares pointers, not bytes), the interning is bounded, and the
// item's statistics are one copy shared by both lists.
func TestItemIDsAreShared(t *testing.T) {
	m := fixture(t)
	now := time.Now().UnixMilli()
	// u1 and u2 both watched "x" next to a different item: "x" is in both items' lists.
	for _, ev := range []features.Interaction{watchEv("u1", "a", now-3000, "e1"), watchEv("u1", "x", now-2000, "e2"),
		watchEv("u2", "b", now-3000, "e3"), watchEv("u2", "x", now-1000, "e4")} {
		m.apply(ev)
	}
	c := newItemCache(cloningReader{m}, time.Minute, 1000)
	// Separate loads, as two requests' cache misses would be.
	la, err := c.lists(context.Background(), []string{strings.Clone("a")}, 50, now)
	if err != nil {
		t.Fatal(err)
	}
	lb, err := c.lists(context.Background(), []string{strings.Clone("b")}, 50, now)
	if err != nil {
		t.Fatal(err)
	}
	find := func(l []*listEntry, id string) string {
		for _, x := range l[0].l {
			if x.ItemID == id {
				return x.ItemID
			}
		}
		t.Fatalf("%s not in list %v", id, l[0].l)
		return ""
	}
	xa, xb := find(la, "x"), find(lb, "x")
	if unsafe.StringData(xa) != unsafe.StringData(xb) {
		t.Fatal("the same neighbour in two lists is two strings")
	}
	// Its statistics are one copy too, equal to what the reader returns.
	stats := func(l []*listEntry, id string) *ranking.ItemStats {
		for _, x := range l[0].l {
			if x.ItemID == id {
				return x.Stats
			}
		}
		return nil
	}
	sa, sb := stats(la, "x"), stats(lb, "x")
	if sa == nil || sa != sb {
		t.Fatalf("statistics of the same neighbour in two lists: %p and %p, want one shared copy", sa, sb)
	}
	want, ok := m.st.ItemStats("x", now)
	// Popularity decays with the clock: the cache decays it to its own load time, which can be
	// a millisecond past now, so it matches to a relative 1e-6, not bit for bit.
	if !ok || sa.Impressions != want.Impressions || sa.Watches != want.Watches || sa.FirstSeenMs != want.FirstSeenMs ||
		math.Abs(sa.PopLong-want.PopLong) > 1e-6*math.Abs(want.PopLong) {
		t.Fatalf("shared statistics %+v, reader has %+v", *sa, want)
	}
	d := newDecodeCache(1 << 20)
	d.intern = c.names.get
	hist := `[{"item_id":"x","ts_ms":1,"quality":1}]`
	du, err := d.decode("u9", userFields{hist, "", ""})
	if err != nil {
		t.Fatal(err)
	}
	if len(du.history) != 1 || unsafe.StringData(du.history[0].ItemID) != unsafe.StringData(xa) {
		t.Fatalf("decoded history %v does not share the cached string", du.history)
	}

	n := newNames(2)
	for _, s := range []string{"p", "q", "r", "s"} {
		n.get(strings.Clone(s))
	}
	if len(n.m) > 2 {
		t.Fatalf("names holds %d strings, bound 2", len(n.m))
	}
	if got := n.get("s"); got != "s" {
		t.Fatalf("get(s) = %q", got)
	}
}

// gatedReader wraps an itemReader: its Neighbours calls wait for the gate while it is closed,
// and it records the ids and the concurrency of those calls.
type gatedReader struct {
	itemReader
	gate     chan struct{} // a receive succeeds while the gate is open (closed channel)
	mu       sync.Mutex
	batches  [][]string
	inFlight int
	most     int
}

func (r *gatedReader) Neighbours(ctx context.Context, items []string, n int, nowMs int64) (map[string][]ranking.Scored, error) {
	r.mu.Lock()
	r.batches = append(r.batches, slices.Clone(items))
	r.inFlight++
	r.most = max(r.most, r.inFlight)
	gate := r.gate
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.inFlight--
		r.mu.Unlock()
	}()
	select {
	case <-gate:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return r.itemReader.Neighbours(ctx, items, n, nowMs)
}

func (r *gatedReader) seen() ([][]string, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.batches), r.most
}

// TestStaleEntriesRefreshInPacedBatches: stale entries are served at once while one
// background refresher reloads each of them exactly once, in batches of at most
// refreshBatch and never two batches at a time, however many requests find them stale; the
// refresher stops when nothing is left. Firing a reload per request (the old behaviour)
// fails the concurrency and the batch checks.
func TestStaleEntriesRefreshInPacedBatches(t *testing.T) {
	m := fixture(t)
	open := make(chan struct{})
	close(open)
	r := &gatedReader{itemReader: m, gate: open}
	c := newItemCache(r, time.Minute, 10_000)
	const items = 3*refreshBatch + 7
	ids := make([]string, items)
	for i := range ids {
		ids[i] = fmt.Sprintf("i%03d", i)
	}
	now := time.Now().UnixMilli()
	if _, err := c.lists(context.Background(), ids, 50, now); err != nil {
		t.Fatal(err)
	}
	old := map[string]*listEntry{}
	for _, id := range ids {
		sh := c.shard(id)
		e := sh.m[id]
		if e == nil {
			t.Fatalf("%s not cached after a load", id)
		}
		e.fresh = now - 1 // stale, not too old
		old[id] = e
	}
	loadsBefore := len(r.batches)

	closed := make(chan struct{})
	r.mu.Lock()
	r.gate = closed // the refresher's loads wait until the requests below are answered
	r.mu.Unlock()
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := g; i < items; i += 5 {
				req := ids[i:min(i+10, items)]
				got, err := c.lists(context.Background(), req, 50, time.Now().UnixMilli())
				if err != nil {
					t.Error(err)
					return
				}
				for j, e := range got {
					if e != old[req[j]] {
						t.Errorf("stale %s: got a new entry before the refresh was let through", req[j])
					}
				}
			}
		}(g)
	}
	wg.Wait() // every request answered while the refresher's first load is held
	close(closed)

	deadline := time.Now().Add(10 * time.Second)
	for {
		c.refreshMu.Lock()
		draining := c.draining
		c.refreshMu.Unlock()
		if !draining {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the refresher still runs after 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	batches, most := r.seen()
	batches = batches[loadsBefore:]
	if most != 1 {
		t.Errorf("%d refresh loads ran at once, want 1", most)
	}
	count := map[string]int{}
	for _, b := range batches {
		if len(b) > refreshBatch {
			t.Errorf("a refresh loaded %d ids, bound %d", len(b), refreshBatch)
		}
		for _, id := range b {
			count[id]++
		}
	}
	for _, id := range ids {
		if count[id] != 1 {
			t.Errorf("%s reloaded %d times, want once", id, count[id])
		}
		e := c.shard(id).m[id]
		if e == old[id] || e.fresh <= now {
			t.Errorf("%s not refreshed", id)
		}
	}
	if want := (items + refreshBatch - 1) / refreshBatch; len(batches) < want {
		t.Errorf("%d refresh loads for %d ids, want at least %d", len(batches), items, want)
	}
}

// TestFreshnessIsJittered: entries loaded in the same millisecond turn stale over the last
// quarter of the TTL, not at once.
func TestFreshnessIsJittered(t *testing.T) {
	c := newItemCache(nil, 4*time.Second, 1000)
	const at = 1_000_000
	lo, hi := int64(math.MaxInt64), int64(0)
	for range 2000 {
		f := c.freshUntil(at)
		if f < at+3000 || f > at+4000 {
			t.Fatalf("fresh until %d ms after the load, want 3000–4000", f-at)
		}
		lo, hi = min(lo, f), max(hi, f)
	}
	if hi-lo < 800 {
		t.Fatalf("2000 entries loaded together turn stale within %d ms of each other, want a spread of most of 1000", hi-lo)
	}
}
