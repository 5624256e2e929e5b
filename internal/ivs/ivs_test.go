package ivs_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/stagefleet/stagefleet/internal/emulator"
	"github.com/stagefleet/stagefleet/internal/ivs"
	"github.com/stagefleet/stagefleet/internal/token"
)

const (
	stageArnPrefix = "arn:aws:ivs:us-east-1:123456789012:stage/"
	keyArnPrefix   = "arn:aws:ivs:us-east-1:123456789012:public-key/"
	unknownStage   = stageArnPrefix + "AAAAAAAAAAAA"
)

// noQuotas turns the client's limiter off: a map without entries has no
// limiters (nil would mean DefaultQuotas).
var noQuotas = map[string]float64{}

// env is an emulator on an httptest server.
type env struct {
	t   *testing.T
	emu *emulator.Emulator
	url string
}

// quiet is an emulator configuration without TPS quotas, for tests that are
// not about throttling.
func quiet() emulator.Config {
	c := emulator.DefaultConfig()
	c.Quotas = nil
	return c
}

func newEnv(t *testing.T, cfg emulator.Config) *env {
	t.Helper()
	emu, err := emulator.New(cfg)
	if err != nil {
		t.Fatalf("emulator.New: %v", err)
	}
	srv := httptest.NewServer(emu.Handler())
	t.Cleanup(func() {
		srv.Close()
		emu.Close()
	})
	return &env{t: t, emu: emu, url: srv.URL}
}

// client returns an adapter pointed at the emulator. Tests not about retries
// pass maxAttempts 0 (the default): besides 5xx and throttling, the SDK
// retries a read on a connection the transport closed under it
// (aws/aws-sdk-go-v2#2737), which happens now and then on loopback too.
func (e *env) client(quotas map[string]float64, maxAttempts int) *ivs.Client {
	return ivs.New(ivs.Options{
		Config: aws.Config{
			Region:      "us-east-1",
			Credentials: credentials.NewStaticCredentialsProvider("a", "b", ""),
		},
		Endpoint:    e.url,
		Quotas:      quotas,
		MaxAttempts: maxAttempts,
	})
}

// control calls the emulator's control API and decodes its answer into out.
func (e *env) control(path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	resp, err := http.Post(e.url+"/_emulator/"+path, "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var msg struct {
			Message string `json:"message"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&msg)
		return fmt.Errorf("%s: %s: %s", path, resp.Status, msg.Message)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

type joined struct {
	ParticipantID string `json:"participantId"`
	StageArn      string `json:"stageArn"`
	SessionID     string `json:"sessionId"`
}

func (e *env) join(tok string) joined {
	e.t.Helper()
	var j joined
	if err := e.control("participants/join", map[string]string{"token": tok}, &j); err != nil {
		e.t.Fatalf("join: %v", err)
	}
	return j
}

func (e *env) publish(stageArn, participantID string) {
	e.t.Helper()
	if err := e.control("participants/publish", map[string]string{"stageArn": stageArn, "participantId": participantID}, nil); err != nil {
		e.t.Fatalf("publish: %v", err)
	}
}

// fault makes a share rate of op's calls fail with errorType.
func (e *env) fault(op, errorType string, rate float64) {
	e.t.Helper()
	e.setFault(map[string]any{"operation": op, "errorRate": rate, "errorType": errorType})
}

func (e *env) setFault(f map[string]any) {
	e.t.Helper()
	if err := e.control("faults", f, nil); err != nil {
		e.t.Fatalf("set fault %v: %v", f, err)
	}
}

// host joins stage with a token from c.Issue and publishes.
func (e *env) host(ctx context.Context, c *ivs.Client, stageArn string, publish bool) joined {
	e.t.Helper()
	tok, err := c.Issue(ctx, token.Request{StageArn: stageArn, UserID: "host-1", Publish: true, Subscribe: true, TTL: time.Hour})
	if err != nil {
		e.t.Fatalf("Issue: %v", err)
	}
	j := e.join(tok.Token)
	if publish {
		e.publish(stageArn, j.ParticipantID)
	}
	return j
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustStage(t *testing.T, ctx context.Context, c *ivs.Client, name string) ivs.Stage {
	t.Helper()
	s, err := c.CreateStage(ctx, name, nil)
	if err != nil {
		t.Fatalf("CreateStage %s: %v", name, err)
	}
	return s
}

func p384PEM(t *testing.T) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func TestStageLifecycle(t *testing.T) {
	t.Parallel()
	e := newEnv(t, quiet())
	c := e.client(noQuotas, 0)
	ctx := testCtx(t)

	tags := map[string]string{"broadcastId": "b-1", "role": "origin"}
	s, err := c.CreateStage(ctx, "origin-1", tags)
	if err != nil {
		t.Fatalf("CreateStage: %v", err)
	}
	if !strings.HasPrefix(s.Arn, stageArnPrefix) || len(s.Arn) == len(stageArnPrefix) {
		t.Errorf("Arn = %q, want %s<id>", s.Arn, stageArnPrefix)
	}
	if s.Name != "origin-1" {
		t.Errorf("Name = %q, want origin-1", s.Name)
	}
	if !maps.Equal(s.Tags, tags) {
		t.Errorf("Tags = %v, want %v", s.Tags, tags)
	}
	if s.ActiveSessionID != "" {
		t.Errorf("ActiveSessionID = %q of a new stage, want none", s.ActiveSessionID)
	}

	got, err := c.GetStage(ctx, s.Arn)
	if err != nil {
		t.Fatalf("GetStage: %v", err)
	}
	if got.Arn != s.Arn || got.Name != "origin-1" || !maps.Equal(got.Tags, tags) {
		t.Errorf("GetStage = %+v, want %+v", got, s)
	}

	up, err := c.UpdateStage(ctx, s.Arn, "origin-renamed")
	if err != nil {
		t.Fatalf("UpdateStage: %v", err)
	}
	if up.Arn != s.Arn || up.Name != "origin-renamed" {
		t.Errorf("UpdateStage = %+v, want name origin-renamed", up)
	}
	if got, err := c.GetStage(ctx, s.Arn); err != nil || got.Name != "origin-renamed" {
		t.Errorf("GetStage after update = %+v, %v; want name origin-renamed", got, err)
	}

	if err := c.DeleteStage(ctx, s.Arn); err != nil {
		t.Fatalf("DeleteStage: %v", err)
	}
	if _, err := c.GetStage(ctx, s.Arn); !errors.Is(err, ivs.ErrNotFound) {
		t.Errorf("GetStage after delete: %v, want ErrNotFound", err)
	}
	if err := c.DeleteStage(ctx, s.Arn); !errors.Is(err, ivs.ErrNotFound) {
		t.Errorf("DeleteStage twice: %v, want ErrNotFound", err)
	}
}

func TestListStagesPagesAndFilters(t *testing.T) {
	t.Parallel()
	cfg := quiet()
	cfg.MaxStages = 200
	e := newEnv(t, cfg)
	c := e.client(noQuotas, 0)
	ctx := testCtx(t)

	var all, tagged []string
	for i := range 120 {
		tags := map[string]string{"n": fmt.Sprint(i)}
		if i%7 == 3 {
			tags["pool"] = "warm"
		}
		s, err := c.CreateStage(ctx, fmt.Sprintf("stage-%03d", i), tags)
		if err != nil {
			t.Fatalf("CreateStage %d: %v", i, err)
		}
		all = append(all, s.Arn)
		if tags["pool"] == "warm" {
			tagged = append(tagged, s.Arn)
		}
	}

	got, err := c.ListStages(ctx, func(s ivs.Stage) bool { return s.Tags["pool"] == "warm" })
	if err != nil {
		t.Fatalf("ListStages: %v", err)
	}
	if !slices.Equal(arns(got), tagged) {
		t.Errorf("ListStages(warm) = %d stages %v,\nwant %d %v", len(got), arns(got), len(tagged), tagged)
	}
	for _, s := range got {
		if !strings.HasPrefix(s.Name, "stage-") || s.Tags["n"] == "" {
			t.Errorf("listed stage %+v lacks its name or tags", s)
		}
	}
	// 120 stages at 100 a page: the keeper saw both pages.
	if n := e.emu.Snapshot().Counters["ListStages"].Calls; n != 2 {
		t.Errorf("ListStages made %d calls, want 2 (two pages)", n)
	}

	every, err := c.ListStages(ctx, nil)
	if err != nil {
		t.Fatalf("ListStages(nil): %v", err)
	}
	if !slices.Equal(arns(every), all) {
		t.Errorf("ListStages(nil) = %d stages, want all %d in creation order", len(every), len(all))
	}

	none, err := c.ListStages(ctx, func(ivs.Stage) bool { return false })
	if err != nil || len(none) != 0 {
		t.Errorf("ListStages(keep none) = %v, %v; want nothing", none, err)
	}
}

func TestReplicationAndParticipants(t *testing.T) {
	t.Parallel()
	e := newEnv(t, quiet())
	c := e.client(noQuotas, 0)
	ctx := testCtx(t)
	src := mustStage(t, ctx, c, "src")
	dst := mustStage(t, ctx, c, "dst")

	h := e.host(ctx, c, src.Arn, true)
	s, err := c.GetStage(ctx, src.Arn)
	if err != nil {
		t.Fatalf("GetStage: %v", err)
	}
	if s.ActiveSessionID == "" || s.ActiveSessionID != h.SessionID {
		t.Fatalf("ActiveSessionID = %q, want the join's session %q", s.ActiveSessionID, h.SessionID)
	}

	if err := c.StartReplication(ctx, src.Arn, dst.Arn, h.ParticipantID, 12*time.Second); err != nil {
		t.Fatalf("StartReplication: %v", err)
	}
	st := e.emu.Snapshot()
	if len(st.Replications) != 1 || st.Replications[0].ReconnectWindowSeconds != 12 {
		t.Errorf("emulator replications = %+v, want one with reconnect window 12 s", st.Replications)
	}

	reps, err := c.ListReplicas(ctx, src.Arn, h.ParticipantID)
	if err != nil {
		t.Fatalf("ListReplicas: %v", err)
	}
	want := ivs.Replica{ParticipantID: h.ParticipantID, SourceArn: src.Arn, DestArn: dst.Arn, Active: true}
	if len(reps) != 1 || reps[0] != want {
		t.Errorf("ListReplicas = %+v, want [%+v]", reps, want)
	}

	ps, err := c.ListPublishers(ctx, src.Arn, h.SessionID)
	if err != nil {
		t.Fatalf("ListPublishers(src): %v", err)
	}
	wantP := ivs.Participant{ID: h.ParticipantID, UserID: "host-1", Connected: true, Published: true}
	if len(ps) != 1 || ps[0] != wantP {
		t.Errorf("ListPublishers(src) = %+v, want [%+v]", ps, wantP)
	}

	d, err := c.GetStage(ctx, dst.Arn)
	if err != nil || d.ActiveSessionID == "" {
		t.Fatalf("GetStage(dst) = %+v, %v; want an active session (the replica)", d, err)
	}
	ps, err = c.ListPublishers(ctx, dst.Arn, d.ActiveSessionID)
	if err != nil {
		t.Fatalf("ListPublishers(dst): %v", err)
	}
	if len(ps) != 1 || ps[0].ID != h.ParticipantID || !ps[0].Replica || !ps[0].Connected {
		t.Errorf("ListPublishers(dst) = %+v, want the connected replica %s", ps, h.ParticipantID)
	}

	if err := c.StopReplication(ctx, src.Arn, dst.Arn, h.ParticipantID); err != nil {
		t.Fatalf("StopReplication: %v", err)
	}
	reps, err = c.ListReplicas(ctx, src.Arn, h.ParticipantID)
	if err != nil {
		t.Fatalf("ListReplicas after stop: %v", err)
	}
	want.Active = false
	if len(reps) != 1 || reps[0] != want {
		t.Errorf("ListReplicas after stop = %+v, want [%+v] (stopped)", reps, want)
	}
}

func TestIssue(t *testing.T) {
	t.Parallel()
	e := newEnv(t, quiet())
	c := e.client(noQuotas, 0)
	ctx := testCtx(t)
	s := mustStage(t, ctx, c, "issue")

	var iss token.Issuer = c
	before := time.Now()
	tok, err := iss.Issue(ctx, token.Request{
		StageArn:      s.Arn,
		ParticipantID: "ignored-ivs-picks-it",
		UserID:        "viewer-7",
		Attributes:    map[string]string{"role": "viewer"},
		Subscribe:     true,
		TTL:           2 * time.Hour,
	})
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	if tok.Token == "" || tok.ParticipantID == "" || tok.ParticipantID == "ignored-ivs-picks-it" {
		t.Fatalf("Issue = %+v, want a token and the participant id IVS picked", tok)
	}
	if exp := before.Add(2 * time.Hour); tok.ExpiresAt.Before(exp.Add(-5*time.Second)) || tok.ExpiresAt.After(exp.Add(5*time.Second)) {
		t.Errorf("ExpiresAt = %v, want ~%v", tok.ExpiresAt, exp)
	}

	j := e.join(tok.Token)
	if j.ParticipantID != tok.ParticipantID || j.StageArn != s.Arn {
		t.Errorf("joined as %+v, want participant %s on %s", j, tok.ParticipantID, s.Arn)
	}
	// A viewer never publishes: the hosts' list leaves it out.
	ps, err := c.ListPublishers(ctx, s.Arn, j.SessionID)
	if err != nil || len(ps) != 0 {
		t.Errorf("ListPublishers = %+v, %v; want nobody (viewer-7 only watches)", ps, err)
	}
	// Subscribe only: the token carries no PUBLISH capability.
	err = e.control("participants/publish", map[string]string{"stageArn": s.Arn, "participantId": j.ParticipantID}, nil)
	if err == nil || !strings.Contains(err.Error(), "PUBLISH") {
		t.Errorf("publishing with a subscribe-only token: %v, want refused for lack of PUBLISH", err)
	}

	// A TTL under a minute still gets the shortest token IVS makes.
	short, err := c.Issue(ctx, token.Request{StageArn: s.Arn, Publish: true, TTL: 10 * time.Second})
	if err != nil {
		t.Fatalf("Issue(10s): %v", err)
	}
	if d := time.Until(short.ExpiresAt); d < 50*time.Second || d > 65*time.Second {
		t.Errorf("10 s token expires in %v, want ~1 min", d)
	}
}

func TestImportPublicKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t, quiet())
	c := e.client(noQuotas, 0)
	ctx := testCtx(t)

	arn, err := c.ImportPublicKey(ctx, "signing-1", p384PEM(t))
	if err != nil {
		t.Fatalf("ImportPublicKey: %v", err)
	}
	if !strings.HasPrefix(arn, keyArnPrefix) || len(arn) == len(keyArnPrefix) {
		t.Errorf("ARN = %q, want %s<id>", arn, keyArnPrefix)
	}
	keys := e.emu.Snapshot().PublicKeys
	if len(keys) != 1 {
		t.Fatalf("emulator has %d public keys, want 1", len(keys))
	}
	b, _ := json.Marshal(keys[0])
	if !strings.Contains(string(b), arn) || !strings.Contains(string(b), "signing-1") {
		t.Errorf("emulator's key %s, want arn %s named signing-1", b, arn)
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	type call func(t *testing.T, ctx context.Context, e *env) (wantMsg string, err error)
	tests := []struct {
		name      string
		cfg       func(*emulator.Config)
		call      call
		kind      error
		op, code  string
		msgPrefix bool // wantMsg is a prefix of the message, not all of it
	}{
		{
			name: "GetStage unknown",
			call: func(t *testing.T, ctx context.Context, e *env) (string, error) {
				_, err := e.client(noQuotas, 0).GetStage(ctx, unknownStage)
				return "Stage not found: " + unknownStage, err
			},
			kind: ivs.ErrNotFound, op: "GetStage", code: "ResourceNotFoundException",
		},
		{
			name: "StartReplication not publishing",
			call: func(t *testing.T, ctx context.Context, e *env) (string, error) {
				c := e.client(noQuotas, 0)
				src, dst := mustStage(t, ctx, c, "src"), mustStage(t, ctx, c, "dst")
				h := e.host(ctx, c, src.Arn, false)
				err := c.StartReplication(ctx, src.Arn, dst.Arn, h.ParticipantID, 0)
				return h.ParticipantID + " is not publishing", err
			},
			kind: ivs.ErrNotPublishing, op: "StartParticipantReplication", code: "ValidationException",
		},
		{
			name: "StartReplication twice",
			call: func(t *testing.T, ctx context.Context, e *env) (string, error) {
				c := e.client(noQuotas, 0)
				src, dst := mustStage(t, ctx, c, "src"), mustStage(t, ctx, c, "dst")
				h := e.host(ctx, c, src.Arn, true)
				if err := c.StartReplication(ctx, src.Arn, dst.Arn, h.ParticipantID, 0); err != nil {
					t.Fatalf("first StartReplication: %v", err)
				}
				err := c.StartReplication(ctx, src.Arn, dst.Arn, h.ParticipantID, 0)
				return fmt.Sprintf("participant %s is already being replicated from %s to %s", h.ParticipantID, src.Arn, dst.Arn), err
			},
			kind: ivs.ErrConflict, op: "StartParticipantReplication", code: "ConflictException",
		},
		{
			name: "StopReplication unknown",
			call: func(t *testing.T, ctx context.Context, e *env) (string, error) {
				c := e.client(noQuotas, 0)
				src, dst := mustStage(t, ctx, c, "src"), mustStage(t, ctx, c, "dst")
				err := c.StopReplication(ctx, src.Arn, dst.Arn, "nobody")
				return fmt.Sprintf("participant nobody is not being replicated from %s to %s", src.Arn, dst.Arn), err
			},
			kind: ivs.ErrNotFound, op: "StopParticipantReplication", code: "ResourceNotFoundException",
		},
		{
			name: "stage quota",
			cfg:  func(c *emulator.Config) { c.MaxStages = 1 },
			call: func(t *testing.T, ctx context.Context, e *env) (string, error) {
				c := e.client(noQuotas, 0)
				mustStage(t, ctx, c, "first")
				_, err := c.CreateStage(ctx, "second", nil)
				return "Stages per account quota of 1 exceeded", err
			},
			kind: ivs.ErrQuota, op: "CreateStage", code: "ServiceQuotaExceededException",
		},
		{
			name: "bad stage name",
			call: func(t *testing.T, ctx context.Context, e *env) (string, error) {
				_, err := e.client(noQuotas, 0).CreateStage(ctx, "bad name!", nil)
				return "1 validation error detected: Value 'bad name!' at 'name' failed to satisfy constraint:", err
			},
			kind: ivs.ErrValidation, op: "CreateStage", code: "ValidationException", msgPrefix: true,
		},
		{
			name: "public key imported twice",
			call: func(t *testing.T, ctx context.Context, e *env) (string, error) {
				c := e.client(noQuotas, 0)
				key := p384PEM(t)
				arn, err := c.ImportPublicKey(ctx, "k1", key)
				if err != nil {
					t.Fatalf("first ImportPublicKey: %v", err)
				}
				_, err = c.ImportPublicKey(ctx, "k2", key)
				return "public key already imported as " + arn, err
			},
			kind: ivs.ErrConflict, op: "ImportPublicKey", code: "ConflictException",
		},
		{
			name: "injected AccessDeniedException",
			call: func(t *testing.T, ctx context.Context, e *env) (string, error) {
				e.fault("GetStage", "AccessDeniedException", 1)
				_, err := e.client(noQuotas, 0).GetStage(ctx, unknownStage)
				return "injected fault for GetStage", err
			},
			kind: ivs.ErrAccessDenied, op: "GetStage", code: "AccessDeniedException",
		},
		{
			name: "injected InternalServerException, no retries",
			call: func(t *testing.T, ctx context.Context, e *env) (string, error) {
				e.fault("GetStage", "InternalServerException", 1)
				_, err := e.client(noQuotas, 1).GetStage(ctx, unknownStage)
				return "injected fault for GetStage", err
			},
			kind: ivs.ErrUnavailable, op: "GetStage", code: "InternalServerException",
		},
		{
			name: "injected ThrottlingException, no retries",
			call: func(t *testing.T, ctx context.Context, e *env) (string, error) {
				e.fault("CreateParticipantToken", "ThrottlingException", 1)
				_, err := e.client(noQuotas, 1).Issue(ctx, token.Request{StageArn: unknownStage, Subscribe: true, TTL: time.Hour})
				return "injected fault for CreateParticipantToken", err
			},
			kind: ivs.ErrThrottled, op: "CreateParticipantToken", code: "ThrottlingException",
		},
	}
	kinds := []error{ivs.ErrNotFound, ivs.ErrNotPublishing, ivs.ErrConflict, ivs.ErrQuota,
		ivs.ErrThrottled, ivs.ErrValidation, ivs.ErrAccessDenied, ivs.ErrUnavailable}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := quiet()
			if tt.cfg != nil {
				tt.cfg(&cfg)
			}
			e := newEnv(t, cfg)
			wantMsg, err := tt.call(t, testCtx(t), e)
			if err == nil {
				t.Fatal("no error")
			}
			for _, k := range kinds {
				if got, want := errors.Is(err, k), k == tt.kind; got != want {
					t.Errorf("errors.Is(%v, %v) = %v, want %v", err, k, got, want)
				}
			}
			var ie *ivs.Error
			if !errors.As(err, &ie) {
				t.Fatalf("%v (%T) is not an *ivs.Error", err, err)
			}
			if ie.Op != tt.op || ie.Code != tt.code {
				t.Errorf("Op, Code = %q, %q; want %q, %q", ie.Op, ie.Code, tt.op, tt.code)
			}
			if ie.Message == "" {
				t.Errorf("Message is empty")
			}
			if tt.msgPrefix && !strings.HasPrefix(ie.Message, wantMsg) || !tt.msgPrefix && ie.Message != wantMsg {
				t.Errorf("Message = %q, want %q", ie.Message, wantMsg)
			}
			if want := fmt.Sprintf("ivs %s: %s: %s", tt.op, tt.code, ie.Message); err.Error() != want {
				t.Errorf("Error() = %q, want %q", err.Error(), want)
			}
		})
	}
}

// TestRetries: the SDK retries InternalServerException (HTTP 500) up to
// MaxAttempts.
//
// A call fails all of n attempts with probability rate^n. At rate 0.3, 10
// attempts let one of 20 calls fail once in ~8,000 runs (0.5 and 8 attempts,
// once in ~13), and at 1 attempt all of 40 calls succeed once in ~1.6
// million runs.
func TestRetries(t *testing.T) {
	// The SDK's 2026 retry behaviour backs off from 50 ms rather than 1 s,
	// which keeps this test fast; which errors are retried is the same. No
	// t.Parallel: t.Setenv changes the whole process.
	t.Setenv("AWS_NEW_RETRIES_2026", "true")
	e := newEnv(t, quiet())
	ctx := testCtx(t)
	s := mustStage(t, ctx, e.client(noQuotas, 0), "retried")
	e.fault("GetStage", "InternalServerException", 0.3)

	run := func(c *ivs.Client, calls int) (failed int) {
		var (
			mu sync.Mutex
			wg sync.WaitGroup
		)
		for range calls {
			wg.Go(func() {
				got, err := c.GetStage(ctx, s.Arn)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil && got.Arn != s.Arn:
					t.Errorf("GetStage = %+v, want %s", got, s.Arn)
				case err != nil && !errors.Is(err, ivs.ErrUnavailable):
					t.Errorf("GetStage: %v, want ErrUnavailable", err)
				case err != nil:
					failed++
				}
			})
		}
		wg.Wait()
		return failed
	}

	if n := run(e.client(noQuotas, 10), 20); n != 0 {
		t.Errorf("with 10 attempts, %d of 20 GetStage calls failed, want none", n)
	}
	if c := e.emu.Snapshot().Counters["GetStage"]; c.Faults == 0 || c.Calls != 20+c.Faults {
		t.Errorf("emulator counted %d calls, %d faults; want 20 + one retry per fault", c.Calls, c.Faults)
	}
	if n := run(e.client(noQuotas, 1), 40); n == 0 {
		t.Error("with 1 attempt, none of 40 GetStage calls failed, want some")
	}
}

// TestPacing: with the default quotas on both sides, the client paces its
// calls so that the emulator throttles none of them, even when the first
// call reaches the service late (a new connection, say) and the service's
// bucket then refills later than the client's.
func TestPacing(t *testing.T) {
	t.Parallel()
	for _, slowFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("slow first call %v", slowFirst), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, emulator.DefaultConfig())
			c := e.client(nil, 0)
			ctx := testCtx(t)
			s := mustStage(t, ctx, c, "paced")

			start := time.Now()
			for i := range 15 {
				if slowFirst && i == 0 {
					e.setFault(map[string]any{"operation": "GetStage", "latencyMs": 100})
				}
				if _, err := c.GetStage(ctx, s.Arn); err != nil {
					t.Fatalf("GetStage %d: %v", i, err)
				}
				if slowFirst && i == 0 {
					e.setFault(map[string]any{"operation": "GetStage"}) // removes it
				}
			}
			// 15 calls at 5 TPS: even a burst of 5 leaves 10 calls 0.2 s apart.
			if d := time.Since(start); d < 1500*time.Millisecond {
				t.Errorf("15 GetStage calls took %v, want ≥ 1.5 s at 5 TPS", d)
			}
			if cnt := e.emu.Snapshot().Counters["GetStage"]; cnt.Throttled != 0 || cnt.Calls != 15 {
				t.Errorf("emulator counted %d GetStage calls, %d throttled; want 15, 0", cnt.Calls, cnt.Throttled)
			}
		})
	}
}

func TestLimiterWaitCancelled(t *testing.T) {
	t.Parallel()
	e := newEnv(t, quiet())
	c := e.client(map[string]float64{"GetStage": 0.1}, 0) // one call per 10 s
	ctx := testCtx(t)
	s := mustStage(t, ctx, c, "limited")
	if _, err := c.GetStage(ctx, s.Arn); err != nil {
		t.Fatalf("first GetStage: %v", err)
	}

	check := func(err error, cause error) {
		t.Helper()
		if !errors.Is(err, ivs.ErrThrottled) {
			t.Errorf("GetStage: %v, want ErrThrottled", err)
		}
		if cause != nil && !errors.Is(err, cause) {
			t.Errorf("GetStage: %v, want it to wrap %v", err, cause)
		}
		var ie *ivs.Error
		if !errors.As(err, &ie) || ie.Op != "GetStage" || ie.Code != "" {
			t.Errorf("GetStage: %#v, want an *ivs.Error of op GetStage without a service code", err)
		}
	}

	// Cancelled while waiting.
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	_, err := c.GetStage(cctx, s.Arn)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancelled GetStage returned after %v", d)
	}
	check(err, context.Canceled)

	// A deadline the wait cannot meet.
	dctx, cancel2 := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel2()
	_, err = c.GetStage(dctx, s.Arn)
	check(err, nil)

	if n := e.emu.Snapshot().Counters["GetStage"].Calls; n != 1 {
		t.Errorf("emulator saw %d GetStage calls, want 1 (the others never left the client)", n)
	}
}

// TestLimiterPacesRetries: a retry is held to the quota like a first call.
// With one GetStage per 10 s and the first answer throttled, the retry must
// wait for the limiter, which the caller's 3 s deadline does not allow: the
// service sees one call, not two. (Unpaced, the retry would go out after the
// SDK's back-off, at most 1 s.)
func TestLimiterPacesRetries(t *testing.T) {
	t.Parallel()
	e := newEnv(t, quiet())
	ctx := testCtx(t)
	s := mustStage(t, ctx, e.client(noQuotas, 1), "paced")
	e.fault("GetStage", "ThrottlingException", 1)
	c := e.client(map[string]float64{"GetStage": 0.1}, 2)
	dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, err := c.GetStage(dctx, s.Arn); err == nil {
		t.Fatal("GetStage succeeded against a fault on every call")
	}
	if n := e.emu.Snapshot().Counters["GetStage"].Calls; n != 1 {
		t.Errorf("emulator saw %d GetStage calls, want 1: the retry went out without waiting for the quota", n)
	}
}

func arns(ss []ivs.Stage) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = s.Arn
	}
	return out
}

// recordedMetrics counts what the client reports, by "kind op detail".
type recordedMetrics struct {
	mu     sync.Mutex
	counts map[string]int
}

func (m *recordedMetrics) add(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.counts == nil {
		m.counts = map[string]int{}
	}
	m.counts[key]++
}

func (m *recordedMetrics) get(key string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.counts[key]
}

func (m *recordedMetrics) IVSCall(op, outcome string)     { m.add("call " + op + " " + outcome) }
func (m *recordedMetrics) IVSRetry(op string)             { m.add("retry " + op) }
func (m *recordedMetrics) IVSThrottled(op, source string) { m.add("throttled " + op + " " + source) }

// TestMetrics: every call is reported once with its outcome, every attempt
// after the first as a retry, every ThrottlingException and every wait for
// the quota as a throttle.
func TestMetrics(t *testing.T) {
	// Fast retries, as in TestRetries; no t.Parallel for t.Setenv.
	t.Setenv("AWS_NEW_RETRIES_2026", "true")
	e := newEnv(t, quiet())
	ctx := testCtx(t)
	m := &recordedMetrics{}
	client := func(quotas map[string]float64, attempts int) *ivs.Client {
		return ivs.New(ivs.Options{
			Config:   aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("a", "b", "")},
			Endpoint: e.url, Quotas: quotas, MaxAttempts: attempts, Metrics: m,
		})
	}
	s := mustStage(t, ctx, client(noQuotas, 1), "observed")
	if got := m.get("call CreateStage ok"); got != 1 {
		t.Errorf("CreateStage ok reported %d times, want 1: %v", got, m.counts)
	}

	e.fault("GetStage", "ThrottlingException", 1)
	if _, err := client(noQuotas, 3).GetStage(ctx, s.Arn); !errors.Is(err, ivs.ErrThrottled) {
		t.Fatalf("GetStage: %v, want ErrThrottled", err)
	}
	for key, want := range map[string]int{"call GetStage throttled": 1, "retry GetStage": 2, "throttled GetStage service": 3, "throttled GetStage pacer": 0} {
		if got := m.get(key); got != want {
			t.Errorf("%s: %d, want %d (%v)", key, got, want, m.counts)
		}
	}

	e.setFault(map[string]any{"operation": "GetStage"}) // removes it
	if _, err := client(noQuotas, 1).GetStage(ctx, "arn:aws:ivs:us-east-1:123456789012:stage/Missing1234"); !errors.Is(err, ivs.ErrNotFound) {
		t.Fatalf("GetStage of a missing stage: %v, want ErrNotFound", err)
	}
	if got := m.get("call GetStage not_found"); got != 1 {
		t.Errorf("GetStage not_found reported %d times, want 1: %v", got, m.counts)
	}

	// Two calls at once against a quota of 1 a second with a burst of 1:
	// the second waits for the pacer.
	paced := client(map[string]float64{"GetStage": 1}, 1)
	for range 2 {
		if _, err := paced.GetStage(ctx, s.Arn); err != nil {
			t.Fatalf("paced GetStage: %v", err)
		}
	}
	if got := m.get("throttled GetStage pacer"); got != 1 {
		t.Errorf("pacer waits reported %d times, want 1: %v", got, m.counts)
	}
	if got := m.get("call GetStage ok"); got != 2 {
		t.Errorf("GetStage ok reported %d times, want 2: %v", got, m.counts)
	}
}
