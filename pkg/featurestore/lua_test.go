package featurestore

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/rueidis"

	"recsys/pkg/features"
	"recsys/pkg/ranking"
	"recsys/pkg/testutil"
)

// The scripts also run on miniredis (recsys dev); the real-Redis behaviour is covered by the
// integration tests.
func TestScriptsOnMiniredis(t *testing.T) {
	mr := miniredis.RunT(t)
	rd, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{mr.Addr()}, DisableCache: true, ForceSingleClient: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	ctx := context.Background()
	cfg := features.DefaultConfig()
	s := New(nil, rd, "p:", cfg, nil)
	if err := rd.Do(ctx, rd.B().Hset().Key("p:meta").FieldValue().FieldValue("ep", "1").FieldValue("lm:s", "0").FieldValue("lm:l", "0").
		FieldValue("lm:c", "0").FieldValue("hl:s", "3600000").FieldValue("hl:l", "3600000").FieldValue("hl:c", "3600000").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	w := &redisWrite{
		users: []userRow{{id: "u", version: 2, h: `[{"item_id":"a","ts_ms":10,"quality":1}]`, w: `{"a":10}`, i: `{}`}},
		items: []itemRow{{id: "a", wat: 1, fs: 10, ps: 2, pl: 2, fresh: true}, {id: "b", wat: 3, fs: 5, ps: 1, pl: 1, fresh: true}},
		nb:    []nbWrite{{item: "a", version: 1, add: []scoredRow{{id: "b", w: 0.5}}}},
	}
	if err := s.exec(ctx, "1", w); err != nil {
		t.Fatal(err)
	}
	// An older version and smaller counters change nothing.
	stale := &redisWrite{users: []userRow{{id: "u", version: 1, h: `[]`, w: `{}`, i: `{}`}}, items: []itemRow{{id: "a", wat: 0, fs: 20, ps: 1, pl: 1}}}
	if err := s.exec(ctx, "1", stale); err != nil {
		t.Fatal(err)
	}
	if err := s.exec(ctx, "0", stale); err == nil {
		t.Fatal("a write of another generation was accepted")
	}
	if err := rd.Do(ctx, rd.B().Set().Key("p:ready").Value("1").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	snap, err := NewRedisLoader(rd, "p:", cfg).Snapshot(ctx, "u", time.Hour.Milliseconds(), ranking.SnapshotOptions{HistoryItems: 5, NeighboursPerItem: 5, TrendingN: 5, PopularN: 5, FreshN: 5})
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.History) != 1 || !snap.Watched["a"] || len(snap.Neighbours["a"]) != 1 || snap.Neighbours["a"][0].Score != 0.25 {
		t.Errorf("snapshot %+v", snap)
	}
	if len(snap.Trending) != 2 || snap.Trending[0].ItemID != "a" || snap.Trending[0].Score != 1 || snap.Items["a"].Watches != 1 || snap.Items["a"].FirstSeenMs != 10 {
		t.Errorf("lists/items %+v %+v", snap.Trending, snap.Items)
	}
	if len(snap.Fresh) != 2 || snap.Fresh[0].ItemID != "a" {
		t.Errorf("fresh %+v", snap.Fresh)
	}
}

// TestLoaderUndecodableUserIsNotAScriptError: a user hash whose history does not decode is
// ErrUserUndecodable (the caller serves that user from another store and counts no Redis
// failure), not a script error: the read script used to raise it from cjson.decode.
func TestLoaderUndecodableUserIsNotAScriptError(t *testing.T) {
	mr := miniredis.RunT(t)
	rd, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{mr.Addr()}, DisableCache: true, ForceSingleClient: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	ctx := context.Background()
	for _, kv := range [][]string{{"lm:s", "0"}, {"lm:l", "0"}, {"lm:c", "0"}, {"hl:s", "3600000"}, {"hl:l", "3600000"}, {"hl:c", "3600000"}} {
		mr.HSet("p:meta", kv[0], kv[1])
	}
	mr.Set("p:ready", "1")
	for _, tc := range []struct {
		name, h     string
		undecodable bool
	}{
		{"valid", `[{"item_id":"a","ts_ms":10,"quality":1}]`, false},
		{"not json", `not a history`, true},
		{"truncated", `[{"item_id":"a","ts_ms":10,"qua`, true},
		{"an object", `{"item_id":"a"}`, true},
		{"entries not objects", `[1,2]`, true},
		{"id not a string", `[{"item_id":5,"ts_ms":10,"quality":1}]`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mr.HSet("p:u:"+tc.name, "v", "1", "h", tc.h, "w", `{"a":10}`, "i", `{}`)
			snap, err := NewRedisLoader(rd, "p:", features.DefaultConfig()).Snapshot(ctx, tc.name, time.Hour.Milliseconds(),
				ranking.SnapshotOptions{HistoryItems: 5, NeighboursPerItem: 5, TrendingN: 5, PopularN: 5, FreshN: 5})
			if got := errors.Is(err, ErrUserUndecodable); got != tc.undecodable {
				t.Fatalf("err %v: undecodable %v, want %v", err, got, tc.undecodable)
			}
			if !tc.undecodable && (err != nil || len(snap.History) != 1) {
				t.Fatalf("valid user: %v %+v", err, snap)
			}
		})
	}
}

// A neighbour update larger than one ZADD/ZREM chunk (1,000 arguments) is applied whole: on
// miniredis, and on the real Redis when the integration services run.
func TestNeighbourWriteChunks(t *testing.T) {
	for name, open := range scriptBackends() {
		t.Run(name, func(t *testing.T) {
			rd := open(t)
			ctx := context.Background()
			prefix := scriptCopy(t, rd, "chunks", "nb:a", "i:a")
			cfg := features.DefaultConfig()
			cfg.NeighboursPerItem = 1000 // lists up to 2,000 members
			s := New(nil, rd, prefix, cfg, nil)
			id := func(i int) string { return fmt.Sprintf("n%04d", i) }
			var first []scoredRow
			for i := range 1500 {
				first = append(first, scoredRow{id: id(i), w: float64(i) + 0.5})
			}
			if err := s.exec(ctx, "1", &redisWrite{nb: []nbWrite{{item: "a", version: 1, add: first}}}); err != nil {
				t.Fatal(err)
			}
			if n, err := rd.Do(ctx, rd.B().Zcard().Key(prefix+"nb:a").Build()).AsInt64(); err != nil || n != 1500 {
				t.Fatalf("after 1,500 adds: %d members (%v)", n, err)
			}
			// Cut 1,200 and raise the first 600: the cuts go first, so the 300 of them cut
			// and raised again come back at their new strength.
			var raise []scoredRow
			for i := range 600 {
				raise = append(raise, scoredRow{id: id(i), w: 10000 + float64(i)})
			}
			var rem []string
			for i := 300; i < 1500; i++ {
				rem = append(rem, id(i))
			}
			if err := s.exec(ctx, "1", &redisWrite{nb: []nbWrite{{item: "a", version: 2, add: raise, rem: rem}}}); err != nil {
				t.Fatal(err)
			}
			got, err := rd.Do(ctx, rd.B().Zrange().Key(prefix+"nb:a").Min("0").Max("-1").Withscores().Build()).AsZScores()
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 600 {
				t.Fatalf("%d members, want 600", len(got))
			}
			for i, z := range got {
				if z.Member != id(i) || z.Score != 10000+float64(i) {
					t.Fatalf("member %d: %s %v, want %s %v", i, z.Member, z.Score, id(i), 10000+float64(i))
				}
			}
		})
	}
}

// A list's changes apply only onto the version just before; a list sent whole replaces any
// older copy, or one at its version whose list is gone; an older write changes nothing. A
// change that finds an older version asks for the list whole (from PostgreSQL, absent here:
// an error). On miniredis, and on the real Redis when the integration services run.
func TestNeighbourVersions(t *testing.T) {
	for name, open := range scriptBackends() {
		t.Run(name, func(t *testing.T) {
			rd := open(t)
			ctx := context.Background()
			prefix := scriptCopy(t, rd, "nbver", "nb:a", "i:a")
			s := New(nil, rd, prefix, features.DefaultConfig(), nil)
			write := func(n nbWrite) error { return s.exec(ctx, "1", &redisWrite{nb: []nbWrite{n}}) }
			check := func(step, want, wantVersion string) {
				t.Helper()
				zs, err := rd.Do(ctx, rd.B().Zrange().Key(prefix+"nb:a").Min("0").Max("-1").Withscores().Build()).AsZScores()
				if err != nil {
					t.Fatal(err)
				}
				var got []string
				for _, z := range zs {
					got = append(got, fmt.Sprintf("%s=%v", z.Member, z.Score))
				}
				v, _ := rd.Do(ctx, rd.B().Hget().Key(prefix+"i:a").Field("nv").Build()).ToString()
				if strings.Join(got, " ") != want || v != wantVersion {
					t.Fatalf("%s: list %v at version %q, want %s at %s", step, got, v, want, wantVersion)
				}
			}
			if err := write(nbWrite{item: "a", version: 1, add: []scoredRow{{id: "b", w: 2}, {id: "c", w: 1}}}); err != nil {
				t.Fatal(err)
			}
			check("a new list", "c=1 b=2", "1")
			// Version 3 before 2: refused, the list named to be sent whole.
			err := write(nbWrite{item: "a", version: 3, add: []scoredRow{{id: "d", w: 5}}, rem: []string{"c"}})
			if err == nil || !strings.Contains(err.Error(), "1 neighbour lists are behind") {
				t.Fatalf("a change onto version 2 when the copy holds 1: %v", err)
			}
			check("a change ahead", "c=1 b=2", "1")
			if err := write(nbWrite{item: "a", version: 3, whole: true, add: []scoredRow{{id: "d", w: 5}, {id: "b", w: 0.5}}}); err != nil {
				t.Fatal(err)
			}
			check("the list whole", "b=0.5 d=5", "3")
			// Version 2 lands last: older, ignored, whole or not.
			if err := write(nbWrite{item: "a", version: 2, add: []scoredRow{{id: "c", w: 9}}, rem: []string{"d"}}); err != nil {
				t.Fatal(err)
			}
			if err := write(nbWrite{item: "a", version: 2, whole: true, add: []scoredRow{{id: "c", w: 9}}}); err != nil {
				t.Fatal(err)
			}
			check("older writes", "b=0.5 d=5", "3")
			// The next change: absolute strengths, lower ones included (cut, then raised again).
			if err := write(nbWrite{item: "a", version: 4, add: []scoredRow{{id: "d", w: 0.25}, {id: "e", w: 1}}, rem: []string{"b", "d"}}); err != nil {
				t.Fatal(err)
			}
			check("the next change", "d=0.25 e=1", "4")
			// The list deleted, its version kept: a change would land on an empty list. It is
			// refused, and the list sent whole.
			if err := rd.Do(ctx, rd.B().Del().Key(prefix+"nb:a").Build()).Error(); err != nil {
				t.Fatal(err)
			}
			err = write(nbWrite{item: "a", version: 5, add: []scoredRow{{id: "f", w: 2}}})
			if err == nil || !strings.Contains(err.Error(), "1 neighbour lists are behind") {
				t.Fatalf("a change onto a deleted list: %v", err)
			}
			check("a change onto a deleted list", "", "4")
			// The list whole at the version the hash kept (a repopulation's copy after keys
			// were deleted behind it): it comes back. At that version onto a list that is
			// there, a whole list changes nothing (the copy already has it).
			if err := write(nbWrite{item: "a", version: 4, whole: true, add: []scoredRow{{id: "d", w: 0.25}, {id: "e", w: 1}}}); err != nil {
				t.Fatal(err)
			}
			check("the list whole onto a deleted list at its version", "d=0.25 e=1", "4")
			if err := write(nbWrite{item: "a", version: 4, whole: true, add: []scoredRow{{id: "z", w: 7}}}); err != nil {
				t.Fatal(err)
			}
			check("the list whole at its version", "d=0.25 e=1", "4")
		})
	}
}

// scriptBackends opens a client of each Redis the scripts run on: miniredis (recsys dev) and
// the real Redis of the integration services.
func scriptBackends() map[string]func(t *testing.T) rueidis.Client {
	return map[string]func(t *testing.T) rueidis.Client{
		"miniredis": func(t *testing.T) rueidis.Client {
			return clientFor(t, rueidis.ClientOption{InitAddress: []string{miniredis.RunT(t).Addr()}})
		},
		"redis": func(t *testing.T) rueidis.Client {
			opt, err := rueidis.ParseURL(testutil.RedisURL(t))
			if err != nil {
				t.Fatal(err)
			}
			return clientFor(t, opt)
		},
	}
}

// scriptCopy returns a fresh key prefix (named after the test) for a copy of generation 1 on
// rd; the prefix's keys listed (suffixes) are deleted at the end.
func scriptCopy(t *testing.T, rd rueidis.Client, name string, keys ...string) string {
	t.Helper()
	ctx := context.Background()
	prefix := name + ":" + strconv.FormatInt(time.Now().UnixNano(), 36) + ":"
	t.Cleanup(func() {
		del := []string{prefix + "meta"}
		for _, k := range keys {
			del = append(del, prefix+k)
		}
		rd.Do(ctx, rd.B().Del().Key(del...).Build())
	})
	if err := rd.Do(ctx, rd.B().Hset().Key(prefix+"meta").FieldValue().FieldValue("ep", "1").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	return prefix
}

func clientFor(t *testing.T, opt rueidis.ClientOption) rueidis.Client {
	t.Helper()
	opt.DisableCache, opt.ForceSingleClient = true, true
	rd, err := rueidis.NewClient(opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rd.Close)
	return rd
}

// The popularity lists follow the item hashes: an item joins them when its decayed
// popularity rises, keeps its place while a write leaves the popularity unchanged (an
// impression), and a write that cannot raise it (unchanged, or older) does not bring back an
// item the lists' cap cut. On miniredis, and on the real Redis when the integration services
// run.
func TestPopularListsFollowItemHashes(t *testing.T) {
	for name, open := range scriptBackends() {
		t.Run(name, func(t *testing.T) {
			rd := open(t)
			ctx := context.Background()
			prefix := scriptCopy(t, rd, "poplists", "pop:s", "pop:l", "fresh", "i:a", "i:b", "i:c")
			keys := NewKeys(prefix)
			cfg := features.DefaultConfig()
			cfg.TopListSize = 2
			s := New(nil, rd, prefix, cfg, nil)
			write := func(items ...itemRow) {
				t.Helper()
				if err := s.exec(ctx, "1", &redisWrite{items: items}); err != nil {
					t.Fatal(err)
				}
			}
			list := func(key string) map[string]float64 {
				t.Helper()
				got, err := rd.Do(ctx, rd.B().Zrange().Key(key).Min("0").Max("-1").Withscores().Build()).AsZScores()
				if err != nil {
					t.Fatal(err)
				}
				out := map[string]float64{}
				for _, z := range got {
					out[z.Member] = z.Score
				}
				return out
			}
			want := func(step string, short, long map[string]float64) {
				t.Helper()
				if got := list(keys.PopShort); !maps.Equal(got, short) {
					t.Errorf("%s: pop:s %v, want %v", step, got, short)
				}
				if got := list(keys.PopLong); !maps.Equal(got, long) {
					t.Errorf("%s: pop:l %v, want %v", step, got, long)
				}
			}
			write(itemRow{id: "a", imp: 1, fs: 10, ps: 2, pl: 5}, itemRow{id: "b", imp: 1, fs: 10, ps: 3, pl: 4})
			want("first write", map[string]float64{"a": 2, "b": 3}, map[string]float64{"a": 5, "b": 4})
			// c pushes a out of pop:s (cap 2) and b out of pop:l.
			write(itemRow{id: "c", imp: 1, fs: 10, ps: 4, pl: 6})
			want("cap", map[string]float64{"b": 3, "c": 4}, map[string]float64{"a": 5, "c": 6})
			// Impressions of a and b: their popularity is what the hashes hold, so the lists
			// keep what they had (a was cut from pop:s, b from pop:l, and stay out).
			write(itemRow{id: "a", imp: 7, fs: 10, ps: 2, pl: 5}, itemRow{id: "b", imp: 9, fs: 10, ps: 3, pl: 4})
			want("unchanged popularity", map[string]float64{"b": 3, "c": 4}, map[string]float64{"a": 5, "c": 6})
			if got, err := rd.Do(ctx, rd.B().Hget().Key(keys.Item("a")).Field("imp").Build()).ToString(); err != nil || got != "7" {
				t.Errorf("impressions of a: %q (%v), want 7", got, err)
			}
			// An older write (lower values) changes nothing.
			write(itemRow{id: "c", imp: 1, fs: 10, ps: 1, pl: 1})
			want("older write", map[string]float64{"b": 3, "c": 4}, map[string]float64{"a": 5, "c": 6})
			// A watch of a raises its short-term popularity above b's: a is back in pop:s.
			write(itemRow{id: "a", imp: 7, wat: 1, fs: 10, ps: 3.5, pl: 5.5})
			want("raised", map[string]float64{"a": 3.5, "c": 4}, map[string]float64{"a": 5.5, "c": 6})
			// A batch's write carries only the fields it changed (itemRow.only); the others
			// keep what the hash holds, and the lists follow the fields that came.
			hash := func(id string) string {
				t.Helper()
				vals, err := rd.Do(ctx, rd.B().Hmget().Key(keys.Item(id)).Field(ItemStatFields[:]...).Build()).ToArray()
				if err != nil {
					t.Fatal(err)
				}
				out := make([]string, len(vals))
				for i, v := range vals {
					out[i], _ = v.ToString()
				}
				return strings.Join(out, " ")
			}
			write(itemRow{id: "a", imp: 9, only: 1 << 0}) // zeros elsewhere must not be sent
			if got, want := hash("a"), "9 1 0 0 0 0 10 3.5 5.5"; got != want {
				t.Errorf("partial impressions of a: hash %q, want %q", got, want)
			}
			want("partial impressions", map[string]float64{"a": 3.5, "c": 4}, map[string]float64{"a": 5.5, "c": 6})
			write(itemRow{id: "b", wat: 2, ps: 5, pl: 4.5, only: 1<<1 | 1<<7 | 1<<8})
			if got, want := hash("b"), "9 2 0 0 0 0 10 5 4.5"; got != want {
				t.Errorf("partial watch of b: hash %q, want %q", got, want)
			}
			want("partial watch", map[string]float64{"b": 5, "c": 4}, map[string]float64{"a": 5.5, "c": 6})
		})
	}
}

// A batch's user write sends only the documents it changed (keep) and the overlay. It lands as
// such only on the hash's previous version; a hash that is behind (a write missed) or gone
// (expired) gets the documents whole, and an older write changes nothing.
func TestUserWriteSendsChangedDocuments(t *testing.T) {
	for name, open := range scriptBackends() {
		t.Run(name, func(t *testing.T) {
			rd := open(t)
			ctx := context.Background()
			prefix := scriptCopy(t, rd, "keep", "u:u", "u:n")
			s := New(nil, rd, prefix, features.DefaultConfig(), nil)
			hash := func(user string) map[string]string {
				m, err := rd.Do(ctx, rd.B().Hgetall().Key(prefix+"u:"+user).Build()).AsStrMap()
				if err != nil {
					t.Fatal(err)
				}
				return m
			}
			row := func(v int64, keep uint8) userRow {
				x := strconv.FormatInt(v, 10)
				return userRow{id: "u", version: v, h: "H" + x, w: "W" + x, i: "I" + x, r: "R" + x, keep: keep}
			}
			full := func(v string) map[string]string {
				return map[string]string{"v": v, "h": "H" + v, "w": "W" + v, "i": "I" + v, "r": "R" + v}
			}
			steps := []struct {
				name string
				row  userRow
				want map[string]string
			}{
				{"whole", row(4, 0), full("4")},
				{"overlay only", row(5, keepH|keepW|keepI), map[string]string{"v": "5", "h": "H4", "w": "W4", "i": "I4", "r": "R5"}},
				{"base and overlay", row(6, keepH|keepW), map[string]string{"v": "6", "h": "H4", "w": "W4", "i": "I6", "r": "R6"}},
				{"hash behind: sent whole", row(9, keepH|keepW|keepI), full("9")},
				{"older: nothing", row(8, keepI), full("9")},
				{"same version: nothing", row(9, 0), full("9")},
			}
			for _, st := range steps {
				if err := s.exec(ctx, "1", &redisWrite{users: []userRow{st.row}}); err != nil {
					t.Fatalf("%s: %v", st.name, err)
				}
				if got := hash("u"); !maps.Equal(got, st.want) {
					t.Fatalf("%s: hash %v, want %v", st.name, got, st.want)
				}
			}
			// A user whose hash is gone (expired) comes back whole, beside one written in place.
			gone := row(3, keepH|keepW|keepI)
			gone.id = "n"
			if err := s.exec(ctx, "1", &redisWrite{users: []userRow{gone, row(10, keepH|keepW|keepI)}}); err != nil {
				t.Fatal(err)
			}
			if got := hash("n"); !maps.Equal(got, full("3")) {
				t.Fatalf("expired user: hash %v, want %v", got, full("3"))
			}
			if got := hash("u"); got["v"] != "10" || got["i"] != "I9" || got["r"] != "R10" {
				t.Fatalf("user beside it: hash %v", got)
			}
			// The kept documents are not sent at all.
			trips := s.plan("1", &redisWrite{users: []userRow{row(5, keepH|keepW|keepI)}})
			if args := trips[0][0].Args; !slices.Equal(args[len(args)-4:], []string{"", "", "", "R5"}) {
				t.Fatalf("a write keeping h, w and i sends %q", args[len(args)-4:])
			}
			// A batch that did not read every document (impressions only) cannot send the
			// user whole without PostgreSQL (which this store lacks;
			// TestBehindCopyOfRaisedUserIsRead has it): an error, so that the batch's journal
			// row stays for the heal loop.
			unread := row(12, keepH|keepW|keepI)
			unread.h, unread.w, unread.i, unread.unread = "", "", "", true
			if err := s.exec(ctx, "1", &redisWrite{users: []userRow{unread}}); err == nil {
				t.Fatal("a behind hash without the base to complete it: no error")
			}
			if got := hash("u"); got["v"] != "10" {
				t.Fatalf("after the refused write: hash %v", got)
			}
		})
	}
}

// The repopulation lock's script acts only for the lock's holder: it renews, unlinks, writes
// meta and the ready marker, and releases with the holder's token, and does nothing with
// another's. On miniredis (recsys dev repopulates there), and on the real Redis when the
// integration services run.
func TestRepopulationLockScript(t *testing.T) {
	for name, open := range scriptBackends() {
		t.Run(name, func(t *testing.T) {
			rd := open(t)
			ctx := context.Background()
			prefix := scriptCopy(t, rd, "lock", "repopulating", "ready", "run_id", "x", "y")
			s := New(nil, rd, prefix, features.DefaultConfig(), nil)
			lk, err := s.takeLock(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.takeLock(ctx); !errors.Is(err, ErrRepopulating) {
				t.Fatalf("a second lock: %v", err)
			}
			if err := rd.Do(ctx, rd.B().Mset().KeyValue().KeyValue(prefix+"x", "1").KeyValue(prefix+"y", "1").Build()).Error(); err != nil {
				t.Fatal(err)
			}
			other := &repopLock{s: s, token: "another"}
			for _, step := range []struct {
				name string
				err  error
			}{
				{"foreign unlink", other.do(ctx, "unlink", []string{prefix + "x"})},
				{"foreign keep", other.keep(ctx)},
				{"foreign set", other.do(ctx, "set", []string{s.keys.Ready}, "1")},
			} {
				if !errors.Is(step.err, ErrRepopulationLockLost) {
					t.Errorf("%s: %v, want ErrRepopulationLockLost", step.name, step.err)
				}
			}
			other.release(ctx)
			for _, step := range []error{
				lk.do(ctx, "unlink", []string{prefix + "x", prefix + "y"}),
				lk.do(ctx, "hset", []string{s.keys.Meta}, "ep", "clearing", "lm:s", "5"),
				lk.do(ctx, "set", []string{s.keys.Ready, s.keys.RunID}, "1", "r"),
				lk.keep(ctx),
			} {
				if step != nil {
					t.Fatal(step)
				}
			}
			got := func(cmd rueidis.Completed) string {
				t.Helper()
				v, err := rd.Do(ctx, cmd).ToString()
				if err != nil && !rueidis.IsRedisNil(err) {
					t.Fatal(err)
				}
				return v
			}
			n, err := rd.Do(ctx, rd.B().Exists().Key(prefix+"x", prefix+"y").Build()).AsInt64()
			if err != nil || n != 0 {
				t.Errorf("keys left after unlink: %d %v", n, err)
			}
			if ep, lm, ready, run := got(rd.B().Hget().Key(s.keys.Meta).Field("ep").Build()), got(rd.B().Hget().Key(s.keys.Meta).Field("lm:s").Build()),
				got(rd.B().Get().Key(s.keys.Ready).Build()), got(rd.B().Get().Key(s.keys.RunID).Build()); ep != "clearing" || lm != "5" || ready != "1" || run != "r" {
				t.Errorf("meta ep %q lm:s %q, ready %q, run_id %q", ep, lm, ready, run)
			}
			if ttl, err := rd.Do(ctx, rd.B().Pttl().Key(s.keys.Lock).Build()).AsInt64(); err != nil || ttl <= 0 {
				t.Errorf("lock TTL %d %v", ttl, err)
			}
			if got(rd.B().Get().Key(s.keys.Lock).Build()) != lk.token {
				t.Errorf("a foreign release removed the lock")
			}
			lk.release(ctx)
			if v := got(rd.B().Get().Key(s.keys.Lock).Build()); v != "" {
				t.Errorf("the lock after its release: %q", v)
			}
		})
	}
}
