package reco

import (
	"context"
	"fmt"

	"github.com/redis/rueidis"

	"recsys/pkg/features"
	"recsys/pkg/featurestore"
	"recsys/pkg/infra"
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
	var redisSrc snapshotSource = featurestore.NewRedisLoader(rd, prefix, fc)
	if cfg.ItemCacheTTL > 0 {
		items := newItemCache(&redisItems{rd: rd, keys: keys}, cfg.ItemCacheTTL, cfg.ItemCacheMax)
		var decoded *decodeCache
		if cfg.UserDecodeCacheMB > 0 {
			decoded = newDecodeCache(cfg.UserDecodeCacheMB << 20)
			decoded.intern = items.names.get
		}
		redisSrc = &cachedSource{full: redisSrc, user: &redisUser{rd: rd, keys: keys, cacheTTL: cfg.UserCacheTTL,
			hits: d.Metrics.NewCounter("recsys_reco_user_cache_hits_total"), decoded: decoded},
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
	}, nil
}
