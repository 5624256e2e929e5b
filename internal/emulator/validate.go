package emulator

//go:generate go run ./modelgen -o model_gen.go

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
)

// shapeRule holds what validation needs of a model shape; model_gen.go
// has one for every shape of the emulated operations' inputs.
type shapeRule struct {
	typ        string       // structure, list, map, string, integer, long or boolean
	members    []memberRule // structure members, sorted by name
	member     string       // shape of list elements
	key, value string       // shapes of map keys and values
	min, max   *int64       // bounds on the length of strings, lists and maps, or on integers
	pattern    string       // regular expression a string must match in full
	enum       []string     // values a string may take
}

type memberRule struct {
	name, shape string
	required    bool
}

// violation is a broken constraint: the value at path fails constraint.
type violation struct {
	path       string
	value      any
	constraint string
}

// validateInput checks a request against the model's constraints on op's
// input shape and returns the first violation as a ValidationException
// worded like AWS's. input is the body as json.Decoder.UseNumber decodes it,
// plus the members the URI and query string carry. Members the model does
// not know are ignored, as AWS does. AWS lists every violation; reporting
// only the first, in member name order, keeps messages deterministic.
//
// An op without an input shape is an emulator bug and yields an
// InternalServerException.
func validateInput(op string, input map[string]any) *apiError {
	shape, ok := operationInputs[op]
	if !ok {
		return newError(errInternal, "no input shape for operation %s", op)
	}
	if v := checkShape(shape, "", input); v != nil {
		return validationError("1 validation error detected: Value %s at '%s' failed to satisfy constraint: %s",
			formatValue(v.value), v.path, v.constraint)
	}
	return nil
}

// checkShape validates v, found at path, against shape.
func checkShape(shape, path string, v any) *violation {
	r := shapeRules[shape]
	fail := func(constraint string) *violation {
		return &violation{path: path, value: v, constraint: constraint}
	}
	switch r.typ {
	case "structure":
		m, ok := v.(map[string]any)
		if !ok {
			return fail("Member must be an object")
		}
		for _, mr := range r.members {
			p := mr.name
			if path != "" {
				p = path + "." + mr.name
			}
			mv := m[mr.name]
			// A JSON null is an absent member.
			if mv == nil {
				if mr.required {
					return &violation{path: p, constraint: "Member must not be null"}
				}
				continue
			}
			if bad := checkShape(mr.shape, p, mv); bad != nil {
				return bad
			}
		}
	case "list":
		l, ok := v.([]any)
		if !ok {
			return fail("Member must be a list")
		}
		if c := checkBounds(r, "length", int64(len(l))); c != "" {
			return fail(c)
		}
		for i, e := range l {
			// AWS numbers list elements from 1.
			p := fmt.Sprintf("%s.%d.member", path, i+1)
			if e == nil {
				return &violation{path: p, constraint: "Member must not be null"}
			}
			if bad := checkShape(r.member, p, e); bad != nil {
				return bad
			}
		}
	case "map":
		m, ok := v.(map[string]any)
		if !ok {
			return fail("Member must be an object")
		}
		if c := checkBounds(r, "length", int64(len(m))); c != "" {
			return fail(c)
		}
		for _, k := range slices.Sorted(maps.Keys(m)) {
			if bad := checkShape(r.key, path, k); bad != nil {
				bad.constraint = "Map keys must satisfy constraint: [" + bad.constraint + "]"
				return bad
			}
			p, mv := path+"."+k, m[k]
			if mv == nil {
				return &violation{path: p, constraint: "Member must not be null"}
			}
			if bad := checkShape(r.value, p, mv); bad != nil {
				return bad
			}
		}
	case "string":
		s, ok := v.(string)
		if !ok {
			return fail("Member must be a string")
		}
		// AWS counts characters, not bytes.
		if c := checkBounds(r, "length", int64(utf8.RuneCountInString(s))); c != "" {
			return fail(c)
		}
		if r.pattern != "" && !shapePatterns()[shape].MatchString(s) {
			return fail("Member must satisfy regular expression pattern: " + r.pattern)
		}
		if r.enum != nil && !slices.Contains(r.enum, s) {
			return fail("Member must satisfy enum value set: [" + strings.Join(r.enum, ", ") + "]")
		}
	case "integer", "long":
		const notInteger = "Member must be an integer"
		n, ok := v.(json.Number)
		if !ok {
			return fail(notInteger)
		}
		bits := 32
		if r.typ == "long" {
			bits = 64
		}
		// Only plain JSON integers qualify (not 1.0 or 1e2), as the
		// handlers decode these members into Go integers.
		i, err := strconv.ParseInt(n.String(), 10, bits)
		if err != nil && !errors.Is(err, strconv.ErrRange) {
			return fail(notInteger)
		}
		// ParseInt clamps values out of range, so bounds, if any, name the limit.
		if c := checkBounds(r, "value", i); c != "" {
			return fail(c)
		}
		if err != nil {
			return fail(notInteger)
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return fail("Member must be a boolean")
		}
	}
	return nil
}

// checkBounds returns the constraint n breaks, if any, of r's min and max
// on the named quantity ("length" or "value").
func checkBounds(r *shapeRule, quantity string, n int64) string {
	if r.min != nil && n < *r.min {
		return fmt.Sprintf("Member must have %s greater than or equal to %d", quantity, *r.min)
	}
	if r.max != nil && n > *r.max {
		return fmt.Sprintf("Member must have %s less than or equal to %d", quantity, *r.max)
	}
	return ""
}

// formatValue renders v as AWS messages do: quoted, except for null.
func formatValue(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case string:
		return "'" + v + "'"
	case json.Number:
		return "'" + v.String() + "'"
	}
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	// Values decoded from JSON always encode.
	_ = enc.Encode(v)
	return "'" + strings.TrimSuffix(b.String(), "\n") + "'"
}

// shapePatterns returns the compiled pattern of each shape that has one.
var shapePatterns = sync.OnceValue(func() map[string]*regexp.Regexp {
	res, err := compilePatterns()
	if err != nil {
		panic(err) // modelgen and a test check that every pattern compiles
	}
	return res
})

// compilePatterns compiles the shapes' patterns to match whole strings:
// Smithy patterns are unanchored, but the service full-matches names and
// ARNs.
func compilePatterns() (map[string]*regexp.Regexp, error) {
	res := make(map[string]*regexp.Regexp)
	for name, r := range shapeRules {
		if r.pattern == "" {
			continue
		}
		re, err := regexp.Compile("^(?:" + r.pattern + ")$")
		if err != nil {
			return nil, fmt.Errorf("shape %s: %v", name, err)
		}
		res[name] = re
	}
	return res, nil
}
