package reco

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"

	"recsys/pkg/features"
	"recsys/pkg/featurestore"
	"recsys/pkg/infra"
	"recsys/pkg/postgres"
)

// stores wires the Snapshot loaders and the probes on the process' clients.
func stores(cfg *Config, d infra.Deps) (parts, error) {
	if d.PG == nil || d.Redis == nil {
		return parts{}, fmt.Errorf("reco needs postgres and redis clients")
	}
	prefix := d.Config.Redis.KeyPrefix
	readyKey := prefix + "ready"
	rd := d.Redis
	pg := d.PG
	// The loaders read the decay landmarks and half-lives from the stores' own meta; the
	// feature configuration only matters to the writer (the consumer).
	fc := features.DefaultConfig()
	keys := featurestore.NewKeys(prefix)
	loader := featurestore.NewRedisLoader(rd, prefix, fc)
	absent := newAbsentUsers(cfg.AbsentUserCacheTTL, cfg.AbsentUserCacheMax)
	readThrough := userReadThrough(pg, rd, prefix, fc, d, absent)
	loader.SetReadThrough(func(ctx context.Context, userID string, ttl time.Duration) (bool, error) {
		f, err := readThrough(ctx, userID, ttl)
		return f != (userFields{}), err
	}, absent.forget)
	var redisSrc snapshotSource = loader
	if cfg.ItemCacheTTL > 0 {
		items := newItemCache(&redisItems{rd: rd, keys: keys}, cfg.ItemCacheTTL, cfg.ItemCacheMax)
		var decoded *decodeCache
		if cfg.UserDecodeCacheMB > 0 {
			decoded = newDecodeCache(cfg.UserDecodeCacheMB << 20)
			decoded.intern = items.names.get
		}
		redisSrc = &cachedSource{full: redisSrc, user: &redisUser{rd: rd, keys: keys, cacheTTL: cfg.UserCacheTTL,
			hits: d.Metrics.NewCounter("recsys_reco_user_cache_hits_total"), decoded: decoded, readThrough: readThrough,
			absent: absent},
			items: items}
	}
	return parts{
		redis: redisSrc,
		pg:    featurestore.NewPGLoader(pg, prefix, fc),
		probeRedis: func(ctx context.Context) (bool, error) {
			v, err := rd.Do(ctx, rd.B().Get().Key(readyKey).Build()).ToString()
			if rueidis.IsRedisNil(err) {
				return false, nil
			}
			if err != nil {
				return false, fmt.Errorf("read redis ready marker: %w", err)
			}
			return v == "1", nil
		},
		probePG: func(ctx context.Context) error {
			if err := pg.Ping(ctx); err != nil {
				return fmt.Errorf("ping postgres: %w", err)
			}
			return nil
		},
		blocked: pgBlocklist(pg),
		mirror:  redisMirror{rd: rd, key: keys.Blocked},
		agree: func(ctx context.Context) error {
			return postgres.Agree(ctx, pg, infra.AgreedSettings(d.Config, true)...)
		},
	}, nil
}

// userReadThrough returns the read-through of users whose Redis hash expired (the writers'
// --redis.user-ttl, which the copy records): their documents come from PostgreSQL and go back
// into the copy with that expiry (featurestore.Store.ReadThroughUser). Counted in
// recsys_reco_user_read_through_total{result="found|absent|error"}. A user PostgreSQL does not
// know is remembered in absent (nil: none) and not looked up again meanwhile, counted in
// recsys_reco_absent_user_cache_hits_total.
//
// When only the write back failed (featurestore.ErrNotWrittenBack) it returns the fields with
// that error (wrapping errUserUnread too): the cached read ranks with them, while the loader,
// which reads the user from Redis again, falls back instead.
//
// A failed read-through (PostgreSQL down) returns an error wrapping errUserUnread: ranking
// the user without their history would pass their watched items off as a plain cold start.
// serving.load then serves them from the next source without counting a Redis failure (that
// would move every user, including the ones Redis holds, off Redis).
func userReadThrough(pg *pgxpool.Pool, rd rueidis.Client, prefix string, fc features.Config,
	d infra.Deps, absent *absentUsers) func(ctx context.Context, userID string, ttl time.Duration) (userFields, error) {
	st := featurestore.New(pg, rd, prefix, fc, d.Log)
	count := map[string]*metrics.Counter{}
	for _, r := range []string{"found", "absent", "error"} {
		count[r] = d.Metrics.NewCounter(fmt.Sprintf(`recsys_reco_user_read_through_total{result=%q}`, r))
	}
	hits := d.Metrics.NewCounter("recsys_reco_absent_user_cache_hits_total")
	return func(ctx context.Context, userID string, ttl time.Duration) (userFields, error) {
		if userID == globalUserID {
			return userFields{}, nil // the global snapshot's reads name no user
		}
		if absent.has(userID) {
			hits.Inc()
			return userFields{}, nil
		}
		f, found, err := st.ReadThroughUser(ctx, userID, ttl)
		// PostgreSQL answered but Redis refused the copy (out of memory, a read-only replica)
		// or did not answer: f is valid, the caller may rank with it.
		unwritten := errors.Is(err, featurestore.ErrNotWrittenBack)
		switch {
		case err != nil && !unwritten:
			count["error"].Inc()
			d.Log.DebugContext(ctx, "user read-through failed, serving the user from the next source", "err", err)
			return userFields{}, fmt.Errorf("%w: %w", errUserUnread, err)
		case found:
			count["found"].Inc()
		default:
			count["absent"].Inc()
			absent.add(userID, ttl)
		}
		if unwritten {
			d.Log.DebugContext(ctx, "user read through, but not written back to redis", "err", err)
			return f, fmt.Errorf("%w: %w", errUserUnread, err)
		}
		return f, nil
	}
}
