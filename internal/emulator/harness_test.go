package emulator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ivsrealtime"
	"github.com/aws/aws-sdk-go-v2/service/ivsrealtime/types"
	"github.com/aws/smithy-go"
)

// testEnv is one emulator served on loopback, with a real AWS SDK client
// pointed at it.
type testEnv struct {
	emu *Emulator
	url string
	ivs *ivsrealtime.Client
}

// quiet is a configuration without quotas, so that tests which are not about
// throttling are not throttled.
func quiet() Config {
	c := DefaultConfig()
	c.Quotas = nil
	return c
}

func newTestEnv(t *testing.T, cfg Config) *testEnv {
	t.Helper()
	emu, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	srv := httptest.NewServer(emu.Handler())
	t.Cleanup(func() {
		srv.Close()
		emu.Close()
	})
	return &testEnv{emu: emu, url: srv.URL, ivs: newClient(srv.URL)}
}

// newClient returns an SDK client for the emulator at url, with dummy
// credentials and without SDK retries, so tests see each error as it is.
func newClient(url string) *ivsrealtime.Client {
	return ivsrealtime.New(ivsrealtime.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(url),
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDTEST", "secret", ""),
		Retryer:      aws.NopRetryer{},
	})
}

// newRetryingClient returns a client with the SDK's standard retries.
func newRetryingClient(url string) *ivsrealtime.Client {
	return ivsrealtime.New(ivsrealtime.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(url),
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDTEST", "secret", ""),
		Retryer:      retry.NewStandard(),
	})
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// apiErrorOf returns the smithy error code and message of err, failing the
// test when err is not an API error.
func apiErrorOf(t *testing.T, err error) (code, message string) {
	t.Helper()
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		t.Fatalf("want an API error, got %v", err)
	}
	return ae.ErrorCode(), errorMessage(err)
}

// errorMessage returns the text of an API error. For the errors the model
// declares, the Go SDK puts the text only in ExceptionMessage (the model's
// member) and leaves ErrorMessage() empty.
func errorMessage(err error) string {
	var (
		validation *types.ValidationException
		notFound   *types.ResourceNotFoundException
		conflict   *types.ConflictException
		quota      *types.ServiceQuotaExceededException
		denied     *types.AccessDeniedException
		internal   *types.InternalServerException
		pending    *types.PendingVerification
		ae         smithy.APIError
	)
	switch {
	case errors.As(err, &validation):
		return aws.ToString(validation.ExceptionMessage)
	case errors.As(err, &notFound):
		return aws.ToString(notFound.ExceptionMessage)
	case errors.As(err, &conflict):
		return aws.ToString(conflict.ExceptionMessage)
	case errors.As(err, &quota):
		return aws.ToString(quota.ExceptionMessage)
	case errors.As(err, &denied):
		return aws.ToString(denied.ExceptionMessage)
	case errors.As(err, &internal):
		return aws.ToString(internal.ExceptionMessage)
	case errors.As(err, &pending):
		return aws.ToString(pending.ExceptionMessage)
	case errors.As(err, &ae):
		return ae.ErrorMessage()
	}
	return err.Error()
}

// control calls the /_emulator/ API, declaring POST bodies as JSON, and
// decodes the answer into out (may be nil). It returns the HTTP status.
func (env *testEnv) control(t *testing.T, method, path string, in, out any) int {
	t.Helper()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, env.url+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if method == http.MethodPost {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: decoding %q: %v", method, path, raw, err)
		}
	}
	return resp.StatusCode
}

// joinStage joins with token and fails the test unless that works.
func (env *testEnv) joinStage(t *testing.T, token string) joinResult {
	t.Helper()
	var res joinResult
	if status := env.control(t, http.MethodPost, "/_emulator/participants/join", map[string]string{"token": token}, &res); status != http.StatusOK {
		t.Fatalf("join: status %d", status)
	}
	return res
}

// act publishes, unpublishes or makes a participant leave ("publish",
// "unpublish", "leave") and returns the HTTP status.
func (env *testEnv) act(t *testing.T, action, stageArn, participantID string) int {
	t.Helper()
	return env.control(t, http.MethodPost, "/_emulator/participants/"+action,
		map[string]string{"stageArn": stageArn, "participantId": participantID}, nil)
}

// host creates a stage and a publishing participant in it.
func (env *testEnv) host(t *testing.T, name string) (stageArn, participantID string) {
	t.Helper()
	out, err := env.ivs.CreateStage(ctx(t), &ivsrealtime.CreateStageInput{Name: aws.String(name)})
	if err != nil {
		t.Fatalf("CreateStage: %v", err)
	}
	stageArn = *out.Stage.Arn
	tok, err := env.ivs.CreateParticipantToken(ctx(t), &ivsrealtime.CreateParticipantTokenInput{StageArn: aws.String(stageArn), UserId: aws.String("host-" + name)})
	if err != nil {
		t.Fatalf("CreateParticipantToken: %v", err)
	}
	j := env.joinStage(t, *tok.ParticipantToken.Token)
	if status := env.act(t, "publish", stageArn, j.ParticipantID); status != http.StatusOK {
		t.Fatalf("publish: status %d", status)
	}
	return stageArn, j.ParticipantID
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
