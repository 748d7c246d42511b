package outbox

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
)

// Payload formats of event_outbox.payload_format (migration 0008).
const (
	// FormatSingle: the row is one event; payload is its JSON, msg_key its user id.
	FormatSingle int16 = 1
	// FormatBatch: the row carries event_count events as concatenated frames (AppendFrame);
	// msg_key is the lane key (LaneKey) shared by every event's user id.
	FormatBatch int16 = 2
)

// Message is one event carried by an outbox row: what becomes one Kafka message.
type Message struct {
	EventID       string
	EventType     string
	Key           string // the user id: the Kafka message key
	CorrelationID string
	SchemaVersion int16
	Payload       []byte // the event as JSON
}

// Lane maps a user id to one of lanes order lanes (FNV-1a). Writers put a user's events in
// that lane's rows only, so the relay's per-unit order (rows of one lane in id order) is the
// user's commit order. Changing the lane count while rows are unpublished can reorder the
// events in flight of a user whose lane changed; change it with a drained outbox.
func Lane(key string, lanes int) int {
	if lanes <= 1 {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return int(h.Sum32() % uint32(lanes))
}

// LaneKey is the msg_key of a lane's batch rows. Should a user id ever equal a lane key, its
// single rows would share the lane's order unit: ordered more strictly, never less.
func LaneKey(lane int) string { return "~lane/" + strconv.Itoa(lane) }

// AppendFrame appends m as one self-delimiting frame: the schema version as a uvarint, then
// five uvarint-length-prefixed fields (event id, event type, key, correlation id, payload).
// Frames concatenate, so a writer may build a row's payload by concatenating the frames of
// the events that turned out new, in SQL (string_agg over bytea) or in Go.
func AppendFrame(dst []byte, m Message) []byte {
	dst = binary.AppendUvarint(dst, uint64(uint16(m.SchemaVersion)))
	for _, f := range [...]string{m.EventID, m.EventType, m.Key, m.CorrelationID} {
		dst = binary.AppendUvarint(dst, uint64(len(f)))
		dst = append(dst, f...)
	}
	dst = binary.AppendUvarint(dst, uint64(len(m.Payload)))
	return append(dst, m.Payload...)
}

var errTruncated = errors.New("truncated frame")

// minFrame is the smallest frame: a one-byte schema version and five empty fields.
const minFrame = 6

// DecodeBatch splits a FormatBatch payload into its messages. count is the row's
// event_count; a payload that does not hold exactly count well-formed frames is an error (the
// relay treats it as a poison row). The messages' Payload slices alias payload.
func DecodeBatch(payload []byte, count int) ([]Message, error) {
	if count < 1 {
		return nil, fmt.Errorf("decode outbox batch: event_count %d", count)
	}
	// count comes from the row, not from the payload: a corrupt count must not size the
	// allocation. A frame is at least minFrame bytes.
	out := make([]Message, 0, min(count, len(payload)/minFrame))
	p := payload
	for len(p) > 0 {
		var m Message
		var err error
		sv, n := binary.Uvarint(p)
		if n <= 0 || sv > 1<<15-1 {
			return nil, fmt.Errorf("decode outbox batch: frame %d: bad schema version", len(out))
		}
		m.SchemaVersion, p = int16(sv), p[n:]
		var fields [5][]byte
		for i := range fields {
			if fields[i], p, err = lenPrefixed(p); err != nil {
				return nil, fmt.Errorf("decode outbox batch: frame %d: %w", len(out), err)
			}
		}
		m.EventID, m.EventType, m.Key, m.CorrelationID = string(fields[0]), string(fields[1]), string(fields[2]), string(fields[3])
		m.Payload = fields[4]
		out = append(out, m)
		if len(out) > count {
			break
		}
	}
	if len(out) != count {
		return nil, fmt.Errorf("decode outbox batch: %d frames, event_count says %d", len(out), count)
	}
	return out, nil
}

func lenPrefixed(p []byte) (field, rest []byte, err error) {
	l, n := binary.Uvarint(p)
	if n <= 0 || l > uint64(len(p)-n) {
		return nil, nil, errTruncated
	}
	end := n + int(l)
	return p[n:end:end], p[end:], nil
}
