package ingest

import (
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"recsys/pkg/events"
	"recsys/pkg/openapi"
)

// schemaCase is one request model: where its object sits in a valid body of an endpoint, the
// Go type the decoder fills (nil: none), and that endpoint's decoder.
type schemaCase struct {
	name   string
	goType any
	at     []any // path of the model's object inside body()
	body   func() map[string]any
	decode func([]byte, events.Limits, time.Time) []events.FieldError
}

func errsOf[T any](dec func([]byte, events.Limits, time.Time) (T, *events.ValidationError)) func([]byte, events.Limits, time.Time) []events.FieldError {
	return func(b []byte, lim events.Limits, now time.Time) []events.FieldError {
		if _, err := dec(b, lim, now); err != nil {
			return err.Errors
		}
		return nil
	}
}

// Bodies with every field of every model set to a valid value.
func fullContext() map[string]any {
	return map[string]any{"device": "tv", "platform": "ios", "app_version": "1", "locale": "en", "country": "NL",
		"timezone": "UTC", "referrer": "r", "user_agent": "ua"}
}

func fullWatch(id string) map[string]any {
	return map[string]any{"event_id": id, "event_type": "watch", "user_id": "u", "session_id": "s", "request_id": "r",
		"ts_ms": nowMs(), "server_received_ts_ms": 1, "context": fullContext(), "item_id": "i", "watch_time_sec": 1,
		"percent_watched": 50, "ended": false, "playback_speed": 1, "rebuffer_count": 0}
}

func fullImpression() map[string]any {
	return map[string]any{"event_id": "impression-1", "event_type": "impression", "user_id": "u", "session_id": "s",
		"request_id": "r", "ts_ms": nowMs(), "server_received_ts_ms": 1, "context": fullContext(),
		"items": []any{map[string]any{"item_id": "a", "position": 0, "feed_id": "f", "slot": "s"}}}
}

func schemaCases() []schemaCase {
	imp, watch, batch := errsOf(events.DecodeImpression), errsOf(events.DecodeWatch), errsOf(events.DecodeBatch)
	return []schemaCase{
		{"ImpressionEvent", events.Impression{}, nil, fullImpression, imp},
		{"ImpressionItem", events.ImpressionItem{}, []any{"items", 0}, fullImpression, imp},
		{"Context", events.Context{}, []any{"context"}, fullImpression, imp},
		{"WatchEvent", events.Watch{}, nil, func() map[string]any { return fullWatch("watch-event-1") }, watch},
		{"Event", events.Legacy{}, nil, func() map[string]any { return legacyBody("legacy-event-1") }, errsOf(events.DecodeLegacy)},
		{"EventBatch", nil, nil, func() map[string]any {
			return map[string]any{"events": []any{fullWatch("watch-event-1"), fullImpression()}}
		}, batch},
	}
}

// object returns the map at path inside body.
func object(t *testing.T, body map[string]any, path []any) map[string]any {
	var v any = body
	for _, p := range path {
		switch k := p.(type) {
		case string:
			v = v.(map[string]any)[k]
		case int:
			v = v.([]any)[k]
		}
	}
	m, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("no object at %v", path)
	}
	return m
}

// errorsAt decodes body and returns the types of the errors located at loc.
func (c schemaCase) errorsAt(t *testing.T, body map[string]any, lim events.Limits, loc []any) []string {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	want := fmt.Sprint(loc)
	for _, e := range c.decode(b, lim, time.Now()) {
		if fmt.Sprint(e.Loc) == want {
			out = append(out, e.Type)
		}
	}
	return out
}

// bare is the schema of a nullable field's value.
func bare(s *openapi.Schema) *openapi.Schema {
	if len(s.AnyOf) == 2 && s.AnyOf[1].Type == "null" {
		return s.AnyOf[0]
	}
	return s
}

// The request schemas of /openapi.json are what the decoders accept: the same field names as
// the Go types they fill, each accepted and no other, the same required fields, and bounds the
// decoders enforce exactly at the documented value.
func TestRequestSchemasMatchTheDecoders(t *testing.T) {
	lim := events.DefaultLimits()
	schemas := requestSchemas(lim)
	for _, c := range schemaCases() {
		t.Run(c.name, func(t *testing.T) {
			s := schemas[c.name]
			names := slices.Sorted(maps.Keys(s.Properties))
			if c.goType != nil {
				fields := openapi.FieldNames(c.goType)
				if c.name == "Event" {
					// The server stamps it into the Kafka payload; the contract's Event
					// body has no such field (unlike the log events, which accept one).
					fields = slices.DeleteFunc(fields, func(f string) bool { return f == "server_received_ts_ms" })
				}
				if fields := slices.Sorted(slices.Values(fields)); !slices.Equal(names, fields) {
					t.Errorf("schema properties %v, Go fields %v", names, fields)
				}
			}
			if s.AdditionalProperties != false {
				t.Errorf("additionalProperties = %v, want false (the decoders reject unknown fields)", s.AdditionalProperties)
			}
			loc := func(f string) []any { return append(append([]any{"body"}, c.at...), f) }
			if errs := c.errorsAt(t, c.body(), lim, []any{"body"}); len(errs) > 0 || len(c.errorsAt(t, c.body(), lim, loc("x"))) > 0 {
				t.Fatalf("the full body is not valid: %v", errs)
			}
			for _, f := range append(names, "not_a_field") {
				body := c.body()
				obj := object(t, body, c.at)
				if _, ok := obj[f]; !ok {
					obj[f] = "x"
				}
				got := slices.Contains(c.errorsAt(t, body, lim, loc(f)), "extra_forbidden")
				if got != (f == "not_a_field") {
					t.Errorf("field %q: extra_forbidden %v", f, got)
				}
				body = c.body()
				delete(object(t, body, c.at), f)
				missing := slices.Contains(c.errorsAt(t, body, lim, loc(f)), "missing")
				if missing != slices.Contains(s.Required, f) {
					t.Errorf("field %q left out: missing %v, schema required %v", f, missing, s.Required)
				}
			}
			for _, f := range names {
				checkBounds(t, c, lim, f, bare(s.Properties[f]), loc(f))
			}
		})
	}
}

// checkBounds sets field f to each side of its documented bounds.
func checkBounds(t *testing.T, c schemaCase, lim events.Limits, f string, s *openapi.Schema, loc []any) {
	t.Helper()
	try := func(v any, wantErr bool) {
		t.Helper()
		body := c.body()
		object(t, body, c.at)[f] = v
		errs := c.errorsAt(t, body, lim, loc)
		if (len(errs) > 0) != wantErr {
			short := fmt.Sprint(v)
			if len(short) > 20 {
				short = short[:20] + "..."
			}
			t.Errorf("%s = %s (%T): errors %v, want error %v", f, short, v, errs, wantErr)
		}
	}
	if s.MaxLength != nil {
		try(strings.Repeat("x", *s.MaxLength), false)
		try(strings.Repeat("x", *s.MaxLength+1), true)
	}
	if s.MinLength != nil {
		try(strings.Repeat("x", *s.MinLength), false)
		try(strings.Repeat("x", *s.MinLength-1), true)
	}
	// A character the decoder refuses must be one the schema refuses: a string the schema
	// calls valid and the server answers 422 is what fuzzers and generated clients trip on.
	if s.Type == "string" && s.Enum == nil && s.Const == nil {
		v := strings.Repeat("x", max(1, ptrOr(s.MinLength, 0)-1)) + "\x00"
		body := c.body()
		object(t, body, c.at)[f] = v
		refused := len(c.errorsAt(t, body, lim, loc)) > 0
		if schemaRefuses := s.Pattern != "" && !regexp.MustCompile(s.Pattern).MatchString(v); refused != schemaRefuses {
			t.Errorf("%s with a NUL: decoder refuses %v, schema (pattern %q) refuses %v", f, refused, s.Pattern, schemaRefuses)
		}
		if s.Pattern != "" && !regexp.MustCompile(s.Pattern).MatchString(strings.Repeat("é", max(1, ptrOr(s.MinLength, 0)))) {
			t.Errorf("%s: pattern %q refuses plain text", f, s.Pattern)
		}
	}
	step := 0.5
	if s.Type == "integer" {
		step = 1
	}
	if s.Minimum != nil {
		try(*s.Minimum, false)
		try(*s.Minimum-step, true)
	}
	if s.Maximum != nil {
		try(*s.Maximum, false)
		try(*s.Maximum+step, true)
	}
	if s.ExclusiveMinimum != nil {
		try(*s.ExclusiveMinimum, true)
	}
	for _, v := range s.Enum {
		try(v, false)
	}
	if s.Enum != nil || s.Const != nil {
		try("other", true)
	}
	if s.Const != nil {
		try(s.Const, false)
	}
	// The decoders store integers in 64 bits: the schema must say so, or generated clients and
	// fuzzers send larger ones that the server answers 422. Time fields have their window too.
	if s.Type == "integer" {
		if s.Format != "int64" {
			t.Errorf("%s: integer without format int64", f)
		}
		try(json.Number("9223372036854775808"), true)
		if f != "ts_ms" && f != "ts" {
			try(json.Number("9223372036854775807"), false)
		}
	}
}

// The list bounds follow the configured limits (--ingest.max-batch-size,
// --ingest.max-impression-items), and the decoders enforce them at the documented value.
func TestListBoundsFollowTheConfiguredLimits(t *testing.T) {
	def := requestSchemas(NewConfig().limits())
	if got := *def["EventBatch"].Properties["events"].MaxItems; got != 1000 {
		t.Errorf("default EventBatch maxItems = %d, want the contract's CONTRACT_MAX_BATCH_SIZE 1000", got)
	}
	if got := *def["ImpressionEvent"].Properties["items"].MaxItems; got != 500 {
		t.Errorf("default ImpressionEvent maxItems = %d, want the contract's 500", got)
	}
	cfg := NewConfig()
	cfg.MaxBatchSize, cfg.MaxImpressionItems = 3, 2
	lim := cfg.limits()
	s := requestSchemas(lim)
	maxEvents, maxItems := *s["EventBatch"].Properties["events"].MaxItems, *s["ImpressionEvent"].Properties["items"].MaxItems
	if maxEvents != 3 || maxItems != 2 {
		t.Fatalf("maxItems %d and %d, want the configured 3 and 2", maxEvents, maxItems)
	}
	batch := func(n int) map[string]any {
		evs := make([]any, n)
		for i := range evs {
			evs[i] = fullWatch(fmt.Sprintf("watch-event-%d", i))
		}
		return map[string]any{"events": evs}
	}
	imp := func(n int) map[string]any {
		body := fullImpression()
		items := make([]any, n)
		for i := range items {
			items[i] = map[string]any{"item_id": fmt.Sprint("item-", i), "position": i}
		}
		body["items"] = items
		return body
	}
	for _, c := range []struct {
		body  map[string]any
		field string
		dec   func([]byte, events.Limits, time.Time) []events.FieldError
	}{
		{batch(maxEvents), "events", errsOf(events.DecodeBatch)},
		{imp(maxItems), "items", errsOf(events.DecodeImpression)},
	} {
		sc := schemaCase{decode: c.dec}
		if errs := sc.errorsAt(t, c.body, lim, []any{"body", c.field}); len(errs) > 0 {
			t.Errorf("%s at the documented maximum: %v", c.field, errs)
		}
	}
	sc := schemaCase{decode: errsOf(events.DecodeBatch)}
	if errs := sc.errorsAt(t, batch(maxEvents+1), lim, []any{"body", "events"}); !slices.Equal(errs, []string{"too_long"}) {
		t.Errorf("events over the documented maximum: %v, want too_long", errs)
	}
	sc = schemaCase{decode: errsOf(events.DecodeImpression)}
	if errs := sc.errorsAt(t, imp(maxItems+1), lim, []any{"body", "items"}); !slices.Equal(errs, []string{"too_long"}) {
		t.Errorf("items over the documented maximum: %v, want too_long", errs)
	}
}

func ptrOr(p *int, def int) int {
	if p == nil {
		return def
	}
	return *p
}
