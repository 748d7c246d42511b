package featurestore

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"recsys/pkg/features"
)

// The hand-written codec must be byte-for-byte encoding/json, both ways.
func TestUserCodecMatchesEncodingJSON(t *testing.T) {
	ids := []string{"i1", "item-0042", "", "a b", `q"uote`, `back\slash`, "<html>&", "é", "日本", "\u2028", "tab\t", "\xff\xfe", "x:y,z{}[]"}
	floats := []float64{0, 1, 0.5, 1.0 / 3, 1e-7, 2.5e-9, 1e21, 123456789.125, 5e-324, 0.000001, -0.25}
	rng := rand.New(rand.NewPCG(7, 11))
	states := []features.UserState{{}, {History: []features.HistoryEntry{}, Watched: map[string]int64{}, ImpressionCounts: map[string]features.ImpressionStat{}}}
	for range 300 {
		var st features.UserState
		for range rng.IntN(6) {
			st.History = append(st.History, features.HistoryEntry{ItemID: ids[rng.IntN(len(ids))], TsMs: rng.Int64N(1 << 45), Quality: floats[rng.IntN(len(floats))]})
		}
		if rng.IntN(4) > 0 {
			st.Watched = map[string]int64{}
			for range rng.IntN(6) {
				st.Watched[ids[rng.IntN(len(ids))]+ids[rng.IntN(len(ids))]] = rng.Int64N(1<<45) - 1<<40
			}
		}
		if rng.IntN(4) > 0 {
			st.ImpressionCounts = map[string]features.ImpressionStat{}
			for range rng.IntN(6) {
				st.ImpressionCounts[ids[rng.IntN(len(ids))]] = features.ImpressionStat{Count: rng.Int64N(100), LastTsMs: rng.Int64N(1 << 45)}
			}
		}
		states = append(states, st)
	}
	for _, st := range states {
		h, w, i, err := encodeUser(&st)
		if err != nil {
			t.Fatal(err)
		}
		hist := st.History
		if hist == nil {
			hist = []features.HistoryEntry{}
		}
		for _, c := range []struct {
			name, got string
			want      any
		}{{"history", h, hist}, {"watched", w, nonNilMap(st.Watched)}, {"impressions", i, nonNilMap(st.ImpressionCounts)}} {
			want, _ := json.Marshal(c.want)
			if c.got != string(want) {
				t.Fatalf("%s: got %s, encoding/json %s", c.name, c.got, want)
			}
		}
		got, err := decodeUser(UserFields{h, w, i})
		if err != nil {
			t.Fatal(err)
		}
		var want features.UserState
		_ = json.Unmarshal([]byte(h), &want.History)
		_ = json.Unmarshal([]byte(w), &want.Watched)
		_ = json.Unmarshal([]byte(i), &want.ImpressionCounts)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("decode %s %s %s:\n got  %+v\n want %+v", h, w, i, got, want)
		}
	}
}

// Documents the fast path does not handle decode as encoding/json decodes them.
func TestUserCodecDecodeFallback(t *testing.T) {
	cases := []struct{ name, h, w, i string }{
		{"whitespace", " [ {\"item_id\" : \"a\" , \"ts_ms\":1,\"quality\": 0.5 } ] ", " { \"a\" : 1 } ", "{ \"a\" : { \"count\" : 2 , \"last_ts_ms\" : 3 } }"},
		{"null", "null", "null", "null"},
		{"escapes", `[{"item_id":"a\"b\u00e9","ts_ms":1,"quality":1}]`, `{"\u003cx":5}`, `{"\\":{"count":1,"last_ts_ms":2}}`},
		{"unicode", `[{"item_id":"日本","ts_ms":1,"quality":1}]`, `{"é":5}`, `{"é":{"count":1,"last_ts_ms":2}}`},
		{"case-insensitive and unknown fields", `[{"ITEM_ID":"a","ts_ms":1,"quality":1,"x":2}]`, `{}`, `{"a":{"Count":1,"other":[1,2]}}`},
		{"exponent float", `[{"item_id":"a","ts_ms":1,"quality":1e-7}]`, `{"a":0}`, `{}`},
		{"empty", `[]`, `{}`, `{}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := decodeUser(UserFields{c.h, c.w, c.i})
			if err != nil {
				t.Fatal(err)
			}
			var want features.UserState
			for _, x := range []struct {
				s string
				v any
			}{{c.h, &want.History}, {c.w, &want.Watched}, {c.i, &want.ImpressionCounts}} {
				if err := json.Unmarshal([]byte(x.s), x.v); err != nil {
					t.Fatal(err)
				}
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("got %+v, want %+v", got, want)
			}
		})
	}
	for _, bad := range []struct{ h, w, i string }{
		{`[{"item_id":"a"`, `{}`, `{}`},
		{`[]`, `{"a":"x"}`, `{}`},
		{`[]`, `{}`, `{"a":{"count":1.5}}`},
		{`[] x`, `{}`, `{}`},
	} {
		if _, err := decodeUser(UserFields{bad.h, bad.w, bad.i}); err == nil {
			t.Errorf("decodeUser(%q, %q, %q): no error", bad.h, bad.w, bad.i)
		} else if !strings.Contains(err.Error(), "decode") {
			t.Errorf("error %q does not name the document", err)
		}
	}
}

func nonNilMap[V any](m map[string]V) map[string]V {
	if m == nil {
		return map[string]V{}
	}
	return m
}

func BenchmarkUserCodec(b *testing.B) {
	st := features.UserState{Watched: map[string]int64{}, ImpressionCounts: map[string]features.ImpressionStat{}}
	for i := range 50 {
		id := "item-" + strings.Repeat("x", i%7) + string(rune('a'+i%26))
		st.History = append(st.History, features.HistoryEntry{ItemID: id, TsMs: 1_700_000_000_000 + int64(i), Quality: 0.37})
		st.Watched[id] = 1_700_000_000_000 + int64(i)
		st.ImpressionCounts[id+"i"] = features.ImpressionStat{Count: 3, LastTsMs: 1_700_000_000_000}
	}
	b.ReportAllocs()
	for b.Loop() {
		h, w, i, _ := encodeUser(&st)
		if _, err := decodeUser(UserFields{h, w, i}); err != nil {
			b.Fatal(err)
		}
	}
}

// TestDocKeys checks docKeys against sorting the map: after removals and additions, with
// additions repeated or removed again, and with the fallbacks (no previous order, a key the
// caller did not announce).
func TestDocKeys(t *testing.T) {
	set := func(keys ...string) map[string]int64 {
		m := map[string]int64{}
		for _, k := range keys {
			m[k] = 1
		}
		return m
	}
	for _, c := range []struct {
		name        string
		m           map[string]int64
		prev, added []string
	}{
		{"unchanged", set("a", "c", "e"), []string{"a", "c", "e"}, nil},
		{"removed", set("c"), []string{"a", "c", "e"}, nil},
		{"added before, between, after", set("0", "a", "b", "c", "d", "e", "z"), []string{"a", "c", "e"}, []string{"z", "b", "0", "d"}},
		{"added twice, and a known key", set("a", "b", "c"), []string{"a", "c"}, []string{"b", "b", "c"}},
		{"added then removed", set("a", "c"), []string{"a", "c"}, []string{"b"}},
		{"empty document", set("x", "y"), []string{}, []string{"y", "x"}},
		{"all removed", set(), []string{"a", "b"}, nil},
		{"no previous order", set("b", "a", "c"), nil, nil},
		{"unannounced key", set("a", "b", "c"), []string{"a", "c"}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got, want := docKeys(c.m, c.prev, c.added), sortedKeys(c.m); !slices.Equal(got, want) {
				t.Errorf("docKeys = %q, want %q", got, want)
			}
		})
	}
	// Random documents through random batches, keys sharing prefixes as item ids do.
	rng := rand.New(rand.NewPCG(3, 4))
	key := func() string { return fmt.Sprintf("item-%d", rng.IntN(300)) }
	for range 300 {
		m := map[string]int64{}
		for range rng.IntN(200) {
			m[key()] = 1
		}
		prev := sortedKeys(m)
		var added []string
		for range rng.IntN(20) {
			switch k := key(); rng.IntN(3) {
			case 0:
				delete(m, k)
			default:
				m[k] = 2
				added = append(added, k)
			}
		}
		if got, want := docKeys(m, prev, added), sortedKeys(m); !slices.Equal(got, want) {
			t.Fatalf("docKeys = %q, want %q", got, want)
		}
	}
}

// The decoders report a document's key order only when it is the order docKeys relies on.
func TestDecodeKeysOnlyWhenIncreasing(t *testing.T) {
	for _, c := range []struct {
		w, i string
		want bool
	}{
		{`{"a":1,"b":2}`, `{"a":{"count":1,"last_ts_ms":2},"b":{"count":1,"last_ts_ms":2}}`, true},
		{`{}`, `{}`, true},
		{`{"b":1,"a":2}`, `{"b":{"count":1,"last_ts_ms":2},"a":{"count":1,"last_ts_ms":2}}`, false},
		{`{"a":1,"a":2}`, `{"a":{"count":1,"last_ts_ms":2},"a":{"count":3,"last_ts_ms":4}}`, false},
		{`{"a":1, "b":"x"}`, `{"a":{"count":1,"last_ts_ms":2,"more":1}}`, false}, // decoded by encoding/json
	} {
		_, wk, werr := decodeWatchedKeys(c.w, true)
		_, ik, ierr := decodeImpressionsKeys(c.i, true)
		if (wk != nil) != c.want || (ik != nil) != c.want {
			t.Errorf("%s / %s: keys %q / %q (errors %v / %v), want keys: %v", c.w, c.i, wk, ik, werr, ierr, c.want)
		}
	}
}
