package reco

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"

	"recsys/pkg/ranking"
)

// slowDecode is the reference: encoding/json alone.
func slowDecode(h, w, i string) (hist []ranking.HistoryEntry, watched map[string]bool, imps map[string]ranking.ImpressionStat, err error) {
	if err = json.Unmarshal([]byte(h), &hist); err != nil {
		return
	}
	var wm map[string]int64
	if err = json.Unmarshal([]byte(w), &wm); err != nil {
		return
	}
	watched = map[string]bool{}
	for k := range wm {
		watched[k] = true
	}
	err = json.Unmarshal([]byte(i), &imps)
	return
}

func decodeAll(h, w, i string) ([]ranking.HistoryEntry, map[string]bool, map[string]ranking.ImpressionStat, error) {
	hist, err := decodeHistory(h)
	if err != nil {
		return nil, nil, nil, err
	}
	watched, err := decodeWatched(w)
	if err != nil {
		return nil, nil, nil, err
	}
	imps, err := decodeImpressions(i)
	return hist, watched, imps, err
}

// TestUserDocDecodeMatchesEncodingJSON: documents as the feature store writes them (including
// ids that need escaping, which take the fallback) decode exactly as encoding/json decodes them.
func TestUserDocDecodeMatchesEncodingJSON(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	ids := []string{"item-1", "a", "ünï-çødé", `quote"d`, `back\slash`, "<tag>&", "tab\tid", "x/y", "123"}
	fast := 0
	for trial := 0; trial < 500; trial++ {
		var hist []ranking.HistoryEntry
		watched := map[string]int64{}
		imps := map[string]ranking.ImpressionStat{}
		plain := trial%2 == 0 // half the documents use only ids without escapes
		id := func() string {
			if plain {
				return fmt.Sprintf("item-%d", r.IntN(1000))
			}
			return ids[r.IntN(len(ids))] + fmt.Sprint(r.IntN(5))
		}
		for j := 0; j < r.IntN(60); j++ {
			hist = append(hist, ranking.HistoryEntry{ItemID: id(), TsMs: r.Int64N(2e12) - 1e11, Quality: []float64{0, 1, 0.5, r.Float64(), 1e-9, 123456.789}[r.IntN(6)]})
			watched[id()] = r.Int64N(2e12)
			imps[id()] = ranking.ImpressionStat{Count: r.Int64N(100), LastTsMs: r.Int64N(2e12)}
		}
		if hist == nil {
			hist = []ranking.HistoryEntry{}
		}
		hb, _ := json.Marshal(hist)
		wb, _ := json.Marshal(watched)
		ib, _ := json.Marshal(imps)
		h1, w1, i1, err1 := slowDecode(string(hb), string(wb), string(ib))
		h2, w2, i2, err2 := decodeAll(string(hb), string(wb), string(ib))
		if err1 != nil || err2 != nil {
			t.Fatalf("trial %d: errors %v / %v", trial, err1, err2)
		}
		if !reflect.DeepEqual(h1, h2) || !reflect.DeepEqual(w1, w2) || !reflect.DeepEqual(i1, i2) {
			t.Fatalf("trial %d: decodes differ\n%s\n%v\n%v", trial, hb, h1, h2)
		}
		if _, ok := fastHistory(string(hb)); ok {
			fast++
		}
	}
	if fast < 250 {
		t.Fatalf("fast path taken %d times of 500, want every plain document (>= 250)", fast)
	}
}

// TestUserDocDecodeErrors: broken documents are errors from either path, never a silent
// partial result.
func TestUserDocDecodeErrors(t *testing.T) {
	for _, tc := range []struct{ name, h, w, i string }{
		{"truncated history", `[{"item_id":"a","ts_ms":1,"quality":1}`, `{}`, `{}`},
		{"history not a list", `{"item_id":"a"}`, `{}`, `{}`},
		{"watched value not a number", `[]`, `{"a":"x"}`, `{}`},
		{"impressions truncated", `[]`, `{}`, `{"a":{"count":1,`},
		{"trailing garbage", `[]x`, `{}`, `{}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, _, err := decodeAll(tc.h, tc.w, tc.i); err == nil {
				t.Fatal("no error")
			}
		})
	}
}

// FuzzUserDocDecode: any input decodes as encoding/json decodes it (both fail, or both give
// the same value), and never panics.
func FuzzUserDocDecode(f *testing.F) {
	f.Add(`[{"item_id":"a","ts_ms":1,"quality":0.5}]`, `{"a":1}`, `{"a":{"count":2,"last_ts_ms":3}}`)
	f.Add(`[]`, `{}`, `{}`)
	f.Add(`[{"item_id":"a\"b","ts_ms":-1,"quality":1e-7}]`, `{"a":1,"a":2}`, `{"a":{"count":2,"last_ts_ms":3},"a":{"count":1,"last_ts_ms":1}}`)
	f.Fuzz(func(t *testing.T, h, w, i string) {
		h1, w1, i1, err1 := slowDecode(h, w, i)
		h2, w2, i2, err2 := decodeAll(h, w, i)
		if (err1 == nil) != (err2 == nil) {
			t.Fatalf("errors differ: %v / %v", err1, err2)
		}
		if err1 == nil && (!reflect.DeepEqual(h1, h2) || !reflect.DeepEqual(w1, w2) || !reflect.DeepEqual(i1, i2)) {
			t.Fatalf("decodes differ:\n%v %v %v\n%v %v %v", h1, w1, i1, h2, w2, i2)
		}
	})
}

func BenchmarkUserDocDecode(b *testing.B) {
	var hist []ranking.HistoryEntry
	watched := map[string]int64{}
	imps := map[string]ranking.ImpressionStat{}
	for j := 0; j < 50; j++ {
		hist = append(hist, ranking.HistoryEntry{ItemID: fmt.Sprintf("item-%04d", j*7), TsMs: 1_700_000_000_000 + int64(j), Quality: 0.73})
		watched[fmt.Sprintf("item-%04d", j*7)] = 1_700_000_000_000
		imps[fmt.Sprintf("item-%04d", j*3)] = ranking.ImpressionStat{Count: 3, LastTsMs: 1_700_000_000_000}
	}
	hb, _ := json.Marshal(hist)
	wb, _ := json.Marshal(watched)
	ib, _ := json.Marshal(imps)
	for _, c := range []struct {
		name string
		fn   func(h, w, i string) ([]ranking.HistoryEntry, map[string]bool, map[string]ranking.ImpressionStat, error)
	}{{"encoding-json", slowDecode}, {"scanner", decodeAll}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, _, _, err := c.fn(string(hb), string(wb), string(ib)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
