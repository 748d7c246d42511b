package reco

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/labstack/echo/v4"
)

// TestWriteRecoMatchesEncodingJSON: the hand-built body is byte for byte what echo's JSON
// serializer (encoding/json, HTML escaping, trailing newline) writes, for ids that need no
// escaping and for every kind that does.
func TestWriteRecoMatchesEncodingJSON(t *testing.T) {
	cases := []struct {
		name string
		resp recoResponse
	}{
		{"plain", recoResponse{RequestID: "req-1", Items: []string{"item-0001", "item-0002"}, ModelVersion: "recsys-weighted-v1", Strategy: "co_vis_popularity_hybrid"}},
		{"empty list", recoResponse{RequestID: "r", Items: []string{}, ModelVersion: "m", Strategy: "cold_start_trending_global_snapshot"}},
		{"quotes and backslash", recoResponse{RequestID: `a"b\c`, Items: []string{`x"y`, `\`}, ModelVersion: "m", Strategy: "s"}},
		{"html", recoResponse{RequestID: "<script>&", Items: []string{"a>b", "a&b", "a<b"}, ModelVersion: "m", Strategy: "s"}},
		{"control characters", recoResponse{RequestID: "a\nb\tc\r\x00\x1f\x7f", Items: []string{"\b\f"}, ModelVersion: "m", Strategy: "s"}},
		{"unicode", recoResponse{RequestID: "é", Items: []string{"日本", "\u2028\u2029", "😀"}, ModelVersion: "m", Strategy: "s"}},
		{"invalid utf-8", recoResponse{RequestID: "a\xffb", Items: []string{"\xc3"}, ModelVersion: "m", Strategy: "s"}},
	}
	e := echo.New()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var want bytes.Buffer
			if err := json.NewEncoder(&want).Encode(tc.resp); err != nil {
				t.Fatal(err)
			}
			rec := httptest.NewRecorder()
			c := e.NewContext(httptest.NewRequest(http.MethodGet, "/reco", nil), rec)
			if err := writeReco(c, &tc.resp); err != nil {
				t.Fatal(err)
			}
			if got := rec.Body.String(); got != want.String() {
				t.Fatalf("body\n got %q\nwant %q", got, want.String())
			}
			if ct := rec.Header().Get("Content-Type"); ct != echo.MIMEApplicationJSON {
				t.Fatalf("Content-Type %q", ct)
			}
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d", rec.Code)
			}
		})
	}
	// ?pretty keeps echo's indented encoding.
	rec := httptest.NewRecorder()
	c := e.NewContext(httptest.NewRequest(http.MethodGet, "/reco?pretty", nil), rec)
	resp := cases[0].resp
	if err := writeReco(c, &resp); err != nil {
		t.Fatal(err)
	}
	want, _ := json.MarshalIndent(resp, "", "  ")
	if got := rec.Body.String(); got != string(want)+"\n" {
		t.Fatalf("pretty body\n got %q\nwant %q", got, want)
	}
}
