package events_test

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"recsys/pkg/events"
)

// decodeSingle decodes one batch element with the endpoint decoder of its kind (the batch's
// union rule); ok is false for an element whose kind the batch rejects.
func decodeSingle(el []byte) (ev events.Any, verr *events.ValidationError, ok bool) {
	// Invalid UTF-8 (which encoding/json would accept) and nesting near the parser's limit
	// fail as a document, at offsets the batch wrapper shifts: not the decoders' business.
	var m map[string]json.RawMessage
	if !utf8.Valid(el) || depth(el) > 60 || json.Unmarshal(el, &m) != nil || m == nil {
		return nil, nil, false
	}
	lim := events.DefaultLimits()
	kind := events.KindWatch
	if t, has := m["event_type"]; has {
		switch string(t) {
		case `"impression"`:
			kind = events.KindImpression
		case `"watch"`:
		default:
			return nil, nil, false
		}
	} else if _, has := m["items"]; has {
		kind = events.KindImpression
	}
	if kind == events.KindImpression {
		e, err := events.DecodeImpression(el, lim, fuzzNow)
		if err != nil {
			return nil, err, true
		}
		return e, nil, true
	}
	e, err := events.DecodeWatch(el, lim, fuzzNow)
	if err != nil {
		return nil, err, true
	}
	return e, nil, true
}

// sameEvent compares payloads, event_id included: one derived from the content when absent
// is the same in a batch and alone.
func sameEvent(t *testing.T, got, want events.Any) {
	t.Helper()
	g, err1 := events.Encode(got)
	w, err2 := events.Encode(want)
	if err1 != nil || err2 != nil || string(g) != string(w) {
		t.Fatalf("batch element decodes to\n%s (%v)\nalone to\n%s (%v)", g, err1, w, err2)
	}
}

// relocate rewrites the locations of a one-element batch's errors as a lone body's.
func relocate(errs []events.FieldError) []events.FieldError {
	out := make([]events.FieldError, len(errs))
	for i, fe := range errs {
		fe.Loc = append([]any{"body"}, fe.Loc[3:]...)
		out[i] = fe
	}
	return out
}

func checkBatchAgrees(t *testing.T, el []byte) {
	want, wantErr, ok := decodeSingle(el)
	if !ok {
		return
	}
	evs, verr := events.DecodeBatch([]byte(`{"events":[`+string(el)+`]}`), events.DefaultLimits(), fuzzNow)
	switch {
	case wantErr != nil && verr != nil:
		g, _ := json.Marshal(relocate(verr.Errors))
		w, _ := json.Marshal(wantErr.Errors)
		if string(g) != string(w) {
			t.Fatalf("errors of %s\nin a batch: %s\nalone:      %s", el, g, w)
		}
	case wantErr != nil || verr != nil:
		t.Fatalf("%s: batch error %v, alone %v", el, verr, wantErr)
	default:
		sameEvent(t, evs[0], want)
	}
}

// FuzzBatchAgreesWithSingle: DecodeBatch (which preallocates a batch's events and contexts)
// decodes an element exactly as the endpoint decoder of its kind does: the same payload or
// the same errors, located under the element.
func FuzzBatchAgreesWithSingle(f *testing.F) {
	for _, s := range seeds() {
		f.Add([]byte(s))
	}
	ts := strconv.FormatInt(fuzzNow.UnixMilli(), 10)
	f.Add([]byte(`{"user_id":"u","session_id":"s","request_id":"r","ts_ms":` + ts + `,"item_id":"i","watch_time_sec":1,"context":{"device":"a"},"context":{"locale":"b","device":"c","platform":"p","country":"x"}}`))
	f.Add([]byte(`{"user_id":"u","session_id":"s","request_id":"r","ts_ms":` + ts + `,"items":[{"item_id":"a","position":0}],"context":null}`))
	f.Add([]byte(`{"user_id":"u","session_id":"s","request_id":"r","ts_ms":` + ts + `,"item_id":"i","watch_time_sec":1,"context":"tv"}`))
	f.Fuzz(func(t *testing.T, el []byte) { checkBatchAgrees(t, el) })
}

// TestMixedBatchMatchesSingleDecoders: in a batch mixing kinds, contexts (some repeated,
// some null) and optional fields, every event equals its lone decode.
func TestMixedBatchMatchesSingleDecoders(t *testing.T) {
	ts := strconv.FormatInt(fuzzNow.UnixMilli(), 10)
	var els []string
	for i := range 60 {
		id := `"event_id":"mixed-` + strconv.Itoa(1000+i) + `",`
		common := id + `"user_id":"u` + strconv.Itoa(i) + `","session_id":"s","request_id":"r","ts_ms":` + ts
		var ctx string
		switch i % 4 {
		case 1:
			ctx = `,"context":{"device":"d` + strconv.Itoa(i) + `","user_agent":"ua"}`
		case 2:
			ctx = `,"context":null`
		case 3:
			ctx = `,"context":{"device":"x"},"context":{"locale":"l","device":"y","platform":"p","country":"c","timezone":"z"}`
		}
		switch i % 3 {
		case 0:
			els = append(els, `{`+common+`,"item_id":"i","watch_time_sec":`+strconv.Itoa(i)+`.25,"playback_speed":1.5,"rebuffer_count":2`+ctx+`}`)
		case 1:
			els = append(els, `{`+common+`,"event_type":"impression","items":[{"item_id":"a","position":0,"feed_id":"f"},{"item_id":"b","position":1,"slot":"s"}]`+ctx+`}`)
		default:
			els = append(els, `{`+common+`,"items":[{"item_id":"a","position":3}]`+ctx+`}`)
		}
	}
	evs, verr := events.DecodeBatch([]byte(`{"events":[`+strings.Join(els, ",")+`]}`), events.DefaultLimits(), fuzzNow)
	if verr != nil {
		t.Fatal(verr)
	}
	if len(evs) != len(els) {
		t.Fatalf("%d events, want %d", len(evs), len(els))
	}
	for i, el := range els {
		want, wantErr, ok := decodeSingle([]byte(el))
		if !ok || wantErr != nil {
			t.Fatalf("element %d alone: %v", i, wantErr)
		}
		sameEvent(t, evs[i], want)
	}
	// Each event owns its context: changing one must not show in another.
	w0 := evs[1].(*events.Impression)
	*w0.Context.Device = "changed"
	for i, ev := range evs {
		if w, isW := ev.(*events.Watch); isW && w.Context != nil && w.Context.Device != nil && *w.Context.Device == "changed" {
			t.Fatalf("event %d shares event 1's context", i)
		}
	}
}
