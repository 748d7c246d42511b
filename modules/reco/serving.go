package reco

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"recsys/pkg/featurestore"
	"recsys/pkg/logging"
	"recsys/pkg/ranking"
)

// snapshotSource loads one user's ranking input (pkg/featurestore's RedisLoader and PGLoader,
// or features.MemoryStore in tests).
type snapshotSource interface {
	Snapshot(ctx context.Context, userID string, nowMs int64, opts ranking.SnapshotOptions) (ranking.Snapshot, error)
}

// globalUserID is the user the global snapshot is loaded for: no query can name it (user_id
// must have at least one character), so it has no history and the load returns only the
// global lists and their item statistics.
const globalUserID = ""

// errNoSource means no list at all can be made: the only case /reco answers 503.
var errNoSource = errors.New("no recommendations available: redis and postgresql are unreachable and no global snapshot was loaded yet")

// errUserUnread means Redis answered but the user's features could not be read: their hash
// expired and reading it back from PostgreSQL failed (userReadThrough). The request goes on
// to the next source, but Redis' breaker does not count it: Redis still serves every user it
// holds.
var errUserUnread = errors.New("read expired user through to postgresql")

// errUserUndecodable means a store answered but one user's documents do not decode (written
// by a newer release, or edited by hand): that user is served from the next source, and the
// store's breaker does not count it, since the store still serves everyone else. The
// consumer's next write of the user replaces them.
var errUserUndecodable = featurestore.ErrUserUndecodable

// globalSnap is an in-process copy of the global lists (trending, popular, fresh and their
// item statistics). It is immutable once stored.
type globalSnap struct {
	snap     ranking.Snapshot
	loadedAt time.Time
	source   string // "redis" or "postgres"
}

// serving picks where a Snapshot comes from, best first:
//  1. Redis (one round trip), when its breaker is closed and its ready marker is present;
//  2. PostgreSQL (the durable features), when Redis is down or lost its data;
//  3. the in-process global snapshot, when both are down (no personalisation, but a list).
//
// With --reco.cache-global-lists the global lists of (1) and (2) come from the in-process
// snapshot too, refreshed every --reco.global-refresh, so a request reads only the user's own
// features (history, watched set, impressions, neighbours and their statistics).
type serving struct {
	cfg             *Config
	redis, pg       snapshotSource
	redisBrk, pgBrk *breaker
	readyMarker     atomic.Bool
	global          atomic.Pointer[globalSnap]
	fullOpts        ranking.SnapshotOptions
	personalOpts    ranking.SnapshotOptions
	globalOpts      ranking.SnapshotOptions
	m               *recoMetrics
	log             *slog.Logger
	warnRedis       logging.Limiter
	warnPG          logging.Limiter
	warnUndecodable logging.Limiter

	probeRedis func(context.Context) (bool, error)
	probePG    func(context.Context) error
	pgSlots    chan struct{}
	// redisDeadline bounds the per-request Redis reads (cfg.RedisTimeout).
	redisDeadline *sharedDeadline
	// prepare is the ranker's ranking.Preparer, if it has one: the global lists' statistics
	// are prepared once per refresh instead of once per request.
	prepare func(*ranking.ItemStats)
	// onLandmarks, if set, is told the landmarks of each global snapshot loaded (the item
	// cache then reloads entries relative to older ones: the store rebased).
	onLandmarks func(ranking.Landmarks)
}

func newServing(cfg *Config, redis, pg snapshotSource, m *recoMetrics, log *slog.Logger) *serving {
	s := &serving{cfg: cfg, redis: redis, pg: pg, m: m, log: log,
		fullOpts: cfg.snapshotOptions(true), personalOpts: cfg.snapshotOptions(false), pgSlots: make(chan struct{}, cfg.PGMaxConcurrent),
		redisDeadline: newSharedDeadline(cfg.RedisTimeout)}
	// The global snapshot serves every k: its lists are as long as the largest k needs.
	s.globalOpts = s.fullFor(kMax)
	s.globalOpts.HistoryItems = 0
	s.redisBrk = newBreaker(cfg.BreakerFailures, func(open bool) {
		if open {
			m.breakerOpened["redis"].Inc()
			log.Warn("redis breaker open, serving from postgresql features")
		} else {
			log.Info("redis breaker closed, serving from redis again")
		}
	})
	s.pgBrk = newBreaker(cfg.BreakerFailures, func(open bool) {
		if open {
			m.breakerOpened["postgres"].Inc()
			log.Warn("postgres breaker open, impressions are buffered and reads skip postgresql")
		} else {
			log.Info("postgres breaker closed")
		}
	})
	return s
}

// redisUsable reports whether per-user reads go to Redis.
func (s *serving) redisUsable() bool { return s.redisBrk.Allow() && s.readyMarker.Load() }

// fullFor is fullOpts for a list of k items: the trending and popular lists are read at
// least 2k long. Ranking scores only their first --ranking.trending-candidates and
// --ranking.popular-candidates entries; the entries beyond fill a list those heads cannot
// (ranking.Weighted), as for a cold user asking for 200 items when the two top-100 lists
// overlap. Twice k leaves room for the items of the lists the user watched.
func (s *serving) fullFor(k int) ranking.SnapshotOptions {
	o := s.fullOpts
	if o.TrendingN > 0 {
		o.TrendingN = max(o.TrendingN, 2*k)
	}
	if o.PopularN > 0 {
		o.PopularN = max(o.PopularN, 2*k)
	}
	return o
}

// load returns the user's Snapshot for a list of k items and the source that served it.
func (s *serving) load(ctx context.Context, userID string, k int, now time.Time) (ranking.Snapshot, string, error) {
	nowMs := now.UnixMilli()
	g := s.cachedGlobal(now)
	full := s.fullFor(k)
	opts := full
	if g != nil {
		opts = s.personalOpts
	}
	undecodable := false // counted once per request
	if s.redis != nil && s.redisUsable() {
		gs := g
		snap, err := s.redis.Snapshot(s.redisDeadline.context(now), userID, nowMs, opts)
		if err == nil && !sameLandmarks(&snap, gs) {
			gs = nil // the store rebased between the two reads: read the global lists too
			snap, err = s.redis.Snapshot(s.redisDeadline.context(now), userID, nowMs, full)
		}
		if err == nil {
			s.redisBrk.Success()
			complete(&snap, gs)
			return snap, sourceRedis, nil
		}
		if ctx.Err() != nil {
			return ranking.Snapshot{}, "", ctx.Err()
		}
		// ErrNotReady: Redis answered but its copy is incomplete (or nothing was applied yet):
		// not an outage, and the probe owns the marker state, so just fall back this time.
		// errUserUnread: Redis answered, PostgreSQL did not (counted by the read-through).
		// errUserUndecodable: Redis answered, one user's hash is unusable.
		if errors.Is(err, errUserUndecodable) {
			undecodable = true
			s.m.userUndecodable.Inc()
			s.warnUndecodable.Do(func(n int64) {
				s.log.WarnContext(ctx, "a user's features in redis do not decode, serving them from postgresql", "err", err, "failures", n)
			})
		} else if !errors.Is(err, featurestore.ErrNotReady) && !errors.Is(err, errUserUnread) {
			s.redisBrk.Failure()
			s.m.sourceErrors["redis"].Inc()
			s.warnRedis.Do(func(n int64) {
				s.log.WarnContext(ctx, "redis snapshot read failed, falling back to postgresql", "err", err, "failures", n)
			})
		}
	}
	if s.pg != nil && s.pgBrk.Allow() && s.pgSlot(ctx) {
		gs := g
		snap, err := read(ctx, s.pg, s.cfg.PGTimeout, userID, nowMs, opts)
		if err == nil && !sameLandmarks(&snap, gs) {
			gs = nil
			snap, err = read(ctx, s.pg, s.cfg.PGTimeout, userID, nowMs, full)
		}
		<-s.pgSlots
		if err == nil {
			s.pgBrk.Success()
			complete(&snap, gs)
			return snap, sourcePG, nil
		}
		if ctx.Err() != nil {
			return ranking.Snapshot{}, "", ctx.Err()
		}
		switch {
		case errors.Is(err, errUserUndecodable):
			// PostgreSQL answered: not a failure of it (its breaker also holds back every
			// auto-logged impression).
			if !undecodable {
				s.m.userUndecodable.Inc()
			}
			s.warnUndecodable.Do(func(n int64) {
				s.log.WarnContext(ctx, "a user's features in postgresql do not decode, serving them the global snapshot", "err", err, "failures", n)
			})
		case errors.Is(err, featurestore.ErrListsPending):
			// PostgreSQL answered; the shared read of the global lists (seconds on a large
			// catalog) goes on and serves the next requests. Counted as a failure, these
			// timeouts would open the breaker early in every Redis outage.
			s.m.sourceErrors["postgres"].Inc()
			s.warnPG.Do(func(n int64) {
				s.log.WarnContext(ctx, "global lists still being read from postgresql, falling back to the global snapshot", "err", err, "failures", n)
			})
		default:
			s.pgBrk.Failure()
			s.m.sourceErrors["postgres"].Inc()
			s.warnPG.Do(func(n int64) {
				s.log.WarnContext(ctx, "postgresql snapshot read failed, falling back to the global snapshot", "err", err, "failures", n)
			})
		}
	}
	if g := s.global.Load(); g != nil {
		snap := g.snap
		snap.UserID, snap.NowMs = userID, nowMs
		return snap, sourceGlobal, nil
	}
	return ranking.Snapshot{}, "", errNoSource
}

// pgSlot takes one of the bounded PostgreSQL read slots. With a global snapshot to fall back
// on it waits at most --reco.pg-slot-wait: shedding load to the global lists beats queueing
// every request of an API whose Redis is down on PostgreSQL, but the global lists exclude
// nothing the user watched, so a slot freed within moments is worth the wait. Without a
// global snapshot it waits as long as the request.
func (s *serving) pgSlot(ctx context.Context) bool {
	select {
	case s.pgSlots <- struct{}{}:
		return true
	default:
	}
	var expired <-chan time.Time
	if s.global.Load() != nil {
		if s.cfg.PGSlotWait <= 0 {
			s.m.pgShed.Inc()
			return false
		}
		t := time.NewTimer(s.cfg.PGSlotWait)
		defer t.Stop()
		expired = t.C
	}
	select {
	case s.pgSlots <- struct{}{}:
		return true
	case <-expired:
		s.m.pgShed.Inc()
		return false
	case <-ctx.Done():
		if expired != nil {
			s.m.pgShed.Inc()
		}
		return false
	}
}

func read(ctx context.Context, src snapshotSource, timeout time.Duration, userID string, nowMs int64, opts ranking.SnapshotOptions) (ranking.Snapshot, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return src.Snapshot(ctx, userID, nowMs, opts)
}

// cachedGlobal returns the global snapshot to complete per-user snapshots with, or nil when
// caching is off or the snapshot is missing or too old.
func (s *serving) cachedGlobal(now time.Time) *globalSnap {
	if !s.cfg.CacheGlobalLists {
		return nil
	}
	g := s.global.Load()
	if g == nil || now.Sub(g.loadedAt) > s.cfg.GlobalMaxAge {
		return nil
	}
	return g
}

// sameLandmarks reports whether snap's stored values can be ranked with g's (nil: no global
// snapshot): values relative to other landmarks (the store rebased between the two reads)
// would differ by the rebase factor.
func sameLandmarks(snap *ranking.Snapshot, g *globalSnap) bool {
	return g == nil || !snap.Stored || !g.snap.Stored || snap.Landmarks == g.snap.Landmarks
}

// complete adds the global lists and their item statistics to a per-user snapshot, sharing
// the global snapshot's statistics map as the last layer: the statistics read for this user
// win over the global copy.
func complete(snap *ranking.Snapshot, g *globalSnap) {
	if g == nil {
		return
	}
	snap.Trending, snap.Popular, snap.Fresh = g.snap.Trending, g.snap.Popular, g.snap.Fresh
	snap.SharedItems = g.snap.Items
}

// refreshGlobal reloads the global snapshot from the best usable store. A failure keeps the
// previous snapshot.
func (s *serving) refreshGlobal(ctx context.Context) error {
	now := time.Now()
	var errs []error
	try := func(name string, src snapshotSource, timeout time.Duration, brk *breaker) bool {
		snap, err := read(ctx, src, max(timeout, time.Second), globalUserID, now.UnixMilli(), s.globalOpts)
		if err != nil {
			// ErrListsPending: the store answered and its read of the lists goes on, for the
			// next refresh; it outlasts the refresh's timeout on a large catalog.
			if !errors.Is(err, featurestore.ErrNotReady) && !errors.Is(err, featurestore.ErrListsPending) {
				brk.Failure()
			}
			errs = append(errs, fmt.Errorf("load global lists from %s: %w", name, err))
			return false
		}
		brk.Success()
		snap.UserID = ""
		snap.History, snap.Watched, snap.Impressions, snap.ImpressionsAdded = nil, nil, nil, nil
		snap.Neighbours, snap.HistoryNeighbours, snap.Similar = nil, nil, nil
		attachStats(&snap, s.prepare)
		s.global.Store(&globalSnap{snap: snap, loadedAt: now, source: name})
		if snap.Stored && s.onLandmarks != nil {
			s.onLandmarks(snap.Landmarks)
		}
		return true
	}
	if s.redis != nil && s.redisUsable() && try("redis", s.redis, s.cfg.RedisTimeout, s.redisBrk) {
		return nil
	}
	if s.pg != nil && s.pgBrk.Allow() && try("postgres", s.pg, s.cfg.PGTimeout, s.pgBrk) {
		return nil
	}
	if len(errs) == 0 {
		errs = append(errs, errors.New("load global lists: no store usable"))
	}
	s.m.globalErrors.Inc()
	return errors.Join(errs...)
}

// attachStats points the global lists' entries at one copy of each item's statistics, shared
// by every request until the next refresh (ranking then reads them without a map lookup per
// candidate), and prepares lists and statistics for the ranker (prepare may be nil).
// snap.Items keeps the same values (ranking.Scored.Stats' rule).
func attachStats(snap *ranking.Snapshot, prepare func(*ranking.ItemStats)) {
	ptr := make(map[string]*ranking.ItemStats, len(snap.Items))
	for _, l := range [][]ranking.Scored{snap.Trending, snap.Popular, snap.Fresh} {
		ranking.PrepareList(l)
		for i := range l {
			id := l[i].ItemID
			p, seen := ptr[id]
			if !seen {
				if st, known := snap.Items[id]; known {
					p = &st
					if prepare != nil {
						prepare(p)
					}
				}
				ptr[id] = p
			}
			l[i].Stats = p
		}
	}
}

// probeRedisOnce reads the ready marker: an answer closes the Redis breaker, no answer opens
// it. A missing marker (Redis restarted empty or was flushed) keeps reads on PostgreSQL until
// the consumer has repopulated Redis and set the marker again.
func (s *serving) probeRedisOnce(parent context.Context) {
	if s.probeRedis == nil {
		return
	}
	ctx, cancel := context.WithTimeout(parent, max(s.cfg.RedisTimeout, time.Second))
	defer cancel()
	ready, err := s.probeRedis(ctx)
	if err != nil {
		if parent.Err() != nil {
			return // shutting down
		}
		s.redisBrk.Trip()
		return
	}
	if prev := s.readyMarker.Swap(ready); prev != ready {
		if ready {
			s.log.Info("redis ready marker present, reading features from redis")
		} else {
			s.log.Warn("redis ready marker missing (redis lost its data), reading features from postgresql until it is repopulated")
		}
	}
	s.redisBrk.Reset()
}

// probePGOnce pings PostgreSQL: an answer closes its breaker, no answer opens it.
func (s *serving) probePGOnce(parent context.Context) {
	if s.probePG == nil {
		return
	}
	ctx, cancel := context.WithTimeout(parent, max(s.cfg.PGTimeout, time.Second))
	defer cancel()
	if err := s.probePG(ctx); err != nil {
		if parent.Err() != nil {
			return // shutting down
		}
		s.pgBrk.Trip()
		return
	}
	s.pgBrk.Reset()
}

// probePGWhileOpen probes PostgreSQL every interval while its breaker is open, until ctx ends.
func (s *serving) probePGWhileOpen(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if s.pgBrk.IsOpen() {
			s.probePGOnce(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// canServe reports whether some list can be made.
func (s *serving) canServe() bool {
	return (s.redis != nil && s.redisUsable()) || (s.pg != nil && s.pgBrk.Allow()) || s.global.Load() != nil
}

// servingFrom names where a request would be served from now.
func (s *serving) servingFrom() string {
	switch {
	case s.redis != nil && s.redisUsable():
		return "redis"
	case s.pg != nil && s.pgBrk.Allow():
		return "postgres"
	case s.global.Load() != nil:
		return "global_snapshot"
	}
	return "none"
}
