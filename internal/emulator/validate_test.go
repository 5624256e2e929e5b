package emulator

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const (
	testStageARN     = "arn:aws:ivs:us-east-1:123456789012:stage/AbCdEf123456"
	testPublicKeyARN = "arn:aws:ivs:us-east-1:123456789012:public-key/AbCdEf123456"
	testSessionID    = "st-AbCdEf1234567"
	testPEM          = "-----BEGIN PUBLIC KEY-----\nMHYwEAYHKoZIzj0CAQYFK4EEACIDYgAE\nAbCd+/==\n-----END PUBLIC KEY-----\n"
)

func validationMessage(value, path, constraint string) string {
	return fmt.Sprintf("1 validation error detected: Value %s at '%s' failed to satisfy constraint: %s", value, path, constraint)
}

// manyTags returns a tags object with n entries and its rendering in messages.
func manyTags(n int) (input, rendered string) {
	entries := make([]string, n)
	for i := range entries {
		entries[i] = fmt.Sprintf(`"t%02d":"v"`, i)
	}
	obj := "{" + strings.Join(entries, ",") + "}"
	return obj, "'" + obj + "'"
}

var (
	tags51, tags51Value = manyTags(51)
	tags50, _           = manyTags(50)
	configs13           = "[" + strings.Repeat("{},", 12) + "{}]"
)

// validateTests are requests and the message validateInput answers them
// with, "" for none.
var validateTests = []struct {
	name, op, input, want string
}{
	// Valid requests.
	{"full CreateStage", "CreateStage", `{
		"name": "my-stage_1",
		"participantTokenConfigurations": [{"duration": 20160, "userId": "u", "attributes": {"a": "b"}, "capabilities": ["PUBLISH", "SUBSCRIBE"]}],
		"tags": {"team": "video"},
		"autoParticipantRecordingConfiguration": {
			"storageConfigurationArn": "arn:aws:ivs:us-east-1:123456789012:storage-configuration/AbCd",
			"mediaTypes": ["AUDIO_ONLY"],
			"thumbnailConfiguration": {"targetIntervalSeconds": 60, "storage": ["SEQUENTIAL", "LATEST"], "recordingMode": "INTERVAL"},
			"recordingReconnectWindowSeconds": 0,
			"hlsConfiguration": {"targetSegmentDurationSeconds": 6},
			"recordParticipantReplicas": true
		}
	}`, ""},
	{"empty CreateStage", "CreateStage", `{}`, ""},
	{"empty storage ARN", "UpdateStage", `{"arn": "` + testStageARN + `", "autoParticipantRecordingConfiguration": {"storageConfigurationArn": ""}}`, ""},
	{"ListStages bounds", "ListStages", `{"maxResults": 100, "nextToken": "YWJj+/="}`, ""},
	{"optional null", "ListStages", `{"maxResults": null}`, ""},
	{"unknown members", "GetStage", `{"arn": "` + testStageARN + `", "extra": {"x": [1.5]}}`, ""},
	{"GetParticipant", "GetParticipant", `{"stageArn": "` + testStageARN + `", "sessionId": "` + testSessionID + `", "participantId": "p-1"}`, ""},
	{"ListParticipants filters", "ListParticipants", `{"stageArn": "` + testStageARN + `", "sessionId": "` + testSessionID + `", "filterByPublished": false, "filterByState": "CONNECTED", "filterByRecordingState": "ACTIVE", "maxResults": 1}`, ""},
	{"ImportPublicKey", "ImportPublicKey", `{"publicKeyMaterial": ` + jsonString(testPEM) + `, "name": "key"}`, ""},
	{"DeletePublicKey", "DeletePublicKey", `{"arn": "` + testPublicKeyARN + `"}`, ""},
	{"StartParticipantReplication", "StartParticipantReplication", `{"sourceStageArn": "` + testStageARN + `", "destinationStageArn": "` + testStageARN + `", "participantId": "p", "reconnectWindowSeconds": 300, "attributes": {"k": "v"}}`, ""},
	{"TagResource on a stage", "TagResource", `{"resourceArn": "` + testStageARN + `", "tags": ` + tags50 + `}`, ""},
	{"UntagResource", "UntagResource", `{"resourceArn": "` + testPublicKeyARN + `", "tagKeys": ["a", "b"]}`, ""},
	{"ListTagsForResource", "ListTagsForResource", `{"resourceArn": "` + testStageARN + `"}`, ""},
	{"length in characters", "CreateParticipantToken", `{"stageArn": "` + testStageARN + `", "userId": "` + strings.Repeat("é", 128) + `"}`, ""},

	// Required members.
	{"missing arn", "GetStage", `{}`,
		validationMessage("null", "arn", "Member must not be null")},
	{"null arn", "GetStage", `{"arn": null}`,
		validationMessage("null", "arn", "Member must not be null")},
	{"missing stageArn", "CreateParticipantToken", `{"duration": 60}`,
		validationMessage("null", "stageArn", "Member must not be null")},
	{"first missing by name", "GetParticipant", `{}`,
		validationMessage("null", "participantId", "Member must not be null")},
	{"missing tagKeys", "UntagResource", `{"resourceArn": "` + testStageARN + `"}`,
		validationMessage("null", "tagKeys", "Member must not be null")},
	{"missing nested", "CreateStage", `{"autoParticipantRecordingConfiguration": {}}`,
		validationMessage("null", "autoParticipantRecordingConfiguration.storageConfigurationArn", "Member must not be null")},

	// Patterns, matched in full.
	{"bad name", "CreateStage", `{"name": "bad name!"}`,
		validationMessage("'bad name!'", "name", "Member must satisfy regular expression pattern: [a-zA-Z0-9-_]*")},
	{"ARN with prefix", "GetStage", `{"arn": "x` + testStageARN + `"}`,
		validationMessage("'x"+testStageARN+"'", "arn", "Member must satisfy regular expression pattern: arn:aws:ivs:[a-z0-9-]+:[0-9]+:stage/[a-zA-Z0-9-]+")},
	{"ARN with newline", "GetStage", `{"arn": "` + testStageARN + `\n"}`,
		validationMessage("'"+testStageARN+"\n'", "arn", "Member must satisfy regular expression pattern: arn:aws:ivs:[a-z0-9-]+:[0-9]+:stage/[a-zA-Z0-9-]+")},
	{"resource ARN without ID", "ListTagsForResource", `{"resourceArn": "arn:aws:ivs:us-east-1:123456789012:stage"}`,
		validationMessage("'arn:aws:ivs:us-east-1:123456789012:stage'", "resourceArn", "Member must satisfy regular expression pattern: arn:aws:ivs:[a-z0-9-]+:[0-9]+:[a-z-]+/[a-zA-Z0-9-]+")},
	{"bad key material", "ImportPublicKey", `{"publicKeyMaterial": "not a key"}`,
		validationMessage("'not a key'", "publicKeyMaterial", `Member must satisfy regular expression pattern: .*-----BEGIN PUBLIC KEY-----\r?\n([a-zA-Z0-9+/=\r\n]+)\r?\n-----END PUBLIC KEY-----(\r?\n)?.*`)},

	// Bounds.
	{"name too long", "CreateStage", `{"name": "` + strings.Repeat("a", 129) + `"}`,
		validationMessage("'"+strings.Repeat("a", 129)+"'", "name", "Member must have length less than or equal to 128")},
	{"characters too many", "CreateParticipantToken", `{"stageArn": "` + testStageARN + `", "userId": "` + strings.Repeat("é", 129) + `"}`,
		validationMessage("'"+strings.Repeat("é", 129)+"'", "userId", "Member must have length less than or equal to 128")},
	{"empty resource ARN", "TagResource", `{"resourceArn": "", "tags": {}}`,
		validationMessage("''", "resourceArn", "Member must have length greater than or equal to 1")},
	{"short session ID", "GetStageSession", `{"stageArn": "` + testStageARN + `", "sessionId": "st-abc"}`,
		validationMessage("'st-abc'", "sessionId", "Member must have length greater than or equal to 16")},
	{"maxResults 0", "ListStages", `{"maxResults": 0}`,
		validationMessage("'0'", "maxResults", "Member must have value greater than or equal to 1")},
	{"maxResults 101", "ListStages", `{"maxResults": 101}`,
		validationMessage("'101'", "maxResults", "Member must have value less than or equal to 100")},
	{"maxResults beyond int32", "ListStages", `{"maxResults": 3000000000}`,
		validationMessage("'3000000000'", "maxResults", "Member must have value less than or equal to 100")},
	{"maxResults beyond int64", "ListStages", `{"maxResults": -99999999999999999999}`,
		validationMessage("'-99999999999999999999'", "maxResults", "Member must have value greater than or equal to 1")},
	{"reconnectWindowSeconds 301", "StartParticipantReplication", `{"sourceStageArn": "` + testStageARN + `", "destinationStageArn": "` + testStageARN + `", "participantId": "p", "reconnectWindowSeconds": 301}`,
		validationMessage("'301'", "reconnectWindowSeconds", "Member must have value less than or equal to 300")},
	{"13 token configurations", "CreateStage", `{"participantTokenConfigurations": ` + configs13 + `}`,
		validationMessage("'"+configs13+"'", "participantTokenConfigurations", "Member must have length less than or equal to 12")},
	{"51 tags", "TagResource", `{"resourceArn": "` + testStageARN + `", "tags": ` + tags51 + `}`,
		validationMessage(tags51Value, "tags", "Member must have length less than or equal to 50")},
	{"empty tag key", "TagResource", `{"resourceArn": "` + testStageARN + `", "tags": {"": "v"}}`,
		validationMessage("''", "tags", "Map keys must satisfy constraint: [Member must have length greater than or equal to 1]")},
	{"tag value too long", "CreateStage", `{"tags": {"k": "` + strings.Repeat("v", 257) + `"}}`,
		validationMessage("'"+strings.Repeat("v", 257)+"'", "tags.k", "Member must have length less than or equal to 256")},
	{"empty tag key in list", "UntagResource", `{"resourceArn": "` + testStageARN + `", "tagKeys": ["a", ""]}`,
		validationMessage("''", "tagKeys.2.member", "Member must have length greater than or equal to 1")},

	// Enums.
	{"capability ADMIN", "CreateParticipantToken", `{"stageArn": "` + testStageARN + `", "capabilities": ["ADMIN"]}`,
		validationMessage("'ADMIN'", "capabilities.1.member", "Member must satisfy enum value set: [PUBLISH, SUBSCRIBE]")},
	{"bad state filter", "ListParticipants", `{"stageArn": "` + testStageARN + `", "sessionId": "` + testSessionID + `", "filterByState": "GONE"}`,
		validationMessage("'GONE'", "filterByState", "Member must satisfy enum value set: [CONNECTED, DISCONNECTED]")},

	// JSON types.
	{"string maxResults", "ListStages", `{"maxResults": "10"}`,
		validationMessage("'10'", "maxResults", "Member must be an integer")},
	{"fraction duration", "CreateParticipantToken", `{"stageArn": "` + testStageARN + `", "duration": 1.5}`,
		validationMessage("'1.5'", "duration", "Member must be an integer")},
	{"exponent maxResults", "ListStages", `{"maxResults": 1e2}`,
		validationMessage("'1e2'", "maxResults", "Member must be an integer")},
	{"object capabilities", "CreateParticipantToken", `{"stageArn": "` + testStageARN + `", "capabilities": {"PUBLISH": true}}`,
		validationMessage(`'{"PUBLISH":true}'`, "capabilities", "Member must be a list")},
	{"number name", "CreateStage", `{"name": 5}`,
		validationMessage("'5'", "name", "Member must be a string")},
	{"string boolean", "ListParticipants", `{"stageArn": "` + testStageARN + `", "sessionId": "` + testSessionID + `", "filterByPublished": "yes"}`,
		validationMessage("'yes'", "filterByPublished", "Member must be a boolean")},
	{"list structure", "CreateStage", `{"autoParticipantRecordingConfiguration": ["<x>"]}`,
		validationMessage(`'["<x>"]'`, "autoParticipantRecordingConfiguration", "Member must be an object")},
	{"list map", "CreateStage", `{"tags": ["a"]}`,
		validationMessage(`'["a"]'`, "tags", "Member must be an object")},
	{"number tag value", "CreateStage", `{"tags": {"k": 1}}`,
		validationMessage("'1'", "tags.k", "Member must be a string")},
	{"null tag value", "CreateStage", `{"tags": {"k": null}}`,
		validationMessage("null", "tags.k", "Member must not be null")},
	{"null capability", "CreateParticipantToken", `{"stageArn": "` + testStageARN + `", "capabilities": [null]}`,
		validationMessage("null", "capabilities.1.member", "Member must not be null")},

	// Nested paths.
	{"first configuration", "CreateStage", `{"participantTokenConfigurations": [{"duration": 20161}]}`,
		validationMessage("'20161'", "participantTokenConfigurations.1.member.duration", "Member must have value less than or equal to 20160")},
	{"second configuration", "CreateStage", `{"participantTokenConfigurations": [{}, {"capabilities": ["PUBLISH", "OWN"]}]}`,
		validationMessage("'OWN'", "participantTokenConfigurations.2.member.capabilities.2.member", "Member must satisfy enum value set: [PUBLISH, SUBSCRIBE]")},
	{"thumbnail storage", "UpdateStage", `{"arn": "` + testStageARN + `", "autoParticipantRecordingConfiguration": {"storageConfigurationArn": "", "thumbnailConfiguration": {"storage": ["LATEST", "ALL"]}}}`,
		validationMessage("'ALL'", "autoParticipantRecordingConfiguration.thumbnailConfiguration.storage.2.member", "Member must satisfy enum value set: [SEQUENTIAL, LATEST]")},
}

// jsonString quotes s as a JSON string.
func jsonString(s string) string {
	b, err := json.Marshal(s)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func decodeTestInput(t testing.TB, input string) map[string]any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(input))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("decoding %s: %v", input, err)
	}
	return m
}

func TestValidateInput(t *testing.T) {
	for _, tt := range validateTests {
		t.Run(tt.name, func(t *testing.T) {
			err := validateInput(tt.op, decodeTestInput(t, tt.input))
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("validateInput(%s) = %v, want nil", tt.op, err)
			case tt.want == "":
			case err == nil:
				t.Fatalf("validateInput(%s) = nil, want %q", tt.op, tt.want)
			case err.Type != errValidation || err.Message != tt.want:
				t.Fatalf("validateInput(%s) = %s: %q\nwant %s: %q", tt.op, err.Type, err.Message, errValidation, tt.want)
			}
		})
	}
}

func TestValidateInputNilInput(t *testing.T) {
	want := validationMessage("null", "arn", "Member must not be null")
	if err := validateInput("GetStage", nil); err == nil || err.Message != want {
		t.Errorf("validateInput(GetStage, nil) = %v, want %q", err, want)
	}
}

func TestValidateInputUnknownOperation(t *testing.T) {
	err := validateInput("LaunchRocket", map[string]any{})
	if err == nil || err.Type != errInternal {
		t.Errorf("validateInput(LaunchRocket) = %v, want an %s", err, errInternal)
	}
}

func TestShapeRulesConsistent(t *testing.T) {
	check := func(from, shape string) {
		if shape != "" && shapeRules[shape] == nil {
			t.Errorf("%s refers to missing shape %q", from, shape)
		}
	}
	for op, shape := range operationInputs {
		check(op, shape)
	}
	for name, r := range shapeRules {
		for _, m := range r.members {
			check(name, m.shape)
		}
		check(name, r.member)
		check(name, r.key)
		check(name, r.value)
	}
}

func TestPatternsCompile(t *testing.T) {
	res, err := compilePatterns()
	if err != nil {
		t.Fatal(err)
	}
	for name, r := range shapeRules {
		if (r.pattern != "") != (res[name] != nil) {
			t.Errorf("shape %s: pattern %q, compiled %v", name, r.pattern, res[name])
		}
	}
	if len(res) == 0 {
		t.Error("no patterns compiled")
	}
}

// TestModelGenUpToDate checks that model_gen.go is what modelgen makes of
// the installed botocore's model.
func TestModelGenUpToDate(t *testing.T) {
	err := exec.Command("python3", "-c", "import botocore").Run()
	requireTool(t, err == nil, "botocore (python3 -c 'import botocore')")
	gen := filepath.Join(t.TempDir(), "model_gen.go")
	if out, err := exec.Command("go", "run", "./modelgen", "-o", gen).CombinedOutput(); err != nil {
		t.Fatalf("go run ./modelgen: %v\n%s", err, out)
	}
	got, err := os.ReadFile(gen)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("model_gen.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Error("model_gen.go is out of date; run go generate ./internal/emulator")
	}
}

func FuzzValidateInput(f *testing.F) {
	for _, tt := range validateTests {
		f.Add([]byte(tt.input))
	}
	ops := slices.Sorted(maps.Keys(operationInputs))
	f.Fuzz(func(t *testing.T, data []byte) {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.UseNumber()
		var input map[string]any
		if err := dec.Decode(&input); err != nil {
			return
		}
		for _, op := range ops {
			err := validateInput(op, input)
			if err != nil && (err.Type != errValidation || !strings.HasPrefix(err.Message, "1 validation error detected: Value ")) {
				t.Errorf("validateInput(%s, %s) = %v", op, data, err)
			}
		}
	})
}
