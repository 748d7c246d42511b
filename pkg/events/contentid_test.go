package events_test

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"recsys/pkg/events"
)

var contentNow = time.UnixMilli(1_790_000_000_000)

// contentIDRe is a version 8 UUID in 32 lowercase hex characters.
var contentIDRe = regexp.MustCompile(`^[0-9a-f]{12}8[0-9a-f]{3}[89ab][0-9a-f]{15}$`)

// decodeID decodes body with the endpoint decoder of kind and returns the event's id.
func decodeID(t *testing.T, kind events.Kind, body string, lim events.Limits) string {
	t.Helper()
	var ev events.Any
	var verr *events.ValidationError
	switch kind {
	case events.KindImpression:
		ev, verr = events.DecodeImpression([]byte(body), lim, contentNow)
	case events.KindWatch:
		ev, verr = events.DecodeWatch([]byte(body), lim, contentNow)
	case events.KindLegacy:
		ev, verr = events.DecodeLegacy([]byte(body), lim, contentNow)
	}
	if verr != nil {
		t.Fatalf("%s: %v", body, verr)
	}
	return ev.ID()
}

// TestContentIDTellsEventsApart: an event sent without an event_id gets an id derived from
// every field it carries. The same event (another key order, another spelling of a number,
// seconds for milliseconds) gets the same id; changing any one field, or the kind, gives
// another. Adding a field to an event kind without hashing it makes this test fail.
func TestContentIDTellsEventsApart(t *testing.T) {
	const ts = "1789999990000"
	watch := `"user_id":"u","session_id":"s","request_id":"r","ts_ms":` + ts + `,"item_id":"i","watch_time_sec":30`
	ctx := `,"context":{"device":"tv"}`
	imp := `"user_id":"u","session_id":"s","request_id":"r","ts_ms":` + ts + `,"items":[{"item_id":"a","position":0},{"item_id":"b","position":1}]`
	legacy := `"user_id":"u","item_id":"i","event_type":"view","ts":` + ts
	type variant struct {
		name string
		kind events.Kind
		body string
	}
	// Each variant differs from every other in exactly what its name says.
	variants := []variant{
		{"watch", events.KindWatch, watch},
		{"watch, other user", events.KindWatch, strings.Replace(watch, `"u"`, `"u2"`, 1)},
		{"watch, other session", events.KindWatch, strings.Replace(watch, `"s"`, `"s2"`, 1)},
		{"watch, other request", events.KindWatch, strings.Replace(watch, `"r"`, `"r2"`, 1)},
		{"watch, other millisecond", events.KindWatch, strings.Replace(watch, ts, "1789999990001", 1)},
		{"watch, other item", events.KindWatch, strings.Replace(watch, `"i"`, `"i2"`, 1)},
		{"watch, other watch time", events.KindWatch, strings.Replace(watch, `:30`, `:30.5`, 1)},
		{"watch, percent", events.KindWatch, watch + `,"percent_watched":50`},
		{"watch, other percent", events.KindWatch, watch + `,"percent_watched":51`},
		{"watch, ended", events.KindWatch, watch + `,"ended":true`},
		{"watch, not ended", events.KindWatch, watch + `,"ended":false`},
		{"watch, speed", events.KindWatch, watch + `,"playback_speed":1.5`},
		{"watch, rebuffers", events.KindWatch, watch + `,"rebuffer_count":0`},
		{"watch, other rebuffers", events.KindWatch, watch + `,"rebuffer_count":1`},
		{"watch, empty context", events.KindWatch, watch + `,"context":{}`},
		{"watch, context", events.KindWatch, watch + ctx},
		{"watch, other context value", events.KindWatch, watch + `,"context":{"device":"phone"}`},
		{"watch, context value in another field", events.KindWatch, watch + `,"context":{"platform":"tv"}`},
		{"watch, two context fields", events.KindWatch, watch + `,"context":{"device":"tv","locale":"fr"}`},
		{"impression", events.KindImpression, imp},
		{"impression, other user", events.KindImpression, strings.Replace(imp, `"u"`, `"u2"`, 1)},
		{"impression, other millisecond", events.KindImpression, strings.Replace(imp, ts, "1789999990001", 1)},
		{"impression, other item", events.KindImpression, strings.Replace(imp, `"b"`, `"c"`, 1)},
		{"impression, other position", events.KindImpression, strings.Replace(imp, `"position":1`, `"position":2`, 1)},
		{"impression, items in each other's positions", events.KindImpression, strings.Replace(imp, `"a","position":0},{"item_id":"b"`, `"b","position":0},{"item_id":"a"`, 1)},
		{"impression, one item", events.KindImpression, strings.Replace(imp, `,{"item_id":"b","position":1}`, ``, 1)},
		{"impression, feed", events.KindImpression, strings.Replace(imp, `"position":0}`, `"position":0,"feed_id":"home"}`, 1)},
		{"impression, slot", events.KindImpression, strings.Replace(imp, `"position":0}`, `"position":0,"slot":"home"}`, 1)},
		{"impression, context", events.KindImpression, imp + ctx},
		{"legacy", events.KindLegacy, legacy},
		{"legacy, other type", events.KindLegacy, strings.Replace(legacy, `"view"`, `"click"`, 1)},
		{"legacy, other user", events.KindLegacy, strings.Replace(legacy, `"u"`, `"u2"`, 1)},
		{"legacy, other item", events.KindLegacy, strings.Replace(legacy, `"i"`, `"i2"`, 1)},
		{"legacy, other millisecond", events.KindLegacy, strings.Replace(legacy, ts, "1789999990001", 1)},
	}
	lim := events.DefaultLimits()
	seen := map[string]string{}
	for _, v := range variants {
		id := decodeID(t, v.kind, "{"+v.body+"}", lim)
		if !contentIDRe.MatchString(id) {
			t.Errorf("%s: id %q is not a version 8 UUID in 32 lowercase hex characters", v.name, id)
		}
		if got, want := id[:12], fmt.Sprintf("%012x", int64(1789999990000)); got != want && !strings.Contains(v.name, "millisecond") {
			t.Errorf("%s: time prefix %s, want the event's millisecond %s", v.name, got, want)
		}
		if other, dup := seen[id]; dup {
			t.Errorf("%q and %q get the same id %s", v.name, other, id)
		}
		seen[id] = v.name
		if again := decodeID(t, v.kind, "{"+v.body+"}", lim); again != id {
			t.Errorf("%s: a resend got %s, the first send %s", v.name, again, id)
		}
	}

	// The same event, spelled otherwise.
	same := []struct {
		name       string
		kind       events.Kind
		body, like string
	}{
		{"keys in another order", events.KindWatch, `{"watch_time_sec":30,"item_id":"i","ts_ms":` + ts + `,"request_id":"r","session_id":"s","user_id":"u"}`, "{" + watch + "}"},
		{"whitespace and 30.0", events.KindWatch, `{ ` + strings.Replace(watch, `:30`, `: 30.0`, 1) + ` }`, "{" + watch + "}"},
		{"-0 and 0", events.KindWatch, "{" + strings.Replace(watch, `:30`, `:-0`, 1) + "}", "{" + strings.Replace(watch, `:30`, `:0`, 1) + "}"},
		{"seconds", events.KindWatch, "{" + strings.Replace(watch, ts, "1789999990", 1) + "}", "{" + watch + "}"},
		{"legacy in seconds", events.KindLegacy, "{" + strings.Replace(legacy, ts, "1789999990", 1) + "}", "{" + legacy + "}"},
		{"null context fields", events.KindWatch, "{" + watch + `,"context":{"device":"tv","locale":null}` + "}", "{" + watch + ctx + "}"},
		{"explicit event_type", events.KindWatch, "{" + watch + `,"event_type":"watch"` + "}", "{" + watch + "}"},
		{"server_received_ts_ms", events.KindImpression, "{" + imp + `,"server_received_ts_ms":5` + "}", "{" + imp + "}"},
	}
	for _, c := range same {
		if a, b := decodeID(t, c.kind, c.body, lim), decodeID(t, c.kind, c.like, lim); a != b {
			t.Errorf("%s: %s and %s", c.name, a, b)
		}
	}
}

// TestMissingIDModes: an explicit event_id is kept; a missing one is the content id by
// default and a fresh random version 7 id with RandomMissingIDs, as the original service
// generated it. A batch decodes an element's id as the endpoint decoder does, and two
// identical elements without ids are not "batch events must have unique event_id": they are
// one event sent twice.
func TestMissingIDModes(t *testing.T) {
	body := `{"user_id":"u","session_id":"s","request_id":"r","ts_ms":1789999990000,"item_id":"i","watch_time_sec":30}`
	lim := events.DefaultLimits()
	if id := decodeID(t, events.KindWatch, strings.Replace(body, `{`, `{"event_id":"client-1",`, 1), lim); id != "client-1" {
		t.Errorf("explicit id replaced by %q", id)
	}
	content := decodeID(t, events.KindWatch, body, lim)
	random := lim
	random.RandomMissingIDs = true
	r1, r2 := decodeID(t, events.KindWatch, body, random), decodeID(t, events.KindWatch, body, random)
	v7 := regexp.MustCompile(`^[0-9a-f]{12}7[0-9a-f]{3}[89ab][0-9a-f]{15}$`)
	if r1 == r2 || !v7.MatchString(r1) || !v7.MatchString(r2) {
		t.Errorf("random mode ids %q and %q: want two distinct version 7 ids", r1, r2)
	}

	for _, l := range []events.Limits{lim, random} {
		evs, verr := events.DecodeBatch([]byte(`{"events":[`+body+`,`+body+`]}`), l, contentNow)
		if verr != nil {
			t.Fatalf("random=%v: a batch sending one event twice without ids: %v", l.RandomMissingIDs, verr)
		}
		a, b := evs[0].ID(), evs[1].ID()
		if l.RandomMissingIDs {
			if a == b {
				t.Errorf("random mode: the batch's two elements share id %s", a)
			}
		} else if a != content || b != content {
			t.Errorf("the batch's ids %s, %s; the endpoint decoder's %s", a, b, content)
		}
	}
	// Explicit ids are still checked for uniqueness within a batch.
	withID := strings.Replace(body, `{`, `{"event_id":"client-1",`, 1)
	if _, verr := events.DecodeBatch([]byte(`{"events":[`+withID+`,`+withID+`]}`), lim, contentNow); verr == nil || !strings.Contains(verr.Error(), "unique event_id") {
		t.Errorf("a batch repeating an explicit id: %v", verr)
	}
}
