package emulator

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ivsrealtime"
)

// rawPost posts body to the emulator with the given Content-Type ("" for
// none) and returns the status, the x-amzn-ErrorType header and the body.
func (env *testEnv) rawPost(t *testing.T, path, contentType, body string) (int, string, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, env.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header.Get("x-amzn-ErrorType"), raw
}

func TestControlRequiresJSON(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, quiet())
	stage := env.newStage(t, "csrf")
	tok, err := env.ivs.CreateParticipantToken(ctx(t), &ivsrealtime.CreateParticipantTokenInput{StageArn: aws.String(stage)})
	if err != nil {
		t.Fatalf("CreateParticipantToken: %v", err)
	}
	join := `{"token":"` + *tok.ParticipantToken.Token + `"}`

	// What a web page can send cross-site without a CORS preflight, and
	// what is not JSON for other reasons.
	refused := []string{
		"",
		"text/plain",
		"text/plain; charset=utf-8",
		"application/x-www-form-urlencoded",
		"multipart/form-data; boundary=x",
		"text/json",
		"application/json-seq",
		"application/json; charset", // unparsable
	}
	for _, route := range controlRoutes {
		for _, ct := range refused {
			status, typ, raw := env.rawPost(t, route, ct, join)
			if status != http.StatusUnsupportedMediaType || typ != errUnsupportedMediaType {
				t.Errorf("POST %s with Content-Type %q: status %d, type %q; want 415 %s", route, ct, status, typ, errUnsupportedMediaType)
				continue
			}
			var body struct {
				Message string `json:"message"`
			}
			if err := json.Unmarshal(raw, &body); err != nil || !strings.Contains(body.Message, "Content-Type: application/json") {
				t.Errorf("POST %s with Content-Type %q: body %s, want a JSON error naming Content-Type: application/json", route, ct, raw)
			}
		}
	}
	// None of the refused requests may have done anything.
	st := env.state(t)
	if len(st.Stages) != 1 || len(st.Stages[0].Sessions) != 0 {
		t.Fatalf("after refused requests: stages %+v, want the one stage with nobody ever joined", st.Stages)
	}

	// A browser sends application/json cross-site only after a preflight
	// that allows it; the emulator must not.
	req, err := http.NewRequest(http.MethodOptions, env.url+"/_emulator/reset", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Origin", "https://example.com")
	req.Header.Set("Access-Control-Request-Method", "POST")
	req.Header.Set("Access-Control-Request-Headers", "content-type")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("preflight: %v", err)
	}
	resp.Body.Close()
	if origin := resp.Header.Get("Access-Control-Allow-Origin"); resp.StatusCode < 300 || origin != "" {
		t.Errorf("preflight of a JSON POST to /_emulator/reset: status %d, Access-Control-Allow-Origin %q; want it refused", resp.StatusCode, origin)
	}

	for _, ct := range []string{"application/json", "application/json; charset=utf-8", "Application/JSON"} {
		if status, _, raw := env.rawPost(t, "/_emulator/events", ct, `{"delayMs":1}`); status != http.StatusOK {
			t.Errorf("POST /_emulator/events with Content-Type %q: status %d %s, want 200", ct, status, raw)
		}
	}
	if status, _, raw := env.rawPost(t, "/_emulator/participants/join", "application/json; charset=utf-8", join); status != http.StatusOK {
		t.Fatalf("join with Content-Type application/json; charset=utf-8: status %d %s, want 200", status, raw)
	}
	if status, _, raw := env.rawPost(t, "/_emulator/reset", "application/json", ""); status != http.StatusOK {
		t.Fatalf("reset with an empty JSON-typed body: status %d %s, want 200", status, raw)
	}
	if st := env.state(t); len(st.Stages) != 0 {
		t.Errorf("%d stages after reset, want 0", len(st.Stages))
	}
}
