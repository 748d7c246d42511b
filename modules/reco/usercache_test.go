package reco

import (
	"fmt"
	"hash/maphash"
	"reflect"
	"testing"

	"recsys/pkg/featurestore"
	"recsys/pkg/ranking"
)

const (
	rawHist    = `[{"item_id":"a","ts_ms":1000,"quality":0.9},{"item_id":"b","ts_ms":900,"quality":0.5}]`
	rawHist2   = `[{"item_id":"c","ts_ms":1100,"quality":1},{"item_id":"a","ts_ms":1000,"quality":0.9},{"item_id":"b","ts_ms":900,"quality":0.5}]`
	rawWatched = `{"a":1000,"b":900}`
	rawImps    = `{"c":{"count":3,"last_ts_ms":1200}}`
	rawImps2   = `{"c":{"count":4,"last_ts_ms":1300}}`
)

// TestDecodeCacheReusesUnchangedFields: every answer equals a fresh decode of the raw values;
// a field whose raw value is unchanged is shared with the previous answer, a changed one is
// decoded again.
func TestDecodeCacheReusesUnchangedFields(t *testing.T) {
	c := newDecodeCache(1 << 20)
	steps := []struct {
		name   string
		f      userFields
		shared [3]bool // history, watched, impressions shared with the previous answer
	}{
		{"first read", userFields{rawHist, rawWatched, rawImps}, [3]bool{false, false, false}},
		{"unchanged", userFields{rawHist, rawWatched, rawImps}, [3]bool{true, true, true}},
		{"impression logged", userFields{rawHist, rawWatched, rawImps2}, [3]bool{true, true, false}},
		// The counters changed, so only their hash was kept: decoded again, and kept again
		// because they were found unchanged.
		{"watch", userFields{rawHist2, `{"a":1000,"b":900,"c":1100}`, rawImps2}, [3]bool{false, false, false}},
		{"unchanged again", userFields{rawHist2, `{"a":1000,"b":900,"c":1100}`, rawImps2}, [3]bool{true, true, true}},
		{"impressions reset", userFields{rawHist2, `{"a":1000,"b":900,"c":1100}`, ""}, [3]bool{true, true, false}},
	}
	var prev *decodedUser
	for _, st := range steps {
		got, err := c.decode("u1", st.f)
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		want, err := (*decodeCache)(nil).decode("u1", st.f)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got.history, want.history) || !reflect.DeepEqual(got.watched, want.watched) || !reflect.DeepEqual(got.imps, want.imps) {
			t.Fatalf("%s: cached decode %+v, fresh decode %+v", st.name, got, want)
		}
		if prev != nil {
			shared := [3]bool{sameSlice(got.history, prev.history), sameMap(got.watched, prev.watched), sameMap(got.imps, prev.imps)}
			if shared != st.shared {
				t.Fatalf("%s: shared %v, want %v", st.name, shared, st.shared)
			}
		}
		prev = got
	}
	if len(prev.history) != 3 || prev.history[0] != (ranking.HistoryEntry{ItemID: "c", TsMs: 1100, Quality: 1}) || !prev.watched["c"] || prev.imps != nil {
		t.Fatalf("last answer %+v", prev)
	}
}

// A field that does not decode is an error naming the user, and the previous good entry stays.
// TestDecodeCacheKeepsOnlyStableImpressions: a user whose impression counters change from
// one request to the next (every served list is logged) is stored with their hash instead of
// the decoded counters and their raw value; once a request finds them unchanged they are kept
// again. The history and watched set are kept throughout.
func TestDecodeCacheKeepsOnlyStableImpressions(t *testing.T) {
	c := newDecodeCache(1 << 20)
	stored := func() *decodedUser {
		sh := &c.shards[maphash.String(c.seed, "u1")%cacheShards]
		return sh.m["u1"]
	}
	imps := func(n int) string { return fmt.Sprintf(`{"c":{"count":%d,"last_ts_ms":1200}}`, n) }
	steps := []struct {
		name string
		imps string
		kept bool // the stored entry holds the decoded counters
	}{
		{"first read", imps(1), true},
		{"changed", imps(2), false},
		{"changed again", imps(3), false},
		{"unchanged", imps(3), true},
		{"unchanged again", imps(3), true},
		{"changed after being stable", imps(4), false},
	}
	for _, st := range steps {
		got, err := c.decode("u1", userFields{rawHist, rawWatched, st.imps})
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got.imps["c"].Count == 0 || got.raw[2] != st.imps {
			t.Fatalf("%s: answer %+v lacks its counters", st.name, got)
		}
		s := stored()
		if kept := s.imps != nil && s.raw[2] == st.imps; kept != st.kept {
			t.Fatalf("%s: stored entry keeps counters %v, want %v (%+v)", st.name, kept, st.kept, s)
		}
		if !st.kept && (s.impsSum != maphash.String(c.seed, st.imps) || s.raw[2] != "") {
			t.Fatalf("%s: stored entry %+v, want the hash of %s only", st.name, s, st.imps)
		}
		if s.history == nil || s.watched == nil {
			t.Fatalf("%s: stored entry lost the history or watched set: %+v", st.name, s)
		}
		if sh := &c.shards[maphash.String(c.seed, "u1")%cacheShards]; sh.bytes != s.size {
			t.Fatalf("%s: shard accounts %d bytes, entry %d", st.name, sh.bytes, s.size)
		}
	}
}

func TestDecodeCacheErrorKeepsPrevious(t *testing.T) {
	c := newDecodeCache(1 << 20)
	good, err := c.decode("u1", userFields{rawHist, rawWatched, rawImps})
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range []userFields{{"[{", rawWatched, rawImps}, {rawHist, "{", rawImps}, {rawHist, rawWatched, "nope"}} {
		if _, err := c.decode("u1", f); err == nil {
			t.Fatalf("field %d: no error for %q", i, f)
		}
	}
	again, err := c.decode("u1", userFields{rawHist, rawWatched, rawImps})
	if err != nil || again != good {
		t.Fatalf("after errors: %p %v, want the previous entry %p", again, err, good)
	}
}

// The cache holds at most its byte bound (per shard), whatever the number of users; a user
// too large for a shard is decoded but not kept.
func TestDecodeCacheBounded(t *testing.T) {
	c := newDecodeCache(64 << 10) // 2 KB per shard: a few of these users each
	for i := 0; i < 5000; i++ {
		f := userFields{rawHist, rawWatched, rawImps}
		if i%7 == 0 {
			f[2] = `{"c":{"count":3,"last_ts_ms":1200},"d":{"count":1,"last_ts_ms":1300}}`
		}
		if _, err := c.decode(fmt.Sprintf("user-%d", i), f); err != nil {
			t.Fatal(err)
		}
	}
	total := 0
	for i := range c.shards {
		sh := &c.shards[i]
		sum := 0
		for _, e := range sh.m {
			sum += e.size
		}
		if sum != sh.bytes || sh.bytes > c.max || len(sh.m) == 0 {
			t.Fatalf("shard %d: %d entries, %d bytes accounted, %d held, bound %d", i, len(sh.m), sh.bytes, sum, c.max)
		}
		total += len(sh.m)
	}
	huge := userFields{rawHist, rawWatched, `{"x":{"count":1,"last_ts_ms":1}` + fmt.Sprintf("%*s", 4<<10, "") + `}`}
	d, err := c.decode("huge", huge)
	if err != nil || d.imps["x"].Count != 1 {
		t.Fatalf("huge user: %+v %v", d, err)
	}
	if sh := &c.shards[maphash.String(c.seed, "huge")%cacheShards]; sh.m["huge"] != nil {
		t.Fatal("a user larger than a shard was kept")
	}
	t.Logf("%d users kept", total)
}

func sameSlice[T any](a, b []T) bool {
	return len(a) > 0 && len(b) > 0 && &a[0] == &b[0]
}

func sameMap(a, b any) bool {
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	return !va.IsNil() && !vb.IsNil() && va.UnsafePointer() == vb.UnsafePointer()
}

// TestDecodeCacheAddsOverlayToKeptBase: with the impression counters kept as a base and an
// overlay that changes with every list, the decoded base is kept and shared between requests,
// and every answer's counters (ranking.Snapshot.Impression over the base and the overlay's
// raises) are the base with the current overlay added (a stale overlay, written against
// another base, adds nothing), as a fresh decode gives.
func TestDecodeCacheAddsOverlayToKeptBase(t *testing.T) {
	c := newDecodeCache(1 << 20)
	base := `["c",3,1200,"d",1,1100]`
	overlay := func(onBase, deltas string) string {
		return fmt.Sprintf("%08x%d:%s", featurestore.ImpressionsBaseSum(onBase), 2, deltas)
	}
	steps := []struct {
		name    string
		overlay string
		want    map[string]ranking.ImpressionStat
	}{
		{"no overlay", "", map[string]ranking.ImpressionStat{"c": {Count: 3, LastTsMs: 1200}, "d": {Count: 1, LastTsMs: 1100}}},
		{"a list", overlay(base, `["c",1,1300,"e",1,1300]`),
			map[string]ranking.ImpressionStat{"c": {Count: 4, LastTsMs: 1300}, "d": {Count: 1, LastTsMs: 1100}, "e": {Count: 1, LastTsMs: 1300}}},
		{"another list", overlay(base, `["c",2,1400,"e",1,1300,"f",1,1400]`),
			map[string]ranking.ImpressionStat{"c": {Count: 5, LastTsMs: 1400}, "d": {Count: 1, LastTsMs: 1100}, "e": {Count: 1, LastTsMs: 1300}, "f": {Count: 1, LastTsMs: 1400}}},
		{"same again", overlay(base, `["c",2,1400,"e",1,1300,"f",1,1400]`),
			map[string]ranking.ImpressionStat{"c": {Count: 5, LastTsMs: 1400}, "d": {Count: 1, LastTsMs: 1100}, "e": {Count: 1, LastTsMs: 1300}, "f": {Count: 1, LastTsMs: 1400}}},
		{"stale overlay", overlay(`["c",1,1000]`, `["x",9,9]`), map[string]ranking.ImpressionStat{"c": {Count: 3, LastTsMs: 1200}, "d": {Count: 1, LastTsMs: 1100}}},
	}
	counters := func(d *decodedUser) map[string]ranking.ImpressionStat {
		s := ranking.Snapshot{Impressions: d.imps, ImpressionsAdded: d.added}
		out := map[string]ranking.ImpressionStat{}
		for _, m := range []map[string]ranking.ImpressionStat{d.imps, d.added} {
			for k := range m {
				out[k], _ = s.Impression(k)
			}
		}
		return out
	}
	var firstBase map[string]ranking.ImpressionStat
	for _, st := range steps {
		f := userFields{rawHist, rawWatched, base, st.overlay}
		got, err := c.decode("u1", f)
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		fresh, err := (*decodeCache)(nil).decode("u1", f)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(counters(got), st.want) || !reflect.DeepEqual(counters(fresh), st.want) {
			t.Fatalf("%s: counters %v (fresh decode %v), want %v", st.name, counters(got), counters(fresh), st.want)
		}
		if firstBase == nil {
			firstBase = got.imps
		} else if !sameMap(got.imps, firstBase) {
			t.Fatalf("%s: the base was decoded again", st.name)
		}
	}
	if firstBase["e"].Count != 0 || len(firstBase) != 2 {
		t.Fatalf("an overlay was added into the shared base: %v", firstBase)
	}
}
