// Modelgen writes model_gen.go: the validation rules of the IVS real-time
// operations the emulator serves, taken from botocore's service model so
// that the emulator rejects exactly what the service's model rejects.
//
// Usage:
//
//	go run ./modelgen [-model service-2.json[.gz]] [-o model_gen.go]
//
// Without -model it reads the model of the botocore that python3 imports.
package main

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"go/format"
	"io"
	"log"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// operations are the operations the emulator serves.
var operations = []string{
	"CreateStage", "GetStage", "UpdateStage", "DeleteStage", "ListStages",
	"CreateParticipantToken",
	"ImportPublicKey", "GetPublicKey", "ListPublicKeys", "DeletePublicKey",
	"GetParticipant", "ListParticipants", "DisconnectParticipant",
	"StartParticipantReplication", "StopParticipantReplication", "ListParticipantReplicas",
	"GetStageSession", "ListStageSessions",
	"TagResource", "UntagResource", "ListTagsForResource",
}

// patternFixes replaces model patterns that contradict the service.
//
// ResourceArn's resource type [a-z-] matches a single character, so taken
// literally it rejects every real ARN (arn:aws:ivs:us-east-1:123:stage/abc),
// which the service accepts.
var patternFixes = map[string]string{
	`arn:aws:ivs:[a-z0-9-]+:[0-9]+:[a-z-]/[a-zA-Z0-9-]+`: `arn:aws:ivs:[a-z0-9-]+:[0-9]+:[a-z-]+/[a-zA-Z0-9-]+`,
}

// supportedTypes are the shape types the emulator's validator understands;
// a model that needs another one must be met by teaching the validator first.
var supportedTypes = []string{"structure", "list", "map", "string", "integer", "long", "boolean"}

const modelPath = "data/ivs-realtime/2020-07-14/service-2.json.gz"

type shapeRef struct {
	Shape string `json:"shape"`
}

type shape struct {
	Type     string              `json:"type"`
	Required []string            `json:"required"`
	Members  map[string]shapeRef `json:"members"`
	Member   *shapeRef           `json:"member"`
	Key      *shapeRef           `json:"key"`
	Value    *shapeRef           `json:"value"`
	Min      *json.Number        `json:"min"`
	Max      *json.Number        `json:"max"`
	Pattern  string              `json:"pattern"`
	Enum     []string            `json:"enum"`
}

type model struct {
	Operations map[string]struct {
		Input *shapeRef `json:"input"`
	} `json:"operations"`
	Shapes map[string]*shape `json:"shapes"`
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("modelgen: ")
	modelFile := flag.String("model", "", "botocore service-2.json or .json.gz (default: the installed botocore's)")
	out := flag.String("o", "model_gen.go", "output file")
	flag.Parse()

	if *modelFile == "" {
		dir, err := botocoreDir()
		if err != nil {
			log.Fatal(err)
		}
		*modelFile = filepath.Join(dir, filepath.FromSlash(modelPath))
	}
	m, err := readModel(*modelFile)
	if err != nil {
		log.Fatal(err)
	}
	src, err := generate(m)
	if err != nil {
		log.Fatalf("%s: %v", *modelFile, err)
	}
	if err := os.WriteFile(*out, src, 0o644); err != nil {
		log.Fatal(err)
	}
}

func botocoreDir() (string, error) {
	out, err := exec.Command("python3", "-c", "import botocore,os;print(os.path.dirname(botocore.__file__))").Output()
	if err != nil {
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			err = fmt.Errorf("%v: %s", err, bytes.TrimSpace(exitErr.Stderr))
		}
		return "", fmt.Errorf("locating botocore (pip install botocore, or pass -model): %v", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// readModel reads a model file, gunzipping it if it is compressed.
func readModel(name string) (*model, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	if bytes.HasPrefix(data, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("%s: %v", name, err)
		}
		if data, err = io.ReadAll(zr); err != nil {
			return nil, fmt.Errorf("%s: %v", name, err)
		}
	}
	var m model
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	return &m, nil
}

func generate(m *model) ([]byte, error) {
	inputs := make(map[string]string)
	reached := make(map[string]bool)
	var reach func(name string) error
	reach = func(name string) error {
		if reached[name] {
			return nil
		}
		s, ok := m.Shapes[name]
		if !ok {
			return fmt.Errorf("shape %s is not in the model", name)
		}
		if !slices.Contains(supportedTypes, s.Type) {
			return fmt.Errorf("shape %s has type %q, which the validator does not support", name, s.Type)
		}
		reached[name] = true
		var refs []string
		for _, ref := range s.Members {
			refs = append(refs, ref.Shape)
		}
		for _, ref := range []*shapeRef{s.Member, s.Key, s.Value} {
			if ref != nil {
				refs = append(refs, ref.Shape)
			}
		}
		for _, r := range refs {
			if err := reach(r); err != nil {
				return err
			}
		}
		return nil
	}
	for _, op := range operations {
		o, ok := m.Operations[op]
		if !ok || o.Input == nil {
			return nil, fmt.Errorf("operation %s has no input shape", op)
		}
		inputs[op] = o.Input.Shape
		if err := reach(o.Input.Shape); err != nil {
			return nil, err
		}
	}

	var b bytes.Buffer
	b.WriteString("// Code generated by modelgen; DO NOT EDIT.\n\npackage emulator\n\n")
	b.WriteString("// operationInputs maps each emulated operation to its input shape.\n")
	b.WriteString("var operationInputs = map[string]string{\n")
	for _, op := range slices.Sorted(maps.Keys(inputs)) {
		fmt.Fprintf(&b, "%q: %q,\n", op, inputs[op])
	}
	b.WriteString("}\n\n")
	b.WriteString("// shapeRules holds the constraints of every shape reachable from\n// operationInputs; members are sorted by name.\n")
	b.WriteString("var shapeRules = map[string]*shapeRule{\n")
	for _, name := range slices.Sorted(maps.Keys(reached)) {
		if err := writeShape(&b, name, m.Shapes[name]); err != nil {
			return nil, err
		}
	}
	b.WriteString("}\n")
	return format.Source(b.Bytes())
}

func writeShape(b *bytes.Buffer, name string, s *shape) error {
	fields := []string{"typ: " + strconv.Quote(s.Type)}
	for _, ref := range []struct {
		field string
		ref   *shapeRef
	}{{"member", s.Member}, {"key", s.Key}, {"value", s.Value}} {
		if ref.ref != nil {
			fields = append(fields, ref.field+": "+strconv.Quote(ref.ref.Shape))
		}
	}
	for _, bound := range []struct {
		field string
		n     *json.Number
	}{{"min", s.Min}, {"max", s.Max}} {
		if bound.n == nil {
			continue
		}
		n, err := strconv.ParseInt(bound.n.String(), 10, 64)
		if err != nil {
			return fmt.Errorf("shape %s: %s %s is not an integer", name, bound.field, bound.n)
		}
		fields = append(fields, fmt.Sprintf("%s: new(int64(%d))", bound.field, n))
	}
	if p := s.Pattern; p != "" {
		if fixed, ok := patternFixes[p]; ok {
			p = fixed
		}
		// The validator full-matches; fail here rather than at run time if
		// Go's RE2 syntax cannot express a pattern.
		if _, err := regexp.Compile("^(?:" + p + ")$"); err != nil {
			return fmt.Errorf("shape %s: %v", name, err)
		}
		fields = append(fields, "pattern: "+goString(p))
	}
	if len(s.Enum) > 0 {
		quoted := make([]string, len(s.Enum))
		for i, e := range s.Enum {
			quoted[i] = strconv.Quote(e)
		}
		fields = append(fields, "enum: []string{"+strings.Join(quoted, ", ")+"}")
	}
	for _, r := range s.Required {
		if _, ok := s.Members[r]; !ok {
			return fmt.Errorf("shape %s requires %s, which is not a member", name, r)
		}
	}
	if s.Type != "structure" {
		fmt.Fprintf(b, "%q: {%s},\n", name, strings.Join(fields, ", "))
		return nil
	}
	fmt.Fprintf(b, "%q: {\n%s,\nmembers: []memberRule{\n", name, strings.Join(fields, ",\n"))
	for _, m := range slices.Sorted(maps.Keys(s.Members)) {
		req := ""
		if slices.Contains(s.Required, m) {
			req = ", required: true"
		}
		fmt.Fprintf(b, "{name: %q, shape: %q%s},\n", m, s.Members[m].Shape, req)
	}
	b.WriteString("},\n},\n")
	return nil
}

// goString quotes s as a raw string literal when it can, so that patterns
// read as they do in the model.
func goString(s string) string {
	if strconv.CanBackquote(s) {
		return "`" + s + "`"
	}
	return strconv.Quote(s)
}
