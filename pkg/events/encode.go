package events

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
)

// The payload encoder writes exactly what encoding/json writes for these types (field order,
// omitempty, HTML-safe string escapes, float format), without reflection: on /log/batch the
// reflective encoder was a tenth of the API's CPU. Anything outside the common case (a string
// needing escapes, a float needing an exponent, NaN or Inf) is delegated to encoding/json, so
// the output stays byte-identical and errors stay encoding/json's. TestEncodeMatchesJSON
// checks the equality.

// Encode returns the Kafka payload of ev: its JSON with null fields omitted.
func Encode(ev Any) ([]byte, error) {
	size := 160
	switch e := ev.(type) {
	case *Impression:
		size = 256 + 64*len(e.Items)
	case *Watch:
		size = 320
	}
	return AppendEncode(make([]byte, 0, size), ev)
}

// AppendEncode appends the Kafka payload of ev (as Encode returns it) to b, so a caller
// encoding many events can reuse one buffer.
func AppendEncode(b []byte, ev Any) ([]byte, error) {
	var (
		out []byte
		ok  bool
	)
	switch e := ev.(type) {
	case *Impression:
		out, ok = appendImpression(b, e)
	case *Watch:
		out, ok = appendWatch(b, e)
	case *Legacy:
		out, ok = appendLegacy(b, e)
	}
	if ok {
		return out, nil
	}
	j, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("encode %s event %q: %w", ev.Kind(), ev.ID(), err)
	}
	return append(b, j...), nil
}

// EncodeContext returns the JSON of a client context (null fields omitted), as stored in the
// raw tables' context column.
func EncodeContext(c *Context) ([]byte, error) {
	return AppendContext(make([]byte, 0, 96), c)
}

// AppendContext appends what EncodeContext returns to b, so a caller encoding many contexts
// can keep them in one buffer.
func AppendContext(b []byte, c *Context) ([]byte, error) {
	if out, ok := appendContext(b, c); ok {
		return out, nil
	}
	j, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode context: %w", err)
	}
	return append(b, j...), nil
}

func appendImpression(b []byte, e *Impression) ([]byte, bool) {
	b, ok := appendCommon(b, &e.Common)
	b = append(b, `,"event_type":`...)
	b, ok2 := appendString(b, e.EventType)
	ok = ok && ok2
	b = append(b, `,"items":`...)
	if e.Items == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i := range e.Items {
			it := &e.Items[i]
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"item_id":`...)
			b, ok2 = appendString(b, it.ItemID)
			ok = ok && ok2
			b = append(b, `,"position":`...)
			b = strconv.AppendInt(b, it.Position, 10)
			b, ok2 = appendOptString(b, `,"feed_id":`, it.FeedID)
			ok = ok && ok2
			b, ok2 = appendOptString(b, `,"slot":`, it.Slot)
			ok = ok && ok2
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	return append(b, '}'), ok
}

func appendWatch(b []byte, e *Watch) ([]byte, bool) {
	b, ok := appendCommon(b, &e.Common)
	b = append(b, `,"event_type":`...)
	b, ok2 := appendString(b, e.EventType)
	ok = ok && ok2
	b = append(b, `,"item_id":`...)
	b, ok2 = appendString(b, e.ItemID)
	ok = ok && ok2
	b = append(b, `,"watch_time_sec":`...)
	b, ok2 = appendFloat(b, e.WatchTimeSec)
	ok = ok && ok2
	if e.PercentWatched != nil {
		b = append(b, `,"percent_watched":`...)
		b, ok2 = appendFloat(b, *e.PercentWatched)
		ok = ok && ok2
	}
	if e.Ended != nil {
		b = append(b, `,"ended":`...)
		b = strconv.AppendBool(b, *e.Ended)
	}
	if e.PlaybackSpeed != nil {
		b = append(b, `,"playback_speed":`...)
		b, ok2 = appendFloat(b, *e.PlaybackSpeed)
		ok = ok && ok2
	}
	if e.RebufferCount != nil {
		b = append(b, `,"rebuffer_count":`...)
		b = strconv.AppendInt(b, *e.RebufferCount, 10)
	}
	return append(b, '}'), ok
}

func appendLegacy(b []byte, e *Legacy) ([]byte, bool) {
	ok := true
	for _, f := range []struct{ key, v string }{{`{"event_id":`, e.EventID}, {`,"user_id":`, e.UserID}, {`,"item_id":`, e.ItemID}, {`,"event_type":`, e.EventType}} {
		var ok2 bool
		b = append(b, f.key...)
		b, ok2 = appendString(b, f.v)
		ok = ok && ok2
	}
	b = append(b, `,"ts":`...)
	b = strconv.AppendInt(b, e.Ts, 10)
	if e.ServerReceivedTsMs != 0 {
		b = append(b, `,"server_received_ts_ms":`...)
		b = strconv.AppendInt(b, e.ServerReceivedTsMs, 10)
	}
	return append(b, '}'), ok
}

// appendCommon writes the opening brace and the Common fields.
func appendCommon(b []byte, e *Common) ([]byte, bool) {
	ok := true
	for _, f := range []struct{ key, v string }{{`{"event_id":`, e.EventID}, {`,"user_id":`, e.UserID}, {`,"session_id":`, e.SessionID}, {`,"request_id":`, e.RequestID}} {
		var ok2 bool
		b = append(b, f.key...)
		b, ok2 = appendString(b, f.v)
		ok = ok && ok2
	}
	b = append(b, `,"ts_ms":`...)
	b = strconv.AppendInt(b, e.TsMs, 10)
	if e.ServerReceivedTsMs != 0 {
		b = append(b, `,"server_received_ts_ms":`...)
		b = strconv.AppendInt(b, e.ServerReceivedTsMs, 10)
	}
	if e.Context != nil {
		var ok2 bool
		b = append(b, `,"context":`...)
		b, ok2 = appendContext(b, e.Context)
		ok = ok && ok2
	}
	return b, ok
}

func appendContext(b []byte, c *Context) ([]byte, bool) {
	ok := true
	b = append(b, '{')
	first := true
	for _, f := range []struct {
		key string
		v   *string
	}{{"device", c.Device}, {"platform", c.Platform}, {"app_version", c.AppVersion}, {"locale", c.Locale},
		{"country", c.Country}, {"timezone", c.Timezone}, {"referrer", c.Referrer}, {"user_agent", c.UserAgent}} {
		if f.v == nil {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, '"')
		b = append(b, f.key...)
		b = append(b, '"', ':')
		var ok2 bool
		b, ok2 = appendString(b, *f.v)
		ok = ok && ok2
	}
	return append(b, '}'), ok
}

func appendOptString(b []byte, key string, v *string) ([]byte, bool) {
	if v == nil {
		return b, true
	}
	b = append(b, key...)
	return appendString(b, *v)
}

// appendString quotes s when it needs no escape under encoding/json's rules (printable
// ASCII without '"', '\\' and the HTML-escaped '<', '>', '&'); otherwise it reports false.
func appendString(b []byte, s string) ([]byte, bool) {
	for i := 0; i < len(s); i++ {
		if !plainByte[s[i]] {
			return b, false
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"'), true
}

// plainByte marks the bytes appendString copies as they are: one load per byte instead of
// seven comparisons.
var plainByte = func() (t [256]bool) {
	for c := 0x20; c <= 0x7e; c++ {
		t[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return t
}()

// appendFloat writes f as encoding/json does when that is plain decimal notation; exponents,
// NaN and Inf report false.
func appendFloat(b []byte, f float64) ([]byte, bool) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return b, false
	}
	abs := math.Abs(f)
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		return b, false
	}
	// Whole numbers (percent_watched 80, rebuffer-free speeds of 1) print their digits; the
	// shortest-representation search of AppendFloat was a third of the payload encoding.
	// -0 keeps AppendFloat's "-0".
	if abs < 1<<53 && f == math.Trunc(f) && (f != 0 || !math.Signbit(f)) {
		return strconv.AppendInt(b, int64(f), 10), true
	}
	return strconv.AppendFloat(b, f, 'f', -1, 64), true
}
