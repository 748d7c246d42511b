package featurestore

import (
	"encoding/json"
	"math/rand/v2"
	"reflect"
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
		got, err := decodeUser(h, w, i)
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
			got, err := decodeUser(c.h, c.w, c.i)
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
		if _, err := decodeUser(bad.h, bad.w, bad.i); err == nil {
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
		if _, err := decodeUser(h, w, i); err != nil {
			b.Fatal(err)
		}
	}
}
