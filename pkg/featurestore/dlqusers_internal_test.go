package featurestore

import (
	"reflect"
	"testing"
)

func TestPayloadStrings(t *testing.T) {
	for _, tc := range []struct {
		name, payload string
		limit         int
		want          []string
	}{
		{"event", `{"user_id":"u1","item_id":"i1","ts_ms":5}`, 0, []string{"u1", "i1"}},
		{"escapes", `{"user_id":"caf\u00e9\/\"x\"","n":"a\\"}`, 0, []string{`café/"x"`, `a\`}},
		{"invalid escape kept as it stands", `{"user_id":"u\q1"}`, 0, []string{`u\q1`}},
		{"names skipped", `{"u1" : "v", "w":["u1"]}`, 0, []string{"v", "u1"}},
		{"truncated", `{"user_id":"u1","item_id":"i`, 0, []string{"u1"}},
		{"not json", `u1 "u2"`, 0, []string{"u2"}},
		{"repeats once", `["a","a","b"]`, 0, []string{"a", "b"}},
		{"limit", `["a","b","c"]`, 2, []string{"a", "b"}},
		{"wrapped", `{"body":"{\"user_id\":\"u1\"}"}`, 0, []string{`{"user_id":"u1"}`, "u1"}},
		{"no text", "[\"\xff\",\"\\u0000\",\"\",\"ok\"]", 0, []string{"ok"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := payloadStrings([]byte(tc.payload), tc.limit); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("payloadStrings(%q) = %q, want %q", tc.payload, got, tc.want)
			}
		})
	}
}
