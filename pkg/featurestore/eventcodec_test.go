package featurestore

import (
	"encoding/json"
	"reflect"
	"testing"

	"recsys/pkg/events"
)

// unmarshalEvent is what encoding/json makes of a payload (before validation).
func unmarshalEvent(kind events.Kind, payload []byte) (events.Any, error) {
	var ev events.Any = &events.Watch{}
	if kind == events.KindImpression {
		ev = &events.Impression{}
	}
	err := json.Unmarshal(payload, ev)
	return ev, err
}

func TestDecodeFast(t *testing.T) {
	const watch = `{"event_id":"e1","user_id":"u1","session_id":"s","request_id":"r","ts_ms":1700000000000,"server_received_ts_ms":1700000000001,"event_type":"watch","item_id":"a","watch_time_sec":12.5,"percent_watched":55,"ended":false,"playback_speed":1.25,"rebuffer_count":2,"context":{"device":"tv","platform":"ios","app_version":"1","locale":"fr","country":"FR","timezone":"UTC","referrer":"x","user_agent":"y"}}`
	tests := []struct {
		name    string
		kind    events.Kind
		payload string
		fast    bool // decodeFast takes it (else encoding/json does)
	}{
		{"watch with every field", events.KindWatch, watch, true},
		{"watch, spaces", events.KindWatch, " { \"event_id\" : \"e\" , \"ts_ms\" : -0 , \"ended\" : true , \"watch_time_sec\" : 1e2 } \n", true},
		{"impression", events.KindImpression, `{"event_id":"e","user_id":"u","ts_ms":1,"event_type":"impression","items":[{"item_id":"b","position":2,"feed_id":"f","slot":"s"},{"item_id":"a","position":0}]}`, true},
		{"impression, no items", events.KindImpression, `{"event_id":"e","items":[]}`, true},
		{"empty object", events.KindWatch, `{}`, true},
		{"escape in a string", events.KindWatch, `{"event_id":"e\"1"}`, false},
		{"non-ASCII", events.KindWatch, `{"user_id":"é"}`, false},
		{"unknown key", events.KindWatch, `{"event_id":"e","extra":1}`, false},
		{"other case", events.KindWatch, `{"Event_ID":"e"}`, false},
		{"duplicate key", events.KindWatch, `{"event_id":"a","event_id":"b"}`, false},
		{"null", events.KindWatch, `{"percent_watched":null}`, false},
		{"float into an integer", events.KindWatch, `{"ts_ms":1.5}`, false},
		{"number out of JSON grammar", events.KindWatch, `{"watch_time_sec":01}`, false},
		{"integer overflow", events.KindWatch, `{"ts_ms":99999999999999999999}`, false},
		{"trailing data", events.KindWatch, `{"event_id":"e"} x`, false},
		{"string for a number", events.KindWatch, `{"ts_ms":"1"}`, false},
		{"not an object", events.KindImpression, `[1]`, false},
		{"truncated", events.KindImpression, `{"items":[{"item_id":"a"}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := decodeFast(tt.kind, []byte(tt.payload))
			if ok != tt.fast {
				t.Fatalf("fast path took it: %v, want %v", ok, tt.fast)
			}
			if !ok {
				return
			}
			want, err := unmarshalEvent(tt.kind, []byte(tt.payload))
			if err != nil {
				t.Fatalf("encoding/json refuses what the fast path took: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("fast path %+v, encoding/json %+v", got, want)
			}
		})
	}
}

// What the API writes (events.Encode) takes the fast path.
func TestDecodeFastTakesEncodedEvents(t *testing.T) {
	str := func(s string) *string { return &s }
	pw, sp, end, rb := 55.5, 1.5, true, int64(3)
	ctx := &events.Context{Device: str("tv"), Platform: str("android"), AppVersion: str("2.1"), Locale: str("en"),
		Country: str("US"), Timezone: str("America/New_York"), Referrer: str("home"), UserAgent: str("Mozilla/5.0")}
	common := events.Common{EventID: "evt-1", UserID: "u1", SessionID: "s1", RequestID: "r1", TsMs: 1_700_000_000_123,
		ServerReceivedTsMs: 1_700_000_000_456, Context: ctx}
	for _, ev := range []events.Any{
		&events.Watch{Common: common, EventType: "watch", ItemID: "i1", WatchTimeSec: 30.25, PercentWatched: &pw, Ended: &end,
			PlaybackSpeed: &sp, RebufferCount: &rb},
		&events.Watch{Common: events.Common{EventID: "evt-2", UserID: "u1", SessionID: "s", RequestID: "r", TsMs: 1}, EventType: "watch", ItemID: "i1"},
		&events.Impression{Common: common, EventType: "impression", Items: []events.ImpressionItem{{ItemID: "a", Position: 1, FeedID: str("f"), Slot: str("top")}, {ItemID: "b"}}},
	} {
		payload, err := events.Encode(ev)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := decodeFast(ev.Kind(), payload)
		if !ok {
			t.Fatalf("fast path refused %s", payload)
		}
		want, err := unmarshalEvent(ev.Kind(), payload)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: fast path %+v, encoding/json %+v (%v)", payload, got, want, err)
		}
	}
}

// FuzzDecodeFast: whenever the fast path takes a payload, encoding/json takes it too and
// gives the same struct; Decode's outcome never depends on which path ran.
func FuzzDecodeFast(f *testing.F) {
	f.Add(true, `{"event_id":"e1","user_id":"u1","session_id":"s","request_id":"r","ts_ms":1700000000000,"event_type":"watch","item_id":"a","watch_time_sec":3,"percent_watched":55.5,"ended":true}`)
	f.Add(false, `{"event_id":"e2","user_id":"u1","session_id":"s","request_id":"r","ts_ms":1700000000000,"event_type":"impression","items":[{"item_id":"b","position":2},{"item_id":"a","position":0,"slot":"x"}],"context":{"device":"tv"}}`)
	f.Add(true, `{"ts_ms":1e3,"ended":tru}`)
	f.Add(false, `{"items":[{"position":-0}],"items":[]}`)
	f.Fuzz(func(t *testing.T, watch bool, payload string) {
		kind := events.KindImpression
		if watch {
			kind = events.KindWatch
		}
		got, ok := decodeFast(kind, []byte(payload))
		if !ok {
			return
		}
		want, err := unmarshalEvent(kind, []byte(payload))
		if err != nil {
			t.Fatalf("%q: encoding/json refuses what the fast path took: %v", payload, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: fast path %+v, encoding/json %+v", payload, got, want)
		}
		e1, err1 := Decode(string(kind), "", []byte(payload))
		ev, err2 := events.DecodePayload(kind, []byte(payload))
		if (err1 == nil) != (err2 == nil) {
			t.Fatalf("%q: Decode %v, events.DecodePayload %v", payload, err1, err2)
		}
		if err1 == nil && !reflect.DeepEqual(e1, FromEvent(ev)) {
			t.Fatalf("%q: Decode %+v, events.DecodePayload %+v", payload, e1, FromEvent(ev))
		}
	})
}
