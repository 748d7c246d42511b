package ingest

import (
	"fmt"
	"strconv"

	"recsys/pkg/events"
)

// DefaultMaxEventBytes is the default Config.MaxEventBytes: well below the relay's default
// --relay.max-batch-bytes (1 MiB), the largest Kafka message it can publish, and far above
// any real event (a 500-item impression is ~40 KB).
const DefaultMaxEventBytes = 256 << 10

// MessageOverhead is room for the Kafka headers and record framing a relay adds to an
// event's frame: --relay.max-batch-bytes must exceed the largest accepted event by this much.
const MessageOverhead = 1024

// EventTooLargeError is returned by Write (and Prepare) when an event's outbox frame is
// larger than Config.MaxEventBytes. Such an event must be refused before it is stored: it
// would share its outbox row with other clients' events, and a message the relay cannot
// publish would take them down with it.
type EventTooLargeError struct {
	Index int // the event's index in the call
	Bytes int // its encoded size
	Max   int // Config.MaxEventBytes
	// Field is the location of the field that alone makes the event too large (relative to
	// the event, e.g. ["context", "user_agent"] or ["items", 3, "feed_id"]); nil when no
	// single field does.
	Field      []any
	FieldBytes int
}

func (e *EventTooLargeError) Error() string {
	s := fmt.Sprintf("event %d encodes to %d bytes, more than the limit of %d", e.Index, e.Bytes, e.Max)
	if e.Field != nil {
		s += fmt.Sprintf(" (field %v is %d bytes)", e.Field, e.FieldBytes)
	}
	return s
}

// FieldError is the error as a 422 detail entry, located under prefix (["body"] for a
// single-event request, ["body", "events", i] for an element of a batch).
func (e *EventTooLargeError) FieldError(prefix ...any) events.FieldError {
	loc := append(append([]any{}, prefix...), e.Field...)
	msg := "Event is " + strconv.Itoa(e.Bytes) + " bytes encoded, more than the limit of " + strconv.Itoa(e.Max) + " bytes per event"
	if e.Field != nil {
		msg += "; this field alone is " + strconv.Itoa(e.FieldBytes) + " bytes"
	}
	return events.FieldError{Type: "event_too_large", Loc: loc, Msg: msg, Input: nil,
		Ctx: map[string]any{"max_bytes": e.Max, "actual_bytes": e.Bytes}}
}

// tooLarge builds the error of event i of size n, naming its largest string field when
// leaving that field out would bring the event within max.
func tooLarge(ev events.Any, i, n, max int) *EventTooLargeError {
	e := &EventTooLargeError{Index: i, Bytes: n, Max: max}
	loc, size := largestField(ev)
	if loc != nil && n-size <= max {
		e.Field, e.FieldBytes = loc, size
	}
	return e
}

// largestField returns the location and length of ev's longest string field.
func largestField(ev events.Any) (loc []any, size int) {
	consider := func(l []any, s string) {
		if len(s) > size {
			loc, size = l, len(s)
		}
	}
	opt := func(l []any, s *string) {
		if s != nil {
			consider(l, *s)
		}
	}
	common := func(c *events.Common) {
		consider([]any{"event_id"}, c.EventID)
		consider([]any{"user_id"}, c.UserID)
		consider([]any{"session_id"}, c.SessionID)
		consider([]any{"request_id"}, c.RequestID)
		if x := c.Context; x != nil {
			for _, f := range [...]struct {
				name string
				v    *string
			}{{"device", x.Device}, {"platform", x.Platform}, {"app_version", x.AppVersion}, {"locale", x.Locale},
				{"country", x.Country}, {"timezone", x.Timezone}, {"referrer", x.Referrer}, {"user_agent", x.UserAgent}} {
				opt([]any{"context", f.name}, f.v)
			}
		}
	}
	switch e := ev.(type) {
	case *events.Impression:
		common(&e.Common)
		for j := range e.Items {
			it := &e.Items[j]
			consider([]any{"items", j, "item_id"}, it.ItemID)
			opt([]any{"items", j, "feed_id"}, it.FeedID)
			opt([]any{"items", j, "slot"}, it.Slot)
		}
	case *events.Watch:
		common(&e.Common)
		consider([]any{"item_id"}, e.ItemID)
	case *events.Legacy:
		consider([]any{"event_id"}, e.EventID)
		consider([]any{"user_id"}, e.UserID)
		consider([]any{"item_id"}, e.ItemID)
	}
	return loc, size
}
