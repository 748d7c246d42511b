package testutil

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestRawClientRoundTrips(t *testing.T) {
	var gotBody string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/echo":
			b, _ := io.ReadAll(r.Body)
			gotBody = r.Method + " " + r.Header.Get("Content-Type") + " " + string(b)
			w.WriteHeader(201)
			_, _ = w.Write([]byte("ok"))
		case "/chunked":
			w.(http.Flusher).Flush() // forces chunked encoding
			_, _ = w.Write([]byte("part one"))
			w.(http.Flusher).Flush()
			_, _ = w.Write([]byte("part two"))
		case "/close":
			w.Header().Set("Connection", "close")
			w.WriteHeader(503)
		default:
			w.WriteHeader(404)
		}
	}))
	defer srv.Close()
	c, err := NewRawClient(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i, tc := range []struct {
		method, target string
		body           []byte
		want           int
	}{
		{"POST", "/echo", []byte(`{"a":1}`), 201},
		{"GET", "/chunked?x=1", nil, 200},
		{"GET", "/missing", nil, 404},
		{"GET", "/close", nil, 503},
		{"GET", "/chunked", nil, 200}, // after the server closed: redialled
		{"GET", "/echo", nil, 201},
	} {
		code, err := c.Do(tc.method, tc.target, tc.body, 2*time.Second)
		if code == 0 && err != nil && tc.target == "/chunked" && i == 4 {
			// The first use of a connection the server closed fails; the next one redials.
			code, err = c.Do(tc.method, tc.target, tc.body, 2*time.Second)
		}
		if err != nil || code != tc.want {
			t.Fatalf("%d: %s %s = %d %v, want %d", i, tc.method, tc.target, code, err, tc.want)
		}
		if i == 0 && gotBody != `POST application/json {"a":1}` {
			t.Fatalf("server saw %q", gotBody)
		}
	}
	if gotBody != "GET  " {
		t.Fatalf("last /echo saw %q, want a GET without body", gotBody)
	}
}
