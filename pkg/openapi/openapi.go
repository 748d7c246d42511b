// Package openapi builds the process' OpenAPI 3.1 document and serves it as FastAPI does by
// default: GET /openapi.json, the Swagger UI page at /docs and the ReDoc page at /redoc
// (api-contract §2.3). The original service's clients generate code from the schema, so the
// document describes what this process really serves: each module describes the routes it
// registers (module.APIDescriber) with the limits it runs with, and pkg/app adds its own.
//
// The types cover the part of OpenAPI the document uses; fields follow the specification's
// names. Schemas are JSON Schema 2020-12 as OpenAPI 3.1 takes them (a nullable value is
// anyOf [T, null], as pydantic v2 writes it).
package openapi

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Version is the OpenAPI version of the document (FastAPI's default since 0.99).
const Version = "3.1.0"

// Document is an OpenAPI document. Build it with New, Add and Component.
type Document struct {
	OpenAPI    string               `json:"openapi"`
	Info       Info                 `json:"info"`
	Paths      map[string]*PathItem `json:"paths"`
	Components Components           `json:"components"`
}

// Info is the document's info object.
type Info struct {
	Title       string `json:"title"`
	Version     string `json:"version"`
	Description string `json:"description,omitempty"`
}

// Components holds the named schemas operations refer to.
type Components struct {
	Schemas         map[string]*Schema         `json:"schemas"`
	SecuritySchemes map[string]*SecurityScheme `json:"securitySchemes,omitempty"`
}

// SecurityScheme is one way an operation can be authenticated.
type SecurityScheme struct {
	Type        string `json:"type"`             // http or apiKey
	Scheme      string `json:"scheme,omitempty"` // bearer, for http
	In          string `json:"in,omitempty"`     // header, for apiKey
	Name        string `json:"name,omitempty"`   // the header, for apiKey
	Description string `json:"description,omitempty"`
}

// PathItem maps a lower-case HTTP method to its operation.
type PathItem map[string]*Operation

// Operation is one method of one path.
type Operation struct {
	Tags        []string            `json:"tags,omitempty"`
	Summary     string              `json:"summary,omitempty"`
	Description string              `json:"description,omitempty"`
	OperationID string              `json:"operationId"`
	Parameters  []Parameter         `json:"parameters,omitempty"`
	RequestBody *RequestBody        `json:"requestBody,omitempty"`
	Responses   map[string]Response `json:"responses"`
	// Security lists the alternatives that authenticate the operation (any one suffices).
	Security []map[string][]string `json:"security,omitempty"`
}

// Parameter is a query (or other) parameter.
type Parameter struct {
	Name        string  `json:"name"`
	In          string  `json:"in"`
	Required    bool    `json:"required"`
	Description string  `json:"description,omitempty"`
	Schema      *Schema `json:"schema"`
}

// RequestBody is an operation's body.
type RequestBody struct {
	Required bool                 `json:"required"`
	Content  map[string]MediaType `json:"content"`
}

// MediaType is the schema of one content type.
type MediaType struct {
	Schema *Schema `json:"schema"`
}

// Response is one status code's answer.
type Response struct {
	Description string               `json:"description"`
	Content     map[string]MediaType `json:"content,omitempty"`
}

// Schema is a JSON Schema. Type is a string or, rarely, a list of strings. Numbers are
// pointers so a bound of 0 is written.
type Schema struct {
	Ref                  string             `json:"$ref,omitempty"`
	Title                string             `json:"title,omitempty"`
	Description          string             `json:"description,omitempty"`
	Type                 any                `json:"type,omitempty"`
	Format               string             `json:"format,omitempty"`
	Properties           map[string]*Schema `json:"properties,omitempty"`
	Required             []string           `json:"required,omitempty"`
	AdditionalProperties any                `json:"additionalProperties,omitempty"` // false or *Schema
	Items                *Schema            `json:"items,omitempty"`
	AnyOf                []*Schema          `json:"anyOf,omitempty"`
	Const                any                `json:"const,omitempty"`
	Enum                 []any              `json:"enum,omitempty"`
	Default              any                `json:"default,omitempty"`
	MinLength            *int               `json:"minLength,omitempty"`
	MaxLength            *int               `json:"maxLength,omitempty"`
	Pattern              string             `json:"pattern,omitempty"`
	MinItems             *int               `json:"minItems,omitempty"`
	MaxItems             *int               `json:"maxItems,omitempty"`
	Minimum              *float64           `json:"minimum,omitempty"`
	Maximum              *float64           `json:"maximum,omitempty"`
	ExclusiveMinimum     *float64           `json:"exclusiveMinimum,omitempty"`
}

// New returns an empty document.
func New(title, version, description string) *Document {
	d := &Document{OpenAPI: Version, Info: Info{Title: title, Version: version, Description: description},
		Paths: map[string]*PathItem{}, Components: Components{Schemas: map[string]*Schema{}}}
	d.Component("ValidationError", validationError())
	d.Component("HTTPValidationError", &Schema{Title: "HTTPValidationError", Type: "object",
		Properties: map[string]*Schema{"detail": {Title: "Detail", Type: "array", Items: Ref("ValidationError")}}})
	d.Component("HTTPError", &Schema{Title: "HTTPError", Type: "object", Required: []string{"detail"},
		Description: "Every error but a validation error: {\"detail\": <string or object>}.",
		Properties:  map[string]*Schema{"detail": {Title: "Detail"}}})
	return d
}

// validationError is FastAPI's ValidationError component; recsys fills input and ctx as
// pydantic v2 does.
func validationError() *Schema {
	return &Schema{Title: "ValidationError", Type: "object", Required: []string{"loc", "msg", "type"},
		Properties: map[string]*Schema{
			"loc":   {Title: "Location", Type: "array", Items: &Schema{AnyOf: []*Schema{{Type: "string"}, {Type: "integer"}}}},
			"msg":   {Title: "Message", Type: "string"},
			"type":  {Title: "Error Type", Type: "string"},
			"input": {Title: "Input"},
			"ctx":   {Title: "Context", Type: "object"},
		}}
}

// Add describes method on path. The path is echo's ("/a/:id" is written "/a/{id}"). Adding
// the same method and path twice is a programming error.
func (d *Document) Add(method, path string, op Operation) {
	p := oapiPath(path)
	item := d.Paths[p]
	if item == nil {
		item = &PathItem{}
		d.Paths[p] = item
	}
	m := strings.ToLower(method)
	if _, dup := (*item)[m]; dup {
		panic(fmt.Sprintf("openapi: %s %s described twice", method, path))
	}
	if op.OperationID == "" {
		op.OperationID = operationID(method, p)
	}
	if op.Responses == nil {
		op.Responses = map[string]Response{}
	}
	(*item)[m] = &op
}

// Component registers a named schema and returns a reference to it.
func (d *Document) Component(name string, s *Schema) *Schema {
	if s.Title == "" {
		s.Title = name
	}
	d.Components.Schemas[name] = s
	return Ref(name)
}

// Ref refers to a component schema.
func Ref(name string) *Schema { return &Schema{Ref: "#/components/schemas/" + name} }

// Operations lists every described method and path as "METHOD /path", sorted.
func (d *Document) Operations() []string {
	var out []string
	for p, item := range d.Paths {
		for m := range *item {
			out = append(out, strings.ToUpper(m)+" "+p)
		}
	}
	sort.Strings(out)
	return out
}

// JSON encodes the document compactly, as FastAPI serves it.
func (d *Document) JSON() ([]byte, error) {
	b, err := json.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("encode the OpenAPI document: %w", err)
	}
	return b, nil
}

// JSONBody is a required application/json request body.
func JSONBody(s *Schema) *RequestBody {
	return &RequestBody{Required: true, Content: map[string]MediaType{"application/json": {Schema: s}}}
}

// JSONResponse is a response with an application/json body.
func JSONResponse(description string, s *Schema) Response {
	return Response{Description: description, Content: map[string]MediaType{"application/json": {Schema: s}}}
}

// ValidationErrorResponse is the 422 every operation with parameters or a body can answer.
func ValidationErrorResponse() Response {
	return JSONResponse("Validation Error", Ref("HTTPValidationError"))
}

// ErrorResponse is an error answered {"detail": ...}.
func ErrorResponse(description string) Response {
	return JSONResponse(description, Ref("HTTPError"))
}

// Status is a response map key.
func Status(code int) string { return strconv.Itoa(code) }

// Int and Float make bound pointers.
func Int(v int) *int           { return &v }
func Float(v float64) *float64 { return &v }

// String is a string schema with character bounds (0: none).
func String(minLen, maxLen int) *Schema {
	s := &Schema{Type: "string"}
	if minLen > 0 {
		s.MinLength = Int(minLen)
	}
	if maxLen > 0 {
		s.MaxLength = Int(maxLen)
	}
	return s
}

// Nullable is anyOf [s, null], pydantic v2's Optional[T].
func Nullable(s *Schema) *Schema {
	return &Schema{AnyOf: []*Schema{s, {Type: "null"}}}
}

// QueryParam is a query parameter.
func QueryParam(name string, required bool, description string, s *Schema) Parameter {
	return Parameter{Name: name, In: "query", Required: required, Description: description, Schema: s}
}

func oapiPath(p string) string {
	parts := strings.Split(p, "/")
	for i, s := range parts {
		if strings.HasPrefix(s, ":") {
			parts[i] = "{" + s[1:] + "}"
		}
	}
	return strings.Join(parts, "/")
}

// operationID is FastAPI's form: the path's characters other than letters, digits and '_'
// become '_', then the method (GET /metrics/reco: metrics_reco_get).
func operationID(method, path string) string {
	var b strings.Builder
	for _, r := range strings.TrimPrefix(path, "/") {
		if r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String() + "_" + strings.ToLower(method)
}
