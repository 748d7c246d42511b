// Package events defines the app's events (impressions, watches and the legacy
// view/click/purchase events), their validation under the API contract, and their encoding on
// the wire to Kafka. The api writes these payloads into event_outbox; the relay copies them to
// Kafka with the headers named here; the consumer decodes them with DecodePayload.
//
// Two validation modes exist on purpose:
//   - the request decoders (DecodeImpression, DecodeWatch, DecodeBatch, DecodeLegacy) apply
//     every rule of the contract, including the timestamp window against the server clock,
//     and report errors in pydantic's shape for the 422 detail list;
//   - Validate checks an already decoded event structurally, without the time window, so
//     events replayed or backfilled long after they happened still apply.
package events

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
)

// Kind is the type of an event as written to event_outbox.event_type and to the
// HeaderEventType Kafka header.
type Kind string

// The event kinds.
const (
	KindImpression Kind = "impression"
	KindWatch      Kind = "watch"
	// KindLegacy is a view/click/purchase event of POST /event. It travels on the watches
	// topic; its payload's own event_type field says which of the three it is.
	KindLegacy Kind = "legacy"
)

// Kafka header names set by the relay on every message.
const (
	HeaderEventID       = "event_id"
	HeaderEventType     = "event_type" // a Kind
	HeaderSchemaVersion = "schema_version"
	HeaderOutboxID      = "outbox_id"
	HeaderCorrelationID = "correlation_id"
)

// SchemaVersion is the version of the payload encoding written today (event_outbox
// schema_version and the HeaderSchemaVersion header).
const SchemaVersion = 1

// Legacy event types of POST /event.
const (
	LegacyView     = "view"
	LegacyClick    = "click"
	LegacyPurchase = "purchase"
)

// Any is one of *Impression, *Watch or *Legacy.
type Any interface {
	Kind() Kind
	// ID returns the event_id: with User, the idempotency key across all kinds (two users'
	// events may share an id).
	ID() string
	// User returns the user_id, the Kafka message key (per-user order).
	User() string
}

// Context is the optional client context. Null fields are omitted when encoded; an all-null
// context encodes as {}.
type Context struct {
	Device     *string `json:"device,omitempty"`
	Platform   *string `json:"platform,omitempty"`
	AppVersion *string `json:"app_version,omitempty"`
	Locale     *string `json:"locale,omitempty"`
	Country    *string `json:"country,omitempty"`
	Timezone   *string `json:"timezone,omitempty"`
	Referrer   *string `json:"referrer,omitempty"`
	UserAgent  *string `json:"user_agent,omitempty"`
}

// Common holds the fields impressions and watches share.
type Common struct {
	EventID   string `json:"event_id"`
	UserID    string `json:"user_id"`
	SessionID string `json:"session_id"`
	RequestID string `json:"request_id"`
	// TsMs is the client time in milliseconds (the request decoders normalise seconds).
	TsMs int64 `json:"ts_ms"`
	// ServerReceivedTsMs is stamped by the API when it receives the event.
	ServerReceivedTsMs int64    `json:"server_received_ts_ms,omitempty"`
	Context            *Context `json:"context,omitempty"`
}

// ImpressionItem is one shown item.
type ImpressionItem struct {
	ItemID   string  `json:"item_id"`
	Position int64   `json:"position"`
	FeedID   *string `json:"feed_id,omitempty"`
	Slot     *string `json:"slot,omitempty"`
}

// Impression is a list of items shown to a user for one request.
type Impression struct {
	Common
	EventType string           `json:"event_type"` // always "impression"
	Items     []ImpressionItem `json:"items"`
}

// Watch is a user watching an item.
type Watch struct {
	Common
	EventType      string   `json:"event_type"` // always "watch"
	ItemID         string   `json:"item_id"`
	WatchTimeSec   float64  `json:"watch_time_sec"`
	PercentWatched *float64 `json:"percent_watched,omitempty"`
	Ended          *bool    `json:"ended,omitempty"`
	PlaybackSpeed  *float64 `json:"playback_speed,omitempty"`
	RebufferCount  *int64   `json:"rebuffer_count,omitempty"`
}

// Legacy is a view, click or purchase of POST /event.
type Legacy struct {
	EventID   string `json:"event_id"`
	UserID    string `json:"user_id"`
	ItemID    string `json:"item_id"`
	EventType string `json:"event_type"` // view | click | purchase
	// Ts is the client timestamp exactly as sent (seconds or milliseconds); TimeMs
	// normalises it.
	Ts int64 `json:"ts"`
	// ServerReceivedTsMs is stamped by the API when it receives the event, as for the other
	// kinds (0 in payloads written before it was: the consumer then goes by the Kafka time).
	ServerReceivedTsMs int64 `json:"server_received_ts_ms,omitempty"`
}

// Kind implements Any.
func (*Impression) Kind() Kind { return KindImpression }

// Kind implements Any.
func (*Watch) Kind() Kind { return KindWatch }

// Kind implements Any.
func (*Legacy) Kind() Kind { return KindLegacy }

// ID implements Any.
func (e *Common) ID() string { return e.EventID }

// User implements Any.
func (e *Common) User() string { return e.UserID }

// ID implements Any.
func (e *Legacy) ID() string { return e.EventID }

// idField is where the decoders fill in a missing event_id.
func (e *Common) idField() *string { return &e.EventID }

func (e *Legacy) idField() *string { return &e.EventID }

// User implements Any.
func (e *Legacy) User() string { return e.UserID }

// TimeMs returns the event time in milliseconds.
func (e *Legacy) TimeMs() int64 { return NormalizeTs(e.Ts) }

// LegacyWeight is the feature weight of a legacy event type (view 1, click 3, purchase 10),
// or 0 for an unknown type.
func LegacyWeight(eventType string) float64 {
	switch eventType {
	case LegacyView:
		return 1
	case LegacyClick:
		return 3
	case LegacyPurchase:
		return 10
	}
	return 0
}

// msThreshold separates seconds from milliseconds: 10^12 ms is September 2001, while 10^12 s
// is 33,000 years from now.
const msThreshold = 1_000_000_000_000

// NormalizeTs returns ts in milliseconds: values >= 10^12 are taken as milliseconds, smaller
// ones as seconds.
func NormalizeTs(ts int64) int64 {
	if ts >= msThreshold {
		return ts
	}
	return ts * 1000
}

// NewEventID returns 32 lowercase hex characters (a UUID without dashes), the contract's
// format of a generated event_id: the id of an auto-logged impression, and of an event sent
// without one with Limits.RandomMissingIDs (see ContentID). It is a version 7 UUID (RFC
// 9562): the first 48 bits are the Unix time in milliseconds, the rest random, so ids sort by
// creation time. Every generated id is a key of three B-trees (event_dedup, event_outbox's
// unique key, feature_applied); random (version 4) keys put each insert on a random leaf
// page, so every leaf of those indexes was dirtied, and written whole to the WAL after each
// checkpoint, while time-ordered keys append to the right edge.
func NewEventID() string {
	return newEventID(time.Now())
}

func newEventID(now time.Time) string {
	var b [16]byte
	_, _ = rand.Read(b[6:])
	ms := uint64(now.UnixMilli())
	b[0], b[1], b[2], b[3], b[4], b[5] = byte(ms>>40), byte(ms>>32), byte(ms>>24), byte(ms>>16), byte(ms>>8), byte(ms)
	b[6] = (b[6] & 0x0f) | 0x70
	b[8] = (b[8] & 0x3f) | 0x80
	return hex.EncodeToString(b[:])
}

// DecodePayload decodes a payload written by Encode; kind comes from the HeaderEventType
// header (or event_outbox.event_type). Unknown fields are ignored so a consumer keeps
// working while producers add optional fields; the result is checked with Validate, which
// never looks at the time window.
func DecodePayload(kind Kind, payload []byte) (Any, error) {
	var ev Any
	switch kind {
	case KindImpression:
		ev = &Impression{}
	case KindWatch:
		ev = &Watch{}
	case KindLegacy:
		ev = &Legacy{}
	default:
		return nil, fmt.Errorf("decode payload: unknown event type %q", kind)
	}
	if err := json.Unmarshal(payload, ev); err != nil {
		return nil, fmt.Errorf("decode %s payload: %w", kind, err)
	}
	if err := Validate(ev); err != nil {
		return nil, fmt.Errorf("decode %s payload: %w", kind, err)
	}
	return ev, nil
}
