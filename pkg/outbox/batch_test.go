package outbox

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

func TestBatchRoundTrip(t *testing.T) {
	cases := []struct {
		name string
		msgs []Message
	}{
		{"one", []Message{{EventID: "e1", EventType: "watch", Key: "u1", CorrelationID: "c", SchemaVersion: 1, Payload: []byte(`{"a":1}`)}}},
		{"empty strings", []Message{{SchemaVersion: 1, Payload: []byte{}}}},
		{"several", []Message{
			{EventID: "e1", EventType: "impression", Key: "u1", SchemaVersion: 1, Payload: []byte(`{}`)},
			{EventID: "e2", EventType: "watch", Key: "ü∑", CorrelationID: "r-2", SchemaVersion: 32767, Payload: bytes.Repeat([]byte("x"), 300)},
			{EventID: strings.Repeat("i", 200), EventType: "legacy", Key: "u3", SchemaVersion: 2, Payload: []byte(`[]`)},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var p []byte
			for _, m := range tc.msgs {
				p = AppendFrame(p, m)
			}
			got, err := DecodeBatch(p, len(tc.msgs))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.msgs) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, tc.msgs)
			}
		})
	}
}

func TestDecodeBatchRejects(t *testing.T) {
	one := AppendFrame(nil, Message{EventID: "e1", EventType: "watch", Key: "u1", SchemaVersion: 1, Payload: []byte(`{"a":1}`)})
	two := AppendFrame(bytes.Clone(one), Message{EventID: "e2", SchemaVersion: 1, Payload: []byte(`{}`)})
	cases := []struct {
		name    string
		payload []byte
		count   int
		want    string
	}{
		{"count zero", one, 0, "event_count 0"},
		{"fewer frames than count", one, 2, "1 frames, event_count says 2"},
		{"more frames than count", two, 1, "event_count says 1"},
		{"truncated payload field", one[:len(one)-1], 1, "truncated"},
		{"truncated in a length", one[:3], 1, "truncated"},
		{"empty payload", nil, 1, "0 frames"},
		{"huge count on a small payload", one, 1 << 40, "1 frames, event_count says 1099511627776"},
		{"schema version overflow", AppendFrame(nil, Message{SchemaVersion: -1}), 1, "schema version"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeBatch(tc.payload, tc.count)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("DecodeBatch error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestLane(t *testing.T) {
	if Lane("u1", 1) != 0 || Lane("u1", 0) != 0 {
		t.Fatal("one lane (or none configured) must map everything to lane 0")
	}
	seen := map[int]int{}
	for i := range 10_000 {
		k := "user-" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + strings.Repeat("y", i%13) + string(rune(i))
		l := Lane(k, 16)
		if l < 0 || l >= 16 {
			t.Fatalf("Lane(%q, 16) = %d, out of range", k, l)
		}
		if Lane(k, 16) != l {
			t.Fatalf("Lane(%q) is not stable", k)
		}
		seen[l]++
	}
	for l := range 16 {
		if seen[l] < 10_000/16/2 {
			t.Fatalf("lane %d got %d of 10000 keys: hash badly skewed (%v)", l, seen[l], seen)
		}
	}
	if LaneKey(3) == LaneKey(4) {
		t.Fatal("lane keys must differ")
	}
}

func FuzzDecodeBatch(f *testing.F) {
	f.Add(AppendFrame(nil, Message{EventID: "e", EventType: "watch", Key: "u", SchemaVersion: 1, Payload: []byte(`{}`)}), 1)
	f.Add([]byte{0x80, 0x80, 0x80}, 1)
	f.Fuzz(func(t *testing.T, payload []byte, count int) {
		msgs, err := DecodeBatch(payload, count)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes to the same bytes (frames are canonical only if their
		// varints are minimal, so compare by re-decoding).
		var p []byte
		for _, m := range msgs {
			p = AppendFrame(p, m)
		}
		again, err := DecodeBatch(p, count)
		if err != nil || !reflect.DeepEqual(again, msgs) {
			t.Fatalf("re-encoded batch does not decode to the same messages: %v", err)
		}
	})
}
