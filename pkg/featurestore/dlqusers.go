package featurestore

import (
	"encoding/json"
	"strings"
	"unicode/utf8"
)

// payloadStrings returns the distinct JSON string values in payload (not member names), at
// most limit of them (0: all), as an erased user's id would appear in a dead letter that has
// no Kafka key: the consumer stores a dead letter without its key when PostgreSQL refused it
// whole, and another producer may publish without one. The payload need not be valid JSON (it
// is a dead letter: truncated, a field of the wrong type, an unknown schema): each quoted
// string is taken on its own, decoded from its JSON escapes ("\u00e9", "\/") or, when those
// are invalid, as its bytes stand. A value that is itself JSON (an event a producer wrapped
// as a string) is read for its values too. An id that is not a quoted string in the bytes (a
// number, another encoding than JSON) is not found.
func payloadStrings(payload []byte, limit int) []string {
	p := stringScan{limit: limit, seen: map[string]bool{}}
	p.scan(payload, 0)
	return p.out
}

// maxWrapped is how many times a value holding JSON is read in turn.
const maxWrapped = 2

type stringScan struct {
	limit int
	seen  map[string]bool
	out   []string
}

// scan adds the values of b, and reports false once the limit is reached.
func (p *stringScan) scan(b []byte, depth int) bool {
	for i := 0; i < len(b); i++ {
		if b[i] != '"' {
			continue
		}
		end := i + 1
		for end < len(b) && b[end] != '"' {
			if b[end] == '\\' {
				end++
			}
			end++
		}
		if end >= len(b) {
			return true // unterminated: the rest is no whole string
		}
		raw := b[i : end+1]
		i = end
		// Bytes that are no text PostgreSQL stores hold no user id forgotten_users can hold.
		if nameFollows(b[end+1:]) || !utf8.Valid(raw) {
			continue
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			s = string(raw[1 : len(raw)-1])
		}
		if s == "" || strings.ContainsRune(s, 0) || p.seen[s] {
			continue
		}
		p.seen[s] = true
		p.out = append(p.out, s)
		if p.limit > 0 && len(p.out) == p.limit {
			return false
		}
		if t := strings.TrimSpace(s); depth < maxWrapped && t != "" && (t[0] == '{' || t[0] == '[') {
			if !p.scan([]byte(t), depth+1) {
				return false
			}
		}
	}
	return true
}

// nameFollows reports whether rest, the bytes after a closing quote, start (past white
// space) with the colon that makes the string a member name.
func nameFollows(rest []byte) bool {
	for _, c := range rest {
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		case ':':
			return true
		}
		return false
	}
	return false
}
