// Package apikey is the client side of the API's keys (--http.api-keys-file on the server):
// the operator tools (smoke, load, guardrails) present a key and explain the server's
// refusals, where a bare 401 or 403 would leave the operator guessing.
package apikey

import (
	"net/http"
	"strings"
)

// Set adds key to req as Authorization: Bearer; an empty key adds nothing (a server without
// keys needs none). Surrounding whitespace is not part of a key (the server's keys file splits
// on it, and the server trims what it is sent): a key from a secret file often ends in a
// newline, which Go's client refuses to put in a header, so every request failed with
// "invalid header field value".
func Set(req *http.Request, key string) {
	if key = strings.TrimSpace(key); key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
}

// Hint explains a 401 or 403 answer to a tool that sent key ("" when it sent none); needs
// says which scopes the tool's requests need. Other statuses get "".
func Hint(status int, key, needs string) string {
	key = strings.TrimSpace(key)
	switch {
	case status == http.StatusUnauthorized && key == "":
		return "the server requires an API key: --api-key / RECSYS_API_KEY"
	case status == http.StatusUnauthorized:
		return "the server did not accept the API key: --api-key / RECSYS_API_KEY"
	case status == http.StatusForbidden:
		return "the API key lacks a scope: " + needs
	}
	return ""
}
