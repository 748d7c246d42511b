package reco

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/labstack/echo/v4"

	"recsys/pkg/events"
)

// idPattern documents the accepted user_id / session_id characters in 422 details: letters
// and digits of any script plus a few separators common in ids (e-mails, URNs, paths, UUIDs).
// Whitespace, control characters, quotes, backslashes, brackets and braces are refused: they
// are never part of a sane id and only cause trouble downstream (logs, keys, URLs).
const idPattern = `^[\p{L}\p{M}\p{N}\-_.:@/+=~!$*,;|#%&]{1,128}$`

const (
	maxIDLen = 128
	kMin     = 1
	kMax     = 200
	// The default k of /reco and of the legacy /recommend.
	kDefaultReco      = 20
	kDefaultRecommend = 10
)

// recoQuery is a validated /reco or /recommend query.
type recoQuery struct {
	userID    string
	sessionID string
	k         int
	autolog   bool
}

// queryErrors collects 422 detail entries in pydantic's shape (loc ["query", name]).
type queryErrors []events.FieldError

func (q *queryErrors) add(name, typ, msg string, input any, ctx map[string]any) {
	*q = append(*q, events.FieldError{Type: typ, Loc: []any{"query", name}, Msg: msg, Input: input, Ctx: ctx})
}

func (q queryErrors) err() error {
	if len(q) == 0 {
		return nil
	}
	return echo.NewHTTPError(http.StatusUnprocessableEntity, []events.FieldError(q))
}

// rawQuery is a request's raw query string, read in place: echo's QueryParams builds a
// url.Values map for every request, about 450 bytes that the collector had to reclaim on the
// hottest path (docs/performance-log.md, session 28). It reads the pairs as url.ParseQuery
// does, so the answers are the same (TestRawQueryMatchesParseQuery).
type rawQuery string

// last returns the last value of a repeated parameter, as Starlette does. Like
// url.ParseQuery it skips empty pairs, pairs with a semicolon and pairs whose key or value is
// badly escaped; unescaping a value without escapes does not copy it. bad reports that the
// last pair naming the parameter was skipped because its value has a raw ';' or a bad
// escape: Starlette kept such a value as text, so only as the last one did it matter.
func (q rawQuery) last(name string) (v string, found, bad bool) {
	for rest := string(q); rest != ""; {
		var pair string
		pair, rest, _ = strings.Cut(rest, "&")
		if pair == "" {
			continue
		}
		key, val, _ := strings.Cut(pair, "=")
		if key != name {
			if !strings.ContainsAny(key, "%+") {
				continue
			}
			if k, err := url.QueryUnescape(key); err != nil || k != name {
				continue
			}
		}
		if strings.Contains(pair, ";") {
			bad = true
			continue
		}
		val, err := url.QueryUnescape(val)
		if err != nil {
			bad = true
			continue
		}
		v, found, bad = val, true, false
	}
	return v, found, bad
}

// has reports whether the query names the parameter at all (?pretty, ?pretty=).
func (q rawQuery) has(name string) bool {
	_, ok, _ := q.last(name)
	return ok
}

// undecodableMsg explains the 422 of a value the query parser cannot decode. url.ParseQuery
// (echo's reading) skips such a pair silently, which answered user_id=%zz "Field required".
const undecodableMsg = "Value error, the query value cannot be decoded: it has a raw ';' or a '%' not followed by two hex digits (send them as %3B and %25)"

// value returns the parameter's last value. A pair naming it that cannot be decoded is a 422
// of its own, reported here (bad): the caller then adds nothing.
func (q *queryErrors) value(v rawQuery, name string) (s string, ok, bad bool) {
	s, ok, bad = v.last(name)
	if bad {
		q.add(name, "value_error", undecodableMsg, strings.ToValidUTF8(rawValue(v, name), "\uFFFD"), nil)
	}
	return s, ok, bad
}

// rawValue is the raw text of the last pair naming the parameter with an undecodable value,
// for the 422's input.
func rawValue(v rawQuery, name string) string {
	var out string
	for _, pair := range strings.Split(string(v), "&") {
		key, val, _ := strings.Cut(pair, "=")
		if k, err := url.QueryUnescape(key); key != name && (err != nil || k != name) {
			continue
		}
		if _, err := url.QueryUnescape(val); err != nil || strings.Contains(pair, ";") {
			out = val
		}
	}
	return out
}

func (q *queryErrors) id(v rawQuery, name string) string {
	s, ok, bad := q.value(v, name)
	if bad {
		return ""
	}
	if !ok {
		q.add(name, "missing", "Field required", nil, nil)
		return ""
	}
	if !utf8.ValidString(s) {
		q.add(name, "string_unicode", "Input should be a valid string, unable to parse raw data as a unicode string", strings.ToValidUTF8(s, "\uFFFD"), nil)
		return ""
	}
	n := utf8.RuneCountInString(s)
	switch {
	case n < 1:
		q.add(name, "string_too_short", "String should have at least 1 character", s, map[string]any{"min_length": 1})
	case n > maxIDLen:
		q.add(name, "string_too_long", fmt.Sprintf("String should have at most %d characters", maxIDLen), s, map[string]any{"max_length": maxIDLen})
	case !validIDChars(s):
		q.add(name, "string_pattern_mismatch", "String should match pattern '"+idPattern+"'", s, map[string]any{"pattern": idPattern})
	}
	return s
}

func validIDChars(s string) bool {
	for _, r := range s {
		if r < utf8.RuneSelf {
			if !asciiIDChar(byte(r)) {
				return false
			}
			continue
		}
		if !unicode.IsLetter(r) && !unicode.IsNumber(r) && !unicode.IsMark(r) {
			return false
		}
	}
	return true
}

func asciiIDChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	switch c {
	case '-', '_', '.', ':', '@', '/', '+', '=', '~', '!', '$', '*', ',', ';', '|', '#', '%', '&':
		return true
	}
	return false
}

// intParam parses pydantic's lax integer (events.LaxInt) within [lo, hi].
func (q *queryErrors) intParam(v rawQuery, name string, def, lo, hi int) int {
	s, ok, bad := q.value(v, name)
	if bad || !ok {
		return def
	}
	n, typ := events.LaxInt(s)
	if typ == "int_parsing_size" { // out of int64 range: its sign says which bound it breaks
		typ, n = "", int64(hi)+1
		if strings.HasPrefix(strings.TrimSpace(s), "-") {
			n = int64(lo) - 1
		}
	}
	switch {
	case typ != "":
		q.add(name, typ, events.LaxMessage(typ), s, nil)
		return def
	case n < int64(lo):
		q.add(name, "greater_than_equal", fmt.Sprintf("Input should be greater than or equal to %d", lo), s, map[string]any{"ge": lo})
		return def
	case n > int64(hi):
		q.add(name, "less_than_equal", fmt.Sprintf("Input should be less than or equal to %d", hi), s, map[string]any{"le": hi})
		return def
	}
	return int(n)
}

// boolParam accepts pydantic's boolean strings.
func (q *queryErrors) boolParam(v rawQuery, name string, def bool) bool {
	s, ok, bad := q.value(v, name)
	if bad || !ok {
		return def
	}
	if b, ok := events.LaxBool(s); ok {
		return b
	}
	q.add(name, "bool_parsing", events.LaxMessage("bool_parsing"), s, nil)
	return def
}

// parseReco validates GET /reco's query.
func parseReco(v rawQuery) (recoQuery, error) {
	var q queryErrors
	r := recoQuery{}
	r.userID = q.id(v, "user_id")
	r.sessionID = q.id(v, "session_id")
	r.k = q.intParam(v, "k", kDefaultReco, kMin, kMax)
	r.autolog = q.boolParam(v, "x_autolog_impressions", true)
	return r, q.err()
}

// parseRecommend validates GET /recommend's query (legacy: k defaults to 10).
func parseRecommend(v rawQuery) (recoQuery, error) {
	var q queryErrors
	r := recoQuery{}
	r.userID = q.id(v, "user_id")
	r.k = q.intParam(v, "k", kDefaultRecommend, kMin, kMax)
	return r, q.err()
}
