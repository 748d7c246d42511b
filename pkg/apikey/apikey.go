// Package apikey is the client side of the API's keys (--http.api-keys-file on the server):
// the operator tools (smoke, load, guardrails) present a key and explain the server's
// refusals, where a bare 401 or 403 would leave the operator guessing.
package apikey

import "net/http"

// Set adds key to req as Authorization: Bearer; an empty key adds nothing (a server without
// keys needs none).
func Set(req *http.Request, key string) {
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
}

// Hint explains a 401 or 403 answer to a tool that sent key ("" when it sent none); needs
// says which scopes the tool's requests need. Other statuses get "".
func Hint(status int, key, needs string) string {
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
