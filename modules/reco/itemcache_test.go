package reco

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/VictoriaMetrics/metrics"

	"recsys/pkg/features"
	"recsys/pkg/ranking"
)

// cloningReader returns every id as a new string, as decoding a Redis reply does.
type cloningReader struct{ itemReader }

func (r cloningReader) Neighbours(ctx context.Context, items []string, n int) (map[string][]ranking.Scored, ranking.Landmarks, error) {
	m, lm, err := r.itemReader.Neighbours(ctx, items, n)
	for _, l := range m {
		for i := range l {
			l[i].ItemID = strings.Clone(l[i].ItemID)
		}
	}
	return m, lm, err
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
	la, err := c.lists(context.Background(), []string{strings.Clone("a")}, 50)
	if err != nil {
		t.Fatal(err)
	}
	lb, err := c.lists(context.Background(), []string{strings.Clone("b")}, 50)
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
	want, ok := m.st.StoredItemStats("x")
	// Popularity as stored: the cache keeps it relative to the landmark, bit for bit.
	if !ok || sa.Impressions != want.Impressions || sa.Watches != want.Watches || sa.FirstSeenMs != want.FirstSeenMs ||
		sa.PopLong != want.PopLong || sa.PopShort != want.PopShort {
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

func (r *gatedReader) Neighbours(ctx context.Context, items []string, n int) (map[string][]ranking.Scored, ranking.Landmarks, error) {
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
		return nil, ranking.Landmarks{}, ctx.Err()
	}
	return r.itemReader.Neighbours(ctx, items, n)
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
	if _, err := c.lists(context.Background(), ids, 50); err != nil {
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
				got, err := c.lists(context.Background(), req, 50)
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

// An entry older than maxStale is not served while a refresh is queued: the request loads it
// again. Stale entries are served only while young enough; with the background refresh
// failing (Redis erroring for that read), a hot item's neighbours would otherwise be served
// from the first load for good.
func TestEntriesOlderThanMaxStaleAreLoadedAgain(t *testing.T) {
	clock := time.Now()
	c := newItemCache(fixture(t), time.Second, 1000)
	c.clock = func() time.Time { return clock }
	ctx := context.Background()
	first, err := c.lists(ctx, []string{"a"}, 10)
	if err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(c.maxStale + time.Second)
	got, err := c.lists(ctx, []string{"a"}, 10)
	if err != nil {
		t.Fatal(err)
	}
	if got[0] == first[0] || got[0].at != clock.UnixMilli() {
		t.Fatalf("an entry %s old was served (loaded at %d, now %d), want it loaded again", c.maxStale+time.Second, got[0].at, clock.UnixMilli())
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

// tieWorld is a store where items "x" and "y" have exactly equal statistics and are both
// neighbours of "h1", equally strong; "x" is also a neighbour of "h2", and "y" of "h3". User
// "ranked" watched "h1": x and y tie for them, and must come out in id order.
func tieWorld(now int64) *memSource {
	st := features.NewMemoryStore(features.DefaultConfig())
	t0 := now - 3*3600_000
	for _, ev := range []features.Interaction{
		watchEv("u1", "h1", t0, "e1"), watchEv("u1", "x", t0+1000, "e2"),
		watchEv("u2", "h1", t0, "e3"), watchEv("u2", "y", t0+1000, "e4"),
		watchEv("u3", "h2", t0+5000, "e5"), watchEv("u3", "x", t0+6000, "e6"),
		watchEv("u4", "h3", t0+5000, "e7"), watchEv("u4", "y", t0+6000, "e8"),
		watchEv("ranked", "h1", t0+9000, "e9"),
	} {
		st.Apply(ev)
	}
	return &memSource{st: st}
}

// pod is one API replica over a shared store: its own item cache (on its own clock) and
// global snapshot.
type pod struct {
	r     *Reco
	items *itemCache
	clock time.Time
}

func newPod(t *testing.T, src *memSource) *pod {
	t.Helper()
	cfg := NewConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	p := &pod{clock: time.Now()}
	// A long TTL: the test moves the cache's clock by hours between loads.
	p.items = newItemCache(src, 24*time.Hour, 1000)
	p.items.clock = func() time.Time { return p.clock }
	p.r = newReco(cfg, nil, metrics.NewSet(), parts{redis: &cachedSource{full: src, user: src, items: p.items},
		pg: src, writer: newFakeWriter()})
	p.r.serving.readyMarker.Store(true)
	if err := p.r.serving.refreshGlobal(context.Background()); err != nil {
		t.Fatal(err)
	}
	return p
}

// load has the pod's cache load the lists of items at its clock's time, then moves the
// clock by after.
func (p *pod) load(t *testing.T, after time.Duration, items ...string) {
	t.Helper()
	if _, err := p.items.lists(context.Background(), items, p.r.cfg.Ranking.NeighboursPerItem); err != nil {
		t.Fatal(err)
	}
	p.clock = p.clock.Add(after)
}

func (p *pod) rank(t *testing.T, user string, now time.Time) ranking.Result {
	t.Helper()
	snap, src, err := p.r.serving.load(context.Background(), user, 20, now)
	if err != nil || src != sourceRedis {
		t.Fatalf("load %s: source %q, %v", user, src, err)
	}
	return p.r.ranker.Rank(&snap, 10)
}

// TestPodsRankAlikeWhateverTheirCacheLoadTimes: two replicas over the same store that loaded
// the same items at different moments, and in a different order, answer the same list with
// the same scores, and two items with equal statistics tie exactly and come out in id order,
// even in a cache that loaded one of them hours after the other. The cache used to decay
// popularity (and the ranker to evaluate freshness) at each item's load time, so scores
// depended on when each replica had loaded what: x and y differed by ~1e-7, the one loaded
// first ahead, and the two replicas disagreed.
func TestPodsRankAlikeWhateverTheirCacheLoadTimes(t *testing.T) {
	now := time.Now()
	src := tieWorld(now.UnixMilli())
	a, b := newPod(t, src), newPod(t, src)
	// a: x's statistics come with h2's list, y's three hours later with h1's.
	a.load(t, 3*time.Hour, "h2")
	a.load(t, 0, "h1")
	// b: the other way round, y first, and its global lists are loaded later.
	b.load(t, 5*time.Hour, "h3")
	b.load(t, 0, "h1")
	time.Sleep(20 * time.Millisecond)
	if err := b.r.serving.refreshGlobal(context.Background()); err != nil {
		t.Fatal(err)
	}
	at := now.Add(10 * time.Millisecond)
	ra, rb := a.rank(t, "ranked", at), b.rank(t, "ranked", at)
	if !slices.Equal(ra.Items, rb.Items) || !slices.Equal(ra.Scores, rb.Scores) {
		t.Fatalf("the same request on two replicas:\n a %v %v\n b %v %v", ra.Items, ra.Scores, rb.Items, rb.Scores)
	}
	// a again, after reloading x's statistics (and h1's list) two hours later than y's.
	a.clock = a.clock.Add(2 * time.Hour)
	oldX, oldY := a.items.stats["x"].s, a.items.stats["y"].s
	delete(a.items.shard("h1").m, "h1")
	delete(a.items.stats, "x")
	a.load(t, 0, "h1")
	if a.items.stats["x"].s == oldX || a.items.stats["y"].s != oldY {
		t.Fatal("x's statistics were not reloaded alone")
	}
	reloaded := a.rank(t, "ranked", at)
	if !slices.Equal(reloaded.Items, ra.Items) || !slices.Equal(reloaded.Scores, ra.Scores) {
		t.Fatalf("after reloading x:\n %v %v\nbefore:\n %v %v", reloaded.Items, reloaded.Scores, ra.Items, ra.Scores)
	}
	for name, r := range map[string]ranking.Result{"a": ra, "b": rb, "a reloaded": reloaded} {
		ix, iy := slices.Index(r.Items, "x"), slices.Index(r.Items, "y")
		if ix < 0 || iy != ix+1 || r.Scores[ix] != r.Scores[iy] {
			t.Fatalf("replica %s: %v %v, want x and y adjacent, x first, with equal scores", name, r.Items, r.Scores)
		}
	}
}

// rebasedReader reports the landmarks in lm instead of the store's, as a store that rebased.
type rebasedReader struct {
	itemReader
	lm *ranking.Landmarks
}

func (r rebasedReader) Neighbours(ctx context.Context, items []string, n int) (map[string][]ranking.Scored, ranking.Landmarks, error) {
	m, _, err := r.itemReader.Neighbours(ctx, items, n)
	return m, *r.lm, err
}

func (r rebasedReader) Stats(ctx context.Context, items []string, into map[string]ranking.ItemStats) (ranking.Landmarks, error) {
	_, err := r.itemReader.Stats(ctx, items, into)
	return *r.lm, err
}

// TestRebaseReloadsCachedEntries: once a load sees newer landmarks (the store rebased, so its
// stored values were all rescaled), entries and statistics cached relative to the old ones are
// loaded again instead of being ranked with the new ones, and a global snapshot relative to
// other landmarks than a user's read is not combined with it.
func TestRebaseReloadsCachedEntries(t *testing.T) {
	now := time.Now()
	lm := ranking.Landmarks{ShortMs: 1, LongMs: 1, CovisMs: 1}
	c := newItemCache(rebasedReader{tieWorld(now.UnixMilli()), &lm}, time.Hour, 1000)
	ctx := context.Background()
	old, err := c.lists(ctx, []string{"h1"}, 10)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := c.lists(ctx, []string{"h1"}, 10); again[0] != old[0] {
		t.Fatal("a fresh entry was reloaded")
	}
	lm.ShortMs = 2 // the short half-life's landmark moved
	if _, err := c.lists(ctx, []string{"h2"}, 10); err != nil {
		t.Fatal(err)
	}
	got, err := c.lists(ctx, []string{"h1"}, 10)
	if err != nil {
		t.Fatal(err)
	}
	if got[0] == old[0] || got[0].lm != lm {
		t.Fatalf("after a rebase h1's entry is relative to %+v, want a reload relative to %+v", got[0].lm, lm)
	}
	for _, x := range got[0].l {
		if x.Stats == c.stats[x.ItemID].s && c.stats[x.ItemID].lm != lm {
			t.Fatalf("%s's statistics are relative to old landmarks", x.ItemID)
		}
	}

	snap := ranking.Snapshot{Stored: true, Landmarks: lm}
	g := &globalSnap{snap: ranking.Snapshot{Stored: true, Landmarks: ranking.Landmarks{ShortMs: 1, LongMs: 1, CovisMs: 1}}}
	if sameLandmarks(&snap, g) {
		t.Fatal("a global snapshot from before the rebase is combined with a user's read after it")
	}
	g.snap.Landmarks = lm
	if !sameLandmarks(&snap, g) || !sameLandmarks(&ranking.Snapshot{}, g) || !sameLandmarks(&snap, nil) {
		t.Fatal("snapshots relative to the same landmarks (or without stored values) are not combined")
	}
}

// TestLandmarksMovingBackKeepTheCache: `features rebuild --from-events` recreates the meta at
// the first raw event's time, usually before the landmarks the store had. Entries loaded
// after it must be current again (served within their TTL without a reload), not reloaded
// on every request until the process restarts.
func TestLandmarksMovingBackKeepTheCache(t *testing.T) {
	clock := time.Now()
	src := tieWorld(clock.UnixMilli())
	lm := ranking.Landmarks{ShortMs: 5_000, LongMs: 5_000, CovisMs: 5_000}
	c := newItemCache(rebasedReader{src, &lm}, time.Second, 1000)
	c.clock = func() time.Time { return clock }
	ctx := context.Background()
	if _, err := c.lists(ctx, []string{"h1"}, 10); err != nil {
		t.Fatal(err)
	}
	lm = ranking.Landmarks{ShortMs: 1_000, LongMs: 1_000, CovisMs: 1_000} // the rebuild
	c.noteLandmarks(lm)                                                   // as a global refresh reports it
	got, err := c.lists(ctx, []string{"h1"}, 10)
	if err != nil {
		t.Fatal(err)
	}
	if got[0].lm != lm {
		t.Fatalf("after the rebuild h1's entry is relative to %+v, want a reload relative to %+v", got[0].lm, lm)
	}
	before := src.calls.Load()
	for i := 0; i < 5; i++ {
		again, err := c.lists(ctx, []string{"h1"}, 10)
		if err != nil {
			t.Fatal(err)
		}
		if again[0] != got[0] {
			t.Fatalf("lookup %d: another entry than the one loaded after the rebuild", i)
		}
	}
	if n := src.calls.Load() - before; n > 0 {
		t.Fatalf("%d reader calls for 5 lookups of an entry loaded within its TTL: the cache is off", n)
	}
}

// straddlingReader reports different landmarks for every read, as a store rebasing between
// each of them.
type straddlingReader struct {
	itemReader
	n atomic.Int64
}

func (r *straddlingReader) Neighbours(ctx context.Context, items []string, n int) (map[string][]ranking.Scored, ranking.Landmarks, error) {
	m, _, err := r.itemReader.Neighbours(ctx, items, n)
	return m, ranking.Landmarks{ShortMs: r.n.Add(1)}, err
}

func (r *straddlingReader) Stats(ctx context.Context, items []string, into map[string]ranking.ItemStats) (ranking.Landmarks, error) {
	_, err := r.itemReader.Stats(ctx, items, into)
	return ranking.Landmarks{ShortMs: r.n.Add(1)}, err
}

// TestRebaseDuringLoadAndRetryReadsInOneGo: a load whose reads straddle a rebase, twice, is
// not a Redis failure (an error here would count against the breaker): the user's features
// are read in one go.
func TestRebaseDuringLoadAndRetryReadsInOneGo(t *testing.T) {
	now := time.Now()
	src := tieWorld(now.UnixMilli())
	items := newItemCache(&straddlingReader{itemReader: src}, time.Hour, 1000)
	cs := &cachedSource{full: src, user: src, items: items}
	if _, err := items.lists(context.Background(), []string{"h1"}, 10); !errors.Is(err, errRebased) {
		t.Fatalf("a load straddling rebases twice: err %v, want errRebased", err)
	}
	snap, err := cs.Snapshot(context.Background(), "ranked", now.UnixMilli(), ranking.SnapshotOptions{NeighboursPerItem: 10, HistoryItems: 10})
	if err != nil {
		t.Fatalf("snapshot: %v, want the user's features read in one go", err)
	}
	if len(snap.Neighbours["h1"]) == 0 {
		t.Fatalf("snapshot without h1's neighbours: %+v", snap.Neighbours)
	}
}

// An item statistics hash field holding "nan" or "inf" is 0 (featurestore.ParseStat): as an
// integer statistic it was int64(NaN), whatever the platform makes of it (the smallest int64
// on amd64: an item never shown to anyone, its impressions "negative"), and as popularity NaN.
func TestNonFiniteStoredStatisticsDecodeAsZero(t *testing.T) {
	got, err := decodeStats([9]string{"nan", "inf", "NaN", "-inf", "3", "1.5", "1700000000000", "nan", "+Inf"})
	want := ranking.ItemStats{Ended: 3, WatchTimeSec: 1.5, FirstSeenMs: 1700000000000}
	if err != nil || got != want {
		t.Fatalf("decodeStats = %+v, %v; want %+v", got, err, want)
	}
}
