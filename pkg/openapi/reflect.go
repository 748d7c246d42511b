package openapi

import (
	"encoding/json"
	"reflect"
	"strings"
)

var jsonNumber = reflect.TypeFor[json.Number]()

// Of describes the JSON encoding/json gives a value of v's type, so a response schema cannot
// drift from the Go type the handler encodes: struct fields by their json names (embedded
// structs flattened), a field without omitempty required, pointers nullable, maps objects.
// An interface is any value ({}).
func Of(v any) *Schema {
	return schemaOf(reflect.TypeOf(v))
}

func schemaOf(t reflect.Type) *Schema {
	if t == nil {
		return &Schema{}
	}
	if t == jsonNumber {
		return &Schema{Type: "number"}
	}
	switch t.Kind() {
	case reflect.Pointer:
		return Nullable(schemaOf(t.Elem()))
	case reflect.String:
		return &Schema{Type: "string"}
	case reflect.Bool:
		return &Schema{Type: "boolean"}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return &Schema{Type: "integer"}
	case reflect.Float32, reflect.Float64:
		return &Schema{Type: "number"}
	case reflect.Slice, reflect.Array:
		return &Schema{Type: "array", Items: schemaOf(t.Elem())}
	case reflect.Map:
		return &Schema{Type: "object", AdditionalProperties: schemaOf(t.Elem())}
	case reflect.Struct:
		s := &Schema{Type: "object", Properties: map[string]*Schema{}}
		addFields(s, t)
		return s
	}
	return &Schema{}
}

func addFields(s *Schema, t reflect.Type) {
	for f := range t.Fields() {
		name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() && !f.Anonymous {
			continue
		}
		if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
			addFields(s, f.Type)
			continue
		}
		if name == "" {
			name = f.Name
		}
		s.Properties[name] = schemaOf(f.Type)
		if !strings.Contains(","+opts+",", ",omitempty,") && !strings.Contains(","+opts+",", ",omitzero,") {
			s.Required = append(s.Required, name)
		}
	}
}

// FieldNames lists the json names of a struct type's fields as Of describes them.
func FieldNames(v any) []string {
	s := Of(v)
	out := make([]string, 0, len(s.Properties))
	for k := range s.Properties {
		out = append(out, k)
	}
	return out
}
