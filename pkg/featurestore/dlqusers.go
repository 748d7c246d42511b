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
// are invalid, as its bytes stand. An id that is not a quoted string in the bytes (a number,
// another encoding than JSON) is not found.
func payloadStrings(payload []byte, limit int) []string {
	var out []string
	seen := map[string]bool{}
	for i := 0; i < len(payload); i++ {
		if payload[i] != '"' {
			continue
		}
		end := i + 1
		for end < len(payload) && payload[end] != '"' {
			if payload[end] == '\\' {
				end++
			}
			end++
		}
		if end >= len(payload) {
			break // unterminated: the rest is no whole string
		}
		raw := payload[i : end+1]
		i = end
		if nameFollows(payload[end+1:]) {
			continue
		}
		// Bytes that are no text PostgreSQL stores hold no user id forgotten_users can hold.
		if !utf8.Valid(raw) {
			continue
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			s = string(raw[1 : len(raw)-1])
		}
		if s == "" || strings.ContainsRune(s, 0) || seen[s] {
			continue
		}
		seen[s] = true
		out = append(out, s)
		if limit > 0 && len(out) == limit {
			break
		}
	}
	return out
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
