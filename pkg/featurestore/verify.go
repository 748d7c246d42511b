package featurestore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/rueidis"
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
// lists whole (every member and strength, and the list's version). The top lists are
// derived from the items and not compared. A copy of another generation, or one being
// repopulated, is reported as such without comparing values. A user hash that is absent
// counts only when the writers set no user TTL (meta "ut"): with one, users expire.
//
// Keys that differ are compared again after opts.Grace, PostgreSQL first, so a batch whose
// Redis write was in flight does not count.
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
	meta, err := s.rd.Do(ctx, s.rd.B().Hmget().Key(s.keys.Meta).Field("ep", "ut").Build()).ToArray()
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

	users, err := sampleIDs(ctx, s.pg, "feature_users", "user_id", opts.Sample)
	if err != nil {
		return nil, err
	}
	items, err := sampleIDs(ctx, s.pg, "feature_items", "item_id", opts.Sample)
	if err != nil {
		return nil, err
	}
	diff, lists, err := s.compare(ctx, users, items, userTTL)
	if err != nil {
		return nil, err
	}
	rep.Users, rep.Items, rep.Lists = len(users), len(items), lists
	if len(diff) > 0 {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(opts.Grace):
		}
		var us, is []string
		for _, d := range diff {
			if d.user != "" {
				us = append(us, d.user)
			} else {
				is = append(is, d.item)
			}
		}
		if diff, _, err = s.compare(ctx, us, slices.Compact(is), userTTL); err != nil {
			return nil, err
		}
	}
	rep.MismatchCount = len(diff)
	for _, d := range diff[:min(len(diff), maxReported)] {
		rep.Mismatches = append(rep.Mismatches, d.Mismatch)
	}
	return rep, nil
}

// sampleIDs draws up to n keys of table at random. ORDER BY random() reads the whole key
// column once: seconds for tens of millions of rows, fine for an operator's check.
func sampleIDs(ctx context.Context, pg dbConn, table, col string, n int) ([]string, error) {
	rows, _ := pg.Query(ctx, `SELECT `+col+` FROM `+table+` ORDER BY random() LIMIT $1`, n)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("sample %s: %w", table, err)
	}
	slices.Sort(ids)
	return ids, nil
}

// difference is a mismatch with the user or item it belongs to.
type difference struct {
	Mismatch
	user, item string
}

// compare reads users and items (with their lists) from PostgreSQL, then from Redis, and
// returns what differs and how many lists it compared.
func (s *Store) compare(ctx context.Context, userIDs, itemIDs []string, userTTL bool) ([]difference, int, error) {
	users, err := readUsers(ctx, s.pg, userIDs)
	if err != nil {
		return nil, 0, err
	}
	rows, _ := s.pg.Query(ctx, `SELECT `+itemCols+` FROM feature_items WHERE item_id = ANY($1) ORDER BY item_id`, itemIDs)
	items, err := scanItems(rows)
	if err != nil {
		return nil, 0, err
	}
	lists, err := readNeighbours(ctx, s.pg, itemIDs)
	if err != nil {
		return nil, 0, err
	}
	listOf := make(map[string]nbWrite, len(lists))
	for _, l := range lists {
		listOf[l.item] = l
	}
	b := s.rd.B()
	cmds := make(rueidis.Commands, 0, len(users)+3*len(items))
	for _, u := range users {
		cmds = append(cmds, b.Hmget().Key(s.keys.User(u.id)).Field("v", "h", "w", "i", "r").Build())
	}
	for _, it := range items {
		cmds = append(cmds, b.Hmget().Key(s.keys.Item(it.id)).Field(append(ItemStatFields[:], "nv")...).Build(),
			b.Zrange().Key(s.keys.Neighbours(it.id)).Min("0").Max("-1").Withscores().Build())
	}
	res := s.rd.DoMulti(ctx, cmds...)
	var out []difference
	for i, u := range users {
		vals, err := res[i].ToArray()
		if err != nil {
			return nil, 0, fmt.Errorf("read user %q: %w", u.id, err)
		}
		got := make([]string, len(vals))
		present := false
		for j, v := range vals {
			if got[j], err = v.ToString(); err == nil {
				present = true
			}
		}
		key := s.keys.User(u.id)
		switch want := []string{fi(u.version), u.h, u.w, u.i, u.r}; {
		case !present && userTTL: // expired; readers put it back from PostgreSQL
		case !present:
			out = append(out, difference{Mismatch{key, "absent"}, u.id, ""})
		case !slices.Equal(got, want):
			out = append(out, difference{Mismatch{key, fieldDiff([]string{"v", "h", "w", "i", "r"}, got, want)}, u.id, ""})
		}
	}
	res = res[len(users):]
	for i, it := range items {
		vals, err := res[2*i].ToArray()
		if err != nil {
			return nil, 0, fmt.Errorf("read item %q: %w", it.id, err)
		}
		names := ItemStatFields[:]
		got, want := make([]string, len(names)), make([]string, len(names))
		for f := range names {
			got[f], _ = vals[f].ToString()
			want[f] = it.field(f)
		}
		if !slices.Equal(got, want) {
			out = append(out, difference{Mismatch{s.keys.Item(it.id), fieldDiff(names, got, want)}, "", it.id})
		}
		nv, _ := vals[len(names)].ToString()
		zs, err := res[2*i+1].AsZScores()
		if err != nil {
			return nil, 0, fmt.Errorf("read neighbours of %q: %w", it.id, err)
		}
		l := listOf[it.id]
		if d := listDiff(l, nv, zs); d != "" {
			out = append(out, difference{Mismatch{s.keys.Neighbours(it.id), d}, "", it.id})
		}
	}
	return out, len(lists), nil
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

// listDiff compares a neighbour list with its copy: version (nv, absent: 0) and members.
func listDiff(l nbWrite, nv string, zs []rueidis.ZScore) string {
	if nv == "" {
		nv = "0"
	}
	var parts []string
	if want := strconv.FormatInt(l.version, 10); nv != want {
		parts = append(parts, fmt.Sprintf("version: redis %s, postgres %s", nv, want))
	}
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
	for _, p := range []struct {
		what string
		ids  []string
	}{{"only in redis", extra}, {"only in postgres", missing}, {"strength", other}} {
		if len(p.ids) > 0 {
			parts = append(parts, fmt.Sprintf("%s: %s", p.what, strings.Join(p.ids[:min(len(p.ids), 5)], ", ")))
		}
	}
	return strings.Join(parts, "; ")
}
