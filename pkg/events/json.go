package events

import (
	"strconv"
	"sync"
	"unicode/utf16"
	"unicode/utf8"
)

// The request decoders parse JSON with this small parser instead of encoding/json because
// the contract wants pydantic's error list: every bad field at once, each with its location,
// and unknown keys reported by name. encoding/json stops at the first problem and cannot say
// where it was. The parser builds a light tree over the body (strings are substrings of the
// body unless they hold escapes), so it costs one pass and few allocations.

type jsonKind uint8

const (
	jNull jsonKind = iota
	jBool
	jNumber
	jString
	jArray
	jObject
)

// node is one parsed JSON value. raw is its source text (used as the "input" of an error).
// For strings str is the unescaped value; for numbers it is the token text.
type node struct {
	kind jsonKind
	b    bool
	str  string
	raw  string
	keys []string // object keys, in order (duplicates kept; the last one wins on lookup)
	kids []node   // object values or array elements
}

// maxDepth bounds nesting so a body of 4 MiB of '[' cannot exhaust the stack; the deepest
// valid event is 4 levels.
const maxDepth = 64

type syntaxError struct {
	pos int
	msg string
}

func (e *syntaxError) Error() string { return e.msg + " at offset " + strconv.Itoa(e.pos) }

type parser struct {
	s     string
	i     int
	depth int
	*parseMem
}

// parseMem is the memory a parse works in, reused from parse to parse (parseMems): the tree
// of a 500-watch batch is ~7,000 nodes (~600 KB), and allocating it afresh for every body
// was half of the bytes the API allocated on /log/batch, which the collector then had to
// scan and free. A tree lives only while its body is decoded (decoded events hold strings
// of the body, never nodes), so the decoders release its memory when they return.
type parseMem struct {
	// Stacks of the members being parsed: a container pushes its members here and, when it
	// closes, copies them into slices of the exact size and pops them. One growing buffer
	// per body instead of a 16-slot guess per object (1.6 KB for a one-field context) and
	// repeated doubling for a 500-event array.
	kids []node
	keys []string
	// Slabs the closed containers' slices are cut from: one allocation for many small
	// objects (a batch of 500 watches has ~1,000 objects) instead of two each.
	kidSlabs slabs[node]
	keySlabs slabs[string]
	// Scratch of DecodeBatch: the kind of each element and the set of event_ids seen.
	kinds []Kind
	ids   map[string]struct{}
}

// maxPooledIDs bounds the id set a pooled parseMem keeps (a default-limit batch's worth).
const maxPooledIDs = DefaultMaxBatchSize

// batchIDs returns the empty id set of a batch, reused from parse to parse.
func (m *parseMem) batchIDs() map[string]struct{} {
	if m.ids == nil {
		m.ids = make(map[string]struct{}, 512)
	}
	return m.ids
}

// slabs hands out slices of fixed-size slabs, reused once released.
type slabs[T any] struct {
	cur  []T   // the current slab
	at   int   // slots of cur handed out
	used [][]T // the handed-out parts of the earlier slabs of this parse
	free [][]T // whole slabs ready for reuse
	hint int   // slots the body likely needs: a small body gets a small slab, not pooled
}

const (
	slabSlots = 1024 // a seventh of the nodes of a 500-watch batch
	// maxFreeSlabs bounds the slabs one pooled parseMem keeps (a 1,000-watch batch's
	// worth); a larger body's extra slabs are left to the collector.
	maxFreeSlabs = 16
)

var parseMems = sync.Pool{New: func() any { return new(parseMem) }}

// cut returns a slice of n fresh slots. A container larger than a slab gets its own
// allocation, which is not reused.
func (s *slabs[T]) cut(n int) []T {
	if n > slabSlots {
		return make([]T, n)
	}
	if s.at+n > len(s.cur) {
		if s.cur != nil {
			s.used = append(s.used, s.cur[:s.at])
		}
		if k := len(s.free); k > 0 {
			s.cur, s.free = s.free[k-1], s.free[:k-1]
		} else {
			// A single watch needs ~20 nodes: a whole slab for it would cost more than the
			// pool saves whenever the collector has emptied the pool.
			s.cur = make([]T, max(min(s.hint, slabSlots), n))
		}
		s.at = 0
	}
	out := s.cur[s.at : s.at+n : s.at+n] // capped: an append by a reader cannot reach the next slots
	s.at += n
	return out
}

// reset clears every handed-out slot (a pooled slab must not keep an old body alive) and
// makes the slabs free again.
func (s *slabs[T]) reset() {
	if s.cur != nil {
		s.used = append(s.used, s.cur[:s.at])
		s.cur, s.at = nil, 0
	}
	for i, u := range s.used {
		clear(u)
		if cap(u) == slabSlots && len(s.free) < maxFreeSlabs {
			s.free = append(s.free, u[:cap(u)])
		}
		s.used[i] = nil
	}
	s.used = s.used[:0]
}

// release returns m to the pool; the tree parsed with it must no longer be used.
func (m *parseMem) release() {
	m.kidSlabs.reset()
	m.keySlabs.reset()
	clear(m.kids[:cap(m.kids)])
	clear(m.keys[:cap(m.keys)])
	m.kids, m.keys = m.kids[:0], m.keys[:0]
	clear(m.kinds[:cap(m.kinds)])
	m.kinds = m.kinds[:0]
	if len(m.ids) > maxPooledIDs {
		m.ids = nil // a map keeps its size once grown
	} else {
		clear(m.ids) // drops the keys, strings of the finished body
	}
	parseMems.Put(m)
}

// parseJSON parses one JSON document into memory of m. Invalid UTF-8 is a syntax error, as
// in Python's json.loads on bytes, rather than encoding/json's silent U+FFFD replacement.
func parseJSON(s string, m *parseMem) (node, *syntaxError) {
	if !utf8.ValidString(s) {
		return node{}, &syntaxError{pos: firstInvalidUTF8(s), msg: "invalid UTF-8"}
	}
	p := parser{s: s, parseMem: m}
	// Bytes of body per node: a compact watch event is about 25 bytes per JSON value.
	m.kidSlabs.hint, m.keySlabs.hint = len(s)/24+8, len(s)/24+8
	p.ws()
	if p.i >= len(p.s) {
		return node{}, &syntaxError{pos: p.i, msg: "expecting value"}
	}
	n, err := p.value()
	if err != nil {
		return node{}, err
	}
	p.ws()
	if p.i != len(p.s) {
		return node{}, &syntaxError{pos: p.i, msg: "extra data after the JSON value"}
	}
	return n, nil
}

func firstInvalidUTF8(s string) int {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size <= 1 {
			return i
		}
		i += size
	}
	return len(s)
}

func (p *parser) ws() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *parser) fail(msg string) *syntaxError { return &syntaxError{pos: p.i, msg: msg} }

// value parses the document's root value.
func (p *parser) value() (node, *syntaxError) {
	p.kids = append(p.kids, node{})
	at := len(p.kids) - 1
	err := p.valueAt(at)
	n := p.kids[at]
	p.kids[at] = node{}
	p.kids = p.kids[:at]
	return n, err
}

// valueAt parses the value at p.i into p.kids[at], the zeroed slot its container pushed for
// it. Building the node in place, rather than returning it (88 bytes, through the stack) and
// copying it onto p.kids, saves two copies per value. Only at is stable: a nested container
// may grow p.kids, so the slot is looked up again after parsing one.
func (p *parser) valueAt(at int) *syntaxError {
	if p.i >= len(p.s) {
		return p.fail("expecting value")
	}
	start := p.i
	switch c := p.s[p.i]; {
	case c == '{':
		return p.object(at)
	case c == '[':
		return p.array(at)
	case c == '"':
		str, err := p.string()
		if err != nil {
			return err
		}
		n := &p.kids[at]
		n.kind, n.str, n.raw = jString, str, p.s[start:p.i]
		return nil
	case c == 't':
		return p.literal(at, "true", jBool, true)
	case c == 'f':
		return p.literal(at, "false", jBool, false)
	case c == 'n':
		return p.literal(at, "null", jNull, false)
	case c == '-' || (c >= '0' && c <= '9'):
		if err := p.number(); err != nil {
			return err
		}
		tok := p.s[start:p.i]
		n := &p.kids[at]
		n.kind, n.str, n.raw = jNumber, tok, tok
		return nil
	default:
		return p.fail("expecting value")
	}
}

func (p *parser) literal(at int, word string, kind jsonKind, b bool) *syntaxError {
	if len(p.s)-p.i < len(word) || p.s[p.i:p.i+len(word)] != word {
		return p.fail("expecting value")
	}
	p.i += len(word)
	n := &p.kids[at]
	n.kind, n.b, n.raw = kind, b, word
	return nil
}

func (p *parser) enter() *syntaxError {
	p.depth++
	if p.depth > maxDepth {
		return p.fail("nesting deeper than " + strconv.Itoa(maxDepth) + " levels")
	}
	return nil
}

// push adds a zeroed slot for the next member to the stack and returns its index.
func (p *parser) push() int {
	p.kids = append(p.kids, node{})
	return len(p.kids) - 1
}

func (p *parser) object(at int) *syntaxError {
	if err := p.enter(); err != nil {
		return err
	}
	start := p.i
	p.i++ // {
	base, keyBase := len(p.kids), len(p.keys)
	p.ws()
	if p.i < len(p.s) && p.s[p.i] == '}' {
		p.i++
		p.depth--
		n := &p.kids[at]
		n.kind, n.raw = jObject, p.s[start:p.i]
		return nil
	}
	for {
		p.ws()
		if p.i >= len(p.s) || p.s[p.i] != '"' {
			return p.fail("expecting property name enclosed in double quotes")
		}
		key, err := p.string()
		if err != nil {
			return err
		}
		p.ws()
		if p.i >= len(p.s) || p.s[p.i] != ':' {
			return p.fail("expecting ':' delimiter")
		}
		p.i++
		p.ws()
		p.keys = append(p.keys, key)
		if err := p.valueAt(p.push()); err != nil {
			return err
		}
		p.ws()
		if p.i >= len(p.s) {
			return p.fail("expecting ',' delimiter")
		}
		if p.s[p.i] == ',' {
			p.i++
			continue
		}
		if p.s[p.i] == '}' {
			p.i++
			p.depth--
			kids, keys := p.popKids(base), p.popKeys(keyBase)
			n := &p.kids[at]
			n.kind, n.raw, n.kids, n.keys = jObject, p.s[start:p.i], kids, keys
			return nil
		}
		return p.fail("expecting ',' delimiter")
	}
}

func (p *parser) array(at int) *syntaxError {
	if err := p.enter(); err != nil {
		return err
	}
	start := p.i
	p.i++ // [
	base := len(p.kids)
	p.ws()
	if p.i < len(p.s) && p.s[p.i] == ']' {
		p.i++
		p.depth--
		n := &p.kids[at]
		n.kind, n.raw = jArray, p.s[start:p.i]
		return nil
	}
	for {
		p.ws()
		if err := p.valueAt(p.push()); err != nil {
			return err
		}
		p.ws()
		if p.i >= len(p.s) {
			return p.fail("expecting ',' delimiter")
		}
		if p.s[p.i] == ',' {
			p.i++
			continue
		}
		if p.s[p.i] == ']' {
			p.i++
			p.depth--
			kids := p.popKids(base)
			n := &p.kids[at]
			n.kind, n.raw, n.kids = jArray, p.s[start:p.i], kids
			return nil
		}
		return p.fail("expecting ',' delimiter")
	}
}

// popKids moves the members pushed since base into their own slice.
func (p *parser) popKids(base int) []node {
	out := p.kidSlabs.cut(len(p.kids) - base)
	copy(out, p.kids[base:])
	clear(p.kids[base:]) // drop references the stack would otherwise keep alive
	p.kids = p.kids[:base]
	return out
}

func (p *parser) popKeys(base int) []string {
	out := p.keySlabs.cut(len(p.keys) - base)
	copy(out, p.keys[base:])
	p.keys = p.keys[:base]
	return out
}

// number checks the JSON number grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (p *parser) number() *syntaxError {
	if p.s[p.i] == '-' {
		p.i++
	}
	if p.i >= len(p.s) {
		return p.fail("expecting value")
	}
	switch c := p.s[p.i]; {
	case c == '0':
		p.i++
	case c >= '1' && c <= '9':
		for p.i < len(p.s) && isDigit(p.s[p.i]) {
			p.i++
		}
	default:
		return p.fail("expecting value")
	}
	if p.i < len(p.s) && p.s[p.i] == '.' {
		p.i++
		if p.i >= len(p.s) || !isDigit(p.s[p.i]) {
			return p.fail("expecting digit after decimal point")
		}
		for p.i < len(p.s) && isDigit(p.s[p.i]) {
			p.i++
		}
	}
	if p.i < len(p.s) && (p.s[p.i] == 'e' || p.s[p.i] == 'E') {
		p.i++
		if p.i < len(p.s) && (p.s[p.i] == '+' || p.s[p.i] == '-') {
			p.i++
		}
		if p.i >= len(p.s) || !isDigit(p.s[p.i]) {
			return p.fail("expecting digit in exponent")
		}
		for p.i < len(p.s) && isDigit(p.s[p.i]) {
			p.i++
		}
	}
	return nil
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// string reads a quoted string at p.i and returns its value. Strings without escapes are
// returned as substrings of the input (no allocation). The scan works on locals and one
// table load per byte: it is the parser's innermost loop.
func (p *parser) string() (string, *syntaxError) {
	s := p.s
	start := p.i + 1 // after the opening quote
	for i := start; i < len(s); i++ {
		c := s[i]
		if !strStop[c] {
			continue
		}
		switch {
		case c == '"':
			p.i = i + 1
			return s[start:i], nil
		case c == '\\':
			p.i = i
			return p.escapedString(start)
		default:
			p.i = i
			return "", p.fail("invalid control character in string")
		}
	}
	p.i = len(s)
	return "", p.fail("unterminated string")
}

// strStop marks the bytes that end the plain part of a string: the closing quote, a
// backslash and the control characters JSON forbids.
var strStop = func() (t [256]bool) {
	for c := range 0x20 {
		t[c] = true
	}
	t['"'], t['\\'] = true, true
	return t
}()

func (p *parser) escapedString(start int) (string, *syntaxError) {
	buf := make([]byte, 0, p.i-start+16)
	buf = append(buf, p.s[start:p.i]...)
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch {
		case c == '"':
			p.i++
			return string(buf), nil
		case c < 0x20:
			return "", p.fail("invalid control character in string")
		case c != '\\':
			buf = append(buf, c)
			p.i++
			continue
		}
		p.i++ // backslash
		if p.i >= len(p.s) {
			return "", p.fail("unterminated string")
		}
		e := p.s[p.i]
		p.i++
		switch e {
		case '"', '\\', '/':
			buf = append(buf, e)
		case 'b':
			buf = append(buf, '\b')
		case 'f':
			buf = append(buf, '\f')
		case 'n':
			buf = append(buf, '\n')
		case 'r':
			buf = append(buf, '\r')
		case 't':
			buf = append(buf, '\t')
		case 'u':
			r, ok := p.hex4()
			if !ok {
				return "", p.fail("invalid \\uXXXX escape")
			}
			if utf16.IsSurrogate(r) {
				// A high surrogate followed by an escaped low one is one code point; a
				// lone surrogate cannot be UTF-8 and becomes U+FFFD.
				if r < 0xdc00 && p.i+1 < len(p.s) && p.s[p.i] == '\\' && p.s[p.i+1] == 'u' {
					save := p.i
					p.i += 2
					r2, ok := p.hex4()
					if !ok {
						return "", p.fail("invalid \\uXXXX escape")
					}
					if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
						buf = utf8.AppendRune(buf, dec)
						continue
					}
					p.i = save
				}
				r = utf8.RuneError
			}
			buf = utf8.AppendRune(buf, r)
		default:
			p.i--
			return "", p.fail("invalid escape")
		}
	}
	return "", p.fail("unterminated string")
}

func (p *parser) hex4() (rune, bool) {
	if len(p.s)-p.i < 4 {
		return 0, false
	}
	var r rune
	for _, c := range []byte(p.s[p.i : p.i+4]) {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		case c >= 'A' && c <= 'F':
			r |= rune(c - 'A' + 10)
		default:
			return 0, false
		}
	}
	p.i += 4
	return r, true
}
