package featurestore

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"recsys/pkg/features"
)

// The user documents (history, watched, impressions) are encoded and decoded for every user
// of every batch, inside the batch's transaction: with encoding/json's reflection they were a
// fifth of the apply time. The hand-written codec below writes exactly the bytes json.Marshal
// writes (sorted map keys, the same float format and string escaping, so PostgreSQL, Redis and
// modules/reco see no difference) and parses the shapes it writes; any input it does not
// recognise (escaped strings, unknown fields, null) is handed to encoding/json, so old or
// hand-edited documents decode exactly as before.

// appendJSONString appends s as json.Marshal would.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // escaping, HTML-safe and invalid UTF-8 rules: rare, keep them exact
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

var errNonFinite = errors.New("json: unsupported value: non-finite float")

// appendJSONFloat appends f in encoding/json's float64 format.
func appendJSONFloat(b []byte, f float64) ([]byte, error) {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return b, errNonFinite
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// clean up e-09 to e-9, as encoding/json does
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b, nil
}

// encodeUser and decodeUser convert a whole state; the apply path encodes only the parts a
// batch changed (see userDoc).
func encodeUser(st *features.UserState) (h, w, i string, err error) {
	if h, err = encodeHistory(st.History); err != nil {
		return "", "", "", fmt.Errorf("encode history: %w", err)
	}
	return h, encodeWatched(st.Watched, sortedKeys(st.Watched)), encodeImpressions(st.ImpressionCounts, sortedKeys(st.ImpressionCounts)), nil
}

// UserFields are a user's stored documents: history, watched set, impression counters and
// their overlay (overlay.go), as UserFieldNames name them in the Redis hash.
type UserFields [4]string

// UserFieldNames are the Redis hash fields of UserFields.
var UserFieldNames = [...]string{"h", "w", "i", "r"}

func decodeUser(f UserFields) (features.UserState, error) {
	var st features.UserState
	var err error
	if st.History, err = DecodeHistory(f[0]); err != nil {
		return st, fmt.Errorf("decode history: %w", err)
	}
	if st.Watched, err = decodeWatched(f[1]); err != nil {
		return st, fmt.Errorf("decode watched: %w", err)
	}
	if st.ImpressionCounts, _, _, err = decodeEffectiveImpressions(f[2], f[3], false); err != nil {
		return st, fmt.Errorf("decode impressions: %w", err)
	}
	return st, nil
}

func encodeHistory(h []features.HistoryEntry) (string, error) {
	b := make([]byte, 0, 16+len(h)*64)
	b = append(b, '[')
	var err error
	for i, e := range h {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"item_id":`...)
		b = appendJSONString(b, e.ItemID)
		b = append(b, `,"ts_ms":`...)
		b = strconv.AppendInt(b, e.TsMs, 10)
		b = append(b, `,"quality":`...)
		if b, err = appendJSONFloat(b, e.Quality); err != nil {
			return "", err
		}
		b = append(b, '}')
	}
	return string(append(b, ']')), nil
}

func encodeWatched(m map[string]int64, keys []string) string {
	b := make([]byte, 0, 2+len(m)*32)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, k)
		b = append(b, ':')
		b = strconv.AppendInt(b, m[k], 10)
	}
	return string(append(b, '}'))
}

// encodeImpressions writes the object form, what every release reads.
func encodeImpressions(m map[string]features.ImpressionStat, keys []string) string {
	return ImpressionsObject.encode(m, keys)
}

// jsonScan is a minimal scanner for the documents encodeUser writes. ok turns false at the
// first thing it does not handle; the caller then falls back to encoding/json.
type jsonScan struct {
	s  string
	i  int
	ok bool
}

func (p *jsonScan) ws() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// eat consumes c (after white space) and reports whether it was there.
func (p *jsonScan) eat(c byte) bool {
	p.ws()
	if p.i < len(p.s) && p.s[p.i] == c {
		p.i++
		return true
	}
	return false
}

func (p *jsonScan) expect(c byte) {
	if !p.eat(c) {
		p.ok = false
	}
}

// str reads a string without escapes (escapes: fall back).
func (p *jsonScan) str() string {
	if !p.eat('"') {
		p.ok = false
		return ""
	}
	j := strings.IndexByte(p.s[p.i:], '"')
	if j < 0 {
		p.ok = false
		return ""
	}
	v := p.s[p.i : p.i+j]
	for k := 0; k < len(v); k++ {
		if c := v[k]; c == '\\' || c < 0x20 || c > 0x7e {
			p.ok = false // escapes and non-ASCII (UTF-8 validation) are encoding/json's business
			return ""
		}
	}
	p.i += j + 1
	return v
}

func (p *jsonScan) number() string {
	p.ws()
	j := p.i
	for j < len(p.s) && numberByte(p.s[j]) {
		j++
	}
	v := p.s[p.i:j]
	p.i = j
	if !jsonNumber(v) {
		p.ok = false
	}
	return v
}

// jsonNumber reports whether v is a number in JSON's grammar (strconv also takes "+1", "01"
// and "1.", which encoding/json rejects).
func jsonNumber(v string) bool {
	i := 0
	if i < len(v) && v[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(v) && v[i] >= '0' && v[i] <= '9' {
			i++
			n++
		}
		return n
	}
	switch {
	case i < len(v) && v[i] == '0':
		i++
	case digits() == 0:
		return false
	}
	if i < len(v) && v[i] == '.' {
		i++
		if digits() == 0 {
			return false
		}
	}
	if i < len(v) && (v[i] == 'e' || v[i] == 'E') {
		i++
		if i < len(v) && (v[i] == '+' || v[i] == '-') {
			i++
		}
		if digits() == 0 {
			return false
		}
	}
	return i == len(v)
}

// int reads an integer. The encoder's plain digits (no leading zero, fewer than 18 digits, so
// no overflow) are parsed in place: the general scan below was a third of the decode time
// of a full user. Anything else goes through the JSON grammar and strconv.
func (p *jsonScan) int() int64 {
	p.ws()
	i, neg := p.i, false
	if i < len(p.s) && p.s[i] == '-' {
		i, neg = i+1, true
	}
	start := i
	var v int64
	for ; i < len(p.s) && i-start < 18 && p.s[i] >= '0' && p.s[i] <= '9'; i++ {
		v = v*10 + int64(p.s[i]-'0')
	}
	if n := i - start; n > 0 && n < 18 && (n == 1 || p.s[start] != '0') && (i == len(p.s) || !numberByte(p.s[i])) {
		p.i = i
		if neg {
			return -v
		}
		return v
	}
	v, err := strconv.ParseInt(p.number(), 10, 64)
	if err != nil {
		p.ok = false
	}
	return v
}

// numberByte reports whether c can occur in a JSON number.
func numberByte(c byte) bool {
	return c >= '0' && c <= '9' || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E'
}

func (p *jsonScan) float() float64 {
	v, err := strconv.ParseFloat(p.number(), 64)
	if err != nil {
		p.ok = false
	}
	return v
}

func (p *jsonScan) end() {
	p.ws()
	if p.i != len(p.s) {
		p.ok = false
	}
}

// object calls field for each key of an object until it returns or the scan fails.
func (p *jsonScan) object(field func(key string)) {
	p.expect('{')
	if !p.ok || p.eat('}') {
		return
	}
	for p.ok {
		k := p.str()
		p.expect(':')
		if !p.ok {
			return
		}
		field(k)
		if p.eat(',') {
			continue
		}
		p.expect('}')
		return
	}
}

// array calls elem for each element of an array until the scan fails.
func (p *jsonScan) array(elem func()) {
	p.expect('[')
	if !p.ok || p.eat(']') {
		return
	}
	for p.ok {
		elem()
		if p.eat(',') {
			continue
		}
		p.expect(']')
		return
	}
}

// DecodeHistory decodes a user's history document (field "h" of the Redis user hash, column
// history of feature_users), most recent first.
func DecodeHistory(s string) ([]features.HistoryEntry, error) {
	p := jsonScan{s: s, ok: true}
	out := []features.HistoryEntry{}
	p.array(func() {
		var e features.HistoryEntry
		p.object(func(k string) {
			switch k {
			case "item_id":
				e.ItemID = p.str()
			case "ts_ms":
				e.TsMs = p.int()
			case "quality":
				e.Quality = p.float()
			default:
				p.ok = false
			}
		})
		out = append(out, e)
	})
	p.end()
	if p.ok {
		return out, nil
	}
	out = nil
	return out, json.Unmarshal([]byte(s), &out)
}

// DecodeWatchedSet decodes a user's watched document (field "w", column watched) as the set
// of watched items, which is all serving needs.
func DecodeWatchedSet(s string) (map[string]bool, error) {
	p := jsonScan{s: s, ok: true}
	out := map[string]bool{}
	p.object(func(k string) { p.int(); out[k] = true })
	p.end()
	if p.ok {
		return out, nil
	}
	m, err := decodeWatched(s)
	if err != nil {
		return nil, err
	}
	out = make(map[string]bool, len(m))
	for k := range m {
		out[k] = true
	}
	return out, nil
}

func decodeWatched(s string) (map[string]int64, error) {
	m, _, err := decodeWatchedKeys(s, false)
	return m, err
}

// decodeWatchedKeys with withKeys also returns the document's keys in order when they are
// strictly increasing, as encodeWatched writes them (nil otherwise): see docKeys. Serving
// decodes without them.
func decodeWatchedKeys(s string, withKeys bool) (map[string]int64, []string, error) {
	p := jsonScan{s: s, ok: true}
	// Sized from a count of separators (a guess when ids hold commas): a full set grows
	// through several rehashes otherwise.
	n := strings.Count(s, ",") + 1
	out := make(map[string]int64, n)
	var keys []string
	if withKeys {
		keys = make([]string, 0, n)
	}
	p.object(func(k string) {
		out[k] = p.int()
		if withKeys {
			keys = append(keys, k)
		}
	})
	p.end()
	if p.ok {
		return out, increasing(keys), nil
	}
	out = nil
	return out, nil, json.Unmarshal([]byte(s), &out)
}

// DecodeImpressions decodes a user's impression counters (field "i", column impressions).
func DecodeImpressions(s string) (map[string]features.ImpressionStat, error) {
	m, _, err := decodeImpressionsKeys(s, false)
	return m, err
}

// decodeImpressionsKeys is decodeWatchedKeys for the impression counters.
func decodeImpressionsKeys(s string, withKeys bool) (map[string]features.ImpressionStat, []string, error) {
	if formatOf(s) == ImpressionsArray {
		return decodeArrayImpressions(s, withKeys)
	}
	if m, keys, ok := decodeCanonical(s, withKeys, ImpressionsObject); ok {
		return m, keys, nil
	}
	p := jsonScan{s: s, ok: true}
	n := strings.Count(s, "{") // one brace per entry, and the outer one
	out := make(map[string]features.ImpressionStat, n)
	var keys []string
	if withKeys {
		keys = make([]string, 0, n)
	}
	p.object(func(k string) {
		var st features.ImpressionStat
		p.object(func(f string) {
			switch f {
			case "count":
				st.Count = p.int()
			case "last_ts_ms":
				st.LastTsMs = p.int()
			default:
				p.ok = false
			}
		})
		out[k] = st
		if withKeys {
			keys = append(keys, k)
		}
	})
	p.end()
	if p.ok {
		return out, increasing(keys), nil
	}
	out = nil
	return out, nil, json.Unmarshal([]byte(s), &out)
}

// increasing returns keys if they are strictly increasing, else nil.
func increasing(keys []string) []string {
	for i := 1; i < len(keys); i++ {
		if keys[i-1] >= keys[i] {
			return nil
		}
	}
	return keys
}

// docKeys returns m's keys in increasing order, given prev, the increasing keys of the
// document m was decoded from, and added, every key the batch may have inserted since: a merge
// and len(prev) lookups instead of a sort of the whole map (a full watched set or impression
// memory has hundreds of keys, and sorting them was a third of the apply path's Go time for
// such users). Keys removed since (trims, a watch clearing an impression count) are skipped.
// A nil prev, or a key in m that neither covers, falls back to sorting.
func docKeys[V any](m map[string]V, prev, added []string) []string {
	if prev == nil && len(m) > 0 {
		return sortedKeys(m)
	}
	var extra []string
	for _, k := range added {
		if _, in := m[k]; in {
			if _, found := slices.BinarySearch(prev, k); !found {
				extra = append(extra, k)
			}
		}
	}
	slices.Sort(extra)
	extra = slices.Compact(extra)
	out := make([]string, 0, len(m))
	j := 0
	for _, k := range prev {
		for j < len(extra) && extra[j] < k {
			out = append(out, extra[j])
			j++
		}
		if _, in := m[k]; in {
			out = append(out, k)
		}
	}
	out = append(out, extra[j:]...)
	if len(out) != len(m) {
		return sortedKeys(m)
	}
	return out
}
