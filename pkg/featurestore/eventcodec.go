package featurestore

import (
	"recsys/pkg/events"
)

// decodeFast parses an impression or watch payload in the shape the API writes (lowercase
// known keys, each once; strings without escapes or non-ASCII; no nulls) into the struct
// encoding/json would produce, without reflection: encoding/json was a fifth of the
// consumer's CPU. ok is false for anything else, and the caller then decodes with
// encoding/json, so every other input (and every error message) is what it was; validation
// runs on the result either way.
func decodeFast(kind events.Kind, payload []byte) (ev events.Any, ok bool) {
	p := jsonScan{s: string(payload), ok: true}
	switch kind {
	case events.KindWatch:
		w := &events.Watch{}
		var seen uint32
		p.object(func(k string) {
			switch k {
			case "event_type":
				p.once(&seen, 1<<10)
				w.EventType = p.str()
			case "item_id":
				p.once(&seen, 1<<11)
				w.ItemID = p.str()
			case "watch_time_sec":
				p.once(&seen, 1<<12)
				w.WatchTimeSec = p.float()
			case "percent_watched":
				p.once(&seen, 1<<13)
				v := p.float()
				w.PercentWatched = &v
			case "ended":
				p.once(&seen, 1<<14)
				v := p.bool()
				w.Ended = &v
			case "playback_speed":
				p.once(&seen, 1<<15)
				v := p.float()
				w.PlaybackSpeed = &v
			case "rebuffer_count":
				p.once(&seen, 1<<16)
				v := p.int()
				w.RebufferCount = &v
			default:
				p.common(&w.Common, &seen, k)
			}
		})
		ev = w
	case events.KindImpression:
		im := &events.Impression{}
		var seen uint32
		p.object(func(k string) {
			switch k {
			case "event_type":
				p.once(&seen, 1<<10)
				im.EventType = p.str()
			case "items":
				p.once(&seen, 1<<11)
				im.Items = p.items()
			default:
				p.common(&im.Common, &seen, k)
			}
		})
		ev = im
	default:
		return nil, false
	}
	p.end()
	return ev, p.ok
}

// once fails the scan when the key of bit was seen before (encoding/json keeps the last
// value; rare enough to leave to it).
func (p *jsonScan) once(seen *uint32, bit uint32) {
	if *seen&bit != 0 {
		p.ok = false
	}
	*seen |= bit
}

func (p *jsonScan) common(c *events.Common, seen *uint32, k string) {
	switch k {
	case "event_id":
		p.once(seen, 1<<0)
		c.EventID = p.str()
	case "user_id":
		p.once(seen, 1<<1)
		c.UserID = p.str()
	case "session_id":
		p.once(seen, 1<<2)
		c.SessionID = p.str()
	case "request_id":
		p.once(seen, 1<<3)
		c.RequestID = p.str()
	case "ts_ms":
		p.once(seen, 1<<4)
		c.TsMs = p.int()
	case "server_received_ts_ms":
		p.once(seen, 1<<5)
		c.ServerReceivedTsMs = p.int()
	case "context":
		p.once(seen, 1<<6)
		c.Context = p.context()
	default:
		p.ok = false // unknown or differently cased: encoding/json decides
	}
}

func (p *jsonScan) context() *events.Context {
	c := &events.Context{}
	var seen uint32
	p.object(func(k string) {
		var dst **string
		switch k {
		case "device":
			p.once(&seen, 1<<0)
			dst = &c.Device
		case "platform":
			p.once(&seen, 1<<1)
			dst = &c.Platform
		case "app_version":
			p.once(&seen, 1<<2)
			dst = &c.AppVersion
		case "locale":
			p.once(&seen, 1<<3)
			dst = &c.Locale
		case "country":
			p.once(&seen, 1<<4)
			dst = &c.Country
		case "timezone":
			p.once(&seen, 1<<5)
			dst = &c.Timezone
		case "referrer":
			p.once(&seen, 1<<6)
			dst = &c.Referrer
		case "user_agent":
			p.once(&seen, 1<<7)
			dst = &c.UserAgent
		default:
			p.ok = false
			return
		}
		v := p.str()
		*dst = &v
	})
	return c
}

func (p *jsonScan) items() []events.ImpressionItem {
	out := []events.ImpressionItem{} // encoding/json: [] is an empty slice, not nil
	p.array(func() {
		var it events.ImpressionItem
		var seen uint32
		p.object(func(k string) {
			switch k {
			case "item_id":
				p.once(&seen, 1<<0)
				it.ItemID = p.str()
			case "position":
				p.once(&seen, 1<<1)
				it.Position = p.int()
			case "feed_id":
				p.once(&seen, 1<<2)
				v := p.str()
				it.FeedID = &v
			case "slot":
				p.once(&seen, 1<<3)
				v := p.str()
				it.Slot = &v
			default:
				p.ok = false
			}
		})
		out = append(out, it)
	})
	return out
}

func (p *jsonScan) bool() bool {
	p.ws()
	switch {
	case len(p.s)-p.i >= 4 && p.s[p.i:p.i+4] == "true":
		p.i += 4
		return true
	case len(p.s)-p.i >= 5 && p.s[p.i:p.i+5] == "false":
		p.i += 5
		return false
	}
	p.ok = false
	return false
}
