package events_test

import (
	"encoding/json"
	"strconv"
	"testing"
	"time"
	"unicode/utf8"

	"recsys/pkg/events"
)

// fuzzNow is fixed so seeds with timestamps stay inside the window on every run.
var fuzzNow = time.UnixMilli(1_800_000_000_000)

func seeds() []string {
	ts := strconv.FormatInt(fuzzNow.UnixMilli(), 10)
	watch := `{"event_id":"watch-0001","user_id":"u","session_id":"s","request_id":"r","ts_ms":` + ts +
		`,"item_id":"i","watch_time_sec":1.5,"percent_watched":50,"ended":true,"playback_speed":1,"rebuffer_count":0,"context":{"device":"tv","locale":null}}`
	imp := `{"event_id":"imp-00001","event_type":"impression","user_id":"u","session_id":"s","request_id":"r","ts_ms":` + ts +
		`,"items":[{"item_id":"a","position":0,"feed_id":"f","slot":null},{"item_id":"b","position":1}]}`
	return []string{
		watch, imp,
		`{"events":[` + watch + `,` + imp + `]}`,
		`{"event_id":"legacy-01","user_id":"u","item_id":"i","event_type":"view","ts":` + strconv.FormatInt(fuzzNow.Unix(), 10) + `}`,
		`{"user_id":"\u00e9\ud83d\ude00\ud800","session_id":"s","request_id":"r","ts_ms":1e3,"items":[{"item_id":"a","position":1.0}]}`,
		`{"events":[{"event_type":"click"},1,{"items":"x"}],"x":[]}`,
		``, `null`, `[]`, `{"a":`, `{"ts_ms":-0}`, `{"ts_ms":99999999999999999999}`, `"\x"`, `[[[[[[[[[[]]]]]]]]]]`,
		`{"watch_time_sec":1e400,"percent_watched":-1e-400}`,
	}
}

// FuzzDecoders: no input panics; an accepted event passes Validate, encodes and decodes back
// to the same JSON; a rejected one yields a detail list that marshals and is located under
// "body". With `go test` only the seeds run.
func FuzzDecoders(f *testing.F) {
	for _, s := range seeds() {
		f.Add([]byte(s))
	}
	lim := events.DefaultLimits()
	f.Fuzz(func(t *testing.T, body []byte) {
		check := func(name string, evs []events.Any, verr *events.ValidationError) {
			if verr != nil {
				if len(verr.Errors) == 0 {
					t.Fatalf("%s: empty error list", name)
				}
				for _, fe := range verr.Errors {
					if len(fe.Loc) == 0 || fe.Loc[0] != "body" || fe.Type == "" || fe.Msg == "" {
						t.Fatalf("%s: bad error entry %+v", name, fe)
					}
				}
				if _, err := json.Marshal(verr.Errors); err != nil {
					t.Fatalf("%s: detail does not marshal: %v", name, err)
				}
				return
			}
			for _, ev := range evs {
				if err := events.Validate(ev); err != nil {
					t.Fatalf("%s: accepted event fails Validate: %v", name, err)
				}
				b, err := events.Encode(ev)
				if err != nil {
					t.Fatalf("%s: encode: %v", name, err)
				}
				back, err := events.DecodePayload(ev.Kind(), b)
				if err != nil {
					t.Fatalf("%s: decode payload %s: %v", name, b, err)
				}
				b2, _ := events.Encode(back)
				if string(b) != string(b2) {
					t.Fatalf("%s: payload round trip\n%s\n%s", name, b, b2)
				}
			}
		}
		imp, err := events.DecodeImpression(body, lim, fuzzNow)
		check("impression", one(imp, err), err)
		w, err := events.DecodeWatch(body, lim, fuzzNow)
		check("watch", one(w, err), err)
		l, err := events.DecodeLegacy(body, lim, fuzzNow)
		check("legacy", one(l, err), err)
		evs, err := events.DecodeBatch(body, lim, fuzzNow)
		check("batch", evs, err)
	})
}

func one[T events.Any](ev T, err *events.ValidationError) []events.Any {
	if err != nil {
		return nil
	}
	return []events.Any{ev}
}

// FuzzParserAgreesWithEncodingJSON: for valid UTF-8, the request parser accepts exactly the
// documents encoding/json accepts (json_invalid iff json.Valid is false).
func FuzzParserAgreesWithEncodingJSON(f *testing.F) {
	for _, s := range seeds() {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if !utf8.Valid(body) || len(body) == 0 || depth(body) > 60 {
			return
		}
		_, verr := events.DecodeBatch(body, events.DefaultLimits(), fuzzNow)
		invalid := verr != nil && verr.Errors[0].Type == "json_invalid"
		if invalid == json.Valid(body) {
			allSpace := true
			for _, c := range body {
				if c != ' ' && c != '\t' && c != '\n' && c != '\r' {
					allSpace = false
				}
			}
			if allSpace { // both say "no document"; the decoder reports it as a missing body
				return
			}
			t.Fatalf("parser json_invalid=%v, encoding/json valid=%v for %q (%v)", invalid, json.Valid(body), body, verr)
		}
	})
}

func depth(b []byte) int {
	d, max := 0, 0
	for _, c := range b {
		switch c {
		case '[', '{':
			d++
			if d > max {
				max = d
			}
		case ']', '}':
			d--
		}
	}
	return max
}
