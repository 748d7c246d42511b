package events_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"recsys/pkg/events"
)

func TestNormalizeTs(t *testing.T) {
	for _, tc := range []struct{ in, want int64 }{
		{1, 1000}, {1_700_000_000, 1_700_000_000_000}, {999_999_999_999, 999_999_999_999_000},
		{1_000_000_000_000, 1_000_000_000_000}, {1_700_000_000_123, 1_700_000_000_123},
	} {
		if got := events.NormalizeTs(tc.in); got != tc.want {
			t.Errorf("NormalizeTs(%d) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

// TestValidateIgnoresTimeWindow: the consumer must apply an event replayed long after it was
// accepted, so Validate checks structure only.
func TestValidateIgnoresTimeWindow(t *testing.T) {
	old := time.Now().Add(-400 * 24 * time.Hour).UnixMilli()
	w := &events.Watch{Common: events.Common{EventID: "watch-0001", UserID: "u", SessionID: "s", RequestID: "r", TsMs: old},
		EventType: "watch", ItemID: "i"}
	if err := events.Validate(w); err != nil {
		t.Errorf("old watch: %v", err)
	}
	bad := []struct {
		name string
		ev   events.Any
		loc  string
	}{
		{"watch zero ts", &events.Watch{Common: events.Common{EventID: "watch-0001", UserID: "u", SessionID: "s", RequestID: "r"}, EventType: "watch", ItemID: "i"}, "ts_ms"},
		{"watch wrong type", &events.Watch{Common: events.Common{EventID: "watch-0001", UserID: "u", SessionID: "s", RequestID: "r", TsMs: old}, EventType: "x", ItemID: "i"}, "event_type"},
		{"impression no items", &events.Impression{Common: events.Common{EventID: "imp-00001", UserID: "u", SessionID: "s", RequestID: "r", TsMs: old}, EventType: "impression"}, "items"},
		{"impression duplicate positions", &events.Impression{Common: events.Common{EventID: "imp-00001", UserID: "u", SessionID: "s", RequestID: "r", TsMs: old}, EventType: "impression",
			Items: []events.ImpressionItem{{ItemID: "a", Position: 1}, {ItemID: "b", Position: 1}}}, "items"},
		{"legacy unknown type", &events.Legacy{EventID: "legacy-01", UserID: "u", ItemID: "i", EventType: "like", Ts: 5}, "event_type"},
		{"legacy short id", &events.Legacy{EventID: "x", UserID: "u", ItemID: "i", EventType: "view", Ts: 5}, "event_id"},
	}
	for _, tc := range bad {
		err := events.Validate(tc.ev)
		ve, ok := err.(*events.ValidationError)
		if !ok || len(ve.Errors) != 1 || ve.Errors[0].Loc[0] != tc.loc {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

func TestEncodeOmitsNulls(t *testing.T) {
	w := &events.Watch{Common: events.Common{EventID: "watch-0001", UserID: "u", SessionID: "s", RequestID: "r", TsMs: 1_700_000_000_000,
		Context: &events.Context{}}, EventType: "watch", ItemID: "i"}
	b, err := events.Encode(w)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"event_id":"watch-0001","user_id":"u","session_id":"s","request_id":"r","ts_ms":1700000000000,"context":{},"event_type":"watch","item_id":"i","watch_time_sec":0}`
	if string(b) != want {
		t.Errorf("Encode = %s\nwant     %s", b, want)
	}
	if _, err := events.DecodePayload("click", b); err == nil {
		t.Error("DecodePayload accepted an unknown kind")
	}
	// A payload from a newer producer with an extra field still decodes.
	newer := strings.Replace(want, `"item_id":"i"`, `"item_id":"i","new_field":1`, 1)
	if _, err := events.DecodePayload(events.KindWatch, []byte(newer)); err != nil {
		t.Errorf("forward-compatible decode: %v", err)
	}
}

func TestDecodeLegacyKeepsTs(t *testing.T) {
	now := time.Now()
	body := `{"user_id":"u","item_id":"i","event_type":"purchase","ts":` + jsonInt(now.Unix()) + `}`
	e, err := events.DecodeLegacy([]byte(body), events.DefaultLimits(), now)
	if err != nil {
		t.Fatal(err)
	}
	if e.Ts != now.Unix() || e.TimeMs() != now.Unix()*1000 || len(e.EventID) != 32 {
		t.Errorf("legacy = %+v", e)
	}
	if events.LegacyWeight(e.EventType) != 10 || events.LegacyWeight("nope") != 0 {
		t.Error("LegacyWeight")
	}
	// The receive time travels in the payload, as for the other kinds: the consumer judges an
	// erased user's late events by it (featurestore.Forgotten).
	payload, err2 := events.Encode(e)
	if err2 != nil {
		t.Fatal(err2)
	}
	back, err2 := events.DecodePayload(events.KindLegacy, payload)
	if err2 != nil || e.ServerReceivedTsMs != now.UnixMilli() || back.(*events.Legacy).ServerReceivedTsMs != now.UnixMilli() {
		t.Errorf("receive time %d, after the payload %v (%v), want %d", e.ServerReceivedTsMs, back, err2, now.UnixMilli())
	}
}

func TestStringEscapesAndLengths(t *testing.T) {
	now := time.Now()
	// 128 characters of 4 bytes each: within the limit (characters, not bytes).
	emoji := strings.Repeat(`\ud83d\ude00`, 128)
	body := `{"user_id":"` + emoji + `","session_id":"a\"b\\c\/d\n","request_id":"r","ts_ms":` + jsonInt(now.UnixMilli()) + `,"item_id":"i","watch_time_sec":0}`
	w, err := events.DecodeWatch([]byte(body), events.DefaultLimits(), now)
	if err != nil {
		t.Fatal(err)
	}
	if w.UserID != strings.Repeat("😀", 128) || w.SessionID != "a\"b\\c/d\n" {
		t.Errorf("decoded %q %q", w.UserID, w.SessionID)
	}
	_, err = events.DecodeWatch([]byte(strings.Replace(body, emoji, emoji+"x", 1)), events.DefaultLimits(), now)
	if err == nil || err.Errors[0].Type != "string_too_long" {
		t.Errorf("129 characters: %v", err)
	}
}

func jsonInt(i int64) string { b, _ := json.Marshal(i); return string(b) }

// TestDecodeWatchOptionalFields: the optional fields of a watch and of its context decode to
// what encoding/json gives (the last of repeated keys wins, null clears), with every event
// of a batch keeping its own values.
func TestDecodeWatchOptionalFields(t *testing.T) {
	const common = `"event_id":"watch-0001","user_id":"u","session_id":"s","request_id":"r","ts_ms":1800000000000,"item_id":"i","watch_time_sec":1.5`
	for _, body := range []string{
		`{` + common + `}`,
		`{` + common + `,"percent_watched":80,"ended":true,"playback_speed":1.25,"rebuffer_count":3}`,
		`{` + common + `,"percent_watched":null,"ended":null,"playback_speed":null,"rebuffer_count":null,"context":null}`,
		`{` + common + `,"percent_watched":10,"percent_watched":20,"ended":true,"ended":false,"rebuffer_count":1,"rebuffer_count":null}`,
		`{` + common + `,"context":{}}`,
		`{` + common + `,"context":{"device":"tv","platform":"web","app_version":"1.2","locale":"fr-FR","country":"FR","timezone":"Europe/Paris","referrer":"home","user_agent":"ua"}}`,
		`{` + common + `,"context":{"device":"tv","device":"phone","locale":"x","locale":null}}`,
	} {
		got, verr := events.DecodeWatch([]byte(body), events.DefaultLimits(), fuzzNow)
		if verr != nil {
			t.Fatalf("%s: %v", body, verr)
		}
		var want events.Watch
		if err := json.Unmarshal([]byte(body), &want); err != nil {
			t.Fatal(err)
		}
		want.ServerReceivedTsMs, want.EventType = fuzzNow.UnixMilli(), "watch" // set by the decoder
		gb, _ := json.Marshal(got)
		wb, _ := json.Marshal(&want)
		if string(gb) != string(wb) {
			t.Errorf("%s:\ngot  %s\nwant %s", body, gb, wb)
		}
	}
	batch := `{"events":[{` + strings.Replace(common, "watch-0001", "watch-0002", 1) + `,"percent_watched":1,"context":{"device":"a"}},{` + common + `,"percent_watched":2,"context":{"device":"b"}}]}`
	evs, verr := events.DecodeBatch([]byte(batch), events.DefaultLimits(), fuzzNow)
	if verr != nil {
		t.Fatal(verr)
	}
	for i, want := range []struct {
		pct    float64
		device string
	}{{1, "a"}, {2, "b"}} {
		w := evs[i].(*events.Watch)
		if *w.PercentWatched != want.pct || *w.Context.Device != want.device {
			t.Errorf("event %d: percent_watched %v, device %q, want %v, %q", i, *w.PercentWatched, *w.Context.Device, want.pct, want.device)
		}
	}
}

// TestDecodeReusesNoEventMemory: the parse memory of one body is reused by the next decode;
// events decoded earlier (and their validation errors) must not change.
func TestDecodeReusesNoEventMemory(t *testing.T) {
	body := func(prefix string, n int, bad bool) []byte {
		var sb strings.Builder
		sb.WriteString(`{"events":[`)
		for i := range n {
			if i > 0 {
				sb.WriteByte(',')
			}
			ts := "1800000000000"
			if bad && i == n-1 {
				ts = `"x"`
			}
			fmt.Fprintf(&sb, `{"event_id":"%s-%05d","user_id":"u%d","session_id":"s","request_id":"r","ts_ms":%s,"item_id":"i%d","watch_time_sec":%d.5,"ended":true,"context":{"device":"d%d"}}`,
				prefix, i, i, ts, i, i, i)
		}
		sb.WriteString(`]}`)
		return []byte(sb.String())
	}
	encodeAll := func(evs []events.Any) string {
		b, err := json.Marshal(evs)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	first, verr := events.DecodeBatch(body("first", 900, false), events.DefaultLimits(), fuzzNow)
	if verr != nil {
		t.Fatal(verr)
	}
	want := encodeAll(first)
	_, badErr := events.DecodeBatch(body("bad", 3, true), events.DefaultLimits(), fuzzNow)
	if badErr == nil {
		t.Fatal("bad body accepted")
	}
	wantErr, _ := json.Marshal(badErr.Errors)
	for range 3 {
		if _, verr := events.DecodeBatch(body("other", 700, false), events.DefaultLimits(), fuzzNow); verr != nil {
			t.Fatal(verr)
		}
	}
	if got := encodeAll(first); got != want {
		t.Error("events of an earlier decode changed after later decodes")
	}
	if got, _ := json.Marshal(badErr.Errors); string(got) != string(wantErr) {
		t.Errorf("errors of an earlier decode changed: %s, want %s", got, wantErr)
	}
}

// Duplicate positions and item ids are found the same way in short lists (compared pairwise)
// and long ones (through maps).
func TestValidateImpressionDuplicates(t *testing.T) {
	list := func(n int, edit func([]events.ImpressionItem)) *events.Impression {
		ev := &events.Impression{Common: events.Common{EventID: "ev-00000001", UserID: "u", SessionID: "s", RequestID: "r", TsMs: 1_790_000_000_000},
			EventType: "impression"}
		for i := range n {
			ev.Items = append(ev.Items, events.ImpressionItem{ItemID: fmt.Sprintf("i%d", i), Position: int64(i)})
		}
		if edit != nil {
			edit(ev.Items)
		}
		return ev
	}
	samePos := func(it []events.ImpressionItem) { it[len(it)-1].Position = it[0].Position }
	sameID := func(it []events.ImpressionItem) { it[0].ItemID = it[len(it)-1].ItemID }
	for _, n := range []int{2, 20, 32, 33, 200} {
		for _, tc := range []struct {
			name string
			edit func([]events.ImpressionItem)
			want []string
		}{
			{"distinct", nil, nil},
			{"same position", samePos, []string{"unique positions"}},
			{"same item", sameID, []string{"duplicate item_id"}},
			{"both", func(it []events.ImpressionItem) { samePos(it); sameID(it) }, []string{"unique positions", "duplicate item_id"}},
		} {
			t.Run(fmt.Sprintf("n=%d/%s", n, tc.name), func(t *testing.T) {
				err := events.Validate(list(n, tc.edit))
				if len(tc.want) == 0 {
					if err != nil {
						t.Fatalf("Validate = %v, want nil", err)
					}
					return
				}
				var verr *events.ValidationError
				if !errors.As(err, &verr) || len(verr.Errors) != len(tc.want) {
					t.Fatalf("Validate = %v, want %d errors %q", err, len(tc.want), tc.want)
				}
				for _, w := range tc.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not mention %q", err, w)
					}
				}
			})
		}
	}
}

// A body may start with a UTF-8 byte order mark, which the original service's json.loads on
// bytes skipped; error positions count from after it. A mark anywhere else is invalid JSON.
func TestDecodeSkipsLeadingBOM(t *testing.T) {
	now := time.Now()
	const bom = "\xef\xbb\xbf"
	watch := `{"user_id":"u","session_id":"s","request_id":"r","ts_ms":` + jsonInt(now.UnixMilli()) + `,"item_id":"i","watch_time_sec":1}`
	legacy := `{"user_id":"u","item_id":"i","event_type":"view","ts":` + jsonInt(now.Unix()) + `}`
	decoders := map[string]struct {
		body   string
		decode func([]byte) *events.ValidationError
	}{
		"watch": {watch, func(b []byte) *events.ValidationError {
			_, err := events.DecodeWatch(b, events.DefaultLimits(), now)
			return err
		}},
		"legacy": {legacy, func(b []byte) *events.ValidationError {
			_, err := events.DecodeLegacy(b, events.DefaultLimits(), now)
			return err
		}},
		"batch": {`{"events":[` + watch + `]}`, func(b []byte) *events.ValidationError {
			_, err := events.DecodeBatch(b, events.DefaultLimits(), now)
			return err
		}},
		"impression": {`{"user_id":"u","session_id":"s","request_id":"r","ts_ms":` + jsonInt(now.UnixMilli()) + `,"items":[{"item_id":"i","position":0}]}`,
			func(b []byte) *events.ValidationError {
				_, err := events.DecodeImpression(b, events.DefaultLimits(), now)
				return err
			}},
	}
	for name, d := range decoders {
		if err := d.decode([]byte(d.body)); err != nil {
			t.Fatalf("%s without a BOM: %v", name, err)
		}
		if err := d.decode([]byte(bom + d.body)); err != nil {
			t.Errorf("%s with a leading BOM: %v", name, err)
		}
		for _, bad := range []string{bom + bom + d.body, " " + bom + d.body, d.body[:1] + bom + d.body[1:]} {
			if err := d.decode([]byte(bad)); err == nil || err.Errors[0].Type != "json_invalid" {
				t.Errorf("%s %q...: %v, want json_invalid", name, bad[:8], err)
			}
		}
	}
	_, plain := events.DecodeWatch([]byte(`{"user_id":x}`), events.DefaultLimits(), now)
	_, marked := events.DecodeWatch([]byte(bom+`{"user_id":x}`), events.DefaultLimits(), now)
	if plain == nil || marked == nil || fmt.Sprint(plain.Errors[0].Loc) != fmt.Sprint(marked.Errors[0].Loc) {
		t.Errorf("error location with a BOM %v, without %v", marked, plain)
	}
}

// A 422's detail echoes the inputs at fault, and a "missing" error echoes the whole object
// missing the field, as pydantic does: a big object lacking several fields was echoed once per
// field, a 4 MiB body answered with 20 MiB or more. The inputs echoed stay within the body's
// size (the first error is always kept), and a small broken body keeps every error.
func TestValidationDetailEchoesTheBodyAtMostOnce(t *testing.T) {
	now := time.Now()
	big := strings.Repeat("x", 4<<20-200)
	decoders := map[string]func([]byte) *events.ValidationError{
		"impression": func(b []byte) *events.ValidationError {
			_, err := events.DecodeImpression(b, events.DefaultLimits(), now)
			return err
		},
		"watch": func(b []byte) *events.ValidationError {
			_, err := events.DecodeWatch(b, events.DefaultLimits(), now)
			return err
		},
		"legacy": func(b []byte) *events.ValidationError {
			_, err := events.DecodeLegacy(b, events.DefaultLimits(), now)
			return err
		},
		"batch": func(b []byte) *events.ValidationError {
			_, err := events.DecodeBatch(b, events.DefaultLimits(), now)
			return err
		},
	}
	manyEvents := `{"events":[` + strings.TrimSuffix(strings.Repeat(`{"context":{"user_agent":"`+strings.Repeat("y", 4000)+`"}},`, 1000), ",") + `]}`
	for _, tc := range []struct {
		name, decoder, body string
		wantErrors          int // 0: any number, at least one
	}{
		{"unknown field", "impression", `{"zz":"` + big + `"}`, 0},
		{"big context", "watch", `{"context":{"user_agent":"` + big + `"}}`, 0},
		{"big legacy field", "legacy", `{"item_id":"` + big + `"}`, 0},
		{"one big event", "batch", `{"events":[{"context":{"user_agent":"` + big + `"}}]}`, 0},
		{"many events", "batch", manyEvents, 0},
		{"small body", "watch", `{}`, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			verr := decoders[tc.decoder]([]byte(tc.body))
			if verr == nil || len(verr.Errors) == 0 {
				t.Fatal("no error")
			}
			if tc.wantErrors > 0 && len(verr.Errors) != tc.wantErrors {
				t.Errorf("%d errors, want %d: %v", len(verr.Errors), tc.wantErrors, verr)
			}
			echoed := 0
			for _, e := range verr.Errors {
				b, err := json.Marshal(e.Input)
				if err != nil {
					t.Fatal(err)
				}
				echoed += len(b)
			}
			if limit := max(len(tc.body), 64<<10); echoed > limit {
				t.Errorf("%d errors echo %d bytes of input, want at most %d (the body is %d)", len(verr.Errors), echoed, limit, len(tc.body))
			}
		})
	}
}

// Parsing a body costs about 44 bytes per JSON value, twice while its container is open: a
// 4 MiB body of tiny values ("0,", "{},", "\"\":0,") took 300-570 MB to decode, and a few at
// once could exhaust an API process. A document has at most one value per 8 bytes (valid
// events need ~10), so what a body can cost is bounded by its size, and the densest valid
// bodies still decode.
func TestParseMemoryIsBoundedByTheBody(t *testing.T) {
	now := time.Now()
	batch := func(b string) *events.ValidationError {
		_, err := events.DecodeBatch([]byte(b), events.DefaultLimits(), now)
		return err
	}
	impression := func(b string) *events.ValidationError {
		_, err := events.DecodeImpression([]byte(b), events.DefaultLimits(), now)
		return err
	}
	const size = 4 << 20
	for _, tc := range []struct {
		name   string
		decode func(string) *events.ValidationError
		body   string
	}{
		{"numbers", batch, `{"events":[` + strings.Repeat("0,", size/2) + `0]}`},
		{"empty objects", batch, `{"events":[` + strings.Repeat("{},", size/3) + `{}]}`},
		{"empty keys", impression, `{"context":{` + strings.Repeat(`"":0,`, size/5) + `"":0}}`},
		{"nested", batch, `{"events":[` + strings.Repeat(`[[[0,0,0,0,0,0,0,0]]],`, size/22) + `0]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			verr := tc.decode(tc.body)
			runtime.ReadMemStats(&after)
			if verr == nil || verr.Errors[0].Type != "json_invalid" {
				var first any
				if verr != nil {
					first = verr.Errors[0].Msg
				}
				t.Errorf("want a json_invalid error, got %v", first)
			}
			if got := after.TotalAlloc - before.TotalAlloc; got > 40*uint64(len(tc.body)) {
				t.Errorf("decoding a %d-byte body allocated %d bytes (%.0f times its size)", len(tc.body), got, float64(got)/float64(len(tc.body)))
			}
		})
	}
	// The densest valid impressions: one-character ids, single-digit positions.
	items := make([]string, 0, 500)
	for i := range 500 {
		items = append(items, fmt.Sprintf(`{"item_id":"%c%d","position":%d}`, 'a'+i%26, i/26, i))
	}
	imp := `{"user_id":"u","session_id":"s","request_id":"r","ts_ms":` + jsonInt(now.UnixMilli()) + `,"items":[` + strings.Join(items, ",") + `]}`
	if err := impression(imp); err != nil {
		t.Fatalf("a dense valid impression: %v", err)
	}
	evs := make([]string, 200)
	for i := range evs {
		evs[i] = strings.Replace(imp, `"user_id"`, fmt.Sprintf(`"event_type":"impression","event_id":"e%07d","user_id"`, i), 1)
	}
	if body := `{"events":[` + strings.Join(evs, ",") + `]}`; batch(body) != nil {
		t.Fatalf("a dense valid batch of %d bytes: %v", len(body), batch(body))
	}
}
