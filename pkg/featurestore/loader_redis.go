package featurestore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"recsys/pkg/features"
	"recsys/pkg/ranking"
)

// ErrNotReady means the Redis copy is incomplete (P+"ready" missing: flushed, restarted
// empty, or being repopulated). Serve from PGLoader meanwhile; the consumer repopulates the
// copy by itself.
var ErrNotReady = errors.New("redis feature copy not ready")

// ErrUserUndecodable means the store answered but one user's documents do not decode
// (written by a newer release, edited by hand): that user cannot be read from this store, but
// the store serves everyone else, so it is not a store failure.
var ErrUserUndecodable = errors.New("user's features do not decode")

// readScript loads everything a Snapshot needs in one round trip.
//
// KEYS: user, meta, pop:s, pop:l, fresh, ready. ARGV: prefix, history items, neighbours per
// item, trending n, popular n, fresh n.
//
// Each top list is returned with the members tied with its last element (the cut must break
// ties by item id as features.MemoryStore does, while a ZSET breaks them by reverse member
// order), and item stats for every member returned.
const readScript = `
local function top(key, n)
  if n <= 0 then return {{}, {}} end
  local r = redis.call('ZREVRANGE', key, 0, n - 1, 'WITHSCORES')
  local ties = {}
  if #r == 2 * n then
    local last = r[#r]
    -- Ties come in ascending member order: the first n are the ones an id tie-break keeps.
    ties = redis.call('ZRANGEBYSCORE', key, last, last, 'WITHSCORES', 'LIMIT', 0, n)
  end
  return {r, ties}
end
local ready = redis.call('EXISTS', KEYS[6])
local user = redis.call('HMGET', KEYS[1], 'h', 'w', 'i', 'r')
local meta = redis.call('HMGET', KEYS[2], 'lm:s', 'lm:l', 'lm:c', 'hl:s', 'hl:l', 'hl:c', 'ut')
local prefix = ARGV[1]
local hn, nn = tonumber(ARGV[2]), tonumber(ARGV[3])
local hist, nbs = {}, {}
-- A history that does not parse is left to the caller's decoder, which names the user: an
-- error raised here would fail the script, a Redis error for everyone's breaker.
local function recent(doc)
  local h, ids = cjson.decode(doc), {}
  for i = 1, math.min(hn, #h) do
    local id = h[i]['item_id']
    if type(id) ~= 'string' then return {} end
    ids[#ids + 1] = id
  end
  return ids
end
if user[1] then
  local ok, ids = pcall(recent, user[1])
  if ok then
    for _, id in ipairs(ids) do
      hist[#hist + 1] = id
      nbs[#nbs + 1] = top(prefix .. 'nb:' .. id, nn)
    end
  end
end
local tr = top(KEYS[3], tonumber(ARGV[4]))
local po = top(KEYS[4], tonumber(ARGV[5]))
local fr = top(KEYS[5], tonumber(ARGV[6]))
local seen, ids, stats = {}, {}, {}
local function add(list)
  for j = 1, #list, 2 do
    local id = list[j]
    if not seen[id] then
      seen[id] = true
      ids[#ids + 1] = id
      stats[#stats + 1] = redis.call('HMGET', prefix .. 'i:' .. id, 'imp', 'wat', 'sp', 'pn', 'end', 'wt', 'fs', 'ps', 'pl')
    end
  end
end
for _, l in ipairs(nbs) do add(l[1]); add(l[2]) end
for _, l in ipairs({tr, po, fr}) do add(l[1]); add(l[2]) end
return {ready, user, meta, hist, nbs, tr, po, fr, ids, stats}
`

var luaRead = rueidis.NewLuaScriptReadOnly(readScript)

// RedisLoader builds ranking Snapshots from the Redis copy in one round trip.
type RedisLoader struct {
	rd   rueidis.Client
	keys Keys
	cfg  features.Config
	// readThrough, when set, puts a user whose hash is absent back into the copy with the
	// writers' user TTL (Store.ReadThroughUser) and reports whether PostgreSQL had them; the
	// Snapshot is then read again. held, when set, is told of each user whose hash is present
	// while users expire.
	readThrough func(ctx context.Context, userID string, ttl time.Duration) (found bool, err error)
	held        func(userID string)
}

// SetReadThrough installs the read-through of absent users, used while the copy's writers
// record a user TTL (RecordedUserTTL), and held (may be nil), told of the users found present
// meanwhile (a reader remembering users PostgreSQL did not know forgets them: their hash, once
// written, may still be evicted); call before use.
func (l *RedisLoader) SetReadThrough(read func(ctx context.Context, userID string, ttl time.Duration) (bool, error), held func(userID string)) {
	l.readThrough, l.held = read, held
}

// NewRedisLoader returns a loader over the keys under keyPrefix.
func NewRedisLoader(rd rueidis.Client, keyPrefix string, cfg features.Config) *RedisLoader {
	return &RedisLoader{rd: rd, keys: NewKeys(keyPrefix), cfg: cfg}
}

// Snapshot loads userID's ranking input at nowMs. It returns ErrNotReady while the copy is
// incomplete.
func (l *RedisLoader) Snapshot(ctx context.Context, userID string, nowMs int64, opts ranking.SnapshotOptions) (ranking.Snapshot, error) {
	s, rt, err := l.snapshot(ctx, userID, nowMs, opts)
	if err != nil || l.readThrough == nil {
		return s, err
	}
	if !rt.absent {
		if rt.ttl > 0 && l.held != nil {
			l.held(userID)
		}
		return s, nil
	}
	found, err := l.readThrough(ctx, userID, rt.ttl)
	if err != nil {
		return ranking.Snapshot{}, err
	}
	if !found {
		return s, nil // a user without events: nothing was written, s is what the copy holds
	}
	s, _, err = l.snapshot(ctx, userID, nowMs, opts)
	return s, err
}

// userTTLState is what one read saw of the user TTL: the writers' recorded user TTL (ttl), and
// whether the user's hash is absent while it is set (the user is to be read through).
type userTTLState struct {
	ttl    time.Duration
	absent bool
}

// snapshot is one read.
func (l *RedisLoader) snapshot(ctx context.Context, userID string, nowMs int64, opts ranking.SnapshotOptions) (_ ranking.Snapshot, rt userTTLState, err error) {
	keys := []string{l.keys.User(userID), l.keys.Meta, l.keys.PopShort, l.keys.PopLong, l.keys.Fresh, l.keys.Ready}
	args := []string{l.keys.Prefix, strconv.Itoa(opts.HistoryItems), strconv.Itoa(opts.NeighboursPerItem),
		strconv.Itoa(opts.TrendingN), strconv.Itoa(opts.PopularN), strconv.Itoa(opts.FreshN)}
	res, err := luaRead.Exec(ctx, l.rd, keys, args).ToArray()
	if err != nil {
		return ranking.Snapshot{}, rt, fmt.Errorf("load snapshot from redis: %w", err)
	}
	if len(res) != 10 {
		return ranking.Snapshot{}, rt, fmt.Errorf("load snapshot from redis: %d replies, want 10", len(res))
	}
	if ready, _ := res[0].AsInt64(); ready != 1 {
		return ranking.Snapshot{}, rt, ErrNotReady
	}
	meta, err := strs(res[2])
	if err != nil {
		return ranking.Snapshot{}, rt, err
	}
	dec, err := metaFromStrings(meta[:min(len(meta), 6)])
	if err != nil {
		return ranking.Snapshot{}, rt, err
	}
	var ut int64
	if len(meta) > 6 && meta[6] != "" {
		if ut, err = strconv.ParseInt(meta[6], 10, 64); err != nil {
			return ranking.Snapshot{}, rt, fmt.Errorf("decode recorded user ttl: %w", err)
		}
	}
	b := newBuilder(userID, nowMs, opts, dec)
	user, err := strs(res[1])
	if err != nil {
		return ranking.Snapshot{}, rt, err
	}
	rt.ttl = time.Duration(ut) * time.Millisecond
	rt.absent = ut > 0 && user[0] == "" && user[1] == "" && user[2] == ""
	if len(user) != len(UserFields{}) {
		return ranking.Snapshot{}, rt, fmt.Errorf("load snapshot from redis: %d user fields", len(user))
	}
	if err := b.user(UserFields(user)); err != nil {
		return ranking.Snapshot{}, rt, fmt.Errorf("%w: user %q: %w", ErrUserUndecodable, userID, err)
	}
	// Item stats first: list entries are only kept for known items.
	ids, err := strs(res[8])
	if err != nil {
		return ranking.Snapshot{}, rt, err
	}
	statRows, err := res[9].ToArray()
	if err != nil {
		return ranking.Snapshot{}, rt, fmt.Errorf("decode item stats: %w", err)
	}
	for i, id := range ids {
		f, err := strs(statRows[i])
		if err != nil {
			return ranking.Snapshot{}, rt, err
		}
		if st, ok, err := statsFromStrings(f); err != nil {
			return ranking.Snapshot{}, rt, fmt.Errorf("item %q: %w", id, err)
		} else if ok {
			b.stats[id] = st
		}
	}
	hist, err := strs(res[3])
	if err != nil {
		return ranking.Snapshot{}, rt, err
	}
	nbs, err := res[4].ToArray()
	if err != nil {
		return ranking.Snapshot{}, rt, fmt.Errorf("decode neighbours: %w", err)
	}
	for i, id := range hist {
		l, err := topList(nbs[i])
		if err != nil {
			return ranking.Snapshot{}, rt, err
		}
		b.neighbours(id, l)
	}
	var lists [3][]stored
	for i := range lists {
		if lists[i], err = topList(res[5+i]); err != nil {
			return ranking.Snapshot{}, rt, err
		}
	}
	b.lists(lists[0], lists[1], lists[2])
	return b.snapshot(), rt, nil
}

// stored is a list member with its stored (not yet decayed) score.
type stored struct {
	id string
	v  float64
}

func topList(m rueidis.RedisMessage) ([]stored, error) {
	parts, err := m.ToArray()
	if err != nil || len(parts) != 2 {
		return nil, fmt.Errorf("decode top list: %v", err)
	}
	var out []stored
	seen := map[string]bool{}
	for _, p := range parts {
		flat, err := strs(p)
		if err != nil {
			return nil, err
		}
		for j := 0; j+1 < len(flat); j += 2 {
			if seen[flat[j]] {
				continue
			}
			seen[flat[j]] = true
			v, err := strconv.ParseFloat(flat[j+1], 64)
			if err != nil {
				return nil, fmt.Errorf("decode score of %q: %w", flat[j], err)
			}
			out = append(out, stored{id: flat[j], v: v})
		}
	}
	return out, nil
}

// strs decodes an array of bulk strings, nil elements becoming "".
func strs(m rueidis.RedisMessage) ([]string, error) {
	arr, err := m.ToArray()
	if err != nil {
		return nil, fmt.Errorf("decode redis reply: %w", err)
	}
	out := make([]string, len(arr))
	for i, x := range arr {
		if x.IsNil() {
			continue
		}
		if out[i], err = x.ToString(); err != nil {
			// Lua false (a nil bulk in RESP2) arrives as a nil or a zero integer.
			if _, ierr := x.AsInt64(); ierr == nil {
				out[i] = ""
				continue
			}
			return nil, fmt.Errorf("decode redis reply: %w", err)
		}
	}
	return out, nil
}

// decays are the three forward decays of a Snapshot.
type decays struct{ short, long, covis features.Decay }

func metaFromStrings(f []string) (decays, error) {
	if len(f) != 6 || slices.Contains(f, "") {
		return decays{}, ErrNotReady // no event applied yet, or meta lost: not a usable copy
	}
	var n [6]float64
	for i, s := range f {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return decays{}, fmt.Errorf("decode feature meta: %w", err)
		}
		n[i] = v
	}
	return decays{
		short: features.Decay{LandmarkMs: int64(n[0]), HalfLifeMs: n[3]},
		long:  features.Decay{LandmarkMs: int64(n[1]), HalfLifeMs: n[4]},
		covis: features.Decay{LandmarkMs: int64(n[2]), HalfLifeMs: n[5]},
	}, nil
}

// itemStats holds stored values until the builder decays them.
type itemStats struct {
	s      ranking.ItemStats
	ps, pl float64
}

func statsFromStrings(f []string) (itemStats, bool, error) {
	if len(f) != 9 || f[6] == "" {
		return itemStats{}, false, nil
	}
	var st itemStats
	var err error
	ints := []*int64{&st.s.Impressions, &st.s.Watches, nil, &st.s.PercentCount, &st.s.Ended, nil, &st.s.FirstSeenMs}
	floats := map[int]*float64{2: &st.s.SumPercent, 5: &st.s.WatchTimeSec, 7: &st.ps, 8: &st.pl}
	for i, s := range f {
		if s == "" {
			s = "0"
		}
		if p, ok := floats[i]; ok {
			if *p, err = ParseStat(s); err != nil {
				return st, false, err
			}
			continue
		}
		if *ints[i], err = strconv.ParseInt(s, 10, 64); err != nil {
			return st, false, err
		}
	}
	return st, true, nil
}

// ParseStat parses a stored item statistic. strconv accepts "nan", "inf" and "infinity" (any
// case), which no write of the store produces but a hand-written or corrupted hash field can
// hold: such a value is 0, as ranking counts a non-finite feature, so that it cannot turn
// into an integer statistic whose conversion from NaN or ±Inf Go leaves to the platform.
func ParseStat(s string) (float64, error) {
	v, err := strconv.ParseFloat(s, 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return 0, err
	}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, nil
	}
	return v, nil
}

// builder assembles a Snapshot the way features.MemoryStore does.
type builder struct {
	s     ranking.Snapshot
	opts  ranking.SnapshotOptions
	d     decays
	stats map[string]itemStats
}

func newBuilder(userID string, nowMs int64, opts ranking.SnapshotOptions, d decays) *builder {
	b := &builder{
		s: ranking.Snapshot{UserID: userID, NowMs: nowMs, Neighbours: make(map[string][]ranking.Scored, opts.HistoryItems),
			Items: make(map[string]ranking.ItemStats, 256)},
		opts: opts, d: d, stats: map[string]itemStats{},
	}
	if opts.Stored {
		b.s.Stored = true
		b.s.Landmarks = ranking.Landmarks{ShortMs: d.short.LandmarkMs, LongMs: d.long.LandmarkMs, CovisMs: d.covis.LandmarkMs}
	}
	return b
}

// at is a stored value as the Snapshot holds it: decayed to now, or as stored (opts.Stored).
func (b *builder) at(d features.Decay, stored float64) float64 {
	if b.opts.Stored {
		return stored
	}
	return d.At(stored, b.s.NowMs)
}

func (b *builder) user(f UserFields) error {
	if f[0] == "" {
		return nil
	}
	var st features.UserState
	var err error
	if st, err = decodeUser(f); err != nil {
		return err
	}
	b.s.History = st.History
	b.s.Watched = make(map[string]bool, len(st.Watched))
	for k := range st.Watched {
		b.s.Watched[k] = true
	}
	b.s.Impressions = st.ImpressionCounts
	return nil
}

func (b *builder) addStats(id string) {
	if _, ok := b.s.Items[id]; ok {
		return
	}
	st, ok := b.stats[id]
	if !ok {
		return
	}
	x := st.s
	x.PopShort = b.at(b.d.short, st.ps)
	x.PopLong = b.at(b.d.long, st.pl)
	b.s.Items[id] = x
}

// cut orders by stored value descending then id ascending (features.MemoryStore's order)
// and keeps n.
func cut(l []stored, n int) []stored {
	slices.SortFunc(l, func(a, b stored) int {
		if a.v != b.v {
			return cmp.Compare(b.v, a.v)
		}
		return strings.Compare(a.id, b.id)
	})
	return l[:min(n, len(l))]
}

func (b *builder) neighbours(item string, l []stored) {
	l = cut(l, b.opts.NeighboursPerItem)
	if len(l) == 0 {
		return
	}
	out := make([]ranking.Scored, len(l))
	for i, x := range l {
		out[i] = ranking.Scored{ItemID: x.id, Score: b.at(b.d.covis, x.v)}
		b.addStats(x.id)
	}
	b.s.Neighbours[item] = out
}

func (b *builder) lists(trending, popular, fresh []stored) {
	conv := func(l []stored, n int, d features.Decay) []ranking.Scored {
		l = cut(l, n)
		out := make([]ranking.Scored, len(l))
		for i, x := range l {
			out[i] = ranking.Scored{ItemID: x.id, Score: b.at(d, x.v)}
		}
		return out
	}
	b.s.Trending = conv(trending, b.opts.TrendingN, b.d.short)
	b.s.Popular = conv(popular, b.opts.PopularN, b.d.long)
	for _, l := range [][]ranking.Scored{b.s.Trending, b.s.Popular} {
		for _, x := range l {
			b.addStats(x.ItemID)
		}
	}
	fresh = cut(fresh, b.opts.FreshN)
	b.s.Fresh = make([]ranking.Scored, 0, len(fresh))
	for _, x := range fresh {
		b.s.Fresh = append(b.s.Fresh, ranking.Scored{ItemID: x.id, Score: x.v})
		b.addStats(x.id)
	}
}

func (b *builder) snapshot() ranking.Snapshot { return b.s }
