package openapi_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"

	"recsys/pkg/openapi"
)

type inner struct {
	N json.Number `json:"n"`
}

type embedded struct {
	E string `json:"e"`
}

type sample struct {
	embedded
	S       string             `json:"s"`
	I       int64              `json:"i,omitempty"`
	F       float64            `json:"f"`
	B       bool               `json:"b"`
	P       *int64             `json:"p"`
	L       []string           `json:"l"`
	M       map[string]float64 `json:"m"`
	In      inner              `json:"in"`
	A       any                `json:"a"`
	Skipped string             `json:"-"`
	private string
}

// Of describes what encoding/json writes for a type: json names, embedded fields flattened,
// omitempty fields optional, pointers nullable.
func TestOfDescribesTheJSONEncoding(t *testing.T) {
	_ = sample{}.private
	s := openapi.Of(sample{})
	b, _ := json.Marshal(sample{})
	var enc map[string]any
	if err := json.Unmarshal(b, &enc); err != nil {
		t.Fatal(err)
	}
	for k := range enc {
		if s.Properties[k] == nil {
			t.Errorf("encoded field %q not described", k)
		}
	}
	want := map[string]string{"e": "string", "s": "string", "i": "integer", "f": "number", "b": "boolean", "l": "array", "m": "object", "in": "object"}
	for k, typ := range want {
		if got := s.Properties[k]; got == nil || got.Type != typ {
			t.Errorf("%s: %+v, want type %s", k, got, typ)
		}
	}
	if p := s.Properties["p"]; p == nil || len(p.AnyOf) != 2 || p.AnyOf[0].Type != "integer" || p.AnyOf[1].Type != "null" {
		t.Errorf("pointer: %+v, want anyOf [integer, null]", p)
	}
	if got := s.Properties["in"].Properties["n"].Type; got != "number" {
		t.Errorf("json.Number: %v, want number", got)
	}
	if a := s.Properties["a"]; a == nil || !reflect.DeepEqual(*a, openapi.Schema{}) {
		t.Errorf("interface: %+v, want any ({})", a)
	}
	if s.Properties["Skipped"] != nil || s.Properties["private"] != nil || s.Properties["-"] != nil {
		t.Errorf("skipped fields described: %v", s.Properties)
	}
	if got := strings.Join(s.Required, ","); strings.Contains(got, ",i,") || !strings.Contains(got, "e") || !strings.Contains(got, "s") {
		t.Errorf("required %v: want every field but the omitempty one", s.Required)
	}
}

// The three endpoints FastAPI serves by default: the document as compact JSON (OpenAPI 3.1,
// FastAPI's validation error components), and the Swagger UI and ReDoc pages loading their
// code from jsDelivr and reading /openapi.json.
func TestServeMountsTheDocumentAndTheUIPages(t *testing.T) {
	d := openapi.New("recsys", "1.2.3", "")
	d.Add(http.MethodGet, "/items/:id", openapi.Operation{Summary: "one item"})
	e := echo.New()
	if err := openapi.Serve(e, d); err != nil {
		t.Fatal(err)
	}
	get := func(path string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != http.StatusOK {
			t.Fatalf("%s: %d %s", path, rec.Code, rec.Body)
		}
		return rec
	}
	rec := get("/openapi.json")
	if ct := rec.Header().Get(echo.HeaderContentType); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("content type %q", ct)
	}
	var doc struct {
		OpenAPI string `json:"openapi"`
		Info    struct{ Title, Version string }
		Paths   map[string]map[string]struct {
			OperationID string `json:"operationId"`
		}
		Components struct {
			Schemas map[string]any
		}
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	if doc.OpenAPI != "3.1.0" || doc.Info.Title != "recsys" || doc.Info.Version != "1.2.3" {
		t.Errorf("openapi %q info %+v", doc.OpenAPI, doc.Info)
	}
	if op := doc.Paths["/items/{id}"]["get"]; op.OperationID != "items__id__get" {
		t.Errorf("paths %v: want /items/{id} with FastAPI's operation id items__id__get", doc.Paths)
	}
	for _, c := range []string{"HTTPValidationError", "ValidationError"} {
		if doc.Components.Schemas[c] == nil {
			t.Errorf("component %s missing", c)
		}
	}
	for path, want := range map[string][]string{
		"/docs": {"https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js", "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css",
			"url: '/openapi.json'", "<title>recsys - Swagger UI</title>", "SwaggerUIBundle.presets.apis"},
		"/redoc": {"https://cdn.jsdelivr.net/npm/redoc@2/bundles/redoc.standalone.js", `<redoc spec-url="/openapi.json"></redoc>`, "<title>recsys - ReDoc</title>"},
	} {
		rec := get(path)
		if ct := rec.Header().Get(echo.HeaderContentType); !strings.HasPrefix(ct, "text/html") {
			t.Errorf("%s content type %q", path, ct)
		}
		for _, w := range want {
			if !strings.Contains(rec.Body.String(), w) {
				t.Errorf("%s lacks %q:\n%s", path, w, rec.Body)
			}
		}
	}
}

func TestAddingAnOperationTwicePanics(t *testing.T) {
	d := openapi.New("t", "v", "")
	d.Add(http.MethodGet, "/a", openapi.Operation{})
	defer func() {
		if recover() == nil {
			t.Error("no panic")
		}
	}()
	d.Add(http.MethodGet, "/a", openapi.Operation{})
}
