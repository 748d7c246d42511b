package featurestore

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"recsys/pkg/features"
)

// ImpressionsFormat is how a user's impression counters are written (column impressions,
// Redis field "i"). Every reader takes both.
//
// At a feed's steady state a user keeps ImpressionMemory (300) counters, and the document is
// read, merged and written on every served list, by the API, the consumer, PostgreSQL and
// Redis: ~120 µs of the machine per list at the cap (docs/performance-log.md, session 19). The object
// form spends most of its bytes on field names; the array form is the same JSON data in
// about 60 % of the bytes.
type ImpressionsFormat string

const (
	// ImpressionsObject is {"item":{"count":N,"last_ts_ms":T},...}, keys increasing.
	ImpressionsObject ImpressionsFormat = "object"
	// ImpressionsArray is ["item",N,T,...], items increasing.
	ImpressionsArray ImpressionsFormat = "array"
)

// ParseImpressionsFormat checks a configured format.
func ParseImpressionsFormat(s string) (ImpressionsFormat, error) {
	switch f := ImpressionsFormat(s); f {
	case ImpressionsObject, ImpressionsArray:
		return f, nil
	}
	return "", fmt.Errorf("unknown impressions format %q (want %q or %q)", s, ImpressionsObject, ImpressionsArray)
}

// encode writes counters m, keys being its keys increasing.
func (f ImpressionsFormat) encode(m map[string]features.ImpressionStat, keys []string) string {
	open, closing, _, _ := f.syntax("")
	entry, size := appendObjectEntry, 56
	if f == ImpressionsArray {
		entry, size = appendArrayEntry, 36
	}
	b := make([]byte, 0, 2+len(m)*size)
	b = append(b, open)
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = entry(b, k, m[k])
	}
	return string(append(b, closing))
}

// appendArrayEntry and appendObjectEntry write one counter in each form.
func appendArrayEntry(b []byte, k string, st features.ImpressionStat) []byte {
	b = appendJSONString(b, k)
	b = append(b, ',')
	b = strconv.AppendInt(b, st.Count, 10)
	b = append(b, ',')
	return strconv.AppendInt(b, st.LastTsMs, 10)
}

func appendObjectEntry(b []byte, k string, st features.ImpressionStat) []byte {
	b = appendJSONString(b, k)
	b = append(b, `:{"count":`...)
	b = strconv.AppendInt(b, st.Count, 10)
	b = append(b, `,"last_ts_ms":`...)
	b = strconv.AppendInt(b, st.LastTsMs, 10)
	return append(b, '}')
}

// formatOf reports the format a stored document is in.
func formatOf(doc string) ImpressionsFormat {
	if strings.HasPrefix(strings.TrimLeft(doc, " \t\r\n"), "[") {
		return ImpressionsArray
	}
	return ImpressionsObject
}

// decodeArrayImpressions decodes the array form. The form ImpressionsArray.encode writes is
// read entry by entry; any other (escaped items, white space) goes through encoding/json.
func decodeArrayImpressions(s string, withKeys bool) (map[string]features.ImpressionStat, []string, error) {
	if m, keys, ok := decodeCanonical(s, withKeys, ImpressionsArray); ok {
		return m, keys, nil
	}
	var raw []json.RawMessage
	if err := json.Unmarshal([]byte(s), &raw); err != nil {
		return nil, nil, err
	}
	if len(raw)%3 != 0 {
		return nil, nil, fmt.Errorf("impression counters: %d values, not triples", len(raw))
	}
	m := make(map[string]features.ImpressionStat, len(raw)/3)
	for i := 0; i < len(raw); i += 3 {
		var k string
		var st features.ImpressionStat
		if err := json.Unmarshal(raw[i], &k); err != nil {
			return nil, nil, fmt.Errorf("impression counters: item %d: %w", i/3, err)
		}
		if err := json.Unmarshal(raw[i+1], &st.Count); err != nil {
			return nil, nil, fmt.Errorf("impression counters: count of %q: %w", k, err)
		}
		if err := json.Unmarshal(raw[i+2], &st.LastTsMs); err != nil {
			return nil, nil, fmt.Errorf("impression counters: time of %q: %w", k, err)
		}
		m[k] = st
	}
	return m, nil, nil
}

// syntax returns f's brackets, its entry parser (as f's encoder writes an entry) and an
// upper bound of the entries of document s.
func (f ImpressionsFormat) syntax(s string) (open, closing byte, parse func(string) (string, int64, int64, string, bool), entries int) {
	if f == ImpressionsArray {
		return '[', ']', canonicalArrayEntry, strings.Count(s, `"`) / 2 // two quotes per item
	}
	return '{', '}', canonicalImpression, max(strings.Count(s, "{")-1, 0) // one brace per entry
}

// canonicalArrayEntry reads `"item",N,T` at the start of s as appendArrayEntry writes it.
func canonicalArrayEntry(s string) (key string, count, ts int64, rest string, ok bool) {
	if key, s, ok = canonicalKey(s); !ok {
		return
	}
	if len(s) == 0 || s[0] != ',' {
		return "", 0, 0, "", false
	}
	if count, s, ok = canonicalInt(s[1:]); !ok {
		return
	}
	if len(s) == 0 || s[0] != ',' {
		return "", 0, 0, "", false
	}
	if ts, s, ok = canonicalInt(s[1:]); !ok {
		return
	}
	return key, count, ts, s, true
}

// canonicalKey reads a string at the start of s that appendJSONString writes unescaped.
func canonicalKey(s string) (key, rest string, ok bool) {
	if len(s) == 0 || s[0] != '"' {
		return "", "", false
	}
	end := strings.IndexByte(s[1:], '"')
	if end < 0 {
		return "", "", false
	}
	key = s[1 : 1+end]
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < 0x20 || c > 0x7e || c == '\\' || c == '<' || c == '>' || c == '&' {
			return "", "", false
		}
	}
	return key, s[2+end:], true
}
