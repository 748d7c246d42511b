package reco

import (
	"fmt"
	"hash/maphash"
	"sync"

	"recsys/pkg/featurestore"
	"recsys/pkg/ranking"
)

// userFields are the user hash fields /reco reads: history, watched set, impression counters
// and their overlay.
type userFields = featurestore.UserFields

// decodedUser is the decoded form of one user's fields. It is immutable once stored and
// shared by concurrent requests: ranking only reads a Snapshot's History, Watched and
// Impressions.
type decodedUser struct {
	size    int // estimated bytes held
	raw     userFields
	history []ranking.HistoryEntry
	watched map[string]bool
	// imps are the decoded impression counters' base (raw[2]), baseSum its checksum (set
	// with an overlay), and added the raises of the overlay (raw[3]), which ranking adds
	// (Snapshot.ImpressionsAdded). A stored entry does not keep added: an overlay changes
	// with nearly every list, its base once every few.
	imps    map[string]ranking.ImpressionStat
	baseSum uint32
	added   map[string]ranking.ImpressionStat
	// impsSum, in a stored entry whose base changed since the request before, is the hash of
	// the raw base not kept (raw[2] is then empty, imps nil).
	impsSum uint64
}

// decodeCache remembers the decoded fields of recently served users, keyed by user and
// checked against the raw field values read on every request: decoding is a pure function of
// the raw value, so an unchanged field (compared byte for byte, far cheaper than parsing it)
// reuses the previous result, and a changed one is decoded again. The user's state is still
// read from Redis on every request; only the parsing is saved. Fields are reused one by one:
// an impression changes only "i" (or only "r"), a watch "h" and "w" (and "i").
//
// The impression counters change after nearly every list a user is served (the list's
// impression, auto-logged or logged by the client, reaches Redis before the user's next
// request), so keeping them decoded between requests saved nothing and kept the largest
// decoded document alive for the collector to mark: a user whose counters changed since the
// request before is stored with a hash of them instead, and they are kept again once a
// request finds them unchanged (users whose impressions are not logged, or who are served
// faster than the consumer applies them). With the whole pipeline at 5,000 lists/s, turning
// the cache off entirely saved ~4 % of recsys' CPU (179-183 against 187-191 µs per list);
// this keeps what does pay, the history and watched set. With the counters' overlay
// (featurestore overlay.go) the base changes once every few lists and is kept; the overlay,
// small, is decoded and added per request.
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
		if prev != nil && prev.raw == f && f[3] == "" {
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
	stored := d
	switch {
	case f[2] == "":
	case prev != nil && prev.raw[2] == f[2]:
		d.imps, d.baseSum = prev.imps, prev.baseSum
		if f[3] != "" && prev.raw[3] == "" {
			d.baseSum = featurestore.ImpressionsBaseSum(f[2])
		}
	default:
		if d.imps, err = featurestore.DecodeImpressions(f[2]); err != nil {
			return nil, fmt.Errorf("decode impressions of %q: %w", userID, err)
		}
		if f[3] != "" {
			d.baseSum = featurestore.ImpressionsBaseSum(f[2])
		}
		// With an overlay the base changes once every few lists: keep it at once.
		if prev != nil && f[3] == "" {
			sum := maphash.String(c.seed, f[2])
			if prev.raw[2] != "" || prev.impsSum != sum {
				s := *d
				s.raw[2], s.imps, s.impsSum = "", nil, sum
				s.size -= decodedOverhead * len(f[2])
				stored = &s
			}
		}
	}
	if f[3] != "" {
		if d.added, err = featurestore.ImpressionsOverlay(d.baseSum, f[3]); err != nil {
			return nil, fmt.Errorf("decode impressions of %q: %w", userID, err)
		}
		if stored == d {
			s := *d
			s.added = nil // not kept (see decodedUser)
			stored = &s
		}
	}
	if sh != nil && stored.size <= c.max {
		sh.mu.Lock()
		if old := sh.m[userID]; old != nil {
			sh.bytes -= old.size
		}
		for k, e := range sh.m { // random eviction until the new entry fits
			if sh.bytes+stored.size <= c.max {
				break
			}
			sh.bytes -= e.size
			delete(sh.m, k)
		}
		sh.m[userID] = stored
		sh.bytes += stored.size
		sh.mu.Unlock()
	}
	return d, nil
}
