package ingest

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"testing/iotest"
	"time"

	"github.com/labstack/echo/v4"

	"recsys/pkg/httpx"
	"recsys/pkg/testutil"
)

type detailEntry struct {
	Type string `json:"type"`
	Loc  []any  `json:"loc"`
	Msg  string `json:"msg"`
}

// loc builds an expected location the way JSON decodes it (numbers become float64).
func loc(parts ...any) []any {
	out := make([]any, len(parts))
	for i, p := range parts {
		if n, ok := p.(int); ok {
			out[i] = float64(n)
		} else {
			out[i] = p
		}
	}
	return out
}

func set(body map[string]any, kv ...any) map[string]any {
	for i := 0; i < len(kv); i += 2 {
		k := kv[i].(string)
		if kv[i+1] == del {
			delete(body, k)
		} else {
			body[k] = kv[i+1]
		}
	}
	return body
}

type deleted struct{}

var del = deleted{}

func items(f func(i int, it map[string]any)) []any {
	out := make([]any, 3)
	for i := range 3 {
		it := map[string]any{"item_id": fmt.Sprintf("item-%d", i), "position": i}
		f(i, it)
		out[i] = it
	}
	return out
}

// TestValidationRules checks every rule of api-contract §2.2 per endpoint: exact status,
// error type and detail location, and that nothing was stored.
func TestValidationRules(t *testing.T) {
	v := newEnv(t, testutil.MigratedDatabase(t), func(c *Config, h *httpx.Config) { c.MaxBatchSize = 5 })
	long := func(n int) string { return strings.Repeat("x", n) }
	future := nowMs() + 10*60*1000
	old := nowMs() - 31*24*3600*1000
	w := func(kv ...any) map[string]any { return set(watchBody("watch-event-1"), kv...) }
	rawEnded := func(lit string) string {
		return `{"user_id":"u","session_id":"s","request_id":"r","ts_ms":` + fmt.Sprint(nowMs()) + `,"item_id":"i","watch_time_sec":1,"ended":` + lit + `}`
	}
	imp := func(kv ...any) map[string]any { return set(impressionBody("impression-1", 3), kv...) }
	leg := func(kv ...any) map[string]any { return set(legacyBody("legacy-event-1"), kv...) }
	batch := func(evs ...any) map[string]any { return map[string]any{"events": append([]any{}, evs...)} }

	cases := []struct {
		name, path string
		body       any
		typ        string
		loc        []any
	}{
		// Common fields (watch).
		{"missing user_id", "/log/watch", w("user_id", del), "missing", loc("body", "user_id")},
		{"empty user_id", "/log/watch", w("user_id", ""), "string_too_short", loc("body", "user_id")},
		{"long user_id", "/log/watch", w("user_id", long(129)), "string_too_long", loc("body", "user_id")},
		{"user_id not a string", "/log/watch", w("user_id", 12), "string_type", loc("body", "user_id")},
		{"missing session_id", "/log/watch", w("session_id", del), "missing", loc("body", "session_id")},
		{"long session_id", "/log/watch", w("session_id", long(129)), "string_too_long", loc("body", "session_id")},
		{"empty request_id", "/log/watch", w("request_id", ""), "string_too_short", loc("body", "request_id")},
		{"long request_id", "/log/watch", w("request_id", long(129)), "string_too_long", loc("body", "request_id")},
		{"short event_id", "/log/watch", w("event_id", long(7)), "string_too_short", loc("body", "event_id")},
		{"long event_id", "/log/watch", w("event_id", long(65)), "string_too_long", loc("body", "event_id")},
		{"null event_id", "/log/watch", w("event_id", nil), "string_type", loc("body", "event_id")},
		{"NUL in user_id", "/log/watch", w("user_id", "a\x00b"), "value_error", loc("body", "user_id")},
		{"missing ts_ms", "/log/watch", w("ts_ms", del), "missing", loc("body", "ts_ms")},
		{"zero ts_ms", "/log/watch", w("ts_ms", 0), "greater_than", loc("body", "ts_ms")},
		{"negative ts_ms", "/log/watch", w("ts_ms", -5), "greater_than", loc("body", "ts_ms")},
		{"ts_ms not a numeric string", "/log/watch", w("ts_ms", "12a"), "int_parsing", loc("body", "ts_ms")},
		{"ts_ms a numeric string, too old", "/log/watch", w("ts_ms", "123"), "value_error", loc("body", "ts_ms")},
		{"ts_ms a list", "/log/watch", w("ts_ms", []any{1}), "int_type", loc("body", "ts_ms")},
		{"fractional ts_ms", "/log/watch", w("ts_ms", 1.5), "int_from_float", loc("body", "ts_ms")},
		{"future ts_ms", "/log/watch", w("ts_ms", future), "value_error", loc("body", "ts_ms")},
		{"future ts_ms in seconds", "/log/watch", w("ts_ms", future/1000), "value_error", loc("body", "ts_ms")},
		{"old ts_ms", "/log/watch", w("ts_ms", old), "value_error", loc("body", "ts_ms")},
		{"zero server_received_ts_ms", "/log/watch", w("server_received_ts_ms", 0), "greater_than", loc("body", "server_received_ts_ms")},
		{"unknown field", "/log/watch", w("colour", "red"), "extra_forbidden", loc("body", "colour")},
		{"context not an object", "/log/watch", w("context", "tv"), "model_type", loc("body", "context")},
		{"context unknown field", "/log/watch", w("context", map[string]any{"os": "x"}), "extra_forbidden", loc("body", "context", "os")},
		{"context field not a string", "/log/watch", w("context", map[string]any{"device": 1}), "string_type", loc("body", "context", "device")},
		// Watch fields.
		{"watch wrong event_type", "/log/watch", w("event_type", "impression"), "literal_error", loc("body", "event_type")},
		{"watch missing item_id", "/log/watch", w("item_id", del), "missing", loc("body", "item_id")},
		{"watch long item_id", "/log/watch", w("item_id", long(129)), "string_too_long", loc("body", "item_id")},
		{"watch missing watch_time_sec", "/log/watch", w("watch_time_sec", del), "missing", loc("body", "watch_time_sec")},
		{"watch negative watch_time_sec", "/log/watch", w("watch_time_sec", -0.1), "greater_than_equal", loc("body", "watch_time_sec")},
		{"watch infinite watch_time_sec", "/log/watch", `{"user_id":"u","session_id":"s","request_id":"r","ts_ms":` + fmt.Sprint(nowMs()) + `,"item_id":"i","watch_time_sec":1e999}`, "finite_number", loc("body", "watch_time_sec")},
		{"watch percent over 100", "/log/watch", w("percent_watched", 100.5), "less_than_equal", loc("body", "percent_watched")},
		{"watch percent negative", "/log/watch", w("percent_watched", -1), "greater_than_equal", loc("body", "percent_watched")},
		{"watch speed too low", "/log/watch", w("playback_speed", 0.2), "greater_than_equal", loc("body", "playback_speed")},
		{"watch speed too high", "/log/watch", w("playback_speed", 4.01), "less_than_equal", loc("body", "playback_speed")},
		{"watch negative rebuffer_count", "/log/watch", w("rebuffer_count", -1), "greater_than_equal", loc("body", "rebuffer_count")},
		{"watch fractional rebuffer_count", "/log/watch", w("rebuffer_count", 1.5), "int_from_float", loc("body", "rebuffer_count")},
		{"watch ended not a boolean word", "/log/watch", w("ended", "maybe"), "bool_parsing", loc("body", "ended")},
		{"watch ended 2", "/log/watch", w("ended", 2), "bool_parsing", loc("body", "ended")},
		{"watch ended an object", "/log/watch", w("ended", map[string]any{}), "bool_type", loc("body", "ended")},
		// pydantic-core's JSON lax bool: an integral float not 0/1 cannot be interpreted, a
		// fractional or out-of-i64 number is no boolean input at all.
		{"watch ended 2.0", "/log/watch", rawEnded("2.0"), "bool_parsing", loc("body", "ended")},
		{"watch ended 0.5", "/log/watch", rawEnded("0.5"), "bool_type", loc("body", "ended")},
		{"watch ended 1e30", "/log/watch", rawEnded("1e30"), "bool_type", loc("body", "ended")},
		{"watch ended beyond i64", "/log/watch", rawEnded("99999999999999999999"), "bool_type", loc("body", "ended")},
		{"watch watch_time_sec not a numeric string", "/log/watch", w("watch_time_sec", "1.5s"), "float_parsing", loc("body", "watch_time_sec")},
		{"watch percent a numeric string over 100", "/log/watch", w("percent_watched", "100.5"), "less_than_equal", loc("body", "percent_watched")},
		{"watch rebuffer_count a fractional string", "/log/watch", w("rebuffer_count", "1.5"), "int_parsing", loc("body", "rebuffer_count")},
		// Impression fields.
		{"impression wrong event_type", "/log/impression", imp("event_type", "watch"), "literal_error", loc("body", "event_type")},
		{"impression missing items", "/log/impression", imp("items", del), "missing", loc("body", "items")},
		{"impression items not a list", "/log/impression", imp("items", "a"), "list_type", loc("body", "items")},
		{"impression no items", "/log/impression", imp("items", []any{}), "too_short", loc("body", "items")},
		{"impression 501 items", "/log/impression", impressionBody("impression-1", 501), "too_long", loc("body", "items")},
		{"item not an object", "/log/impression", imp("items", []any{map[string]any{"item_id": "a", "position": 0}, 7}), "model_type", loc("body", "items", 1)},
		{"item missing item_id", "/log/impression", imp("items", items(func(i int, it map[string]any) {
			if i == 2 {
				delete(it, "item_id")
			}
		})), "missing", loc("body", "items", 2, "item_id")},
		{"item empty item_id", "/log/impression", imp("items", items(func(i int, it map[string]any) {
			if i == 1 {
				it["item_id"] = ""
			}
		})), "string_too_short", loc("body", "items", 1, "item_id")},
		{"item long item_id", "/log/impression", imp("items", items(func(i int, it map[string]any) {
			if i == 0 {
				it["item_id"] = long(129)
			}
		})), "string_too_long", loc("body", "items", 0, "item_id")},
		{"item negative position", "/log/impression", imp("items", items(func(i int, it map[string]any) {
			if i == 2 {
				it["position"] = -1
			}
		})), "greater_than_equal", loc("body", "items", 2, "position")},
		{"item missing position", "/log/impression", imp("items", items(func(i int, it map[string]any) {
			if i == 2 {
				delete(it, "position")
			}
		})), "missing", loc("body", "items", 2, "position")},
		{"item unknown field", "/log/impression", imp("items", items(func(i int, it map[string]any) {
			if i == 1 {
				it["score"] = 0.5
			}
		})), "extra_forbidden", loc("body", "items", 1, "score")},
		{"item feed_id not a string", "/log/impression", imp("items", items(func(i int, it map[string]any) {
			if i == 1 {
				it["feed_id"] = 5
			}
		})), "string_type", loc("body", "items", 1, "feed_id")},
		{"duplicate positions", "/log/impression", imp("items", items(func(i int, it map[string]any) { it["position"] = 3 })), "value_error", loc("body", "items")},
		{"duplicate item_ids", "/log/impression", imp("items", items(func(i int, it map[string]any) { it["item_id"] = "same" })), "value_error", loc("body", "items")},
		{"impression old ts_ms", "/log/impression", imp("ts_ms", old), "value_error", loc("body", "ts_ms")},
		// Batch.
		{"batch missing events", "/log/batch", map[string]any{}, "missing", loc("body", "events")},
		{"batch events not a list", "/log/batch", map[string]any{"events": map[string]any{}}, "list_type", loc("body", "events")},
		{"batch empty", "/log/batch", batch(), "too_short", loc("body", "events")},
		{"batch over the limit", "/log/batch", batch(watchBody("w-000001"), watchBody("w-000002"), watchBody("w-000003"), watchBody("w-000004"), watchBody("w-000005"), watchBody("w-000006")), "too_long", loc("body", "events")},
		{"batch unknown field", "/log/batch", map[string]any{"events": []any{watchBody("w-000001")}, "x": 1}, "extra_forbidden", loc("body", "x")},
		{"batch duplicate event_id", "/log/batch", batch(watchBody("same-id-01"), impressionBody("same-id-01", 2)), "value_error", loc("body", "events")},
		{"batch element not an object", "/log/batch", batch(watchBody("w-000001"), "x"), "model_type", loc("body", "events", 1)},
		{"batch unknown event_type", "/log/batch", batch(set(watchBody("w-000001"), "event_type", "click")), "literal_error", loc("body", "events", 0, "event_type")},
		{"batch nested item error", "/log/batch", batch(watchBody("w-000001"), set(impressionBody("i-000001", 2), "items", []any{map[string]any{"item_id": "a", "position": -2}})), "greater_than_equal", loc("body", "events", 1, "items", 0, "position")},
		{"batch watch error", "/log/batch", batch(impressionBody("i-000001", 2), set(watchBody("w-000001"), "percent_watched", 120)), "less_than_equal", loc("body", "events", 1, "percent_watched")},
		{"batch impression without event_type", "/log/batch", batch(set(impressionBody("i-000001", 2), "event_type", del, "user_id", del)), "missing", loc("body", "events", 0, "user_id")},
		{"batch old event", "/log/batch", batch(set(watchBody("w-000001"), "ts_ms", old)), "value_error", loc("body", "events", 0, "ts_ms")},
		// Legacy /event.
		{"event missing user_id", "/event", leg("user_id", del), "missing", loc("body", "user_id")},
		{"event long item_id", "/event", leg("item_id", long(129)), "string_too_long", loc("body", "item_id")},
		{"event short event_id", "/event", leg("event_id", "abc"), "string_too_short", loc("body", "event_id")},
		{"event unknown type", "/event", leg("event_type", "like"), "literal_error", loc("body", "event_type")},
		{"event missing type", "/event", leg("event_type", del), "missing", loc("body", "event_type")},
		{"event zero ts", "/event", leg("ts", 0), "greater_than", loc("body", "ts")},
		{"event future ts", "/event", leg("ts", future), "value_error", loc("body", "ts")},
		{"event old ts in seconds", "/event", leg("ts", old/1000), "value_error", loc("body", "ts")},
		{"event unknown field", "/event", leg("session_id", "s"), "extra_forbidden", loc("body", "session_id")},
		// Body level, every endpoint.
		{"malformed JSON", "/log/watch", `{"user_id": "u",`, "json_invalid", nil},
		{"empty body", "/log/impression", ``, "missing", loc("body")},
		{"array body", "/log/batch", `[1,2]`, "model_attributes_type", loc("body")},
		{"invalid UTF-8", "/event", "{\"user_id\": \"\xff\"}", "json_invalid", nil},
		{"trailing data", "/log/watch", `{} {}`, "json_invalid", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			body, ok := tc.body.(string)
			if !ok {
				body = mustJSON(t, tc.body)
			}
			code, resp := v.post(tc.path, body)
			if code != http.StatusUnprocessableEntity {
				t.Fatalf("status %d, want 422; body %s", code, resp)
			}
			var out struct {
				Detail []detailEntry `json:"detail"`
			}
			if err := json.Unmarshal([]byte(resp), &out); err != nil {
				t.Fatalf("decode %s: %v", resp, err)
			}
			found := false
			for _, d := range out.Detail {
				if d.Type != tc.typ {
					continue
				}
				if tc.loc == nil { // json_invalid: ["body", <offset>]
					found = len(d.Loc) == 2 && d.Loc[0] == "body"
				} else {
					found = reflect.DeepEqual(d.Loc, tc.loc)
				}
				if found {
					if d.Msg == "" {
						t.Errorf("empty msg in %+v", d)
					}
					break
				}
			}
			if !found {
				t.Errorf("no %s error at %v in %s", tc.typ, tc.loc, resp)
			}
		})
	}
	for _, table := range []string{"event_dedup", "watches", "impressions", "legacy_events", "event_outbox"} {
		if n := v.count("SELECT count(*) FROM " + table); n != 0 {
			t.Errorf("%s has %d rows after rejected requests", table, n)
		}
	}
	if got := v.metric(`recsys_ingest_rejected_total{endpoint="watch",reason="validation"}`); got < 30 {
		t.Errorf("rejected watch validation metric = %v", got)
	}
	if got := v.metric(`recsys_ingest_rejected_total{endpoint="watch",reason="malformed_json"}`); got != 2 {
		t.Errorf("rejected watch malformed_json metric = %v, want 2", got)
	}
}

// TestValidationReportsEveryError: pydantic lists every problem, not the first.
func TestValidationReportsEveryError(t *testing.T) {
	v := newEnv(t, testutil.MigratedDatabase(t))
	body := set(watchBody("watch-event-1"), "user_id", "", "ts_ms", 0, "percent_watched", 101, "extra", 1, "item_id", del)
	code, resp := v.post("/log/watch", mustJSON(t, body))
	if code != 422 {
		t.Fatalf("status %d", code)
	}
	var out struct{ Detail []detailEntry }
	_ = json.Unmarshal([]byte(resp), &out)
	got := map[string]bool{}
	for _, d := range out.Detail {
		got[d.Type+"@"+fmt.Sprint(d.Loc)] = true
	}
	for _, want := range []string{"string_too_short@[body user_id]", "greater_than@[body ts_ms]", "less_than_equal@[body percent_watched]",
		"extra_forbidden@[body extra]", "missing@[body item_id]"} {
		if !got[want] {
			t.Errorf("missing %s in %s", want, resp)
		}
	}
	if len(out.Detail) != 5 {
		t.Errorf("%d errors, want 5: %s", len(out.Detail), resp)
	}
}

// A 422 echoes what was at fault, and nothing the client sent more than about once: a body at
// the limit whose one object lacks every field and is made of characters JSON may escape was
// answered with 36 times its size (each "missing" error echoed the object, each '<' became
// six bytes), memory a client that never reads the answer holds for the write timeout.
func TestValidationAnswerStaysWithinTheBodySize(t *testing.T) {
	v := newEnv(t, testutil.MigratedDatabase(t))
	big := strings.Repeat("<&>", (4<<20-200)/3)
	for _, tc := range []struct{ path, body string }{
		{"/log/impression", `{"zz":"` + big + `"}`},
		{"/log/watch", `{"context":{"user_agent":"` + big + `"}}`},
		{"/log/batch", `{"events":[{"context":{"user_agent":"` + big + `"}}]}`},
		{"/event", `{"item_id":"` + big + `"}`},
	} {
		code, resp := v.post(tc.path, tc.body)
		if code != http.StatusUnprocessableEntity {
			t.Fatalf("POST %s: %d %.200s", tc.path, code, resp)
		}
		if len(resp) > len(tc.body)+64<<10 {
			t.Errorf("POST %s: a %d-byte body answered with %d bytes", tc.path, len(tc.body), len(resp))
		}
	}
}

func TestTransportErrors(t *testing.T) {
	v := newEnv(t, testutil.MigratedDatabase(t), func(c *Config, h *httpx.Config) { h.BodyLimitBytes = 2048 })
	for _, path := range []string{"/log/impression", "/log/watch", "/log/batch", "/event"} {
		code, resp := v.do(http.MethodPost, path, "text/plain", `{}`)
		if code != http.StatusUnsupportedMediaType || !strings.Contains(resp, "application/json") {
			t.Errorf("%s text/plain: %d %s", path, code, resp)
		}
		code, resp = v.do(http.MethodPost, path, "application/x-www-form-urlencoded", `a=b`)
		if code != http.StatusUnsupportedMediaType {
			t.Errorf("%s form: %d %s", path, code, resp)
		}
		big := `{"pad": "` + strings.Repeat("x", 4096) + `"}`
		code, resp = v.post(path, big)
		if code != http.StatusRequestEntityTooLarge || !strings.Contains(resp, "detail") {
			t.Errorf("%s large body: %d %s", path, code, resp)
		}
		// Without Content-Length the limit trips while the handler reads the body.
		req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(big))
		req.Header.Set("Content-Type", "application/json")
		req.ContentLength = -1
		rec := httptest.NewRecorder()
		v.e.ServeHTTP(rec, req)
		if rec.Code != http.StatusRequestEntityTooLarge {
			t.Errorf("%s large chunked body: %d %s", path, rec.Code, rec.Body)
		}
	}
	// The original service (FastAPI, email.message) judged a content type by its type/subtype
	// alone, case-insensitively: any parameters, repeated or malformed, were ignored.
	for i, c := range []struct {
		ct   string
		want int
	}{
		{"application/json; charset=utf-8", http.StatusOK},
		{"application/vnd.recsys+json", http.StatusOK},
		{"", http.StatusOK},
		{"application/json; charset", http.StatusOK},
		{"application/json; charset=", http.StatusOK},
		{"application/json; a=b; a=c", http.StatusOK},
		{"application/json; charset=utf-8; charset=latin1", http.StatusOK},
		{`application/json; charset="unterminated`, http.StatusOK},
		{"application/json;;;", http.StatusOK},
		{"Application/JSON", http.StatusOK},
		{"  application/json  ; x", http.StatusOK},
		{"application/problem+json; a=1; a=2", http.StatusOK},
		{"text/plain; charset", http.StatusUnsupportedMediaType},
		{"text/json", http.StatusUnsupportedMediaType},
		{"application/x-json", http.StatusUnsupportedMediaType},
		{"application/jsonp; a=b; a=c", http.StatusUnsupportedMediaType},
		{"application", http.StatusUnsupportedMediaType},
		{"application/json/x", http.StatusUnsupportedMediaType},
		{"application/ json", http.StatusUnsupportedMediaType},
	} {
		code, resp := v.do(http.MethodPost, "/log/watch", c.ct, mustJSON(t, watchBody(fmt.Sprintf("ct-%d-abcdefgh", i))))
		if code != c.want {
			t.Errorf("content type %q: %d %s, want %d", c.ct, code, resp, c.want)
		}
	}
	// The original service's json.loads on bytes skipped a leading UTF-8 byte order mark.
	if code, resp := v.post("/event", "\ufeff"+mustJSON(t, legacyBody("bom-abcdefgh"))); code != http.StatusOK {
		t.Errorf("body with a BOM: %d %s", code, resp)
	}
	if got := v.metric(`recsys_ingest_rejected_total{endpoint="batch",reason="body_too_large"}`); got != 1 {
		t.Errorf("body_too_large metric = %v", got)
	}
	if got := v.metric(`recsys_ingest_rejected_total{endpoint="event",reason="unsupported_media_type"}`); got != 2 {
		t.Errorf("unsupported_media_type metric = %v", got)
	}
}

// TestLimitsAreConfigurable: the contract numbers are defaults only.
func TestLimitsAreConfigurable(t *testing.T) {
	v := newEnv(t, testutil.MigratedDatabase(t), func(c *Config, h *httpx.Config) {
		c.MaxImpressionItems = 2
		c.MaxEventFuture = time.Hour
		c.MaxEventAge = time.Minute
	})
	code, resp := v.post("/log/impression", mustJSON(t, impressionBody("impression-3", 3)))
	if code != 422 || !strings.Contains(resp, "at most 2 items") {
		t.Errorf("3 items with limit 2: %d %s", code, resp)
	}
	code, resp = v.post("/log/watch", mustJSON(t, set(watchBody("watch-future"), "ts_ms", nowMs()+30*60*1000)))
	if code != 200 {
		t.Errorf("30 min ahead with 1 h allowed: %d %s", code, resp)
	}
	code, resp = v.post("/log/watch", mustJSON(t, set(watchBody("watch-old-1"), "ts_ms", nowMs()-2*60*1000)))
	if code != 422 || !strings.Contains(resp, "max_event_age_ms=60000") {
		t.Errorf("2 min old with 1 min allowed: %d %s", code, resp)
	}
}

// TestBodyTransportErrors: how a body arrives is the client's problem to fix, and the answer
// says which: a compressed body is a 415 naming its Content-Encoding (read as JSON it was a
// 422 "invalid UTF-8" at byte 1), a body the read timeout cut is a 408 to retry (not a 400
// that tells the client its events are bad) and no answer names the server's addresses.
func TestBodyTransportErrors(t *testing.T) {
	v := newEnv(t, testutil.MigratedDatabase(t))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write([]byte(mustJSON(t, watchBody("gzip-abcdefgh"))))
	_ = zw.Close()
	timeout := &net.OpError{Op: "read", Net: "tcp", Source: &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 8080},
		Addr: &net.TCPAddr{IP: net.IPv4(10, 9, 8, 7), Port: 41160}, Err: os.ErrDeadlineExceeded}
	reset := &net.OpError{Op: "read", Net: "tcp", Source: &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 8080},
		Addr: &net.TCPAddr{IP: net.IPv4(10, 9, 8, 7), Port: 41160}, Err: syscall.ECONNRESET}
	cases := []struct {
		name     string
		encoding []string
		body     io.Reader
		want     int
		detail   string // in the answer
		header   [2]string
	}{
		{"gzip", []string{"gzip"}, bytes.NewReader(gz.Bytes()), http.StatusUnsupportedMediaType, `unsupported content encoding \"gzip\"`, [2]string{"Accept-Encoding", "identity"}},
		{"deflate", []string{"deflate"}, strings.NewReader("x"), http.StatusUnsupportedMediaType, `\"deflate\"`, [2]string{"Accept-Encoding", "identity"}},
		{"identity then gzip", []string{"identity, GZIP"}, strings.NewReader("x"), http.StatusUnsupportedMediaType, `\"identity, GZIP\"`, [2]string{}},
		{"two headers", []string{"identity", "br"}, strings.NewReader("x"), http.StatusUnsupportedMediaType, `\"identity, br\"`, [2]string{}},
		{"identity", []string{"Identity"}, strings.NewReader(mustJSON(t, watchBody("identity-abcdefgh"))), http.StatusOK, `"status":"ok"`, [2]string{}},
		{"empty encoding", []string{""}, strings.NewReader(mustJSON(t, watchBody("empty-ce-abcdefgh"))), http.StatusOK, `"status":"ok"`, [2]string{}},
		{"read timeout", nil, io.MultiReader(strings.NewReader(`{"user_id":`), iotest.ErrReader(timeout)), http.StatusRequestTimeout, "read timeout", [2]string{"Connection", "close"}},
		{"connection reset", nil, io.MultiReader(strings.NewReader(`{"user_id":`), iotest.ErrReader(reset)), http.StatusBadRequest, "connection reset", [2]string{}},
	}
	for _, c := range cases {
		req := httptest.NewRequest(http.MethodPost, "/log/watch", c.body)
		req.Header.Set(echo.HeaderContentType, echo.MIMEApplicationJSON)
		for _, e := range c.encoding {
			req.Header.Add(echo.HeaderContentEncoding, e)
		}
		rec := serveRecorder(v, req)
		body := rec.Body.String()
		if rec.Code != c.want || !strings.Contains(body, c.detail) || strings.Contains(body, "10.9.8.7") || strings.Contains(body, "10.1.2.3") {
			t.Errorf("%s: %d %s, want %d with %s and no address", c.name, rec.Code, body, c.want, c.detail)
		}
		if h := c.header; h[0] != "" && rec.Header().Get(h[0]) != h[1] {
			t.Errorf("%s: %s = %q, want %q", c.name, h[0], rec.Header().Get(h[0]), h[1])
		}
	}
	if got := v.metric(`recsys_ingest_rejected_total{endpoint="watch",reason="read_timeout"}`); got != 1 {
		t.Errorf("read_timeout metric = %v, want 1", got)
	}
	if got := v.metric(`recsys_ingest_rejected_total{endpoint="watch",reason="unsupported_media_type"}`); got != 4 {
		t.Errorf("unsupported_media_type metric = %v, want 4", got)
	}
}
