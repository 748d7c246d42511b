package featurestore

import (
	"errors"
	"testing"
	"time"

	"recsys/pkg/features"
)

func TestDecode(t *testing.T) {
	watch := `{"event_id":"evt-00001","user_id":"u1","session_id":"s","request_id":"r","ts_ms":1000000000000,"event_type":"watch","item_id":"a","watch_time_sec":3,"ended":true}`
	imp := `{"event_id":"evt-00002","user_id":"u1","session_id":"s","request_id":"r","ts_ms":1700000000000,"event_type":"impression","items":[{"item_id":"b","position":2},{"item_id":"a","position":0}]}`
	legacy := `{"event_id":"evt-00003","user_id":"u1","item_id":"a","event_type":"click","ts":1700000000}`
	tests := []struct {
		name, kind, schema, payload string
		wantErr                     error
		check                       func(t *testing.T, e Event)
	}{
		{name: "old watch applies (no time window)", kind: "watch", payload: watch, check: func(t *testing.T, e Event) {
			if e.Kind != features.KindWatch || e.ItemID != "a" || e.TsMs != 1000000000000 || e.Ended == nil || !*e.Ended {
				t.Errorf("got %+v", e)
			}
		}},
		{name: "impression items in position order", kind: "impression", schema: "1", payload: imp, check: func(t *testing.T, e Event) {
			if e.Kind != features.KindImpression || len(e.Items) != 2 || e.Items[0] != "a" || e.Items[1] != "b" {
				t.Errorf("got %+v", e)
			}
		}},
		{name: "legacy seconds normalised", kind: "legacy", payload: legacy, check: func(t *testing.T, e Event) {
			if e.Kind != features.KindLegacy || e.LegacyType != "click" || e.TsMs != 1700000000000 {
				t.Errorf("got %+v", e)
			}
		}},
		{name: "kind inferred without header", payload: legacy, check: func(t *testing.T, e Event) {
			if e.Kind != features.KindLegacy {
				t.Errorf("got %+v", e)
			}
		}},
		{name: "not json", kind: "watch", payload: "nope", wantErr: ErrInvalidPayload},
		{name: "not json without header", payload: "nope", wantErr: ErrInvalidPayload},
		{name: "unknown kind", kind: "rating", payload: watch, wantErr: ErrInvalidPayload},
		{name: "unsupported schema", kind: "watch", schema: "2", payload: watch, wantErr: ErrInvalidPayload},
		{name: "invalid event", kind: "watch", payload: `{"event_id":"x","user_id":"","session_id":"s","request_id":"r","ts_ms":1,"event_type":"watch","item_id":"a","watch_time_sec":-1}`, wantErr: ErrInvalidEvent},
		{name: "json array", kind: "impression", payload: `[1,2]`, wantErr: ErrInvalidPayload},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := Decode(tt.kind, tt.schema, []byte(tt.payload))
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, e)
		})
	}
}

func TestEpochBehind(t *testing.T) {
	tests := []struct {
		redis, ours string
		behind      bool
	}{
		{"", "1", true},   // flushed: no meta
		{"0", "1", true},  // populated before the first event
		{"1", "2", true},  // rebase or forced rebuild not copied yet
		{"3", "2", false}, // the writer is stale; the newer copy covers it
	}
	for _, tt := range tests {
		if got := (&epochError{redis: tt.redis, ours: tt.ours}).behind(); got != tt.behind {
			t.Errorf("redis %q ours %q: behind = %v", tt.redis, tt.ours, got)
		}
	}
}

func TestEscapeGlob(t *testing.T) {
	if got := escapeGlob(`a*b?[c]\`); got != `a\*b\?\[c\]\\` {
		t.Errorf("got %q", got)
	}
}

func TestCheckNotFuture(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		ts   time.Time
		ok   bool
	}{
		{"now", now, true},
		{"years ago: backfills apply", now.AddDate(-5, 0, 0), true},
		{"within the bound", now.Add(59 * time.Minute), true},
		{"at the bound", now.Add(time.Hour), true},
		{"past the bound", now.Add(time.Hour + time.Millisecond), false},
		{"years ahead", now.AddDate(3, 0, 0), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := Event{}
			ev.TsMs = tc.ts.UnixMilli()
			err := CheckNotFuture(ev, now, time.Hour)
			if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrInvalidEvent)) {
				t.Errorf("CheckNotFuture: %v, want ok=%v (an ErrInvalidEvent when refused)", err, tc.ok)
			}
		})
	}
}

func TestPoisonReceivedMs(t *testing.T) {
	const msgTime = 5_000
	for _, tc := range []struct {
		name, payload string
		want          int64
	}{
		{"not json", `not json`, msgTime},
		{"no stamp", `{"event_type":"watch"}`, msgTime},
		{"earlier stamp", `{"event_type":"watch","server_received_ts_ms":1000,"schema":"next"}`, 1000},
		{"later stamp", `{"server_received_ts_ms":9000}`, msgTime},
		{"zero stamp", `{"server_received_ts_ms":0}`, msgTime},
		{"stamp of another type", `{"server_received_ts_ms":"1000"}`, msgTime},
		{"truncated", `{"server_received_ts_ms":1000`, msgTime},
	} {
		if got := PoisonReceivedMs([]byte(tc.payload), msgTime); got != tc.want {
			t.Errorf("%s: PoisonReceivedMs = %d, want %d", tc.name, got, tc.want)
		}
	}
}
