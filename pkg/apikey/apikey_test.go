package apikey

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestSetAndHint(t *testing.T) {
	for _, tc := range []struct {
		key      string
		wantAuth string
	}{{"", ""}, {"k-123", "Bearer k-123"}, {"k-123\n", "Bearer k-123"}, {" k-123\r\n", "Bearer k-123"}, {"\n", ""}} {
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
		{401, "\n", "the server requires an API key: --api-key / RECSYS_API_KEY"},
		{403, "k", "the API key lacks a scope: smoke needs client and ops"},
	} {
		if got := Hint(tc.status, tc.key, "smoke needs client and ops"); got != tc.want {
			t.Errorf("Hint(%d, %q) = %q, want %q", tc.status, tc.key, got, tc.want)
		}
	}
}

// A key read from a secret file ends in a newline; Go's client refused to send it, so every
// request of the tools failed before reaching the server.
func TestKeyWithANewlineIsSent(t *testing.T) {
	var got string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.Header.Get("Authorization")
	}))
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/reco", nil)
	Set(req, "k-1234567890abcdef\n")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatalf("request with the key: %v", err)
	}
	resp.Body.Close()
	if got != "Bearer k-1234567890abcdef" {
		t.Fatalf("server saw Authorization %q", got)
	}
}
