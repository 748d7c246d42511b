package featurestore

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/rueidis"

	"recsys/pkg/postgres"
)

// VerifyOptions bound a comparison of the Redis copy with PostgreSQL.
type VerifyOptions struct {
	// Sample is how many users and how many items (with their neighbour lists) are compared,
	// drawn at random.
	Sample int
	// Grace is how long a key that differs may take to catch up before it counts: the
	// consumers' writes follow their commits by milliseconds.
	Grace time.Duration
}

// VerifyReport is the outcome of Verify.
type VerifyReport struct {
	Generation     string `json:"generation"`      // PostgreSQL's (feature_meta)
	CopyGeneration string `json:"copy_generation"` // the copy's (meta "ep")
	Ready          bool   `json:"ready"`           // the copy is complete (not being repopulated)
	Users          int    `json:"users_checked"`
	Items          int    `json:"items_checked"`
	Lists          int    `json:"lists_checked"`
	// Mismatches are the keys still different after the grace period (at most
	// maxReported of them; MismatchCount has them all).
	Mismatches    []Mismatch `json:"mismatches"`
	MismatchCount int        `json:"mismatch_count"`
}

// Mismatch is one key of the copy that differs from PostgreSQL.
type Mismatch struct {
	Key    string `json:"key"`
	Detail string `json:"detail"`
}

// OK reports whether the copy is complete, of PostgreSQL's generation, and equal to it on
// every key compared.
func (r *VerifyReport) OK() bool {
	return r.Ready && r.Generation == r.CopyGeneration && r.MismatchCount == 0
}

const maxReported = 50

// Verify compares a random sample of the Redis copy with PostgreSQL, value for value: the
// users' hashes (version and documents), the items' statistics, and the items' neighbour
// lists whole (every member and strength, and the list's version); and, whole, what every
// /reco reads besides: the decay landmarks and half-lives of meta, and the global lists
// (pop:s, pop:l, fresh) against PostgreSQL's top of each (compareTop). A copy of another
// generation, or one being repopulated, is reported as such without comparing values. A
// user hash that is absent counts only when the writers set no user TTL (meta "ut"): with
// one, users expire. The other way round, up to opts.Sample user hashes of the copy are
// checked for users PostgreSQL does not hold (strayUsers).
//
// The consumers keep writing while it runs, and a key's Redis write follows its commit by
// milliseconds, so a key that differs is read again after opts.Grace: Redis, then
// PostgreSQL. It counts only if the copy is not between the two PostgreSQL reads, that is
// not at least as new as the first (it did not catch up) or newer than the second (no
// commit wrote it). Versions place users' hashes and lists; the items' statistics each move
// one way (counts and decayed sums grow, first seen shrinks).
func (s *Store) Verify(ctx context.Context, opts VerifyOptions) (*VerifyReport, error) {
	if s.pg == nil || s.rd == nil {
		return nil, errors.New("verify needs both PostgreSQL and Redis")
	}
	rep := &VerifyReport{Mismatches: []Mismatch{}}
	m, err := loadMeta(ctx, s.pg)
	switch {
	case errors.Is(err, errNoMeta):
		rep.Generation = "0"
	case err != nil:
		return nil, err
	default:
		rep.Generation = m.Epoch()
	}
	meta, err := s.rd.Do(ctx, s.rd.B().Hmget().Key(s.keys.Meta).Field("ep", "ut", "lm:s", "lm:l", "lm:c", "hl:s", "hl:l", "hl:c").Build()).ToArray()
	if err != nil {
		return nil, fmt.Errorf("read redis meta: %w", err)
	}
	rep.CopyGeneration, _ = meta[0].ToString()
	ut, _ := meta[1].ToString()
	ready, err := s.rd.Do(ctx, s.rd.B().Exists().Key(s.keys.Ready).Build()).AsInt64()
	if err != nil {
		return nil, fmt.Errorf("read redis ready marker: %w", err)
	}
	rep.Ready = ready == 1
	if !rep.Ready || rep.Generation != rep.CopyGeneration {
		return rep, nil
	}
	userTTL := ut != "" && ut != "0"
	var metaDiff []difference
	if rep.Generation != "0" {
		// The landmarks move only with the generation, which is the copy's: no write in flight.
		want := metaFields(m)
		var parts []string
		for i := 0; i < len(want); i += 2 {
			if got, _ := meta[2+i/2].ToString(); got != want[i+1] {
				parts = append(parts, fmt.Sprintf("%s: redis %q, postgres %q", want[i], got, want[i+1]))
			}
		}
		if len(parts) > 0 {
			metaDiff = append(metaDiff, difference{Mismatch: Mismatch{s.keys.Meta, strings.Join(parts, "; ")}})
		}
	}
	tops := []globalList{{s.keys.PopShort, "pop_short", s.cfg.TopListSize, true}, {s.keys.PopLong, "pop_long", s.cfg.TopListSize, true},
		{s.keys.Fresh, "first_seen_ms", s.cfg.FreshSize, false}}
	topBefore := make([]*topState, len(tops))
	topDiff := map[int]string{}
	for i, l := range tops {
		zs, err := s.readTop(ctx, l)
		if err != nil {
			return nil, err
		}
		if topBefore[i], err = s.durableTop(ctx, l, zs); err != nil {
			return nil, err
		}
		if d := compareTop(topBefore[i], zs, topBefore[i]); d != "" {
			topDiff[i] = d
		}
	}

	userIDs, err := sampleIDs(ctx, s.pg, "feature_users", "user_id", opts.Sample)
	if err != nil {
		return nil, err
	}
	itemIDs, err := sampleIDs(ctx, s.pg, "feature_items", "item_id", opts.Sample)
	if err != nil {
		return nil, err
	}
	before, err := s.readDurable(ctx, userIDs, itemIDs)
	if err != nil {
		return nil, err
	}
	cp, err := s.readCopy(ctx, userIDs, itemIDs)
	if err != nil {
		return nil, err
	}
	rep.Users, rep.Items, rep.Lists = len(before.users), len(before.items), len(before.lists)
	diff := compareCopy(s.keys, before, cp, before, userTTL)
	if len(diff)+len(topDiff) > 0 {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(opts.Grace):
		}
		for i := range topDiff {
			zs, err := s.readTop(ctx, tops[i])
			if err != nil {
				return nil, err
			}
			after, err := s.durableTop(ctx, tops[i], zs)
			if err != nil {
				return nil, err
			}
			if d := compareTop(topBefore[i], zs, after); d != "" {
				topDiff[i] = d
			} else {
				delete(topDiff, i)
			}
		}
		var us, is []string
		for _, d := range diff {
			if d.user != "" {
				us = append(us, d.user)
			} else if len(is) == 0 || is[len(is)-1] != d.item {
				is = append(is, d.item)
			}
		}
		if len(diff) > 0 {
			if cp, err = s.readCopy(ctx, us, is); err != nil {
				return nil, err
			}
			after, err := s.readDurable(ctx, us, is)
			if err != nil {
				return nil, err
			}
			diff = compareCopy(s.keys, before, cp, after, userTTL)
		}
	}
	for i, l := range tops {
		if d, ok := topDiff[i]; ok {
			diff = append(diff, difference{Mismatch: Mismatch{l.key, d}})
		}
	}
	strays, err := s.strayUsers(ctx, opts)
	if err != nil {
		return nil, err
	}
	diff = append(diff, strays...)
	diff = append(metaDiff, diff...)
	rep.MismatchCount = len(diff)
	for _, d := range diff[:min(len(diff), maxReported)] {
		rep.Mismatches = append(rep.Mismatches, d.Mismatch)
	}
	return rep, nil
}

// strayUsers looks at up to opts.Sample user hashes of the copy, as a scan meets them, for
// users PostgreSQL does not hold: the sample drawn from PostgreSQL cannot see those, such as
// an erased user's hash that a Redis failover brought back after both of the erasure's
// deletions (a repopulation of the same generation merges, it deletes nothing). One still
// there and still absent from PostgreSQL after opts.Grace (the erasure's second pass deletes
// the hash 2 s after the row) is a mismatch.
func (s *Store) strayUsers(ctx context.Context, opts VerifyOptions) ([]difference, error) {
	prefix := s.keys.User("")
	var keys []string
	for cursor, calls := uint64(0), 0; len(keys) < opts.Sample && calls < 100; calls++ {
		e, err := s.rd.Do(ctx, s.rd.B().Scan().Cursor(cursor).Match(escapeGlob(prefix)+"*").Count(1000).Build()).AsScanEntry()
		if err != nil {
			return nil, fmt.Errorf("scan redis user hashes: %w", err)
		}
		keys = append(keys, e.Elements...)
		if cursor = e.Cursor; cursor == 0 {
			break
		}
	}
	keys = keys[:min(len(keys), opts.Sample)]
	absent := func(keys []string) ([]string, error) {
		if len(keys) == 0 {
			return nil, nil
		}
		ids := make([]string, len(keys))
		for i, k := range keys {
			ids[i] = strings.TrimPrefix(k, prefix)
		}
		rows, _ := s.pg.Query(ctx, `SELECT user_id FROM feature_users WHERE user_id = ANY($1)`, ids)
		held := map[string]bool{}
		var id string
		if _, err := pgx.ForEachRow(rows, []any{&id}, func() error { held[id] = true; return nil }); err != nil {
			return nil, fmt.Errorf("read users of the copy's hashes: %w", err)
		}
		var out []string
		for i, id := range ids {
			if !held[id] {
				out = append(out, keys[i])
			}
		}
		return out, nil
	}
	stray, err := absent(keys)
	if err != nil || len(stray) == 0 {
		return nil, err
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(opts.Grace):
	}
	var still []string
	for _, k := range stray {
		n, err := s.rd.Do(ctx, s.rd.B().Exists().Key(k).Build()).AsInt64()
		if err != nil {
			return nil, fmt.Errorf("read redis user hash: %w", err)
		}
		if n == 1 {
			still = append(still, k)
		}
	}
	if stray, err = absent(still); err != nil {
		return nil, err
	}
	out := make([]difference, len(stray))
	for i, k := range stray {
		out[i] = difference{Mismatch: Mismatch{k, "the copy holds a user PostgreSQL does not (erased, or lost from PostgreSQL)"}}
	}
	return out, nil
}

// sampleIDs draws up to n keys of table at random, in key order. ORDER BY random() reads the
// whole table once: seconds to minutes for tens of millions of rows, fine for an operator's
// check, but past the session's statement_timeout (--pg.statement-timeout, 5 s), so it runs
// without it.
func sampleIDs(ctx context.Context, pg *pgxpool.Pool, table, col string, n int) ([]string, error) {
	var ids []string
	err := postgres.Untimed(ctx, pg, func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, `SELECT `+col+` FROM `+table+` ORDER BY random() LIMIT $1`, n)
		var err error
		ids, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("sample %s: %w", table, err)
	}
	slices.Sort(ids)
	return ids, nil
}

// durable is what PostgreSQL holds for some users and items, keyed by id.
type durable struct {
	users map[string]userRow
	items map[string]itemRow
	lists map[string]nbWrite // items without a list have none
}

func (s *Store) readDurable(ctx context.Context, userIDs, itemIDs []string) (*durable, error) {
	d := &durable{users: map[string]userRow{}, items: map[string]itemRow{}, lists: map[string]nbWrite{}}
	users, err := readUsers(ctx, s.pg, userIDs)
	if err != nil {
		return nil, err
	}
	for _, u := range users {
		d.users[u.id] = u
	}
	rows, _ := s.pg.Query(ctx, `SELECT `+itemCols+` FROM feature_items WHERE item_id = ANY($1) ORDER BY item_id`, itemIDs)
	items, err := scanItems(rows)
	if err != nil {
		return nil, err
	}
	for _, it := range items {
		d.items[it.id] = it
	}
	lists, err := readNeighbours(ctx, s.pg, itemIDs)
	if err != nil {
		return nil, err
	}
	for _, l := range lists {
		d.lists[l.item] = l
	}
	return d, nil
}

// copied is what the Redis copy holds for the same users and items.
type copied struct {
	users   map[string][]string // v, h, w, i, r; nil: no hash
	items   map[string][]string // ItemStatFields, then the list's version nv ("" where absent)
	members map[string][]rueidis.ZScore
}

var userHashFields = []string{"v", "h", "w", "i", "r"}

func (s *Store) readCopy(ctx context.Context, userIDs, itemIDs []string) (*copied, error) {
	b := s.rd.B()
	cmds := make(rueidis.Commands, 0, len(userIDs)+2*len(itemIDs))
	for _, id := range userIDs {
		cmds = append(cmds, b.Hmget().Key(s.keys.User(id)).Field(userHashFields...).Build())
	}
	for _, id := range itemIDs {
		cmds = append(cmds, b.Hmget().Key(s.keys.Item(id)).Field(append(ItemStatFields[:], "nv")...).Build(),
			b.Zrange().Key(s.keys.Neighbours(id)).Min("0").Max("-1").Withscores().Build())
	}
	res := s.rd.DoMulti(ctx, cmds...)
	c := &copied{users: map[string][]string{}, items: map[string][]string{}, members: map[string][]rueidis.ZScore{}}
	strs := func(r rueidis.RedisResult) ([]string, bool, error) {
		vals, err := r.ToArray()
		if err != nil {
			return nil, false, err
		}
		out, present := make([]string, len(vals)), false
		for i, v := range vals {
			if out[i], err = v.ToString(); err == nil {
				present = true
			}
		}
		return out, present, nil
	}
	for i, id := range userIDs {
		vals, present, err := strs(res[i])
		if err != nil {
			return nil, fmt.Errorf("read user %q: %w", id, err)
		}
		if present {
			c.users[id] = vals
		}
	}
	res = res[len(userIDs):]
	for i, id := range itemIDs {
		vals, _, err := strs(res[2*i])
		if err != nil {
			return nil, fmt.Errorf("read item %q: %w", id, err)
		}
		c.items[id] = vals
		if c.members[id], err = res[2*i+1].AsZScores(); err != nil {
			return nil, fmt.Errorf("read neighbours of %q: %w", id, err)
		}
	}
	return c, nil
}

// difference is a mismatch with the user or item it belongs to.
type difference struct {
	Mismatch
	user, item string
}

// compareCopy returns the keys of c that hold neither before's values nor after's, nor (for
// values that move one way) anything between them. With before == after it is equality.
func compareCopy(keys Keys, before *durable, c *copied, after *durable, userTTL bool) []difference {
	var out []difference
	for _, id := range slices.Sorted(maps.Keys(after.users)) {
		lo, hi := before.users[id], after.users[id]
		got, present := c.users[id]
		key := keys.User(id)
		switch {
		case !present && userTTL: // expired; readers put it back from PostgreSQL
		case !present:
			out = append(out, difference{Mismatch{key, "absent"}, id, ""})
		default:
			v, _ := strconv.ParseInt(got[0], 10, 64)
			if d := versioned(v, lo.version, hi.version, got, userHash(lo), userHash(hi), userHashFields); d != "" {
				out = append(out, difference{Mismatch{key, d}, id, ""})
			}
		}
	}
	for _, id := range slices.Sorted(maps.Keys(after.items)) {
		lo, hi := before.items[id], after.items[id]
		got := c.items[id]
		var parts []string
		for f, name := range ItemStatFields {
			if got[f] == lo.field(f) || got[f] == hi.field(f) {
				continue
			}
			g, err := strconv.ParseFloat(got[f], 64)
			a, _ := strconv.ParseFloat(lo.field(f), 64)
			b, _ := strconv.ParseFloat(hi.field(f), 64)
			if name == "fs" { // first seen only moves down
				a, b = -a, -b
				g = -g
			}
			if err != nil || g < a || g > b {
				parts = append(parts, fmt.Sprintf("%s: redis %.60q, postgres %.60q", name, got[f], hi.field(f)))
			}
		}
		if len(parts) > 0 {
			out = append(out, difference{Mismatch{keys.Item(id), strings.Join(parts, "; ")}, "", id})
		}
		nv := int64(0)
		if s := got[len(ItemStatFields)]; s != "" {
			nv, _ = strconv.ParseInt(s, 10, 64)
		}
		ll, hl := before.lists[id], after.lists[id]
		if d := versionedList(nv, ll, hl, c.members[id]); d != "" {
			out = append(out, difference{Mismatch{keys.Neighbours(id), d}, "", id})
		}
	}
	return out
}

func userHash(u userRow) []string { return []string{fi(u.version), u.h, u.w, u.i, u.r} }

// versioned checks a copy at version v against the durable state at versions lo and hi (lo
// <= hi): v outside them is a difference; at either, the values must equal that state's; in
// between there is no state to compare with.
func versioned(v, lo, hi int64, got, loVals, hiVals, names []string) string {
	switch {
	case v < lo || v > hi:
		return fmt.Sprintf("version: redis %d, postgres %d", v, hi)
	case v == hi:
		return fieldDiff(names, got, hiVals)
	case v == lo:
		return fieldDiff(names, got, loVals)
	}
	return ""
}

// versionedList is versioned for a neighbour list (version nv, absent: 0).
func versionedList(nv int64, lo, hi nbWrite, zs []rueidis.ZScore) string {
	switch {
	case nv < lo.version || nv > hi.version:
		return fmt.Sprintf("version: redis %d, postgres %d", nv, hi.version)
	case nv == hi.version:
		return listDiff(hi, zs)
	case nv == lo.version:
		return listDiff(lo, zs)
	}
	return ""
}

// fieldDiff names the fields of a hash that differ, with both values (shortened).
func fieldDiff(names, got, want []string) string {
	var parts []string
	for i := range names {
		if got[i] != want[i] {
			parts = append(parts, fmt.Sprintf("%s: redis %.60q, postgres %.60q", names[i], got[i], want[i]))
		}
	}
	return strings.Join(parts, "; ")
}

// listDiff compares a neighbour list's members and strengths with its copy.
func listDiff(l nbWrite, zs []rueidis.ZScore) string {
	want := make(map[string]float64, len(l.add))
	for _, x := range l.add {
		want[x.id] = x.w
	}
	var extra, missing, other []string
	for _, z := range zs {
		w, ok := want[z.Member]
		switch {
		case !ok:
			extra = append(extra, z.Member)
		case w != z.Score:
			other = append(other, fmt.Sprintf("%s %v != %v", z.Member, z.Score, w))
		}
		delete(want, z.Member)
	}
	for id := range want {
		missing = append(missing, id)
	}
	slices.Sort(missing)
	return diffText(extra, missing, "strength", other, false)
}

// diffText describes a list's differences: members only in Redis, only in PostgreSQL, and
// with another value (named valueName), the first five of each; counts adds their numbers.
func diffText(extra, missing []string, valueName string, other []string, counts bool) string {
	var parts []string
	for _, p := range []struct {
		what string
		ids  []string
	}{{"only in redis", extra}, {"only in postgres", missing}, {valueName, other}} {
		if len(p.ids) == 0 {
			continue
		}
		what := p.what
		if counts {
			what = fmt.Sprintf("%s (%d)", what, len(p.ids))
		}
		parts = append(parts, fmt.Sprintf("%s: %s", what, strings.Join(p.ids[:min(len(p.ids), 5)], ", ")))
	}
	return strings.Join(parts, "; ")
}

// globalList is a global list of the copy: the top n items by a column of feature_items
// (positive: only items where it is above 0), highest first.
type globalList struct {
	key, col string
	n        int
	positive bool
}

// topState is PostgreSQL's side of a global list: its top n (item -> value), the value of
// its n-th member (-Inf when it has fewer: every item belongs), and the values of the items
// the copy's list holds.
type topState struct {
	top  map[string]float64
	thr  float64
	vals map[string]float64
}

func (s *Store) readTop(ctx context.Context, l globalList) ([]rueidis.ZScore, error) {
	zs, err := s.rd.Do(ctx, s.rd.B().Zrange().Key(l.key).Min("0").Max("-1").Withscores().Build()).AsZScores()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", l.key, err)
	}
	return zs, nil
}

func (s *Store) durableTop(ctx context.Context, l globalList, zs []rueidis.ZScore) (*topState, error) {
	where := ""
	if l.positive {
		where = ` WHERE ` + l.col + ` > 0`
	}
	st := &topState{top: map[string]float64{}, thr: math.Inf(-1), vals: map[string]float64{}}
	var id string
	var v float64
	rows, _ := s.pg.Query(ctx, `SELECT item_id, `+l.col+`::float8 FROM feature_items`+where+` ORDER BY `+l.col+` DESC, item_id LIMIT $1`, l.n)
	n := 0
	if _, err := pgx.ForEachRow(rows, []any{&id, &v}, func() error {
		st.top[id] = v
		if n++; n == l.n {
			st.thr = v
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read top %s: %w", l.col, err)
	}
	ids := make([]string, len(zs))
	for i, z := range zs {
		ids[i] = z.Member
	}
	rows, _ = s.pg.Query(ctx, `SELECT item_id, `+l.col+`::float8 FROM feature_items WHERE item_id = ANY($1)`, ids)
	if _, err := pgx.ForEachRow(rows, []any{&id, &v}, func() error { st.vals[id] = v; return nil }); err != nil {
		return nil, fmt.Errorf("read %s of listed items: %w", l.col, err)
	}
	return st, nil
}

// compareTop checks a global list of the copy (zs) against PostgreSQL's, read before and
// after it (lo, hi; the same state when there is nothing in flight). Every member must hold
// its item's value, or one between the two reads; a member outside both tops must be tied
// with their last one (ties at the cut may keep either item); and every item in both tops
// above their last value must be in the list.
func compareTop(lo *topState, zs []rueidis.ZScore, hi *topState) string {
	in := make(map[string]bool, len(zs))
	var extra, missing, other []string
	for _, z := range zs {
		in[z.Member] = true
		hv, ok := hi.vals[z.Member]
		if !ok {
			extra = append(extra, z.Member+" (no such item)")
			continue
		}
		lv, ok := lo.vals[z.Member]
		if !ok {
			lv = hv
		}
		if z.Score < min(lv, hv) || z.Score > max(lv, hv) {
			other = append(other, fmt.Sprintf("%s %v != %v", z.Member, z.Score, hv))
			continue
		}
		_, inLo := lo.top[z.Member]
		_, inHi := hi.top[z.Member]
		if !inLo && !inHi && lv < lo.thr && hv < hi.thr {
			extra = append(extra, z.Member)
		}
	}
	for id, hv := range hi.top {
		if lv, ok := lo.top[id]; ok && !in[id] && lv > lo.thr && hv > hi.thr {
			missing = append(missing, id)
		}
	}
	slices.Sort(missing)
	return diffText(extra, missing, "value", other, true)
}
