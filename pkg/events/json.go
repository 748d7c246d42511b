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
// where it was. The parser builds a light tree over the body in one pass.
//
// The tree holds no pointers: a node names its strings by offsets into the body (or into the
// few unescaped strings) and its members by their place in one array. A tree of pointers
// (strings and slices, 88 bytes a node) had to be copied and cleared under the collector's
// write barriers, which on /log/batch cost as much as the parse itself; a pointer-free tree
// (36 bytes a node) is moved with plain memmove, never scanned, and reused without clearing.

type jsonKind uint8

const (
	jNull jsonKind = iota
	jBool
	jNumber
	jString
	jArray
	jObject
)

// node is one parsed JSON value, read through its tree (parseMem's str, key, raw and kids).
type node struct {
	kind jsonKind
	b    bool
	esc  bool // the string has escapes: its value is escs[s0]
	kesc bool // the same for the member's key
	// The member's key (objects' members only): src[k0:k1], or escs[k0] when kesc.
	k0, k1 int32
	// Strings: the unescaped value src[s0:s1] (or escs[s0]); numbers: the token.
	s0, s1 int32
	r0, r1 int32 // the value's source text (the "input" of an error)
	// Containers: the members are tree[kid0 : kid0+nkid].
	kid0, nkid int32
}

// maxDepth bounds nesting so a body of 4 MiB of '[' cannot exhaust the stack; the deepest
// valid event is 4 levels.
const maxDepth = 64

// bytesPerValue and minValues bound the values of a document by its size: at most one per
// bytesPerValue bytes, plus minValues. Each value is a node of ~44 bytes, held twice while
// its container is parsed, so a 4 MiB body of "0," (one value per two bytes) allocated
// ~470 MB to parse, and a few at once could exhaust the process' memory. The densest valid
// events need ~10 bytes per value ({"item_id":"a","position":0} is 28 bytes for 3), so the
// bound refuses only documents that could never be valid, and a parse allocates at most
// ~25 times its body, as much as the densest valid body of that size.
const (
	bytesPerValue = 8
	minValues     = 64
)

type syntaxError struct {
	pos int
	msg string
}

func (e *syntaxError) Error() string { return e.msg + " at offset " + strconv.Itoa(e.pos) }

type parser struct {
	s      string
	i      int
	depth  int
	values int // members pushed so far (see next)
	*parseMem
}

// next counts the value about to be pushed against the document's bound (bytesPerValue).
func (p *parser) next() *syntaxError {
	p.values++
	if p.values > len(p.s)/bytesPerValue+minValues {
		return p.fail("too many values for the document's size (one per " + strconv.Itoa(bytesPerValue) + " bytes at most)")
	}
	return nil
}

// parseMem is the memory a parse works in, reused from parse to parse (parseMems), and the
// tree it holds. A tree lives only while its body is decoded (decoded events hold strings of
// the body, never nodes), so the decoders release its memory when they return.
type parseMem struct {
	src string // the body the tree's offsets refer to
	// tree holds the members of every closed container, each container's contiguously.
	tree []node
	// stack holds the members of the containers being parsed; a container moves its
	// members to tree when it closes.
	stack []node
	escs  []string // strings with escapes, unescaped
	// Scratch of DecodeBatch: the kind of each element and the set of event_ids seen.
	kinds []Kind
	ids   map[string]struct{}
}

// maxPooledIDs bounds the id set a pooled parseMem keeps (a default-limit batch's worth).
const maxPooledIDs = DefaultMaxBatchSize

// maxPooledNodes bounds the tree a pooled parseMem keeps (~2.3 MB, a 4,000-watch body).
const maxPooledNodes = 1 << 16

// batchIDs returns the empty id set of a batch, reused from parse to parse.
func (m *parseMem) batchIDs() map[string]struct{} {
	if m.ids == nil {
		m.ids = make(map[string]struct{}, 512)
	}
	return m.ids
}

var parseMems = sync.Pool{New: func() any { return new(parseMem) }}

// release returns m to the pool; the tree parsed with it must no longer be used.
func (m *parseMem) release() {
	m.src = ""
	if cap(m.tree) > maxPooledNodes {
		m.tree = nil
	}
	if cap(m.stack) > maxPooledNodes {
		m.stack = nil
	}
	m.tree, m.stack = m.tree[:0], m.stack[:0]
	clear(m.escs) // strings of the finished body
	m.escs = m.escs[:0]
	clear(m.kinds[:cap(m.kinds)])
	m.kinds = m.kinds[:0]
	if len(m.ids) > maxPooledIDs {
		m.ids = nil // a map keeps its size once grown
	} else {
		clear(m.ids) // drops the keys, strings of the finished body
	}
	parseMems.Put(m)
}

// str returns the value of a string node or the token of a number.
func (m *parseMem) str(n *node) string {
	if n.esc {
		return m.escs[n.s0]
	}
	return m.src[n.s0:n.s1]
}

// key returns the key of an object's member.
func (m *parseMem) key(n *node) string {
	if n.kesc {
		return m.escs[n.k0]
	}
	return m.src[n.k0:n.k1]
}

// raw returns the source text of n.
func (m *parseMem) raw(n *node) string { return m.src[n.r0:n.r1] }

// kids returns the members of a container (capped: nothing may append to them).
func (m *parseMem) kids(n *node) []node {
	return m.tree[n.kid0 : n.kid0+n.nkid : n.kid0+n.nkid]
}

// parseJSON parses one JSON document into memory of m. Invalid UTF-8 is a syntax error, as
// in Python's json.loads on bytes, rather than encoding/json's silent U+FFFD replacement.
// Offsets are int32: the body limit is far below 2 GiB.
func parseJSON(s string, m *parseMem) (node, *syntaxError) {
	m.src = s
	if !utf8.ValidString(s) {
		return node{}, &syntaxError{pos: firstInvalidUTF8(s), msg: "invalid UTF-8"}
	}
	if len(s) > 1<<31-1 {
		return node{}, &syntaxError{pos: 0, msg: "document too large"}
	}
	p := parser{s: s, parseMem: m}
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
	at := p.push()
	err := p.valueAt(at)
	n := p.stack[at]
	p.stack = p.stack[:at]
	return n, err
}

// valueAt parses the value at p.i into p.stack[at], the zeroed slot its container pushed for
// it (the slot may already hold its key). Only at is stable: a nested container may grow
// p.stack, so the slot is looked up again after parsing one.
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
		s0, s1, esc, err := p.string()
		if err != nil {
			return err
		}
		n := &p.stack[at]
		n.kind, n.s0, n.s1, n.esc, n.r0, n.r1 = jString, s0, s1, esc, int32(start), int32(p.i)
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
		n := &p.stack[at]
		n.kind, n.s0, n.s1, n.r0, n.r1 = jNumber, int32(start), int32(p.i), int32(start), int32(p.i)
		return nil
	default:
		return p.fail("expecting value")
	}
}

func (p *parser) literal(at int, word string, kind jsonKind, b bool) *syntaxError {
	if len(p.s)-p.i < len(word) || p.s[p.i:p.i+len(word)] != word {
		return p.fail("expecting value")
	}
	n := &p.stack[at]
	n.kind, n.b, n.r0, n.r1 = kind, b, int32(p.i), int32(p.i+len(word))
	p.i += len(word)
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
	p.stack = append(p.stack, node{})
	return len(p.stack) - 1
}

// close finishes the container at p.stack[at] whose members were pushed since base: they
// move to the tree.
func (p *parser) close(at, base int, kind jsonKind, start int) {
	kid0 := len(p.tree)
	p.tree = append(p.tree, p.stack[base:]...)
	p.stack = p.stack[:base]
	n := &p.stack[at]
	n.kind, n.r0, n.r1 = kind, int32(start), int32(p.i)
	n.kid0, n.nkid = int32(kid0), int32(len(p.tree)-kid0)
}

func (p *parser) object(at int) *syntaxError {
	if err := p.enter(); err != nil {
		return err
	}
	start := p.i
	p.i++ // {
	base := len(p.stack)
	p.ws()
	if p.i < len(p.s) && p.s[p.i] == '}' {
		p.i++
		p.depth--
		p.close(at, base, jObject, start)
		return nil
	}
	for {
		p.ws()
		if p.i >= len(p.s) || p.s[p.i] != '"' {
			return p.fail("expecting property name enclosed in double quotes")
		}
		k0, k1, kesc, err := p.string()
		if err != nil {
			return err
		}
		p.ws()
		if p.i >= len(p.s) || p.s[p.i] != ':' {
			return p.fail("expecting ':' delimiter")
		}
		p.i++
		p.ws()
		if err := p.next(); err != nil {
			return err
		}
		slot := p.push()
		m := &p.stack[slot]
		m.k0, m.k1, m.kesc = k0, k1, kesc
		if err := p.valueAt(slot); err != nil {
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
			p.close(at, base, jObject, start)
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
	base := len(p.stack)
	p.ws()
	if p.i < len(p.s) && p.s[p.i] == ']' {
		p.i++
		p.depth--
		p.close(at, base, jArray, start)
		return nil
	}
	for {
		p.ws()
		if err := p.next(); err != nil {
			return err
		}
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
			p.close(at, base, jArray, start)
			return nil
		}
		return p.fail("expecting ',' delimiter")
	}
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

// string reads a quoted string at p.i and returns where its value is: src[s0:s1] without
// escapes (no allocation), escs[s0] with them. The scan works on locals and one table load
// per byte: it is the parser's innermost loop.
func (p *parser) string() (s0, s1 int32, esc bool, err *syntaxError) {
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
			return int32(start), int32(i), false, nil
		case c == '\\':
			p.i = i
			v, err := p.escapedString(start)
			if err != nil {
				return 0, 0, false, err
			}
			p.escs = append(p.escs, v)
			return int32(len(p.escs) - 1), 0, true, nil
		default:
			p.i = i
			return 0, 0, false, p.fail("invalid control character in string")
		}
	}
	p.i = len(s)
	return 0, 0, false, p.fail("unterminated string")
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
