package reco

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/rueidis"

	"recsys/pkg/features"
	"recsys/pkg/featurestore"
	"recsys/pkg/ranking"
)

// itemReader loads per-item features as stored: co-visitation neighbours (strongest first,
// ties by item id) and item statistics, their forward-decayed values (strengths, popularity)
// relative to the landmarks returned (ranking.Snapshot.Stored).
type itemReader interface {
	Neighbours(ctx context.Context, items []string, n int) (map[string][]ranking.Scored, ranking.Landmarks, error)
	// Stats adds the statistics of the known items among items to into.
	Stats(ctx context.Context, items []string, into map[string]ranking.ItemStats) (ranking.Landmarks, error)
}

// cachedSource is the per-request Redis read used by /reco: the user's own state (history,
// watched set, impression counters) is read fresh on every request, while the per-item
// features of the candidates (the neighbour list of each history item with the statistics of
// those neighbours) come from an in-process cache with a short TTL, and the global lists from
// the global snapshot (serving.complete).
//
// Why: one Snapshot script reading ~300 neighbour statistics costs Redis milliseconds per
// request, which caps a single Redis at a few hundred to a thousand requests per second,
// while the same items are read by every user. Item features change slowly (half-lives of
// hours to months): a TTL of a second or two is invisible to ranking, whereas everything the
// user just did (a watch excludes the item and makes it a history item whose neighbours
// lead) is read live. So a request costs Redis one small script (the user hash), and a cache
// miss one pipelined round trip for the lists and one for their statistics.
type cachedSource struct {
	full  snapshotSource // the one-round-trip loader, for reads that include the global lists
	user  snapshotSource // returns the user's state for options without lists or neighbours
	items *itemCache
}

func (c *cachedSource) Snapshot(ctx context.Context, userID string, nowMs int64, opts ranking.SnapshotOptions) (ranking.Snapshot, error) {
	if opts.TrendingN+opts.PopularN+opts.FreshN > 0 {
		// A full read (no global snapshot to complete it with): the loader does it all.
		return c.full.Snapshot(ctx, userID, nowMs, opts)
	}
	s, err := c.user.Snapshot(ctx, userID, nowMs, ranking.SnapshotOptions{NeighboursPerItem: opts.NeighboursPerItem})
	if err != nil {
		return s, err
	}
	n := min(opts.HistoryItems, len(s.History))
	if n == 0 || opts.NeighboursPerItem <= 0 {
		return s, nil
	}
	var buf [16]string
	hist := buf[:0]
	for i := 0; i < n; i++ {
		hist = append(hist, s.History[i].ItemID)
	}
	lists, err := c.items.lists(ctx, hist, opts.NeighboursPerItem)
	if errors.Is(err, errRebased) {
		// The store rebased during the load and again during its retry: not a Redis failure
		// (which would count against the breaker); read this user's features in one go.
		return c.full.Snapshot(ctx, userID, nowMs, opts)
	}
	if err != nil {
		return s, err
	}
	// The cached values are as stored (so they do not depend on when they were loaded), all
	// relative to the same landmarks unless the store rebased between two of these loads.
	s.Stored = false
	for _, e := range lists {
		if len(e.l) == 0 {
			continue
		}
		if s.Stored && e.lm != s.Landmarks {
			// Rare (a rebase every few months): read this user's features in one go instead.
			return c.full.Snapshot(ctx, userID, nowMs, opts)
		}
		s.Stored, s.Landmarks = true, e.lm
	}
	// Each cached neighbour carries its statistics (Scored.Stats): nothing is copied per request.
	if s.Neighbours != nil { // the user's source returned lists of its own: add to them
		for i, e := range lists {
			if len(e.l) > 0 {
				s.Neighbours[hist[i]] = e.l
			}
		}
		return s, nil
	}
	// By position rather than in a map: a map of ten lists was ~640 bytes per request for
	// the collector, the slice is 240.
	s.HistoryNeighbours = make([][]ranking.Scored, len(lists))
	for i, e := range lists {
		s.HistoryNeighbours[i] = e.l
	}
	return s, nil
}

// itemCache caches, per item, its neighbour list together with the statistics of those
// neighbours, with the forward-decayed values as stored: decayed to the load time, the
// values, hence scores, depended on when a server had loaded each item, and items with equal
// statistics loaded at different moments were ordered by that instead of by id (differently
// on each server). Entries relative to landmarks older than the newest a load has seen
// (the store rebased since) are loaded again. A request looks up one entry per history item:
//   - fresh (younger than its share of ttl, see freshUntil): used;
//   - stale (younger than maxStale): used, and queued for the background refresher, so hot
//     items never make a request wait;
//   - missing or too old: loaded, with concurrent requests for the same item sharing one load
//     (single flight), in one round trip for the lists and one for the statistics.
//
// Loads run under their own timeout, not the request's: a request that gives up waiting
// leaves the load to finish and warm the cache for the next ones. Without that, a cold cache
// under load turns into timeouts, an open breaker and a cache that never warms.
//
// Refreshes of stale entries are paced, not fired by the request that noticed them: one
// background goroutine reloads them in batches of at most refreshBatch, one batch at a time,
// and every entry's freshness is the TTL shortened by a random share of up to a quarter.
// Entries loaded together (a warm-up, a burst of new users) would otherwise all turn stale in
// the same millisecond, and every request of the next few milliseconds started its own
// reload: hundreds of concurrent pipelines of Redis reads queued ahead of the requests' own
// user reads on the shared connections, plus their decoding, which stalled serving for
// tens to hundreds of milliseconds every TTL (BenchmarkRecoHTTP open loop at 10,000 req/s:
// p99 119–170 ms with a 5 s TTL against 46–58 ms with entries that never went stale; with
// the paced refresher, 7 alternated pairs: median 163 → 90 ms).
type itemCache struct {
	r           itemReader
	ttl         time.Duration
	maxStale    time.Duration
	loadTimeout time.Duration
	max         int // entries per shard before eviction
	seed        maphash.Seed
	shards      [cacheShards]cacheShard

	statsMu sync.Mutex
	stats   map[string]statEntry // statistics shared by the loads of different lists

	refreshMu sync.Mutex
	queued    map[int][]string // stale ids waiting for the refresher, by list length
	draining  bool             // the refresher goroutine is running

	// prepare is the ranker's ranking.Preparer, if it has one: a cached entry's statistics
	// are prepared once per load instead of once per request.
	prepare func(*ranking.ItemStats)
	names   *names
	// landmarks are the newest landmarks a load saw (nil before the first load).
	landmarks atomic.Pointer[ranking.Landmarks]
	clock     func() time.Time // time.Now, or a test's clock
}

const cacheShards = 32

type cacheShard struct {
	mu       sync.RWMutex
	m        map[string]*listEntry
	inflight map[string]*flight
}

type flight struct {
	done chan struct{}
	e    *listEntry
	err  error
}

// refreshBatch bounds the ids of one background refresh: one pipelined read of that many
// lists (and of their neighbours' stale statistics) must not hold the shared Redis
// connections for long.
const refreshBatch = 64

// listEntry is immutable once stored, but for its refreshing flag.
type listEntry struct {
	at         int64 // unix ms loaded
	fresh      int64 // unix ms until which it is used without a refresh
	n          int
	l          []ranking.Scored  // neighbours, strongest first, as stored, Stats set when known
	lm         ranking.Landmarks // what l's strengths and statistics are relative to
	refreshing atomic.Bool
}

// statEntry is one item's statistics as last read. s is shared by every list loaded while
// the entry is current and is never written after it is stored (a newer read stores a new
// one): ranking reads it from concurrent requests.
//
// Why one copy per item rather than per list: an item is the neighbour of many items, and a
// request ranks ~500 list entries whose statistics it reads once each. With a copy per list
// entry those reads were scattered over megabytes (the cached lists of every item) and missed
// the CPU caches; one copy per item keeps them in a few hundred kilobytes that stay cached.
type statEntry struct {
	fresh int64              // unix ms until which it is used without reading it again
	s     *ranking.ItemStats // nil: the item is unknown
	lm    ranking.Landmarks  // what s's popularity is relative to
}

// names gives each item id one string, shared by every cached list and by the decoded
// histories of users (decodeCache): ranking's id table and the cache's own maps then find
// an id equal to a stored one by comparing pointers (Go's string comparison checks them
// first) instead of bytes. Interning happens when lists are loaded and histories decoded,
// never per request. When full it starts over: strings interned before still work, they
// only compare byte by byte again.
type names struct {
	mu  sync.Mutex
	m   map[string]string
	max int
}

func newNames(max int) *names { return &names{m: map[string]string{}, max: max} }

// get returns the shared string equal to s.
func (n *names) get(s string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if c, ok := n.m[s]; ok {
		return c
	}
	if len(n.m) >= n.max {
		clear(n.m)
	}
	n.m[s] = s
	return s
}

func newItemCache(r itemReader, ttl time.Duration, maxEntries int) *itemCache {
	c := &itemCache{r: r, ttl: ttl, maxStale: max(10*ttl, 5*time.Second), loadTimeout: 2 * time.Second,
		max: max(maxEntries/cacheShards, 16), seed: maphash.MakeSeed(), stats: map[string]statEntry{},
		// As many ids as item statistics are kept (the neighbours of the cached lists).
		names: newNames(max(maxEntries, 1024)), clock: time.Now}
	for i := range c.shards {
		c.shards[i].m = map[string]*listEntry{}
		c.shards[i].inflight = map[string]*flight{}
	}
	return c
}

func (c *itemCache) shard(id string) *cacheShard {
	return &c.shards[maphash.String(c.seed, id)%cacheShards]
}

// noteLandmarks records the landmarks a load or a global refresh saw, when they differ from
// the latest recorded: the latest observation wins. Landmarks are not ordered in time: a
// rebase moves them forward, but `features rebuild --from-events` recreates the meta at the
// first raw event's time, usually earlier; keeping the "newest" would leave every entry
// loaded after such a rebuild never current, and the cache off until a restart. A load that
// read the store just before a rebase and finishes after it may flip them back for a
// moment; the next load or refresh (at most a second away) flips them again.
func (c *itemCache) noteLandmarks(lm ranking.Landmarks) {
	for {
		cur := c.landmarks.Load()
		if cur != nil && *cur == lm {
			return
		}
		if c.landmarks.CompareAndSwap(cur, &lm) {
			return
		}
	}
}

// current reports whether values relative to lm are relative to the latest landmarks seen.
func (c *itemCache) current(lm ranking.Landmarks) bool {
	cur := c.landmarks.Load()
	return cur == nil || *cur == lm
}

// lists returns the entries of items, in order.
func (c *itemCache) lists(ctx context.Context, items []string, n int) ([]*listEntry, error) {
	out := make([]*listEntry, len(items))
	now := c.clock().UnixMilli()
	var refresh, mine []string
	var mineFlights map[string]*flight
	var waiting []int
	var flights []*flight
	for i, id := range items {
		sh := c.shard(id)
		sh.mu.RLock()
		e := sh.m[id]
		sh.mu.RUnlock()
		if e != nil && e.n == n && c.current(e.lm) {
			if now <= e.fresh {
				out[i] = e
				continue
			}
			if now-e.at <= c.maxStale.Milliseconds() {
				out[i] = e
				if e.refreshing.CompareAndSwap(false, true) {
					refresh = append(refresh, id)
				}
				continue
			}
		}
		sh.mu.Lock()
		f, ok := sh.inflight[id]
		if !ok {
			f = &flight{done: make(chan struct{})}
			sh.inflight[id] = f
			mine = append(mine, id)
			if mineFlights == nil {
				mineFlights = map[string]*flight{}
			}
			mineFlights[id] = f
		}
		sh.mu.Unlock()
		waiting = append(waiting, i)
		flights = append(flights, f)
	}
	if len(refresh) > 0 {
		c.refreshLater(refresh, n)
	}
	if len(mine) > 0 {
		go c.loadAndStore(mine, n, mineFlights)
	}
	for j, i := range waiting {
		f := flights[j]
		select {
		case <-f.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for item features: %w", ctx.Err())
		}
		if f.err != nil {
			return nil, f.err
		}
		out[i] = f.e
	}
	return out, nil
}

// refreshLater queues stale ids (each flagged refreshing, so queued once) for the refresher,
// starting it unless it runs.
func (c *itemCache) refreshLater(ids []string, n int) {
	c.refreshMu.Lock()
	if c.queued == nil {
		c.queued = map[int][]string{}
	}
	c.queued[n] = append(c.queued[n], ids...)
	start := !c.draining
	c.draining = true
	c.refreshMu.Unlock()
	if start {
		go c.drainRefreshes()
	}
}

// drainRefreshes reloads the queued ids, refreshBatch at a time, and ends when none is left.
// A failed batch clears its entries' refreshing flags (loadAndStore), so a later request
// queues them again.
func (c *itemCache) drainRefreshes() {
	for {
		c.refreshMu.Lock()
		n, ids := 0, []string(nil)
		for k, q := range c.queued {
			n, ids = k, q
			break
		}
		if ids == nil {
			c.draining = false
			c.refreshMu.Unlock()
			return
		}
		take := min(len(ids), refreshBatch)
		if take == len(ids) {
			delete(c.queued, n)
		} else {
			c.queued[n] = ids[take:]
		}
		c.refreshMu.Unlock()
		c.loadAndStore(ids[:take:take], n, nil)
	}
}

// freshUntil returns the end of the freshness of an entry loaded at atMs: the TTL shortened
// by a random share of up to a quarter, so entries loaded together turn stale over a window
// instead of at once.
func (c *itemCache) freshUntil(atMs int64) int64 {
	ttl := c.ttl.Milliseconds()
	return atMs + ttl - rand.Int64N(ttl/4+1)
}

// loadAndStore loads items' entries, stores them and completes the flights.
func (c *itemCache) loadAndStore(items []string, n int, flights map[string]*flight) {
	ctx, cancel := context.WithTimeout(context.Background(), c.loadTimeout)
	defer cancel()
	entries, err := c.load(ctx, items, n)
	if errors.Is(err, errRebased) {
		entries, err = c.load(ctx, items, n) // once: rebases are months apart
	}
	for _, id := range items {
		sh := c.shard(id)
		sh.mu.Lock()
		if err == nil {
			if len(sh.m) >= c.max {
				evict(sh.m)
			}
			sh.m[id] = entries[id]
		} else if old := sh.m[id]; old != nil {
			old.refreshing.Store(false) // let a later request try again
		}
		if f := flights[id]; f != nil {
			delete(sh.inflight, id)
			f.e, f.err = entries[id], err
			close(f.done)
		}
		sh.mu.Unlock()
	}
}

// errRebased means the store moved its landmarks between the reads of one load.
var errRebased = errors.New("feature landmarks moved during the load (the store rebased)")

func (c *itemCache) load(ctx context.Context, items []string, n int) (map[string]*listEntry, error) {
	nbs, lm, err := c.r.Neighbours(ctx, items, n)
	if err != nil {
		return nil, err
	}
	stats, err := c.statsOf(ctx, nbs, lm)
	if err != nil {
		return nil, err
	}
	c.noteLandmarks(lm)
	at := c.clock().UnixMilli()
	out := make(map[string]*listEntry, len(items))
	for _, id := range items {
		l := nbs[id]
		for j := range l {
			l[j].ItemID = c.names.get(l[j].ItemID)
			l[j].Stats = stats[l[j].ItemID] // nil when unknown
		}
		ranking.PrepareList(l)
		out[id] = &listEntry{at: at, fresh: c.freshUntil(at), n: n, l: l, lm: lm}
	}
	return out, nil
}

// statsOf returns the statistics of every neighbour in nbs (absent: unknown), relative to
// lm, reading from Redis only those not read within ttl (lists share many items). The
// statistics read are prepared for the ranker and then shared.
func (c *itemCache) statsOf(ctx context.Context, nbs map[string][]ranking.Scored, lm ranking.Landmarks) (map[string]*ranking.ItemStats, error) {
	n := 0
	for _, l := range nbs {
		n += len(l)
	}
	out := make(map[string]*ranking.ItemStats, n)
	var miss []string
	now := c.clock().UnixMilli()
	c.statsMu.Lock()
	for _, l := range nbs {
		for _, x := range l {
			if _, seen := out[x.ItemID]; seen {
				continue
			}
			if e, ok := c.stats[x.ItemID]; ok && now <= e.fresh && e.lm == lm {
				out[x.ItemID] = e.s
				continue
			}
			out[x.ItemID] = nil // seen; filled in below
			miss = append(miss, x.ItemID)
		}
	}
	c.statsMu.Unlock()
	if len(miss) > 0 {
		got := make(map[string]ranking.ItemStats, len(miss))
		slm, err := c.r.Stats(ctx, miss, got)
		if err != nil {
			return nil, err
		}
		if slm != lm {
			return nil, errRebased
		}
		at := c.clock().UnixMilli()
		fresh := make([]ranking.ItemStats, len(miss)) // one allocation for the batch
		for i, id := range miss {
			s, known := got[id]
			if !known {
				continue
			}
			fresh[i] = s
			if c.prepare != nil {
				c.prepare(&fresh[i])
			}
			out[id] = &fresh[i]
		}
		c.statsMu.Lock()
		for _, id := range miss {
			if len(c.stats) >= c.max*cacheShards {
				evict(c.stats)
			}
			c.stats[id] = statEntry{fresh: c.freshUntil(at), s: out[id], lm: lm}
		}
		c.statsMu.Unlock()
	}
	return out, nil
}

// evict drops about a quarter of a full shard (map order is random, so this is random
// eviction: cheap, and fine for entries that live a few seconds anyway).
func evict[V any](m map[string]V) {
	drop := len(m) / 4
	for k := range m {
		if drop <= 0 {
			return
		}
		delete(m, k)
		drop--
	}
}

// redisUser reads a user's state from the feature store's Redis copy with one HMGET (the
// fields h, w, i of pkg/featurestore's user hash, JSON). A plain command instead of the
// loader's script: the script's fixed cost per call was most of the Redis CPU per request.
// The ready marker is read in the same round trip: a Redis that lost its data answers the
// HMGET with nothing, which must read as "not ready" (the PostgreSQL fallback), not as a user
// without events (a cold-start list excluding nothing) until the next probe notices.
//
// With cacheTTL > 0 the read goes through rueidis' client-side cache: Redis tracks the key
// for this connection and pushes an invalidation the moment the consumer changes the user's
// hash (or the server is flushed; a reconnect drops the whole cache), so a cached answer is
// never older than the user's last applied event, and a user asked for again before any new
// event costs no round trip. cacheTTL only bounds the memory an idle entry holds.
type redisUser struct {
	rd       rueidis.Client
	keys     featurestore.Keys
	cacheTTL time.Duration
	hits     *metrics.Counter // recsys_reco_user_cache_hits_total
	decoded  *decodeCache     // nil: decode every read
	// readThrough, when set, fetches a user whose hash is absent from PostgreSQL and puts it
	// back into the copy with the given expiry; it is called while the copy's writers record
	// a user TTL (featurestore.RecordedUserTTL). Its failure (errUserUnread) fails the read:
	// an empty user would be ranked as a cold start with their watched items.
	readThrough func(ctx context.Context, userID string, ttl time.Duration) (userFields, error)
	// absent is the read-through's memory of users PostgreSQL does not know: a user read
	// present is forgotten there (absentUsers). nil: none.
	absent   *absentUsers
	recorded atomic.Pointer[recordedTTL] // the copy's recorded user TTL, re-read every recordedTTLAge
}

// recordedTTL is featurestore.RecordedUserTTL as read at a time.
type recordedTTL struct {
	ttl time.Duration
	at  time.Time
}

// recordedTTLAge bounds how long a read of the recorded user TTL is reused: users without
// events (cold starts) would otherwise cost a second round trip each, and writers change the
// setting only when they are reconfigured.
const recordedTTLAge = 5 * time.Second

// userTTL returns the copy's recorded user TTL, reading it at most every recordedTTLAge.
func (u *redisUser) userTTL(ctx context.Context) (time.Duration, error) {
	if r := u.recorded.Load(); r != nil && time.Since(r.at) < recordedTTLAge {
		return r.ttl, nil
	}
	ttl, err := featurestore.RecordedUserTTL(ctx, u.rd, u.keys)
	if err != nil {
		return 0, err
	}
	u.recorded.Store(&recordedTTL{ttl: ttl, at: time.Now()})
	return ttl, nil
}

func (u *redisUser) Snapshot(ctx context.Context, userID string, nowMs int64, _ ranking.SnapshotOptions) (ranking.Snapshot, error) {
	s := ranking.Snapshot{UserID: userID, NowMs: nowMs}
	var res []rueidis.RedisResult
	if u.cacheTTL > 0 {
		// GET rather than EXISTS: it is cacheable, and Redis invalidates it like the user's
		// hash when the marker goes.
		res = u.rd.DoMultiCache(ctx,
			rueidis.CT(u.rd.B().Hmget().Key(u.keys.User(userID)).Field(featurestore.UserFieldNames[:]...).Cache(), u.cacheTTL),
			rueidis.CT(u.rd.B().Get().Key(u.keys.Ready).Cache(), u.cacheTTL))
		if res[0].IsCacheHit() && u.hits != nil {
			u.hits.Inc()
		}
	} else {
		res = u.rd.DoMulti(ctx,
			u.rd.B().Hmget().Key(u.keys.User(userID)).Field(featurestore.UserFieldNames[:]...).Build(),
			u.rd.B().Exists().Key(u.keys.Ready).Build())
	}
	vals, err := res[0].ToArray()
	if err != nil {
		return s, fmt.Errorf("read user from redis: %w", err)
	}
	if ready, err := readyMarker(res[1]); err != nil {
		return s, err
	} else if !ready {
		return s, featurestore.ErrNotReady
	}
	var f userFields
	for i := range f {
		if i < len(vals) && !vals[i].IsNil() {
			f[i], _ = vals[i].ToString()
		}
	}
	if f != (userFields{}) {
		u.absent.forget(userID)
	} else if u.readThrough != nil {
		// Absent: a user without events, or one whose hash expired. Only the second needs
		// PostgreSQL, and only while users expire at all.
		ttl, err := u.userTTL(ctx)
		if err != nil {
			return s, err
		}
		if ttl > 0 {
			// Not written back (Redis refuses writes but still reads): f came from PostgreSQL.
			if f, err = u.readThrough(ctx, userID, ttl); err != nil && !errors.Is(err, featurestore.ErrNotWrittenBack) {
				return s, err
			}
		}
	}
	if f[0] == "" {
		return s, nil // a user without events
	}
	d, err := u.decoded.decode(userID, f)
	if err != nil {
		return s, fmt.Errorf("%w: %w", errUserUndecodable, err)
	}
	s.History, s.Watched, s.Impressions, s.ImpressionsAdded = d.history, d.watched, d.imps, d.added
	return s, nil
}

// readyMarker reads the answer of EXISTS or GET of the ready marker: its presence, which a
// Redis that lost its data has not.
func readyMarker(res rueidis.RedisResult) (bool, error) {
	if n, err := res.AsInt64(); err == nil {
		return n > 0, nil // EXISTS
	}
	_, err := res.ToString()
	switch {
	case rueidis.IsRedisNil(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("read redis ready marker: %w", err)
	}
	return true, nil
}

// redisItems reads per-item features from the feature store's Redis copy with pipelined
// plain commands (key layout of pkg/featurestore).
type redisItems struct {
	rd   rueidis.Client
	keys featurestore.Keys
}

var metaFields = []string{"lm:s", "lm:l", "lm:c", "hl:s", "hl:l", "hl:c"}

type storeDecays struct{ short, long, covis features.Decay }

func (d storeDecays) landmarks() ranking.Landmarks {
	return ranking.Landmarks{ShortMs: d.short.LandmarkMs, LongMs: d.long.LandmarkMs, CovisMs: d.covis.LandmarkMs}
}

func (r *redisItems) metaCmd() rueidis.Completed {
	return r.rd.B().Hmget().Key(r.keys.Meta).Field(metaFields...).Build()
}

func decodeMeta(res rueidis.RedisResult) (storeDecays, error) {
	vals, err := res.ToArray()
	if err != nil {
		return storeDecays{}, fmt.Errorf("read feature meta: %w", err)
	}
	var f [6]float64
	for i := range f {
		s, err := vals[i].ToString()
		if err != nil || s == "" {
			return storeDecays{}, featurestore.ErrNotReady
		}
		if f[i], err = strconv.ParseFloat(s, 64); err != nil {
			return storeDecays{}, fmt.Errorf("decode feature meta: %w", err)
		}
	}
	return storeDecays{
		short: features.Decay{LandmarkMs: int64(f[0]), HalfLifeMs: f[3]},
		long:  features.Decay{LandmarkMs: int64(f[1]), HalfLifeMs: f[4]},
		covis: features.Decay{LandmarkMs: int64(f[2]), HalfLifeMs: f[5]},
	}, nil
}

// Neighbours reads 2n members of each list, then orders by strength and item id and keeps n:
// the order of features.MemoryStore (a ZSET orders ties by member, descending).
func (r *redisItems) Neighbours(ctx context.Context, items []string, n int) (map[string][]ranking.Scored, ranking.Landmarks, error) {
	cmds := make(rueidis.Commands, 0, len(items)+1)
	cmds = append(cmds, r.metaCmd())
	for _, id := range items {
		cmds = append(cmds, r.rd.B().Zrevrange().Key(r.keys.Neighbours(id)).Start(0).Stop(int64(2*n-1)).Withscores().Build())
	}
	res := r.rd.DoMulti(ctx, cmds...)
	d, err := decodeMeta(res[0])
	if err != nil {
		return nil, ranking.Landmarks{}, err
	}
	out := make(map[string][]ranking.Scored, len(items))
	for i, id := range items {
		zs, err := res[i+1].AsZScores()
		if err != nil {
			return nil, ranking.Landmarks{}, fmt.Errorf("read neighbours of %q: %w", id, err)
		}
		if len(zs) == 0 {
			continue
		}
		l := make([]ranking.Scored, len(zs))
		for j, z := range zs {
			l[j] = ranking.Scored{ItemID: z.Member, Score: z.Score}
		}
		slices.SortFunc(l, func(a, b ranking.Scored) int {
			if a.Score != b.Score {
				return cmp.Compare(b.Score, a.Score)
			}
			return strings.Compare(a.ItemID, b.ItemID)
		})
		out[id] = l[:min(n, len(l))]
	}
	return out, d.landmarks(), nil
}

// Stats reads the statistics hash of each item; an item without first-seen time is unknown.
func (r *redisItems) Stats(ctx context.Context, items []string, out map[string]ranking.ItemStats) (ranking.Landmarks, error) {
	if len(items) == 0 {
		return ranking.Landmarks{}, nil
	}
	cmds := make(rueidis.Commands, 0, len(items)+1)
	cmds = append(cmds, r.metaCmd())
	for _, id := range items {
		cmds = append(cmds, r.rd.B().Hmget().Key(r.keys.Item(id)).Field(featurestore.ItemStatFields[:]...).Build())
	}
	res := r.rd.DoMulti(ctx, cmds...)
	d, err := decodeMeta(res[0])
	if err != nil {
		return ranking.Landmarks{}, err
	}
	for i, id := range items {
		vals, err := res[i+1].ToArray()
		if err != nil {
			return ranking.Landmarks{}, fmt.Errorf("read stats of %q: %w", id, err)
		}
		var f [9]string
		for j := range f {
			if j < len(vals) && !vals[j].IsNil() {
				f[j], _ = vals[j].ToString()
			}
		}
		if f[6] == "" {
			continue
		}
		st, err := decodeStats(f)
		if err != nil {
			return ranking.Landmarks{}, fmt.Errorf("decode stats of %q: %w", id, err)
		}
		out[id] = st
	}
	return d.landmarks(), nil
}

// decodeStats decodes an item's statistics hash, popularity as stored.
func decodeStats(f [9]string) (ranking.ItemStats, error) {
	var n [9]float64
	for i, s := range f {
		if s == "" {
			continue
		}
		v, err := featurestore.ParseStat(s)
		if err != nil {
			return ranking.ItemStats{}, err
		}
		n[i] = v
	}
	return ranking.ItemStats{Impressions: int64(n[0]), Watches: int64(n[1]), SumPercent: n[2], PercentCount: int64(n[3]),
		Ended: int64(n[4]), WatchTimeSec: n[5], FirstSeenMs: int64(n[6]),
		PopShort: n[7], PopLong: n[8]}, nil
}
