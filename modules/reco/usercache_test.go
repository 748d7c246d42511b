package reco

import (
	"fmt"
	"hash/maphash"
	"reflect"
	"testing"

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
		{"watch", userFields{rawHist2, `{"a":1000,"b":900,"c":1100}`, rawImps2}, [3]bool{false, false, true}},
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
