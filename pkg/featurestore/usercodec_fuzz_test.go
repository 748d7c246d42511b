package featurestore

import (
	"encoding/json"
	"reflect"
	"testing"

	"recsys/pkg/features"
)

// FuzzUserDocDecode: whatever the documents hold, the decoders (the exported ones are used by
// /reco on every request, decodeWatched by the consumer) give what encoding/json gives — both fail, or both return the same value —
// and never panic.
func FuzzUserDocDecode(f *testing.F) {
	f.Add(`[{"item_id":"a","ts_ms":1,"quality":0.5}]`, `{"a":1}`, `{"a":{"count":2,"last_ts_ms":3}}`)
	f.Add(`[]`, `{}`, `{}`)
	f.Add(`[{"item_id":"a\"b","ts_ms":-1,"quality":1e-7}]`, `{"a":1,"a":2}`, `{"a":{"count":2,"last_ts_ms":3},"a":{"count":1,"last_ts_ms":1}}`)
	f.Add(`[]`, `{}`, "{\"\xf9\":{\"count\":0,\"last_ts_ms\":0}}") // invalid UTF-8: encoding/json substitutes U+FFFD
	for _, n := range []string{"-0", "01", "-01", "12345678901234567", "123456789012345678", "9223372036854775807", "9223372036854775808", "1.0", "1e3", "-", "1-"} {
		f.Add(`[]`, `{"a":`+n+`}`, `{"a":{"count":`+n+`,"last_ts_ms":3}}`) // the integer fast path's edges
	}
	f.Fuzz(func(t *testing.T, h, w, i string) {
		var h1 []features.HistoryEntry
		err1 := json.Unmarshal([]byte(h), &h1)
		h2, err2 := DecodeHistory(h)
		if (err1 == nil) != (err2 == nil) || (err1 == nil && !reflect.DeepEqual(h1, h2)) {
			t.Fatalf("history %q: %v %v / %v %v", h, h1, err1, h2, err2)
		}
		var w1 map[string]int64
		err1 = json.Unmarshal([]byte(w), &w1)
		w2, err2 := DecodeWatchedSet(w)
		if (err1 == nil) != (err2 == nil) || (err1 == nil && len(w1) != len(w2)) {
			t.Fatalf("watched %q: %v %v / %v %v", w, w1, err1, w2, err2)
		}
		for k := range w1 {
			if err1 == nil && !w2[k] {
				t.Fatalf("watched %q: %q missing from %v", w, k, w2)
			}
		}
		if w3, err3 := decodeWatched(w); (err1 == nil) != (err3 == nil) || (err1 == nil && !reflect.DeepEqual(w1, w3)) {
			t.Fatalf("watched %q: %v %v / %v %v", w, w1, err1, w3, err3)
		}
		var i1 map[string]features.ImpressionStat
		err1 = json.Unmarshal([]byte(i), &i1)
		i2, err2 := DecodeImpressions(i)
		if (err1 == nil) != (err2 == nil) || (err1 == nil && !reflect.DeepEqual(i1, i2)) {
			t.Fatalf("impressions %q: %v %v / %v %v", i, i1, err1, i2, err2)
		}
	})
}
