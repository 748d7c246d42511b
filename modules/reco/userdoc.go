package reco

import (
	"encoding/json"
	"strconv"
	"unicode/utf8"

	"recsys/pkg/ranking"
)

// The user hash's three JSON documents (written by pkg/featurestore with encoding/json) are
// decoded on every /reco request; reflection-based decoding was a sixth of the handler's
// CPU. docScanner parses exactly the shapes the writer produces — history
// [{"item_id":s,"ts_ms":n,"quality":f},...], watched {s:n,...}, impressions
// {s:{"count":n,"last_ts_ms":n},...} — and gives up (ok=false) on anything else (escaped
// strings, other keys, odd spacing), in which case the caller decodes with encoding/json, so
// the result never depends on which path ran.

func decodeHistory(b string) ([]ranking.HistoryEntry, error) {
	if out, ok := fastHistory(b); ok {
		return out, nil
	}
	var out []ranking.HistoryEntry
	err := json.Unmarshal([]byte(b), &out)
	return out, err
}

func decodeWatched(b string) (map[string]bool, error) {
	if out, ok := fastWatched(b); ok {
		return out, nil
	}
	var w map[string]int64
	if err := json.Unmarshal([]byte(b), &w); err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(w))
	for k := range w {
		out[k] = true
	}
	return out, nil
}

func decodeImpressions(b string) (map[string]ranking.ImpressionStat, error) {
	if out, ok := fastImpressions(b); ok {
		return out, nil
	}
	var out map[string]ranking.ImpressionStat
	err := json.Unmarshal([]byte(b), &out)
	return out, err
}

type docScanner struct {
	b  string // ids are substrings of the document: no copy per id
	i  int
	ok bool
}

func (s *docScanner) byte(c byte) bool {
	if s.ok && s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

func (s *docScanner) need(c byte) {
	if !s.byte(c) {
		s.ok = false
	}
}

// str reads a string without escapes, valid UTF-8.
func (s *docScanner) str() string {
	s.need('"')
	if !s.ok {
		return ""
	}
	start, ascii := s.i, true
	for s.i < len(s.b) {
		switch c := s.b[s.i]; {
		case c == '"':
			v := s.b[start:s.i]
			s.i++
			if !ascii && !utf8.ValidString(v) {
				s.ok = false // encoding/json would substitute U+FFFD
			}
			return v
		case c >= utf8.RuneSelf:
			ascii = false
		case c == '\\' || c < 0x20:
			s.ok = false
			return ""
		}
		s.i++
	}
	s.ok = false
	return ""
}

// key reads `"name":` and reports whether the name is want.
func (s *docScanner) key(want string) {
	s.need('"')
	if !s.ok || len(s.b)-s.i < len(want)+2 || s.b[s.i:s.i+len(want)] != want {
		s.ok = false
		return
	}
	s.i += len(want)
	s.need('"')
	s.need(':')
}

func (s *docScanner) numToken() string {
	start := s.i
	for s.i < len(s.b) {
		c := s.b[s.i]
		if (c < '0' || c > '9') && c != '-' && c != '+' && c != '.' && c != 'e' && c != 'E' {
			break
		}
		s.i++
	}
	if start == s.i {
		s.ok = false
	}
	return s.b[start:s.i]
}

func (s *docScanner) int() int64 {
	if !s.ok {
		return 0
	}
	v, err := strconv.ParseInt(s.numToken(), 10, 64)
	if err != nil {
		s.ok = false
	}
	return v
}

func (s *docScanner) float() float64 {
	if !s.ok {
		return 0
	}
	v, err := strconv.ParseFloat(s.numToken(), 64)
	if err != nil {
		s.ok = false
	}
	return v
}

// list scans `open item (, item)* close` or an empty container, calling item for each.
func (s *docScanner) list(open, close byte, item func()) {
	s.need(open)
	if s.byte(close) {
		return
	}
	for s.ok {
		item()
		if s.byte(close) {
			return
		}
		s.need(',')
	}
}

func (s *docScanner) done() bool { return s.ok && s.i == len(s.b) }

func fastHistory(b string) ([]ranking.HistoryEntry, bool) {
	s := docScanner{b: b, ok: true}
	var out []ranking.HistoryEntry
	s.list('[', ']', func() {
		var e ranking.HistoryEntry
		s.need('{')
		s.key("item_id")
		e.ItemID = s.str()
		s.need(',')
		s.key("ts_ms")
		e.TsMs = s.int()
		s.need(',')
		s.key("quality")
		e.Quality = s.float()
		s.need('}')
		out = append(out, e)
	})
	if !s.done() {
		return nil, false
	}
	if out == nil {
		out = []ranking.HistoryEntry{}
	}
	return out, true
}

func fastWatched(b string) (map[string]bool, bool) {
	s := docScanner{b: b, ok: true}
	out := map[string]bool{}
	s.list('{', '}', func() {
		k := s.str()
		s.need(':')
		s.int()
		out[k] = true
	})
	return out, s.done()
}

func fastImpressions(b string) (map[string]ranking.ImpressionStat, bool) {
	s := docScanner{b: b, ok: true}
	out := map[string]ranking.ImpressionStat{}
	s.list('{', '}', func() {
		k := s.str()
		s.need(':')
		var st ranking.ImpressionStat
		s.need('{')
		s.key("count")
		st.Count = s.int()
		s.need(',')
		s.key("last_ts_ms")
		st.LastTsMs = s.int()
		s.need('}')
		if _, dup := out[k]; dup {
			s.ok = false // encoding/json keeps the last; never written, so not worth matching
		}
		out[k] = st
	})
	return out, s.done()
}
