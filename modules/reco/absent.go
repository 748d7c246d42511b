package reco

import (
	"hash/maphash"
	"sync"
	"time"
)

// absentUsers remembers, in this process, the users a read-through found unknown to
// PostgreSQL, so a visitor without events costs one PostgreSQL lookup per process per ttl
// rather than one per request, while no Redis key is written for them
// (featurestore.ReadThroughUser): random or per-request user ids (bots, a request id sent as
// user_id) would grow Redis with their request rate. It holds at most max ids (random
// eviction per shard, like the item cache), so such ids cost each process bounded memory and,
// once they crowd it out, a primary-key lookup per request: what an id never seen before
// costs in any case.
//
// It is asked only once Redis answered that the user's hash is absent, and the consumer writes
// a user's first event into Redis, so a user remembered here is served what the consumer wrote
// on their next request. A hash written and then lost again (evicted under maxmemory, or
// expired) is covered by forget, called whenever a user's hash is read present, and by
// entries lasting at most the writers' user TTL.
type absentUsers struct {
	ttl    time.Duration
	max    int // ids per shard
	seed   maphash.Seed
	start  time.Time // expiries are monotonic offsets from it
	shards [cacheShards]absentShard
}

type absentShard struct {
	mu sync.Mutex
	m  map[string]time.Duration // expiry, since start
}

// newAbsentUsers returns the memory of unknown users; nil (remember none) when ttl is 0.
func newAbsentUsers(ttl time.Duration, maxIDs int) *absentUsers {
	if ttl <= 0 {
		return nil
	}
	c := &absentUsers{ttl: ttl, max: max(maxIDs/cacheShards, 1), seed: maphash.MakeSeed(), start: time.Now()}
	for i := range c.shards {
		c.shards[i].m = map[string]time.Duration{}
	}
	return c
}

func (c *absentUsers) shard(id string) *absentShard {
	return &c.shards[maphash.String(c.seed, id)%cacheShards]
}

// has reports whether userID was found unknown to PostgreSQL less than the entry's TTL ago.
func (c *absentUsers) has(userID string) bool {
	if c == nil {
		return false
	}
	now := time.Since(c.start)
	sh := c.shard(userID)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	exp, ok := sh.m[userID]
	if ok && now >= exp {
		delete(sh.m, userID)
		ok = false
	}
	return ok
}

// add remembers userID as unknown to PostgreSQL for the cache's TTL, at most userTTL (a hash
// written meanwhile may expire within userTTL).
func (c *absentUsers) add(userID string, userTTL time.Duration) {
	if c == nil {
		return
	}
	ttl := c.ttl
	if userTTL > 0 {
		ttl = min(ttl, userTTL)
	}
	now := time.Since(c.start)
	sh := c.shard(userID)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if _, ok := sh.m[userID]; !ok {
		for k := range sh.m { // random eviction until the new id fits
			if len(sh.m) < c.max {
				break
			}
			delete(sh.m, k)
		}
	}
	sh.m[userID] = now + ttl
}

// forget drops userID: their hash was read present, so it is no longer theirs to skip.
func (c *absentUsers) forget(userID string) {
	if c == nil {
		return
	}
	sh := c.shard(userID)
	sh.mu.Lock()
	if len(sh.m) > 0 {
		delete(sh.m, userID)
	}
	sh.mu.Unlock()
}
