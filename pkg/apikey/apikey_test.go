package apikey

import (
	"net/http"
	"testing"
)

func TestSetAndHint(t *testing.T) {
	for _, tc := range []struct {
		key      string
		wantAuth string
	}{{"", ""}, {"k-123", "Bearer k-123"}} {
		req, _ := http.NewRequest(http.MethodGet, "http://x/reco", nil)
		Set(req, tc.key)
		if got := req.Header.Get("Authorization"); got != tc.wantAuth {
			t.Errorf("key %q: Authorization %q, want %q", tc.key, got, tc.wantAuth)
		}
	}
	for _, tc := range []struct {
		status    int
		key, want string
	}{
		{200, "", ""},
		{404, "k", ""},
		{401, "", "the server requires an API key: --api-key / RECSYS_API_KEY"},
		{401, "k", "the server did not accept the API key: --api-key / RECSYS_API_KEY"},
		{403, "k", "the API key lacks a scope: smoke needs client and ops"},
	} {
		if got := Hint(tc.status, tc.key, "smoke needs client and ops"); got != tc.want {
			t.Errorf("Hint(%d, %q) = %q, want %q", tc.status, tc.key, got, tc.want)
		}
	}
}
