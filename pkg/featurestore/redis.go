package featurestore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// writeScript merges absolute values into the Redis copy. Every merge only moves a value one
// way (counters and forward-decayed sums up, first-seen down, user hashes to a higher
// version), so writes of concurrent consumers, the healer and a repopulation may land in any
// order. The whole call is refused when the copy's generation (meta ep) is not the writer's:
// after a rebase or a forced rebuild values of two generations must never mix.
//
// A batch of impressions changes a user's overlay (overlay.go) and nothing else: sending
// the history, watched set and base unchanged with every list was most of the bytes of a
// user's write.
//
// A neighbour list carries its version (feature_neighbours.version, migration 0019; kept in
// the item's hash as "nv", absent: 0, the empty list). A batch sends its changes (the
// neighbours it raised, at their absolute strengths, and those it cut: the cuts go first, as
// a neighbour cut and raised again in one batch starts over lower) and the copy takes them
// only onto the version just before, which makes it equal to PostgreSQL's list. A change
// that finds an older version (an earlier write not applied yet: two consumers write the
// same lists, as lists are per item and partitions per user) is refused and its key
// returned, and the writer sends the list whole from PostgreSQL; a whole list replaces any
// older copy, and a copy at its version whose list is gone (a repopulation's copy after keys
// were deleted behind the version, which the item's hash kept); an older change or list than
// the copy's changes nothing. So the copy never
// goes back, whatever order the writes of concurrent consumers, the healer and a
// repopulation land in. A list is capped at 2M members (PostgreSQL never keeps more). The
// list and its version are two keys: a list gone while its version stays (an operator's
// DEL, an eviction the consumer warns about at start) takes no change, it is sent whole,
// so a change never lands on a list that lost its members. (A list PostgreSQL keeps empty
// is sent whole each time it is rewritten; lists only grow between cuts to the top M.)
//
// A user hash is never created at or below the version the erasure marker (KEYS[5], a hash
// of user keys) holds for its key: the version of the row `users forget` deleted. Every
// writer of a user hash (a batch, the journal heal, a read-through, a repopulation's page, a
// trim's write-back) writes a version read from PostgreSQL, and one that read the row before
// the deletion carries a version at or below it however late its write lands (a heal after a
// Redis outage, a stalled process, a command left in a socket): a time-based second pass
// cannot bound that, a check made with the write itself can. A user who comes back gets a
// new row starting at that version (lockUsers), so its writes pass. Only the creation of a
// hash is checked: Forget sets the marker before it deletes the hash (eraseScript), so a
// hash that exists is either gone before the marker matters or was created past it. The
// consumer's writes pay one HGET per user whose hash is absent (a new or expired user), none
// per user whose hash is there; /reco reads nothing more.
//
// KEYS: meta, pop:s, pop:l, fresh, the erasure marker, then one key per user and item entry,
// and two per neighbour entry (the list and its item's hash).
// ARGV: epoch, topN, freshN, #users, #items, #neighbour entries, neighbour cap, user TTL of
// this write (ms, 0: none), the writer's user TTL to record in meta "ut" for readers when it
// is longer than the one recorded ("": a read-through, which records nothing), lists (1:
// every item enters the top lists at its merged popularity, raised or not: a repopulation's
// copy, see redisWrite.lists), then
//
//	user:      version, keep, h, w, i, r: keep (bits 1 h, 2 w, 4 i) names the documents a
//	           batch left as they were, sent empty. Such a write completes the hash only when
//	           it holds the version just before; otherwise (a write missed, expired or
//	           racing) the script returns the user's key and the writer sends it whole
//	           (read from PostgreSQL if the batch did not read it all).
//	item:      id, fresh(0|1), #fields, pairs (field, value)... of imp, wat, sp, pn, end, wt,
//	           fs, ps, pl: all of them, or the ones a batch changed (never fs alone: a row
//	           whose first seen moved goes whole, so a hash never has fs without the rest)
//	neighbour: version, whole(0|1), #add, #rem, add pairs (score, member)..., rem members...
//	           (whole: the list's members, no cuts)
//
// An item's fields merge independently, so a write may carry any subset. A batch of
// impressions moves one counter per item; sending only that cut the script's per-item work
// (an HMGET of nine fields and nine comparisons per item were most of Redis's CPU with
// autolog, docs/performance-log.md session 14). Readers treat an item hash without fs as unknown.
//
// An item joins the popularity lists only when the write raises its decayed popularity:
// values only grow, so an unchanged one (an impression) is already where it belongs, in the
// list or cut below it. That skips two sorted-set updates per item for impressions (/reco
// autolog, full pipeline: Redis 139 / 159 / 116 → 123 / 114 / 112 µs of CPU per list,
// alternated runs). The list updates come before the item's HSET: a script that fails half
// way (out of memory) leaves the hash old, so the retry still sees the raise.
//
// Neighbour arguments are laid out as ZADD and ZREM take them, so the script passes ranges
// of ARGV (in chunks of 1,000, within Lua's stack) instead of building a table pair by pair
// and removing members one call each: 10 % less script time on a batch of full users.
//
// Returns {1, keys of users and neighbour lists to send whole...} or {0, current epoch}.
const writeScript = `
local ep = redis.call('HGET', KEYS[1], 'ep')
if ep ~= ARGV[1] then return {0, ep or ''} end
local topN, freshN = tonumber(ARGV[2]), tonumber(ARGV[3])
local nu, ni, nn, nbcap = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local uttl = tonumber(ARGV[8])
if ARGV[9] ~= '' and tonumber(ARGV[9]) > tonumber(redis.call('HGET', KEYS[1], 'ut') or '-1') then redis.call('HSET', KEYS[1], 'ut', ARGV[9]) end
local lists = ARGV[10] == '1'
local a, k = 11, 6
local whole = {1}
for _ = 1, nu do
  local key = KEYS[k]; k = k + 1
  local cur = tonumber(redis.call('HGET', key, 'v') or '-1')
  local v, keep = tonumber(ARGV[a]), tonumber(ARGV[a+1])
  if cur < 0 and v <= tonumber(redis.call('HGET', KEYS[5], key) or '-1') then cur = v end
  if v > cur then
    if keep == 0 then
      redis.call('HSET', key, 'v', ARGV[a], 'h', ARGV[a+2], 'w', ARGV[a+3], 'i', ARGV[a+4], 'r', ARGV[a+5])
    elseif cur == v - 1 then
      local set = {'v', ARGV[a], 'r', ARGV[a+5]}
      for j, f in ipairs({'h', 'w', 'i'}) do
        if math.floor(keep / 2 ^ (j - 1)) % 2 == 0 then set[#set+1] = f; set[#set+1] = ARGV[a+1+j] end
      end
      redis.call('HSET', key, unpack(set))
    else
      whole[#whole+1] = key
    end
  end
  if uttl > 0 then redis.call('PEXPIRE', key, uttl) else redis.call('PERSIST', key) end
  a = a + 6
end
for _ = 1, ni do
  local key = KEYS[k]; k = k + 1
  local id, fresh, nf = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  a = a + 3
  local fields = {}
  for j = 1, nf do fields[j] = ARGV[a + 2 * j - 2] end
  local cur = redis.call('HMGET', key, unpack(fields))
  local set = {}
  local fs
  for j = 1, nf do
    local f, nv = fields[j], ARGV[a + 2 * j - 1]
    local better
    if not cur[j] then better = true
    elseif f == 'fs' then better = tonumber(nv) < tonumber(cur[j])
    else better = tonumber(nv) > tonumber(cur[j]) end
    local val = nv
    if not better then val = cur[j] end
    if f == 'fs' then fs = val end
    if better or lists then
      if better then set[#set + 1] = f; set[#set + 1] = nv end
      if f == 'ps' and tonumber(val) > 0 then redis.call('ZADD', KEYS[2], 'GT', val, id) end
      if f == 'pl' and tonumber(val) > 0 then redis.call('ZADD', KEYS[3], 'GT', val, id) end
    end
  end
  if fresh == '1' and fs then redis.call('ZADD', KEYS[4], 'LT', fs, id) end
  if #set > 0 then redis.call('HSET', key, unpack(set)) end
  a = a + 2 * nf
end
if ni > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(topN + 1))
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(topN + 1))
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -(freshN + 1))
end
for _ = 1, nn do
  local key, ikey = KEYS[k], KEYS[k + 1]; k = k + 2
  local v, all = tonumber(ARGV[a]), ARGV[a + 1] == '1'
  local nadd, nrem = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local cur = tonumber(redis.call('HGET', ikey, 'nv') or '0')
  local alast = a + 4 + 2 * nadd - 1
  local r, rlast = alast + 1, alast + nrem
  if v > cur or (all and v == cur and redis.call('EXISTS', key) == 0) then
    if all or (cur == v - 1 and (cur == 0 or redis.call('EXISTS', key) == 1)) then
      if all then redis.call('DEL', key) end
      for s = r, rlast, 1000 do redis.call('ZREM', key, unpack(ARGV, s, math.min(s + 999, rlast))) end
      for s = a + 4, alast, 1000 do redis.call('ZADD', key, unpack(ARGV, s, math.min(s + 999, alast))) end
      if nadd > 0 then redis.call('ZREMRANGEBYRANK', key, 0, -(nbcap + 1)) end
      redis.call('HSET', ikey, 'nv', ARGV[a])
    else
      whole[#whole+1] = key
    end
  end
  a = rlast + 1
end
return whole
`

var luaWrite = rueidis.NewLuaScript(writeScript)

// nbWrite is one item's neighbour list at a version: a batch's changes onto the version
// before (add: the raised neighbours, rem: the cut ones), or the list whole.
type nbWrite struct {
	item    string
	version int64
	whole   bool
	add     []scoredRow
	rem     []string
}

// redisWrite is a set of absolute values to merge into Redis.
type redisWrite struct {
	users []userRow
	items []itemRow
	nb    []nbWrite
	// readThrough marks a read-through's write: its user TTL is userTTL, and it records
	// nothing in meta (the writers' setting is what readers follow).
	readThrough bool
	userTTL     time.Duration
	// lists puts every item of the write into the top lists at its merged popularity, not
	// only those it raises: a repopulation's copy, which must restore lists that lost members
	// their item hashes kept (see Repopulate).
	lists bool
}

func (w *redisWrite) empty() bool { return len(w.users) == 0 && len(w.items) == 0 && len(w.nb) == 0 }

// epochError reports a write refused because the copy's generation differs.
type epochError struct{ redis, ours string }

func (e *epochError) Error() string {
	return fmt.Sprintf("redis copy generation %q, writer generation %q", e.redis, e.ours)
}

// behind reports whether the copy is older than the writer (or was flushed): it needs a
// repopulation. Otherwise the writer is the stale one and the copy already covers it.
func (e *epochError) behind() bool {
	r, err1 := strconv.ParseInt(e.redis, 10, 64)
	o, err2 := strconv.ParseInt(e.ours, 10, 64)
	return err1 != nil || err2 != nil || r < o
}

func ff(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
func fi(v int64) string   { return strconv.FormatInt(v, 10) }

// Bounds of one Redis write: a script call holds at most s.chunk entries and about
// callBytes of arguments, a round trip at most tripCalls calls and about tripBytes. A trip
// must finish well within the client's I/O timeout (--redis.timeout, 1 s) on a busy server:
// a repopulation of users with large documents (hundreds of watched items each) once sent
// megabytes per trip and timed out. Each script call blocks Redis only for its own chunk.
const (
	callBytes = 128 << 10
	tripCalls = 8
	tripBytes = 512 << 10
)

// plan splits w into script calls and the calls into round trips.
//
// Each call's keys and arguments are allocated once, sized for a full chunk of the section
// it starts in, with the fixed keys and the header's slots in front: grown by append and
// then copied behind the header, they were a few per cent of the consumer's CPU on large
// batches.
func (s *Store) plan(epoch string, w *redisWrite) [][]rueidis.LuaExec {
	head := []string{s.keys.Meta, s.keys.PopShort, s.keys.PopLong, s.keys.Fresh, s.keys.Erased}
	const hdrLen = 10
	var execs []rueidis.LuaExec
	var sizes []int
	var keys, args []string
	var nu, ni, nn, weight, size int
	// perEntry is the most arguments an entry of the current section has.
	perEntry := 6
	// begin starts an entry: its key, and where its arguments start in args.
	begin := func(key string) int {
		if keys == nil {
			keys = append(make([]string, 0, len(head)+s.chunk), head...)
			args = make([]string, hdrLen, hdrLen+perEntry*s.chunk)
		}
		keys = append(keys, key)
		size += len(key)
		return len(args)
	}
	add := func(key string, a ...string) {
		begin(key)
		args = append(args, a...)
		for _, x := range a {
			size += len(x)
		}
	}
	flush := func() {
		if nu+ni+nn == 0 {
			return
		}
		hdr := args[:hdrLen:hdrLen]
		hdr[0], hdr[1], hdr[2], hdr[3], hdr[4] = epoch, strconv.Itoa(s.cfg.TopListSize), strconv.Itoa(s.cfg.FreshSize), strconv.Itoa(nu), strconv.Itoa(ni)
		hdr[5], hdr[6], hdr[7], hdr[8] = strconv.Itoa(nn), strconv.Itoa(2*s.cfg.NeighboursPerItem), fi(s.userTTL.Milliseconds()), fi(s.userTTL.Milliseconds())
		if w.readThrough {
			hdr[7], hdr[8] = fi(w.userTTL.Milliseconds()), ""
		}
		hdr[9] = "0"
		if w.lists {
			hdr[9] = "1"
		}
		execs = append(execs, rueidis.LuaExec{Keys: keys, Args: args})
		sizes = append(sizes, size)
		keys, args = nil, nil
		nu, ni, nn, weight, size = 0, 0, 0, 0, 0
	}
	full := func() bool { return weight >= s.chunk || size >= callBytes }
	// Sections must stay in order (users, items, neighbours) inside one call.
	for _, u := range w.users {
		h, uw, i, r := u.sent()
		add(s.keys.User(u.id), fi(u.version), strconv.Itoa(int(u.keep)), h, uw, i, r)
		nu++
		if weight++; full() {
			flush()
		}
	}
	perEntry = 3 + 2*len(ItemStatFields)
	for _, it := range w.items {
		fresh := "0"
		if it.fresh {
			fresh = "1"
		}
		at := begin(s.keys.Item(it.id))
		args = append(args, it.id, fresh, "")
		for f, name := range ItemStatFields {
			if it.only == 0 || it.only&(1<<f) != 0 {
				args = append(args, name, it.field(f))
			}
		}
		args[at+2] = strconv.Itoa((len(args) - at - 3) / 2)
		for _, x := range args[at:] {
			size += len(x)
		}
		ni++
		if weight++; full() {
			flush()
		}
	}
	// A neighbour entry's length varies (its weight grows with it): its calls grow by append.
	perEntry = 6
	for _, n := range w.nb {
		all := "0"
		if n.whole {
			all = "1"
		}
		a := make([]string, 0, 4+2*len(n.add)+len(n.rem))
		a = append(a, fi(n.version), all, strconv.Itoa(len(n.add)), strconv.Itoa(len(n.rem)))
		for _, x := range n.add {
			a = append(a, ff(x.w), x.id)
		}
		add(s.keys.Neighbours(n.item), append(a, n.rem...)...)
		ikey := s.keys.Item(n.item)
		keys = append(keys, ikey)
		size += len(ikey)
		nn++
		if weight += 1 + (len(n.add)+len(n.rem))/20; full() {
			flush()
		}
	}
	flush()
	var trips [][]rueidis.LuaExec
	for i := 0; i < len(execs); {
		j, b := i, 0
		for j < len(execs) && j-i < tripCalls && (j == i || b+sizes[j] <= tripBytes) {
			b += sizes[j]
			j++
		}
		trips = append(trips, execs[i:j])
		i = j
	}
	return trips
}

// exec merges w into Redis, one planned round trip at a time.
func (s *Store) exec(ctx context.Context, epoch string, w *redisWrite) error {
	if w.empty() {
		return nil
	}
	if s.writing != nil {
		ids := make([]string, len(w.users))
		for i, u := range w.users {
			ids[i] = u.id
		}
		s.writing(ids)
	}
	var whole []string
	for _, trip := range s.plan(epoch, w) {
		for _, r := range luaWrite.ExecMulti(ctx, s.rd, trip...) {
			arr, err := r.ToArray()
			if err != nil {
				return fmt.Errorf("write redis: %w", err)
			}
			if ok, _ := arr[0].AsInt64(); ok != 1 {
				cur, _ := arr[1].ToString()
				return &epochError{redis: cur, ours: epoch}
			}
			for _, k := range arr[1:] {
				key, err := k.ToString()
				if err != nil {
					return fmt.Errorf("write redis: %w", err)
				}
				whole = append(whole, key)
			}
		}
	}
	if len(whole) == 0 {
		return nil
	}
	// Users whose hash was behind the version before this write: their documents, whole.
	// Those whose batch did not read every document (impressions only) are read from
	// PostgreSQL (committed, at their version or a later one, which the merge takes), as
	// are the neighbour lists behind.
	again := &redisWrite{readThrough: w.readThrough, userTTL: w.userTTL}
	byKey := make(map[string]int, len(w.users))
	for i := range w.users {
		byKey[s.keys.User(w.users[i].id)] = i
	}
	nbByKey := make(map[string]string, len(w.nb))
	for _, n := range w.nb {
		nbByKey[s.keys.Neighbours(n.item)] = n.item
	}
	var unread, lists []string
	for _, key := range whole {
		if item, ok := nbByKey[key]; ok {
			lists = append(lists, item)
			continue
		}
		i, ok := byKey[key]
		if !ok {
			return fmt.Errorf("write redis: the script named key %q, not in the write", key)
		}
		u := w.users[i]
		if u.unread {
			unread = append(unread, u.id)
			continue
		}
		u.keep = 0
		again.users = append(again.users, u)
	}
	if s.hooks.Resent != nil {
		s.hooks.Resent(len(whole)-len(lists), len(lists))
	}
	if len(unread)+len(lists) > 0 && s.pg == nil {
		return fmt.Errorf("write redis: the copies of %d users and %d neighbour lists are behind, and there is no PostgreSQL to read them from", len(unread), len(lists))
	}
	if len(unread) > 0 {
		rows, err := readUsers(ctx, s.pg, unread)
		if err != nil {
			return fmt.Errorf("write redis: %w", err)
		}
		again.users = append(again.users, rows...)
	}
	if len(lists) > 0 {
		nb, err := readNeighbours(ctx, s.pg, lists)
		if err != nil {
			return fmt.Errorf("write redis: %w", err)
		}
		again.nb = nb
	}
	return s.exec(ctx, epoch, again)
}

// adoptScript tags a copy of the empty store (emptyEpoch) with a writer's generation and its
// landmarks, which readers need to decay the values it is about to receive. Only while no
// repopulation holds the lock: one reads the copy's generation first and writes its own over
// it later, so a copy adopted in between would keep another generation's values under the
// tag of the empty store (and a rebase after would hand it on). Every other change of the
// generation is a repopulation's, under the lock.
//
// KEYS: meta, the repopulation lock. ARGV: the field-value pairs of meta (ep first).
// Returns 2 when it adopted the copy, 1 when the copy was the writer's generation already
// (another writer adopted it), 0 otherwise.
const adoptScript = `
local ep = redis.call('HGET', KEYS[1], 'ep')
if ep == ARGV[2] then return 1 end
if ep ~= '` + emptyEpoch + `' or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 2
`

var luaAdopt = rueidis.NewLuaScript(adoptScript)

// write merges w into the copy at m's generation. A copy of the empty store refuses it as
// another generation's; it holds nothing to replace, so it is adopted and the write sent
// again, rather than the copy marked for a repopulation (with /reco falling back to
// PostgreSQL meanwhile) after the first batch of every fresh database.
func (s *Store) write(ctx context.Context, m Meta, w *redisWrite) error {
	err := s.exec(ctx, m.Epoch(), w)
	var ee *epochError
	if !errors.As(err, &ee) || ee.redis != emptyEpoch || m.Epoch() == emptyEpoch {
		return err
	}
	n, aerr := luaAdopt.Exec(ctx, s.rd, []string{s.keys.Meta, s.keys.Lock}, append([]string{"ep", m.Epoch()}, metaFields(m)...)).AsInt64()
	if aerr != nil {
		return fmt.Errorf("adopt the copy of the empty store: %w", aerr)
	}
	if n == 0 {
		return err
	}
	if n == 2 {
		s.log.InfoContext(ctx, "redis copy of the empty store takes the first generation", "generation", m.Epoch())
	}
	return s.exec(ctx, m.Epoch(), w)
}

// ErrRedisBehind means the Redis copy was flushed or is of an older generation: the write
// was refused, the copy is being repopulated from PostgreSQL (P+"ready" was removed), and
// the batch's journal row keeps its keys until then.
var ErrRedisBehind = errors.New("redis copy is behind: repopulation pending")

// WriteRedis mirrors an applied batch into Redis. On error the batch's journal row stays
// and HealPending or Repopulate writes the values later; the caller need not retry.
func (s *Store) WriteRedis(ctx context.Context, a *Applied) error {
	if s.rd == nil || a == nil {
		return nil
	}
	w := &redisWrite{users: a.users, items: a.items, nb: a.nb}
	err := s.write(ctx, a.Meta, w)
	var ee *epochError
	switch {
	case err == nil:
	case errors.As(err, &ee) && !ee.behind():
		// We are the stale writer: the generation moved after our commit, and the
		// repopulation of the new generation reads a snapshot that includes it.
	case errors.As(err, &ee):
		s.dropOwn(a.journalID)
		if derr := s.rd.Do(ctx, s.rd.B().Del().Key(s.keys.Ready).Build()).Error(); derr != nil {
			return fmt.Errorf("mark redis copy for repopulation: %w", derr)
		}
		return fmt.Errorf("%w: %v", ErrRedisBehind, err)
	default:
		s.dropOwn(a.journalID) // the heal loop takes it over
		if s.hooks.RedisWriteFailed != nil {
			s.hooks.RedisWriteFailed(err)
		}
		return err
	}
	if a.journalID != 0 {
		s.putWritten([]int64{a.journalID})
	}
	return nil
}

// escapeGlob quotes the glob characters of a key prefix for SCAN MATCH.
func escapeGlob(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch r {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
