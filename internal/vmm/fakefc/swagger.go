package fakefc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// APISpec is a Firecracker API description (Swagger 2.0) loaded from
// shared/firecracker-api/firecracker-vX.yaml, with a validator for the
// subset of Swagger those files use: paths with {parameters}, one body
// parameter per operation, object schemas with required/properties,
// $ref, string/integer/number/boolean/array/object types, enum,
// minimum/maximum, and additionalProperties (unknown fields are rejected
// unless a schema sets additionalProperties: true or declares no properties
// at all, i.e. is free-form; Firecracker's serde parsing is as strict).
type APISpec struct {
	Version     string
	paths       []pathEntry
	definitions map[string]*Schema
}

type pathEntry struct {
	template string
	segments []string
	ops      map[string]*operation // lower-case method
}

type operation struct {
	ID       string
	Body     *Schema // nil = no body parameter
	BodyReq  bool
	PathArgs []string
}

// Schema is the Swagger schema subset.
type Schema struct {
	Ref                  string             `yaml:"$ref"`
	Type                 string             `yaml:"type"`
	Required             []string           `yaml:"required"`
	Properties           map[string]*Schema `yaml:"properties"`
	Items                *Schema            `yaml:"items"`
	Enum                 []any              `yaml:"enum"`
	Minimum              *float64           `yaml:"minimum"`
	Maximum              *float64           `yaml:"maximum"`
	Format               string             `yaml:"format"`
	AdditionalProperties any                `yaml:"additionalProperties"`
}

type rawSpec struct {
	Info struct {
		Version string `yaml:"version"`
	} `yaml:"info"`
	Paths map[string]map[string]struct {
		OperationID string `yaml:"operationId"`
		Parameters  []struct {
			Name     string  `yaml:"name"`
			In       string  `yaml:"in"`
			Required bool    `yaml:"required"`
			Schema   *Schema `yaml:"schema"`
		} `yaml:"parameters"`
	} `yaml:"paths"`
	Definitions map[string]*Schema `yaml:"definitions"`
}

// SpecFile returns the path of the spec for version in dir.
func SpecFile(dir, version string) string {
	return filepath.Join(dir, "firecracker-v"+version+".yaml")
}

// LoadAPISpec reads and indexes a Firecracker swagger file.
func LoadAPISpec(path string) (*APISpec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load firecracker api spec: %w", err)
	}
	var raw rawSpec
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("parse firecracker api spec %s: %w", path, err)
	}
	s := &APISpec{Version: raw.Info.Version, definitions: raw.Definitions}
	for tmpl, methods := range raw.Paths {
		pe := pathEntry{template: tmpl, segments: splitPath(tmpl), ops: map[string]*operation{}}
		for method, op := range methods {
			o := &operation{ID: op.OperationID}
			for _, p := range op.Parameters {
				switch p.In {
				case "body":
					o.Body, o.BodyReq = p.Schema, p.Required
				case "path":
					o.PathArgs = append(o.PathArgs, p.Name)
				}
			}
			pe.ops[strings.ToLower(method)] = o
		}
		s.paths = append(s.paths, pe)
	}
	// literal paths before templated ones
	sort.Slice(s.paths, func(i, j int) bool {
		return strings.Count(s.paths[i].template, "{") < strings.Count(s.paths[j].template, "{")
	})
	if len(s.paths) == 0 || s.Version == "" {
		return nil, fmt.Errorf("firecracker api spec %s: no paths or version", path)
	}
	return s, nil
}

func splitPath(p string) []string {
	p = strings.Trim(p, "/")
	if p == "" {
		return nil
	}
	return strings.Split(p, "/")
}

// ValidationError is a request the spec does not allow.
type ValidationError struct{ Msg string }

func (e *ValidationError) Error() string { return e.Msg }

func invalid(format string, args ...any) error {
	return &ValidationError{Msg: fmt.Sprintf(format, args...)}
}

// Match finds the operation of method on path and the path parameters.
func (s *APISpec) Match(method, path string) (opID string, params map[string]string, err error) {
	_, op, params, err := s.match(method, path)
	if err != nil {
		return "", nil, err
	}
	return op.ID, params, nil
}

func (s *APISpec) match(method, path string) (*pathEntry, *operation, map[string]string, error) {
	segs := splitPath(path)
	pathKnown := false
	for i := range s.paths {
		pe := &s.paths[i]
		params, ok := matchSegments(pe.segments, segs)
		if !ok {
			continue
		}
		pathKnown = true
		if op, ok := pe.ops[strings.ToLower(method)]; ok {
			return pe, op, params, nil
		}
	}
	if pathKnown {
		return nil, nil, nil, invalid("Invalid request method and/or path: %s %s.", method, path)
	}
	return nil, nil, nil, invalid("Invalid request method and/or path: %s %s.", method, path)
}

func matchSegments(tmpl, segs []string) (map[string]string, bool) {
	if len(tmpl) != len(segs) {
		return nil, false
	}
	params := map[string]string{}
	for i, t := range tmpl {
		if strings.HasPrefix(t, "{") && strings.HasSuffix(t, "}") {
			if segs[i] == "" {
				return nil, false
			}
			params[t[1:len(t)-1]] = segs[i]
			continue
		}
		if t != segs[i] {
			return nil, false
		}
	}
	return params, true
}

// Validate checks one request: method and path must exist in the spec and
// the JSON body must conform to the operation's body schema.
func (s *APISpec) Validate(method, path string, body []byte) error {
	_, op, _, err := s.match(method, path)
	if err != nil {
		return err
	}
	body = bytes.TrimSpace(body)
	if op.Body == nil {
		if len(body) > 0 {
			return invalid("%s %s takes no body", method, path)
		}
		return nil
	}
	if len(body) == 0 {
		if op.BodyReq {
			return invalid("%s %s: missing request body", method, path)
		}
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return invalid("%s %s: invalid JSON body: %v", method, path, err)
	}
	if dec.More() {
		return invalid("%s %s: trailing data after the JSON body", method, path)
	}
	return s.check(op.Body, v, "body")
}

func (s *APISpec) resolve(sc *Schema) (*Schema, error) {
	for depth := 0; sc != nil && sc.Ref != ""; depth++ {
		if depth > 16 {
			return nil, errors.New("reference loop")
		}
		name := strings.TrimPrefix(sc.Ref, "#/definitions/")
		def, ok := s.definitions[name]
		if !ok {
			return nil, fmt.Errorf("unknown definition %s", sc.Ref)
		}
		sc = def
	}
	return sc, nil
}

func (s *APISpec) check(sc *Schema, v any, at string) error {
	sc, err := s.resolve(sc)
	if err != nil {
		return invalid("%s: spec error: %v", at, err)
	}
	typ := sc.Type
	if typ == "" && sc.Properties != nil {
		typ = "object"
	}
	switch typ {
	case "object":
		obj, ok := v.(map[string]any)
		if !ok {
			return invalid("%s: expected an object, got %s", at, jsonKind(v))
		}
		for _, req := range sc.Required {
			if _, ok := obj[req]; !ok {
				return invalid("%s: missing field `%s`", at, req)
			}
		}
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			prop, ok := sc.Properties[k]
			if !ok {
				if sc.AdditionalProperties == true || sc.Properties == nil {
					continue
				}
				return invalid("%s: unknown field `%s`, expected one of %s", at, k, fieldList(sc.Properties))
			}
			if err := s.check(prop, obj[k], at+"."+k); err != nil {
				return err
			}
		}
	case "array":
		arr, ok := v.([]any)
		if !ok {
			return invalid("%s: expected an array, got %s", at, jsonKind(v))
		}
		for i, item := range arr {
			if sc.Items != nil {
				if err := s.check(sc.Items, item, fmt.Sprintf("%s[%d]", at, i)); err != nil {
					return err
				}
			}
		}
	case "string":
		str, ok := v.(string)
		if !ok {
			return invalid("%s: expected a string, got %s", at, jsonKind(v))
		}
		if len(sc.Enum) > 0 && !inEnum(sc.Enum, str) {
			return invalid("%s: unknown variant `%s`, expected one of %s", at, str, enumList(sc.Enum))
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return invalid("%s: expected a boolean, got %s", at, jsonKind(v))
		}
	case "integer", "number":
		n, ok := v.(json.Number)
		if !ok {
			return invalid("%s: expected %s, got %s", at, typ, jsonKind(v))
		}
		f, err := n.Float64()
		if err != nil {
			return invalid("%s: bad number %s", at, n)
		}
		if typ == "integer" {
			if _, err := n.Int64(); err != nil || f != math.Trunc(f) {
				return invalid("%s: expected an integer, got %s", at, n)
			}
			if sc.Format == "int32" && (f < math.MinInt32 || f > math.MaxInt32) {
				return invalid("%s: %s out of int32 range", at, n)
			}
		}
		if sc.Minimum != nil && f < *sc.Minimum {
			return invalid("%s: %s is below the minimum %v", at, n, *sc.Minimum)
		}
		if sc.Maximum != nil && f > *sc.Maximum {
			return invalid("%s: %s is above the maximum %v", at, n, *sc.Maximum)
		}
		if len(sc.Enum) > 0 && !inEnum(sc.Enum, n.String()) {
			return invalid("%s: %s not in %s", at, n, enumList(sc.Enum))
		}
	case "":
		// untyped schema: anything goes
	default:
		return invalid("%s: spec uses unsupported type %q", at, typ)
	}
	return nil
}

func inEnum(enum []any, s string) bool {
	for _, e := range enum {
		if fmt.Sprint(e) == s {
			return true
		}
	}
	return false
}

func enumList(enum []any) string {
	parts := make([]string, len(enum))
	for i, e := range enum {
		parts[i] = "`" + fmt.Sprint(e) + "`"
	}
	return strings.Join(parts, ", ")
}

func fieldList(props map[string]*Schema) string {
	names := make([]string, 0, len(props))
	for k := range props {
		names = append(names, "`"+k+"`")
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case json.Number:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}
