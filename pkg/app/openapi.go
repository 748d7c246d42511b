package app

import (
	"net/http"
	"strings"

	"recsys/pkg/httpx"
	"recsys/pkg/module"
	"recsys/pkg/openapi"
)

// describe builds the process' OpenAPI document: the routes of the modules it runs, each
// described by its module with its configured limits, and the operational endpoints every
// process serves. A relay or consumer process so documents its probes and metrics only.
func describe(o Options, mods []*running) *openapi.Document {
	version := o.Version
	if version == "" {
		version = "dev"
	}
	d := openapi.New("recsys", version, "Real-time recommendations and event ingestion, wire-compatible with the "+
		"original service's API (docs/architecture.md lists the deliberate differences). This document "+
		"describes the routes of the modules this process runs, with the limits it was configured with.")
	for _, r := range mods {
		if a, ok := r.mod.(module.APIDescriber); ok {
			a.DescribeAPI(d)
		}
	}
	describeOps(d)
	if o.HTTP.APIKeysFile != "" {
		requireKeys(d)
	}
	return d
}

// requireKeys marks every operation that needs an API key (httpx.ScopeOf) with the two ways
// to present one and the 401, 403 and 429 answers, so /docs offers to enter a key and clients
// generated from the document send it.
func requireKeys(d *openapi.Document) {
	d.Components.SecuritySchemes = map[string]*openapi.SecurityScheme{
		"bearer": {Type: "http", Scheme: "bearer", Description: "An API key of --http.api-keys-file, as Authorization: Bearer <key>."},
		"apiKey": {Type: "apiKey", In: "header", Name: httpx.HeaderAPIKey, Description: "The same key, as " + httpx.HeaderAPIKey + ": <key>."},
	}
	for path, item := range d.Paths {
		need := httpx.ScopeOf(path)
		if need == "" {
			continue
		}
		for _, op := range *item {
			if op.Responses == nil {
				op.Responses = map[string]openapi.Response{}
			}
			op.Security = []map[string][]string{{"bearer": {}}, {"apiKey": {}}}
			op.Description = strings.TrimSpace(op.Description + " Needs an API key with the " + need + " scope.")
			op.Responses["401"] = openapi.ErrorResponse(`No API key, or an unknown one ("Not authenticated", "Invalid API key")`)
			op.Responses["403"] = openapi.ErrorResponse("The API key lacks the " + need + " scope")
			op.Responses["429"] = openapi.ErrorResponse("The API key is over its rate (rate= in the keys file); Retry-After says when to retry")
		}
	}
}

// healthBody is /healthz's and /readyz's body: the contract's fields, then recsys' own.
func healthBody(extra map[string]*openapi.Schema, required ...string) *openapi.Schema {
	s := &openapi.Schema{Type: "object", Required: append([]string{"checks", "clients", "modules"}, required...),
		Description: "checks keeps the contract's names (db, online_cache, kafka); clients says ok, " +
			"\"degraded: ...\" or the error per client; modules gives each module's state. Modules add " +
			"top-level fields (event_backbone, online_cache, ...).",
		Properties: map[string]*openapi.Schema{
			"checks":   {Type: "object", AdditionalProperties: &openapi.Schema{Type: "boolean"}},
			"clients":  {Type: "object", AdditionalProperties: &openapi.Schema{Type: "string"}},
			"modules":  {Type: "object", AdditionalProperties: &openapi.Schema{Type: "string"}},
			"draining": {Type: "boolean", Description: "present (true) while the process shuts down"},
			"schema":   {Type: "object", Description: "present when the database schema is ahead of this binary"},
		}}
	for k, v := range extra {
		s.Properties[k] = v
	}
	return s
}

func describeOps(d *openapi.Document) {
	health := d.Component("Health", healthBody(map[string]*openapi.Schema{"status": {Const: "ok"}}, "status"))
	ready := d.Component("Readiness", healthBody(map[string]*openapi.Schema{"ready": {Type: "boolean"}}, "ready"))
	notReady := d.Component("NotReady", &openapi.Schema{Type: "object", Required: []string{"detail"},
		Properties: map[string]*openapi.Schema{"detail": ready}})
	for _, p := range []struct{ path, summary string }{
		{"/healthz", "Liveness and dependency snapshot (always 200)"},
		{"/livez", "Liveness and dependency snapshot (always 200; the same answer as /healthz)"},
	} {
		d.Add(http.MethodGet, p.path, openapi.Operation{Tags: []string{"ops"}, Summary: p.summary,
			Responses: map[string]openapi.Response{"200": openapi.JSONResponse("Successful Response", health)}})
	}
	d.Add(http.MethodGet, "/readyz", openapi.Operation{Tags: []string{"ops"}, Summary: "Readiness",
		Responses: map[string]openapi.Response{
			"200": openapi.JSONResponse("Ready", ready),
			"503": openapi.JSONResponse("Not ready (also while draining at shutdown)", notReady),
		}})
	text := openapi.Response{Description: "Prometheus text exposition of this process",
		Content: map[string]openapi.MediaType{"text/plain": {Schema: &openapi.Schema{Type: "string"}}}}
	for _, p := range []string{"/metrics", "/metrics/prometheus"} {
		d.Add(http.MethodGet, p, openapi.Operation{Tags: []string{"ops"}, Summary: "Prometheus metrics",
			Responses: map[string]openapi.Response{"200": text}})
	}
}
