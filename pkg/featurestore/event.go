package featurestore

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"recsys/pkg/events"
	"recsys/pkg/features"
)

// Event is one decoded event ready to apply.
type Event struct {
	features.Interaction
	// ServerReceivedTsMs is when the API accepted the event (0 when unknown: a legacy event
	// written before the API stamped legacy payloads).
	ServerReceivedTsMs int64
}

// Decode errors are poison: retrying cannot fix them, so the message goes to the DLQ.
var (
	// ErrInvalidPayload: the bytes are not a decodable event (bad JSON, unknown kind or schema).
	ErrInvalidPayload = errors.New("invalid payload")
	// ErrInvalidEvent: the event decodes but breaks the contract's structural rules.
	ErrInvalidEvent = errors.New("invalid event")
)

// Decode turns a Kafka message into an Event. kind is the event_type header (inferred from the
// payload's event_type field when the header is absent); schemaVersion is the schema_version
// header ("" when absent). Validation is structural only (events.Validate): events are never
// rejected for their age, so backfills and replays apply.
func Decode(kind, schemaVersion string, payload []byte) (Event, error) {
	if schemaVersion != "" && schemaVersion != fmt.Sprint(events.SchemaVersion) {
		return Event{}, fmt.Errorf("%w: unsupported schema_version %q", ErrInvalidPayload, schemaVersion)
	}
	if kind == "" {
		var probe struct {
			EventType string `json:"event_type"`
		}
		if err := json.Unmarshal(payload, &probe); err != nil {
			return Event{}, fmt.Errorf("%w: %v", ErrInvalidPayload, err)
		}
		switch probe.EventType {
		case string(events.KindImpression), string(events.KindWatch):
			kind = probe.EventType
		case events.LegacyView, events.LegacyClick, events.LegacyPurchase:
			kind = string(events.KindLegacy)
		default:
			return Event{}, fmt.Errorf("%w: no event_type header and payload event_type %q", ErrInvalidPayload, probe.EventType)
		}
	}
	switch events.Kind(kind) {
	case events.KindImpression, events.KindWatch, events.KindLegacy:
	default:
		return Event{}, fmt.Errorf("%w: unknown event_type %q", ErrInvalidPayload, kind)
	}
	ev, err := decodePayload(events.Kind(kind), payload)
	if err != nil {
		var ve *events.ValidationError
		if errors.As(err, &ve) {
			return Event{}, fmt.Errorf("%w: %v", ErrInvalidEvent, err)
		}
		return Event{}, fmt.Errorf("%w: %v", ErrInvalidPayload, err)
	}
	return FromEvent(ev), nil
}

// PoisonReceivedMs is the receive time an undecodable message is judged by against erasures
// (Forgotten.Skip), given its Kafka time: the payload's server_received_ts_ms when it is a
// JSON object holding a positive one that is earlier (an event of a schema this consumer
// does not know, or one failing validation, still carries the API's stamp), the message's
// time otherwise. The relay publishes an event after the API received it, as late as its
// backlog makes it: an erased user's event received before the erasure and published after
// it was judged as the user's return and kept in the DLQ, past the erasure's clearing.
func PoisonReceivedMs(payload []byte, msgTimeMs int64) int64 {
	var probe struct {
		ServerReceivedTsMs int64 `json:"server_received_ts_ms"`
	}
	if err := json.Unmarshal(payload, &probe); err != nil || probe.ServerReceivedTsMs <= 0 {
		return msgTimeMs
	}
	return min(probe.ServerReceivedTsMs, msgTimeMs)
}

// DefaultMaxEventFuture is how far past the clock of whoever applies it an event's time may
// be (--consumer.max-event-future): far more than the API's own window
// (--ingest.max-event-future, 5 minutes) and any sane clock skew between hosts.
const DefaultMaxEventFuture = time.Hour

// CheckNotFuture refuses an event whose time is more than maxFuture past now. Such an event
// cannot come through the API; on the topics (another producer, a bug) one alone would move
// the decay landmarks to its time and zero every popularity and co-visitation value, and
// later events would add nothing until that date. Old events stay welcome (backfills).
func CheckNotFuture(ev Event, now time.Time, maxFuture time.Duration) error {
	if limit := now.Add(maxFuture).UnixMilli(); ev.TsMs > limit {
		return fmt.Errorf("%w: ts_ms %d is %s past the clock (more than %s: --consumer.max-event-future)", ErrInvalidEvent,
			ev.TsMs, time.Duration(ev.TsMs-now.UnixMilli())*time.Millisecond, maxFuture)
	}
	return nil
}

// decodePayload is events.DecodePayload (encoding/json, then events.Validate) with
// decodeFast in front for the payloads the API writes.
func decodePayload(kind events.Kind, payload []byte) (events.Any, error) {
	ev, ok := decodeFast(kind, payload)
	if !ok {
		return events.DecodePayload(kind, payload)
	}
	if err := events.Validate(ev); err != nil {
		return nil, fmt.Errorf("decode %s payload: %w", kind, err) // events.DecodePayload's wording
	}
	return ev, nil
}

// FromEvent converts a decoded events.Any to an Event.
func FromEvent(ev events.Any) Event {
	switch e := ev.(type) {
	case *events.Impression:
		items := slices.Clone(e.Items)
		slices.SortStableFunc(items, func(a, b events.ImpressionItem) int { return int(sign(a.Position - b.Position)) })
		ids := make([]string, len(items))
		for i, it := range items {
			ids[i] = it.ItemID
		}
		return Event{Interaction: features.Interaction{Kind: features.KindImpression, EventID: e.EventID, UserID: e.UserID,
			TsMs: events.NormalizeTs(e.TsMs), Items: ids}, ServerReceivedTsMs: e.ServerReceivedTsMs}
	case *events.Watch:
		return Event{Interaction: features.Interaction{Kind: features.KindWatch, EventID: e.EventID, UserID: e.UserID,
			TsMs: events.NormalizeTs(e.TsMs), ItemID: e.ItemID, WatchTimeSec: e.WatchTimeSec, PercentWatched: e.PercentWatched,
			Ended: e.Ended}, ServerReceivedTsMs: e.ServerReceivedTsMs}
	case *events.Legacy:
		return Event{Interaction: features.Interaction{Kind: features.KindLegacy, EventID: e.EventID, UserID: e.UserID,
			TsMs: e.TimeMs(), ItemID: e.ItemID, LegacyType: e.EventType}, ServerReceivedTsMs: e.ServerReceivedTsMs}
	}
	return Event{}
}

func sign(x int64) int64 {
	switch {
	case x < 0:
		return -1
	case x > 0:
		return 1
	}
	return 0
}
