package events

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"math"
)

// Content ids: the event_id the API gives an event sent without one.
//
// The original service generated a fresh UUID, so a client that retried a request without an
// id (a timeout, a lost answer, a mobile client resending its queue) stored the event twice
// (api-contract §16.10). Every event body carries its client timestamp, so the id is derived
// from what the event says instead: a resend of the same event gets the same id and is
// answered "duplicate", while two events that differ in any field (another millisecond,
// another watch time, another request) get different ids.
//
// The id keeps the contract's format, 32 lowercase hex characters, as a version 8 UUID
// (RFC 9562's custom layout): the first 48 bits are the event's time in milliseconds, as in
// the version 7 ids NewEventID makes (so the B-trees keyed by event ids are appended to near
// their right edge), and the remaining 74 free bits are the first bits of the SHA-256 of the
// event's fields, each length-prefixed, under a domain tag. Changing what is hashed changes
// the ids of retries that span a deployment, so the tag carries a version.

const contentIDTag = "recsys/event-id/v1"

// contentHash accumulates an event's fields unambiguously: every value is length-prefixed or
// fixed-width, and optional values carry a presence byte.
type contentHash struct{ b []byte }

func newContentHash(kind Kind) contentHash {
	h := contentHash{b: make([]byte, 0, 256)}
	h.str(contentIDTag)
	h.str(string(kind))
	return h
}

func (h *contentHash) str(s string) {
	h.b = binary.AppendUvarint(h.b, uint64(len(s)))
	h.b = append(h.b, s...)
}

func (h *contentHash) optStr(s *string) {
	if h.present(s != nil) {
		h.str(*s)
	}
}

func (h *contentHash) int(v int64) { h.b = binary.BigEndian.AppendUint64(h.b, uint64(v)) }

func (h *contentHash) float(f float64) {
	if f == 0 {
		f = 0 // -0 and 0 are the same value to every reader
	}
	h.b = binary.BigEndian.AppendUint64(h.b, math.Float64bits(f))
}

func (h *contentHash) optFloat(f *float64) {
	if h.present(f != nil) {
		h.float(*f)
	}
}

func (h *contentHash) present(ok bool) bool {
	if ok {
		h.b = append(h.b, 1)
	} else {
		h.b = append(h.b, 0)
	}
	return ok
}

func (h *contentHash) context(c *Context) {
	if !h.present(c != nil) {
		return
	}
	for _, s := range [...]*string{c.Device, c.Platform, c.AppVersion, c.Locale, c.Country, c.Timezone, c.Referrer, c.UserAgent} {
		h.optStr(s)
	}
}

func (h *contentHash) common(e *Common) {
	h.str(e.UserID)
	h.str(e.SessionID)
	h.str(e.RequestID)
	h.int(NormalizeTs(e.TsMs))
	h.context(e.Context)
}

// id returns the version 8 UUID of the accumulated fields at the event time tsMs.
func (h *contentHash) id(tsMs int64) string {
	sum := sha256.Sum256(h.b)
	var b [16]byte
	ms := uint64(tsMs)
	b[0], b[1], b[2], b[3], b[4], b[5] = byte(ms>>40), byte(ms>>32), byte(ms>>24), byte(ms>>16), byte(ms>>8), byte(ms)
	copy(b[6:], sum[:10])
	b[6] = (b[6] & 0x0f) | 0x80
	b[8] = (b[8] & 0x3f) | 0x80
	return hex.EncodeToString(b[:])
}

// ContentID returns the event_id of an impression sent without one (see the comment at
// the top of this file). The server's receive time is not part of it.
func (e *Impression) ContentID() string {
	h := newContentHash(KindImpression)
	h.common(&e.Common)
	h.int(int64(len(e.Items)))
	for i := range e.Items {
		it := &e.Items[i]
		h.str(it.ItemID)
		h.int(it.Position)
		h.optStr(it.FeedID)
		h.optStr(it.Slot)
	}
	return h.id(NormalizeTs(e.TsMs))
}

// ContentID returns the event_id of a watch sent without one.
func (e *Watch) ContentID() string {
	h := newContentHash(KindWatch)
	h.common(&e.Common)
	h.str(e.ItemID)
	h.float(e.WatchTimeSec)
	h.optFloat(e.PercentWatched)
	if h.present(e.Ended != nil) {
		h.present(*e.Ended)
	}
	h.optFloat(e.PlaybackSpeed)
	if h.present(e.RebufferCount != nil) {
		h.int(*e.RebufferCount)
	}
	return h.id(NormalizeTs(e.TsMs))
}

// ContentID returns the event_id of a POST /event sent without one. ts counts as its
// normalised time: 1700000000 and 1700000000000 are the same instant.
func (e *Legacy) ContentID() string {
	h := newContentHash(KindLegacy)
	h.str(e.UserID)
	h.str(e.ItemID)
	h.str(e.EventType)
	h.int(e.TimeMs())
	return h.id(e.TimeMs())
}
