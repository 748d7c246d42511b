package httpx

import (
	"net/url"
	"strings"
)

// UndecodableQueryMsg is the 422 message of a query value that cannot be decoded.
const UndecodableQueryMsg = "Value error, the query value cannot be decoded: it has a raw ';' or a '%' not followed by two hex digits (send them as %3B and %25)"

// QueryParam is one parameter of a raw query string.
type QueryParam struct {
	Value string // the last decodable value, as Starlette keeps the last of a repeated parameter
	Found bool   // a decodable pair names the parameter
	// Undecodable is set when the last pair naming the parameter has a raw ';' or a bad '%'
	// escape, and Raw is its value as sent. url.ParseQuery (echo's QueryParams) skips such a
	// pair silently, so the parameter took an earlier value or its default; the original
	// service (Starlette) kept the text as the last value and refused it with a 422.
	Undecodable bool
	Raw         string
}

// LastQueryParam reads the parameter name from a raw query string as url.ParseQuery does
// (empty pairs skipped, keys and values unescaped, '+' a space), telling undecodable pairs
// apart.
func LastQueryParam(raw, name string) QueryParam {
	var p QueryParam
	for rest := raw; rest != ""; {
		var pair string
		pair, rest, _ = strings.Cut(rest, "&")
		if pair == "" {
			continue
		}
		key, val, _ := strings.Cut(pair, "=")
		if key != name {
			if k, err := url.QueryUnescape(key); err != nil || k != name {
				continue
			}
		}
		v, err := url.QueryUnescape(val)
		if err != nil || strings.Contains(pair, ";") {
			p.Undecodable, p.Raw = true, val
			continue
		}
		p.Value, p.Found, p.Undecodable, p.Raw = v, true, false, ""
	}
	return p
}
