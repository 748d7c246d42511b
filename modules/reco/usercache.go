package reco

import (
	"fmt"
	"hash/maphash"
	"sync"

	"recsys/pkg/featurestore"
	"recsys/pkg/ranking"
)

// userFields are the user hash fields /reco reads: history, watched set, impression counters.
type userFields [3]string

// decodedUser is the decoded form of one user's fields. It is immutable once stored and
// shared by concurrent requests: ranking only reads a Snapshot's History, Watched and
// Impressions.
type decodedUser struct {
	size    int // estimated bytes held
	raw     userFields
	history []ranking.HistoryEntry
	watched map[string]bool
	imps    map[string]ranking.ImpressionStat
}

// decodeCache remembers the decoded fields of recently served users, keyed by user and
// checked against the raw field values read on every request: decoding is a pure function of
// the raw value, so an unchanged field (compared byte for byte, far cheaper than parsing it)
// reuses the previous result, and a changed one is decoded again. The user's state is still
// read from Redis on every request; only the parsing is saved. Fields are reused one by one:
// an impression changes only "i", a watch "h" and "w" (and "i").
//
// Decoding the JSON documents (and collecting what it allocated) was about a tenth of a
// request's CPU. The cache is bounded in bytes, estimated from the raw values (random
// eviction per shard, like the item cache): a heavy user's documents are tens of KB.
type decodeCache struct {
	seed   maphash.Seed
	max    int // estimated bytes per shard
	shards [cacheShards]decodeShard
	// intern, when set, replaces each decoded history item id by the item cache's shared
	// string (see names): ranking compares history ids with every neighbour list.
	intern func(string) string
}

type decodeShard struct {
	mu    sync.Mutex
	m     map[string]*decodedUser
	bytes int
}

// decodedOverhead is the estimated memory of a decoded field per byte of its JSON (maps and
// strings of the decoded form, plus the raw value kept for comparison).
const decodedOverhead = 4

func newDecodeCache(maxBytes int) *decodeCache {
	c := &decodeCache{seed: maphash.MakeSeed(), max: max(maxBytes/cacheShards, 1)}
	for i := range c.shards {
		c.shards[i].m = map[string]*decodedUser{}
	}
	return c
}

// decode returns the decoded fields of userID, reusing what was decoded before for fields
// whose raw value is unchanged. A nil cache decodes every field.
func (c *decodeCache) decode(userID string, f userFields) (*decodedUser, error) {
	var prev *decodedUser
	var sh *decodeShard
	if c != nil {
		sh = &c.shards[maphash.String(c.seed, userID)%cacheShards]
		sh.mu.Lock()
		prev = sh.m[userID]
		sh.mu.Unlock()
		if prev != nil && prev.raw == f {
			return prev, nil
		}
	}
	d := &decodedUser{raw: f, size: 256 + decodedOverhead*(len(f[0])+len(f[1])+len(f[2]))}
	var err error
	switch {
	case f[0] == "":
	case prev != nil && prev.raw[0] == f[0]:
		d.history = prev.history
	default:
		if d.history, err = featurestore.DecodeHistory(f[0]); err != nil {
			return nil, fmt.Errorf("decode history of %q: %w", userID, err)
		}
		if c != nil && c.intern != nil {
			for i := range d.history {
				d.history[i].ItemID = c.intern(d.history[i].ItemID)
			}
		}
	}
	switch {
	case f[1] == "":
	case prev != nil && prev.raw[1] == f[1]:
		d.watched = prev.watched
	default:
		if d.watched, err = featurestore.DecodeWatchedSet(f[1]); err != nil {
			return nil, fmt.Errorf("decode watched of %q: %w", userID, err)
		}
	}
	switch {
	case f[2] == "":
	case prev != nil && prev.raw[2] == f[2]:
		d.imps = prev.imps
	default:
		if d.imps, err = featurestore.DecodeImpressions(f[2]); err != nil {
			return nil, fmt.Errorf("decode impressions of %q: %w", userID, err)
		}
	}
	if sh != nil && d.size <= c.max {
		sh.mu.Lock()
		if old := sh.m[userID]; old != nil {
			sh.bytes -= old.size
		}
		for k, e := range sh.m { // random eviction until the new entry fits
			if sh.bytes+d.size <= c.max {
				break
			}
			sh.bytes -= e.size
			delete(sh.m, k)
		}
		sh.m[userID] = d
		sh.bytes += d.size
		sh.mu.Unlock()
	}
	return d, nil
}
