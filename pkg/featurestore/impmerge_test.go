package featurestore

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"recsys/pkg/features"
)

// TestLazyImpressionsMatchApply: for stored documents in either format, in and out of the
// encoders' form, written in either format, and batches that stay below the trim or pass it,
// the merged document is byte for byte what applying the events one by one with
// features.ApplyInto and encoding gives, and the fast merge serves the common case.
func TestLazyImpressionsMatchApply(t *testing.T) {
	for _, stored := range []ImpressionsFormat{ImpressionsObject, ImpressionsArray} {
		for _, written := range []ImpressionsFormat{ImpressionsObject, ImpressionsArray} {
			t.Run(fmt.Sprintf("%s-to-%s", stored, written), func(t *testing.T) { lazyMatchesApply(t, stored, written) })
		}
	}
}

func lazyMatchesApply(t *testing.T, storedIn, writtenIn ImpressionsFormat) {
	cfg := features.DefaultConfig()
	cfg.ImpressionMemory = 40 // trims past 56 entries
	r := rand.New(rand.NewPCG(7, 8))
	item := func() string {
		if r.IntN(500) == 0 {
			return `odd"<id>` // a key encodeImpressions escapes
		}
		return fmt.Sprintf("item%03d", r.IntN(90))
	}
	merged := 0
	for n := range 3000 {
		// A stored document: encodeImpressions' form, or one of the forms only the decoder
		// accepts.
		m := map[string]features.ImpressionStat{}
		for range r.IntN(50) {
			m[item()] = features.ImpressionStat{Count: 1 + r.Int64N(5), LastTsMs: r.Int64N(1_000_000)}
		}
		stored := storedIn.encode(m, sortedKeys(m))
		switch {
		case n%10 == 7:
			stored = strings.ReplaceAll(stored, `,`, ` , `)
		case n%10 == 8 && storedIn == ImpressionsObject:
			stored = strings.Replace(stored, `{"count":`, `{"last_ts_ms":0,"count":`, 1)
		case n%20 == 9 && storedIn == ImpressionsObject:
			stored = "{}"
		case n%20 == 9:
			stored = "[]"
		}
		var b Batch
		l := &lazyImpressions{stored: stored}
		var d features.Delta
		for i := range 1 + r.IntN(4) {
			ev := features.Interaction{Kind: features.KindImpression, UserID: "u", EventID: fmt.Sprint(i), TsMs: r.Int64N(2_000_000) - 500_000}
			for range r.IntN(12) {
				ev.Items = append(ev.Items, item())
			}
			if i == 1 {
				ev.Items = append(append(ev.Items, ""), ev.Items...) // repeats and an empty id count once
			}
			b.Events = append(b.Events, Event{Interaction: ev})
			features.ImpressionDeltaInto(cfg, ev, &d)
			l.add(i, ev.TsMs, d.UserImpressions)
		}

		want, err := DecodeImpressions(stored)
		if err != nil {
			t.Fatal(err)
		}
		st := features.UserState{ImpressionCounts: want}
		for _, e := range b.Events {
			st = features.ApplyInto(cfg, st, e.Interaction, &d)
		}
		wantDoc := writtenIn.encode(st.ImpressionCounts, sortedKeys(st.ImpressionCounts))
		got, entries, err := l.document(cfg, &b, writtenIn, stored)
		if err != nil {
			t.Fatal(err)
		}
		if got != wantDoc || entries != len(st.ImpressionCounts) {
			t.Fatalf("case %d: stored %s\ngot  %s (%d entries)\nwant %s", n, stored, got, entries, wantDoc)
		}
		if back, err := DecodeImpressions(got); err != nil || !maps.Equal(back, st.ImpressionCounts) {
			t.Fatalf("case %d: %s decodes to %v (%v), want %v", n, got, back, err, st.ImpressionCounts)
		}
		if _, _, ok := mergeImpressions(stored, l.inc, sortedKeys(l.inc), cfg.ImpressionTrimAt(), writtenIn); ok {
			merged++
		}
	}
	// Between formats every case is a replay; within one, most merge.
	if want := 1500; storedIn == writtenIn && merged < want {
		t.Fatalf("the fast merge served %d of 3000 cases", merged)
	} else if storedIn != writtenIn && merged > 0 {
		t.Fatalf("the fast merge served %d cases across formats", merged)
	}
	t.Logf("fast merge in %d of 3000 cases", merged)
}

func TestMergeImpressionsRefusesWhatItCannotCopy(t *testing.T) {
	inc := map[string]features.ImpressionStat{"b": {Count: 1, LastTsMs: 5}}
	for _, stored := range []string{
		``, `{`, `[]`, `{,}`,
		`{"a":{"count":1,"last_ts_ms":2},}`,                                      // trailing comma
		`{"b":{"count":1,"last_ts_ms":2},"a":{"count":1,"last_ts_ms":2}}`,        // keys out of order
		`{"a":{"count":1,"last_ts_ms":2},"a":{"count":1,"last_ts_ms":2}}`,        // repeated key
		`{"a":{"count":01,"last_ts_ms":2}}`, `{"a":{"count":-0,"last_ts_ms":2}}`, // not strconv's
		`{"a":{"count":1,"last_ts_ms":2} }`, `{"a\u0041":{"count":1,"last_ts_ms":2}}`,
		`{"a":{"count":99999999999999999999,"last_ts_ms":2}}`,
	} {
		if doc, _, ok := mergeImpressions(stored, inc, []string{"b"}, -1, ImpressionsObject); ok {
			t.Errorf("%s merged into %s", stored, doc)
		}
	}
	// Within the bound, and one entry past it.
	stored := `{"a":{"count":1,"last_ts_ms":9},"c":{"count":2,"last_ts_ms":-3}}`
	want := `{"a":{"count":1,"last_ts_ms":9},"b":{"count":1,"last_ts_ms":5},"c":{"count":2,"last_ts_ms":-3}}`
	if doc, n, ok := mergeImpressions(stored, inc, []string{"b"}, 3, ImpressionsObject); !ok || doc != want || n != 3 {
		t.Errorf("merge: %s (%d entries) %v, want %s", doc, n, ok, want)
	}
	if _, _, ok := mergeImpressions(stored, inc, []string{"b"}, 2, ImpressionsObject); ok {
		t.Error("a merge past the trim bound was accepted")
	}
}

func TestCanonicalInt(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0,", 0, true}, {"7}", 7, true}, {"-12,", -12, true}, {"1764489600000}", 1764489600000, true},
		{"9223372036854775807}", 9223372036854775807, true}, {"-9223372036854775808}", -9223372036854775808, true},
		{"9223372036854775808}", 0, false}, {"00", 0, false}, {"-0", 0, false}, {"012", 0, false}, {"-", 0, false}, {"", 0, false}, {"x", 0, false},
	} {
		v, _, ok := canonicalInt(tc.in)
		if ok != tc.ok || (ok && v != tc.want) {
			t.Errorf("canonicalInt(%q) = %d, %v; want %d, %v", tc.in, v, ok, tc.want, tc.ok)
		}
	}
}

// TestDecodeCanonicalImpressions: the fast decoder reads what encodeImpressions writes as
// encoding/json does, keys in order, and leaves every other form to the general decoder.
func TestDecodeCanonicalImpressions(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	for n := range 500 {
		m := map[string]features.ImpressionStat{}
		for range r.IntN(40) {
			m[fmt.Sprintf("item%03d", r.IntN(500))] = features.ImpressionStat{Count: r.Int64N(9) - 1, LastTsMs: r.Int64N(1<<42) - 1<<20}
		}
		doc := encodeImpressions(m, sortedKeys(m))
		got, keys, ok := decodeCanonical(doc, true, ImpressionsObject)
		var want map[string]features.ImpressionStat
		if err := json.Unmarshal([]byte(doc), &want); err != nil {
			t.Fatal(err)
		}
		if !ok || !maps.Equal(got, want) || !slices.Equal(keys, sortedKeys(m)) {
			t.Fatalf("case %d: %s decoded %v %v %v", n, doc, ok, got, keys)
		}
	}
	for _, doc := range []string{
		`{"a":{"count":1, "last_ts_ms":2}}`, `{"a":{"last_ts_ms":2,"count":1}}`, `{"b":{"count":1,"last_ts_ms":2},"a":{"count":1,"last_ts_ms":2}}`,
		`{"a\u00e9":{"count":1,"last_ts_ms":2}}`, `{"a":{"count":1,"last_ts_ms":2},}`, `null`, ``,
	} {
		if _, _, ok := decodeCanonical(doc, false, ImpressionsObject); ok {
			t.Errorf("%s read by the fast decoder", doc)
		}
	}
}

// TestArrayImpressions: the array form decodes to what the object form does, in the encoder's
// form and in any other JSON spelling of it, and what is not triples is an error.
func TestArrayImpressions(t *testing.T) {
	m := map[string]features.ImpressionStat{"a": {Count: 2, LastTsMs: 5}, `odd"<id>`: {Count: 1, LastTsMs: -3}, "b": {Count: 7, LastTsMs: 1764489600000}}
	doc := ImpressionsArray.encode(m, sortedKeys(m))
	if want := `["a",2,5,"b",7,1764489600000,"odd\"\u003cid\u003e",1,-3]`; doc != want {
		t.Fatalf("encoded %s, want %s", doc, want)
	}
	for _, s := range []string{doc, strings.ReplaceAll(doc, ",", " , "), ` ["b",7,1764489600000,"a",2,5,"odd\"<id>",1,-3]`} {
		got, err := DecodeImpressions(s)
		if err != nil || !maps.Equal(got, m) {
			t.Errorf("%s decoded to %v, %v", s, got, err)
		}
	}
	if got, err := DecodeImpressions("[]"); err != nil || len(got) != 0 {
		t.Errorf("[] decoded to %v, %v", got, err)
	}
	for _, bad := range []string{`["a",1]`, `["a",1,"x"]`, `[1,2,3]`, `["a",1,2`} {
		if got, err := DecodeImpressions(bad); err == nil {
			t.Errorf("%s decoded to %v", bad, got)
		}
	}
}
