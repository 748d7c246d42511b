package events

import (
	"math"
	"strconv"
	"strings"
)

// The original service validated with pydantic in its default lax mode (contract §2.1):
// numeric strings become numbers, and booleans take 0/1 and a set of words. Clients written
// against it may send "ts_ms":"1796134430220" or "ended":"yes", so the body decoder and the
// query parser take what pydantic took, with pydantic's error types for what it refused.

// LaxInt parses pydantic's integer string: surrounding whitespace, one optional sign, digits
// with single underscores between them, and an optional fraction of zeros ("20.0"). It
// returns "" or the error type: int_parsing, or int_parsing_size past int64.
func LaxInt(s string) (int64, string) {
	t := strings.TrimSpace(s)
	if dot := strings.IndexByte(t, '.'); dot >= 0 {
		if strings.Trim(t[dot+1:], "0") != "" {
			return 0, "int_parsing"
		}
		t = t[:dot]
	}
	sign := ""
	if t != "" && (t[0] == '+' || t[0] == '-') {
		sign, t = t[:1], t[1:]
	}
	if t == "" || t[0] == '_' || t[len(t)-1] == '_' || strings.Contains(t, "__") {
		return 0, "int_parsing"
	}
	digits := strings.ReplaceAll(t, "_", "")
	if strings.TrimLeft(digits, "0123456789") != "" {
		return 0, "int_parsing"
	}
	n, err := strconv.ParseInt(sign+digits, 10, 64)
	if err != nil {
		return 0, "int_parsing_size"
	}
	return n, ""
}

// LaxFloat parses pydantic's number string (Rust's float syntax: decimal, exponent, inf,
// nan; single underscores between digits, which pydantic strips); "" or float_parsing.
func LaxFloat(s string) (float64, string) {
	t := strings.TrimSpace(s)
	if strings.Contains(t, "_") {
		for i := strings.IndexByte(t, '_'); i >= 0; i = strings.IndexByte(t, '_') {
			if i == 0 || i == len(t)-1 || !isDigit(t[i-1]) || !isDigit(t[i+1]) {
				return 0, "float_parsing"
			}
			t = t[:i] + t[i+1:]
		}
	}
	// strconv also reads hexadecimal floats; Rust does not.
	if t == "" || strings.ContainsAny(t, "xXpP") {
		return 0, "float_parsing"
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil && !math.IsInf(f, 0) { // out of range is ±Inf, as in Rust
		return 0, "float_parsing"
	}
	return f, ""
}

// LaxBool parses pydantic's boolean words (any case); ok is false for anything else.
func LaxBool(s string) (v, ok bool) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "1", "on", "t", "true", "y", "yes":
		return true, true
	case "0", "off", "f", "false", "n", "no":
		return false, true
	}
	return false, false
}

var laxMsgs = map[string]string{
	"int_parsing":      "Input should be a valid integer, unable to parse string as an integer",
	"int_parsing_size": "Unable to parse input string as an integer, exceeded maximum size",
	"float_parsing":    "Input should be a valid number, unable to parse string as a number",
	"bool_parsing":     "Input should be a valid boolean, unable to interpret input",
}

// LaxMessage is pydantic's message for a LaxInt, LaxFloat or bool_parsing error type.
func LaxMessage(typ string) string { return laxMsgs[typ] }
