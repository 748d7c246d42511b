package featurestore

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/rueidis"
)

// MaxZsetListpackEntries is the largest zset-max-listpack-entries the Redis copy is cheap
// with. Redis keeps a sorted set of up to that many members as one flat listpack, where every
// ZADD scans the members and parses each score from text; the neighbour lists (up to 2M
// members with decayed, non-integer scores) updated that way cost the server 5× more than as
// skip lists. Measured (BenchmarkApplyFullUsers/redis=true, docs/scaling.md): the default 128
// against 16 took ZADD from 48 to 9 µs per call and Redis from 265 to 143 µs of CPU per event,
// for ~23 % more memory.
const MaxZsetListpackEntries = 16

// CheckRedisConfig reports server settings that make the Redis copy costlier or less safe
// than it need be, one message per finding, each naming the fix (none: nothing to report). It
// fails only when the settings cannot be read (a managed Redis may refuse CONFIG): callers log
// and go on.
func (s *Store) CheckRedisConfig(ctx context.Context) ([]string, error) {
	if s.rd == nil {
		return nil, nil
	}
	var out []string
	n, err := zsetListpackEntries(ctx, s.rd)
	if err != nil {
		return nil, err
	}
	if n > MaxZsetListpackEntries {
		out = append(out, fmt.Sprintf("redis zset-max-listpack-entries is %d: co-visitation updates cost Redis about twice the CPU; "+
			"set it to %d (redis.conf or CONFIG SET zset-max-listpack-entries %d; existing lists convert when they next gain a member)",
			n, MaxZsetListpackEntries, MaxZsetListpackEntries))
	}
	// Only user hashes may carry a TTL (SetUserTTL), and /reco reads an absent user back, so
	// volatile-* policies are safe; an allkeys-* policy would drop items or neighbour lists
	// while the copy still reads as complete, and /reco would rank without them, silently,
	// until the next repopulation.
	policy, err := configValue(ctx, s.rd, "maxmemory-policy")
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(policy, "allkeys-") {
		out = append(out, fmt.Sprintf("redis maxmemory-policy is %s: a full Redis evicts feature keys and /reco silently serves without them; "+
			"set noeviction (a full Redis then refuses writes: the consumer retries, alerts fire, nothing is lost)", policy))
	}
	return out, nil
}

// configValue reads one setting ("" when the server does not know it).
func configValue(ctx context.Context, rd rueidis.Client, name string) (string, error) {
	m, err := rd.Do(ctx, rd.B().ConfigGet().Parameter(name).Build()).AsStrMap()
	if err != nil {
		return "", fmt.Errorf("redis config get %s: %w", name, err)
	}
	return m[name], nil
}

// zsetListpackEntries reads the setting under its Redis 7 name, or its Redis 6 one.
func zsetListpackEntries(ctx context.Context, rd rueidis.Client) (int, error) {
	for _, name := range []string{"zset-max-listpack-entries", "zset-max-ziplist-entries"} {
		v, err := configValue(ctx, rd, name)
		if err != nil {
			return 0, err
		}
		if v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				return 0, fmt.Errorf("redis config %s = %q: %w", name, v, err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("redis config get: neither zset-max-listpack-entries nor zset-max-ziplist-entries is known")
}
