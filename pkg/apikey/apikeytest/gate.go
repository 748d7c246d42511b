// Package apikeytest stands in for a recsys server started with --http.api-keys-file, to test
// the API's clients (the operator tools) against the keys' rules without running one.
package apikeytest

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"

	"recsys/pkg/httpx"
)

// Request is one request a Gate saw.
type Request struct{ Method, Path, Authorization string }

// Gate serves Next behind API keys as the server does: httpx.ScopeOf says which scope a path
// needs (none for the probes), a missing key gets 401 "Not authenticated", an unknown one 401
// "Invalid API key", a key without the scope 403. It records every request it sees.
type Gate struct {
	Next http.Handler
	Keys map[string][]string // key -> scopes; nil: no authentication

	mu   sync.Mutex
	seen []Request
}

func (g *Gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	g.seen = append(g.seen, Request{Method: r.Method, Path: r.URL.Path, Authorization: r.Header.Get("Authorization")})
	g.mu.Unlock()
	if need := httpx.ScopeOf(r.URL.Path); g.Keys != nil && need != "" {
		key, bearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		scopes, known := g.Keys[key]
		switch {
		case !bearer:
			refuse(w, http.StatusUnauthorized, "Not authenticated")
			return
		case !known:
			refuse(w, http.StatusUnauthorized, "Invalid API key")
			return
		case !slices.Contains(scopes, need):
			refuse(w, http.StatusForbidden, fmt.Sprintf("API key %q lacks the %s scope this path needs", "test", need))
			return
		}
	}
	g.Next.ServeHTTP(w, r)
}

func refuse(w http.ResponseWriter, code int, detail string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = fmt.Fprintf(w, `{"detail":%q}`, detail)
}

// Requests returns the requests seen so far, in order.
func (g *Gate) Requests() []Request {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.seen)
}
