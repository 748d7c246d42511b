package ingest

import (
	"fmt"
	"net/http"

	"recsys/pkg/events"
	"recsys/pkg/module"
	"recsys/pkg/openapi"
)

var _ module.APIDescriber = (*Ingest)(nil)

// DescribeAPI adds the ingestion endpoints and the request schemas of api-contract §2.2 to the
// OpenAPI document, with the limits this process enforces (--ingest.max-batch-size,
// --ingest.max-impression-items, the timestamp window). TestRequestSchemasMatchTheDecoders
// holds the schemas to what pkg/events' decoders accept.
func (m *Ingest) DescribeAPI(d *openapi.Document) {
	s := requestSchemas(m.cfg.limits())
	refs := map[string]*openapi.Schema{}
	for _, name := range []string{"Context", "ImpressionItem", "ImpressionEvent", "WatchEvent", "EventBatch", "Event"} {
		refs[name] = d.Component(name, s[name])
	}
	post := func(path, summary, description string, body *openapi.Schema, resp any) {
		out := openapi.Of(resp)
		if st := out.Properties["status"]; st != nil {
			st.Enum = []any{"ok", "duplicate"}
			if path == "/log/batch" {
				st.Enum = []any{"ok"} // inserted_events tells what was new
			}
		}
		d.Add(http.MethodPost, path, openapi.Operation{Tags: []string{"events"}, Summary: summary, Description: description,
			RequestBody: openapi.JSONBody(body),
			Responses: map[string]openapi.Response{
				"200": openapi.JSONResponse("Successful Response", out),
				"408": openapi.ErrorResponse("Body not received within --http.read-timeout: nothing was stored, retry"),
				"413": openapi.ErrorResponse("Body over --http.body-limit-bytes"),
				"415": openapi.ErrorResponse("Content type not JSON (application/json or application/*+json; parameters are ignored), or a compressed body (Content-Encoding other than identity)"),
				"422": openapi.ValidationErrorResponse(),
				"503": openapi.ErrorResponse("Nothing was stored: the database is unavailable or the service is shutting down. Except with a detail saying \"outcome unknown\": the commit was sent but its outcome could not be learnt, so the events may be stored; resend them (a resend is deduplicated by event_id)"),
			}})
	}
	post("/log/impression", "Log an impression", "Stores the event and its outbox frame in one transaction.", refs["ImpressionEvent"], impressionResponse{})
	post("/log/watch", "Log a watch", "Stores the event and its outbox frame in one transaction; features are updated by the consumer.", refs["WatchEvent"], watchResponse{})
	post("/log/batch", "Log a batch of impressions and watches", "Stores every event in one transaction, or none.", refs["EventBatch"], batchResponse{})
	post("/event", "Log a legacy view, click or purchase", "Stored like the other events; the consumer applies its feature update.", refs["Event"], legacyResponse{})
	d.Add(http.MethodGet, "/contract", openapi.Operation{Tags: []string{"contract"}, Summary: "KPI, SLA and event contract",
		Responses: map[string]openapi.Response{"200": openapi.JSONResponse("Successful Response", openapi.Of(contractResponse{}))}})
}

// requestSchemas are the bodies of api-contract §2.2 under lim. Every model rejects unknown
// fields; pydantic's lax mode also takes numeric strings for numbers and booleans' words.
func requestSchemas(lim events.Limits) map[string]*openapi.Schema {
	// Every string of a body refuses NUL (PostgreSQL text cannot store it); \x00 means the same
	// in ECMA-262, Go and Python regular expressions.
	str := func(minLen, maxLen int) *openapi.Schema {
		s := openapi.String(minLen, maxLen)
		s.Pattern = `^[^\x00]*$`
		return s
	}
	nullable := openapi.Nullable
	object := func(description string, props map[string]*openapi.Schema, required ...string) *openapi.Schema {
		return &openapi.Schema{Type: "object", Description: description, Properties: props, Required: required, AdditionalProperties: false}
	}
	intGT0 := func(description string) *openapi.Schema {
		return &openapi.Schema{Type: "integer", Format: "int64", ExclusiveMinimum: openapi.Float(0), Description: description}
	}
	number := func(lo, hi *float64) *openapi.Schema {
		return &openapi.Schema{Type: "number", Minimum: lo, Maximum: hi}
	}
	window := fmt.Sprintf("Values below 10^12 are seconds, others milliseconds; the time must lie within %d ms before "+
		"and %d ms after the server clock (--ingest.max-event-age, --ingest.max-event-future).", lim.MaxAgeMs, lim.MaxFutureMs)
	eventID := str(8, 64)
	eventID.Description = "Idempotency key of the user's events, across every kind (another user's event may carry the same id). When absent, a 32-hex id derived from the event's fields, " +
		"so a resend is answered \"duplicate\" (--ingest.missing-event-id=content)."
	if lim.RandomMissingIDs {
		eventID.Description = "Idempotency key of the user's events, across every kind (another user's event may carry the same id). When absent, a fresh random 32-hex id: a resend is stored again " +
			"(--ingest.missing-event-id=random)."
	}
	ctxProps := map[string]*openapi.Schema{}
	for _, f := range []string{"device", "platform", "app_version", "locale", "country", "timezone", "referrer", "user_agent"} {
		ctxProps[f] = nullable(str(0, 0))
	}
	common := func(kind string) map[string]*openapi.Schema {
		return map[string]*openapi.Schema{
			"event_id":              eventID,
			"user_id":               str(1, 128),
			"session_id":            str(1, 128),
			"request_id":            str(1, 128),
			"ts_ms":                 intGT0("Client time. " + window + " Stored in milliseconds."),
			"server_received_ts_ms": nullable(intGT0("Always replaced by the server's receive time.")),
			"context":               nullable(openapi.Ref("Context")),
			"event_type":            {Type: "string", Const: kind, Default: kind},
		}
	}
	commonRequired := []string{"user_id", "session_id", "request_id", "ts_ms"}

	imp := common("impression")
	imp["items"] = &openapi.Schema{Type: "array", Items: openapi.Ref("ImpressionItem"), MinItems: openapi.Int(1), MaxItems: openapi.Int(lim.MaxItems),
		Description: "Positions must be unique, and so must item ids."}
	watch := common("watch")
	watch["item_id"] = str(1, 128)
	watch["watch_time_sec"] = number(openapi.Float(0), nil)
	watch["percent_watched"] = nullable(number(openapi.Float(0), openapi.Float(100)))
	watch["ended"] = nullable(&openapi.Schema{Type: "boolean"})
	watch["playback_speed"] = nullable(number(openapi.Float(0.25), openapi.Float(4)))
	watch["rebuffer_count"] = nullable(&openapi.Schema{Type: "integer", Format: "int64", Minimum: openapi.Float(0)})

	return map[string]*openapi.Schema{
		"Context": object("Optional client context.", ctxProps),
		"ImpressionItem": object("", map[string]*openapi.Schema{
			"item_id":  str(1, 128),
			"position": {Type: "integer", Format: "int64", Minimum: openapi.Float(0)},
			"feed_id":  nullable(str(0, 0)),
			"slot":     nullable(str(0, 0)),
		}, "item_id", "position"),
		"ImpressionEvent": object("", imp, append(commonRequired, "items")...),
		"WatchEvent":      object("", watch, append(commonRequired, "item_id", "watch_time_sec")...),
		"EventBatch": object("Impressions and watches; an element is an impression when its event_type says so or, without one, when it has items.",
			map[string]*openapi.Schema{"events": {Type: "array", MinItems: openapi.Int(1), MaxItems: openapi.Int(lim.MaxBatchSize),
				Description: "event_ids must be unique within the batch.",
				Items:       &openapi.Schema{AnyOf: []*openapi.Schema{openapi.Ref("ImpressionEvent"), openapi.Ref("WatchEvent")}}}},
			"events"),
		"Event": object("A legacy event of POST /event.", map[string]*openapi.Schema{
			"event_id":   eventID,
			"user_id":    str(1, 128),
			"item_id":    str(1, 128),
			"event_type": {Type: "string", Enum: []any{events.LegacyView, events.LegacyClick, events.LegacyPurchase}},
			"ts":         intGT0("Client time, kept as sent. " + window),
		}, "user_id", "item_id", "event_type", "ts"),
	}
}
