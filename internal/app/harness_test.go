package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/stagefleet/stagefleet/internal/app"
	"github.com/stagefleet/stagefleet/internal/config"
	"github.com/stagefleet/stagefleet/internal/emulator"
)

// testApp is one stagefleet serve on loopback: the HTTP API with its
// embedded emulator, run by App.Run as the binary runs it.
type testApp struct {
	app    *app.App
	base   string // the API, http://127.0.0.1:port
	emu    string // the embedded emulator
	client *http.Client
	// headers go with every API request (x-api-key and the like).
	headers http.Header

	cancel   context.CancelFunc
	done     chan error
	stopOnce sync.Once
	runErr   error
}

// testEventsSecret is the EVENTS_SECRET of apps the tests start.
const testEventsSecret = "test-events-secret"

// startApp runs stagefleet serve configured by env (the variables of
// docs/configuration.md; loopback and free ports unless env says otherwise) until the
// test ends. emu, if given, adjust the embedded emulator (as its
// --emulator-* flags would).
func startApp(t *testing.T, env map[string]string, emu ...func(*emulator.Config)) *testApp {
	t.Helper()
	vars := map[string]string{
		"API_HOST":      "127.0.0.1",
		"API_PORT":      "0",
		"EMULATOR_ADDR": "127.0.0.1:0",
		"IVS_MODE":      "emulator",
		// Each app its own viewing history (SQLite).
		"DATA_DIR": t.TempDir(),
		// Known to the tests, so that they can post events themselves.
		"EVENTS_SECRET": testEventsSecret,
	}
	maps.Copy(vars, env)
	emuCfg := emulator.DefaultConfig()
	for _, f := range emu {
		f(&emuCfg)
	}
	cfg, err := config.Load(nil, func(k string) string { return vars[k] }, io.Discard, nil)
	if err != nil {
		t.Fatalf("config.Load: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, cfg, emuCfg, testLogger())
	if err != nil {
		cancel()
		t.Fatalf("app.New: %v", err)
	}
	ta := &testApp{
		app:     a,
		base:    "http://" + a.Addr(),
		emu:     a.EmulatorURL(),
		client:  &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}},
		headers: http.Header{"X-Stagefleet-Events-Secret": {testEventsSecret}},
		cancel:  cancel,
		done:    make(chan error, 1),
	}
	go func() { ta.done <- a.Run(ctx) }()
	t.Cleanup(func() {
		if err := ta.stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
		a.Close()
		ta.client.CloseIdleConnections()
	})
	return ta
}

// testLogger discards the service's logs unless STAGEFLEET_TEST_LOG is set:
// a storm test logs thousands of lines.
func testLogger() *slog.Logger {
	if os.Getenv("STAGEFLEET_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// stop cancels Run's context and returns what Run returned; later calls
// return the same.
func (a *testApp) stop() error {
	a.stopOnce.Do(func() {
		a.cancel()
		select {
		case a.runErr = <-a.done:
		case <-time.After(20 * time.Second):
			a.runErr = fmt.Errorf("Run did not return within 20s of its context ending")
		}
	})
	return a.runErr
}

// response is an API answer, with its envelope decoded.
type response struct {
	Status int
	Header http.Header
	Body   []byte
	Env    envelope
	// Elapsed is the time from sending the request to reading the body.
	Elapsed time.Duration
}

type envelope struct {
	Success   *bool           `json:"success"`
	Data      json.RawMessage `json:"data"`
	Message   string          `json:"message"`
	Error     *envelopeError  `json:"error"`
	Timestamp string          `json:"timestamp"`
}

type envelopeError struct {
	Code    string          `json:"code"`
	Message string          `json:"message"`
	Details json.RawMessage `json:"details"`
}

func (r response) String() string {
	return fmt.Sprintf("%d %s", r.Status, bytes.TrimSpace(r.Body))
}

// requestBody makes a body of v: raw for string and []byte (so that tests
// can send what is not JSON), JSON otherwise, none for nil.
func requestBody(v any) (io.Reader, error) {
	switch b := v.(type) {
	case nil:
		return nil, nil
	case string:
		return strings.NewReader(b), nil
	case []byte:
		return bytes.NewReader(b), nil
	default:
		raw, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		return bytes.NewReader(raw), nil
	}
}

// send makes one API request with the app's headers and hdr on top, and
// checks the answer against the OpenAPI document: an answer it does not
// describe is an error, naming the route, the status and what is wrong. It
// does not touch t, so goroutines may call it.
func (a *testApp) send(ctx context.Context, method, path string, body any, hdr http.Header) (response, error) {
	rb, err := requestBody(body)
	if err != nil {
		return response{}, err
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, rb)
	if err != nil {
		return response{}, err
	}
	if rb != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, vs := range a.headers {
		req.Header[k] = vs
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	start := time.Now()
	resp, err := a.client.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, err
	}
	out := response{Status: resp.StatusCode, Header: resp.Header, Body: raw, Elapsed: time.Since(start)}
	_ = json.Unmarshal(raw, &out.Env) // checkEnvelope reports what is wrong
	if err := checkDescribed(ctx, resp.Request, out); err != nil {
		return response{}, err
	}
	return out, nil
}

// call makes one API request and checks that the answer is the envelope.
func (a *testApp) call(t *testing.T, method, path string, body any) response {
	t.Helper()
	return a.callWith(t, method, path, body, nil)
}

func (a *testApp) callWith(t *testing.T, method, path string, body any, hdr http.Header) response {
	t.Helper()
	r, err := a.send(t.Context(), method, path, body, hdr)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	if err := checkEnvelope(r); err != nil {
		t.Errorf("%s %s: %v", method, path, err)
	}
	return r
}

// expect makes a request that must answer status.
func (a *testApp) expect(t *testing.T, method, path string, body any, status int) response {
	t.Helper()
	r := a.call(t, method, path, body)
	if r.Status != status {
		t.Fatalf("%s %s: got %s, want status %d", method, path, r, status)
	}
	return r
}

// checkEnvelope checks the previous server's envelope: success matches the
// status, a timestamp, data on success, error code and message on failure.
func checkEnvelope(r response) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(r.Body, &raw); err != nil {
		return fmt.Errorf("answer is not a JSON object: %s", r)
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		return fmt.Errorf("Content-Type %q, want application/json: %s", ct, r)
	}
	e := r.Env
	if e.Success == nil {
		return fmt.Errorf("no success field: %s", r)
	}
	if _, err := time.Parse(time.RFC3339Nano, e.Timestamp); err != nil {
		return fmt.Errorf("timestamp %q is not RFC 3339: %s", e.Timestamp, r)
	}
	ok := r.Status >= 200 && r.Status < 300
	switch {
	case *e.Success != ok:
		return fmt.Errorf("success %v with status %d: %s", *e.Success, r.Status, r)
	case ok && raw["data"] == nil:
		return fmt.Errorf("success without data: %s", r)
	case !ok && (e.Error == nil || e.Error.Code == "" || e.Error.Message == ""):
		return fmt.Errorf("failure without error code and message: %s", r)
	}
	return nil
}

// wantError checks a failure's status and code.
func wantError(t *testing.T, r response, status int, code string) {
	t.Helper()
	if r.Status != status || r.Env.Error == nil || r.Env.Error.Code != code {
		t.Fatalf("got %s, want %d %s", r, status, code)
	}
}

// retryAfter returns the Retry-After header in whole seconds, failing the
// test when it is missing or not a positive number.
func retryAfter(t *testing.T, r response) int {
	t.Helper()
	n, err := strconv.Atoi(r.Header.Get("Retry-After"))
	if err != nil || n < 1 {
		t.Fatalf("Retry-After %q, want a positive number of seconds: %s", r.Header.Get("Retry-After"), r)
	}
	return n
}

// dataOf decodes a success's data.
func dataOf[T any](t *testing.T, r response) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(r.Env.Data, &v); err != nil {
		t.Fatalf("decoding data of %s: %v", r, err)
	}
	return v
}

// tokenData is a token answer.
type tokenData struct {
	Token         string   `json:"token"`
	ParticipantID string   `json:"participantId"`
	UserID        string   `json:"userId"`
	ServerID      string   `json:"serverId"`
	StageArn      string   `json:"stageArn"`
	BroadcastID   string   `json:"broadcastId"`
	Capabilities  []string `json:"capabilities"`
	ExpiresAt     string   `json:"expiresAt"`
	ExpiresIn     int      `json:"expiresIn"`
	WhipEndpoint  string   `json:"whipEndpoint"`
	SeatKey       string   `json:"seatKey"`
	IsNewViewer   bool     `json:"isNewViewer"`
}

type stageData struct {
	Arn          string            `json:"arn"`
	Name         string            `json:"name"`
	BroadcastID  string            `json:"broadcastId"`
	Role         string            `json:"role"`
	Capacity     int               `json:"capacity"`
	Seats        int               `json:"seats"`
	Seatable     bool              `json:"seatable"`
	Replications []replicationData `json:"replications"`
}

type replicationData struct {
	ParticipantID       string `json:"participantId"`
	SourceStageArn      string `json:"sourceStageArn"`
	DestinationStageArn string `json:"destinationStageArn"`
	State               string `json:"state"`
}

type replicationStatus struct {
	StageArn        string            `json:"stageArn"`
	HasReplication  bool              `json:"hasReplication"`
	ReplicationInfo *replicationData  `json:"replicationInfo"`
	Replications    []replicationData `json:"replications"`
}

type seatData struct {
	UserID        string `json:"userId"`
	StageArn      string `json:"stageArn"`
	ParticipantID string `json:"participantId"`
}

type viewerList struct {
	StageArn string     `json:"stageArn"`
	Viewers  []seatData `json:"viewers"`
	Count    int        `json:"count"`
}

// token asks for a token of kind (publisher, viewer) and requires a 200.
func (a *testApp) token(t *testing.T, kind string, body map[string]any) tokenData {
	t.Helper()
	return a.issue(t, "/api/token/"+kind, body)
}

// issue posts body to a route that answers a token, requiring a 200.
func (a *testApp) issue(t *testing.T, path string, body map[string]any) tokenData {
	t.Helper()
	return dataOf[tokenData](t, a.expect(t, "POST", path, body, http.StatusOK))
}

// stages lists a broadcast's stages.
func (a *testApp) stages(t *testing.T, broadcastID string) []stageData {
	t.Helper()
	r := a.expect(t, "GET", "/api/stage/list?broadcastId="+broadcastID, nil, http.StatusOK)
	return dataOf[struct {
		Stages []stageData `json:"stages"`
	}](t, r).Stages
}

// stage returns one stage of the list, failing the test without it.
func (a *testApp) stage(t *testing.T, broadcastID, arn string) stageData {
	t.Helper()
	for _, s := range a.stages(t, broadcastID) {
		if s.Arn == arn {
			return s
		}
	}
	t.Fatalf("stage %s is not in broadcast %s's list", arn, broadcastID)
	return stageData{}
}

// emuPost calls the emulator's control API.
func (a *testApp) emuPost(t *testing.T, path string, body any) (int, []byte) {
	t.Helper()
	rb, err := requestBody(body)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequestWithContext(t.Context(), "POST", a.emu+path, rb)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.client.Do(req)
	if err != nil {
		t.Fatalf("emulator %s: %v", path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("emulator %s: %v", path, err)
	}
	return resp.StatusCode, raw
}

type joined struct {
	ParticipantID string `json:"participantId"`
	StageArn      string `json:"stageArn"`
	SessionID     string `json:"sessionId"`
}

// join joins the stage a token names, as a client SDK would.
func (a *testApp) join(t *testing.T, token string) joined {
	t.Helper()
	status, raw := a.emuPost(t, "/_emulator/participants/join", map[string]string{"token": token})
	if status != http.StatusOK {
		t.Fatalf("emulator join: %d %s", status, raw)
	}
	var j joined
	if err := json.Unmarshal(raw, &j); err != nil {
		t.Fatalf("emulator join: %v: %s", err, raw)
	}
	return j
}

func (a *testApp) publish(t *testing.T, stageArn, participantID string) {
	t.Helper()
	status, raw := a.emuPost(t, "/_emulator/participants/publish", map[string]string{"stageArn": stageArn, "participantId": participantID})
	if status != http.StatusOK {
		t.Fatalf("emulator publish: %d %s", status, raw)
	}
}

// emuState is GET /_emulator/state.
type emuState = emulator.State

func (a *testApp) emuState(t *testing.T) emuState {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), "GET", a.emu+"/_emulator/state", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		t.Fatalf("emulator state: %v", err)
	}
	defer resp.Body.Close()
	var s emuState
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatalf("emulator state: %v", err)
	}
	return s
}

// goLive gives userID a host token for the broadcast, joins and publishes
// with it through the emulator, and waits until the fleet has heard of it
// (events arrive asynchronously): the origin takes viewers.
func (a *testApp) goLive(t *testing.T, broadcastID, userID string) tokenData {
	t.Helper()
	host := a.token(t, "publisher", map[string]any{"userId": userID, "broadcastId": broadcastID})
	j := a.join(t, host.Token)
	a.publish(t, j.StageArn, j.ParticipantID)
	a.waitLive(t, broadcastID, host.StageArn)
	return host
}

func (a *testApp) waitLive(t *testing.T, broadcastID, originArn string) {
	t.Helper()
	eventually(t, 5*time.Second, func() (bool, string) {
		s := a.stage(t, broadcastID, originArn)
		return s.Seatable, fmt.Sprintf("origin %s of %s never took viewers after its host published: %+v", originArn, broadcastID, s)
	})
}

// checkNoLeaks checks invariant 4 for the given broadcasts while nothing
// is scaling: every stage IVS has tagged as one of theirs has a record, and
// every record a stage.
func (a *testApp) checkNoLeaks(t *testing.T, broadcasts ...string) {
	t.Helper()
	recorded := map[string]bool{}
	for _, b := range broadcasts {
		for _, s := range a.stages(t, b) {
			recorded[s.Arn] = true
		}
	}
	inIVS := map[string]bool{}
	for _, s := range a.emuState(t).Stages {
		if slices.Contains(broadcasts, s.Tags["stagefleet:broadcast"]) {
			inIVS[s.Arn] = true
		}
	}
	if !maps.Equal(recorded, inIVS) {
		t.Errorf("stagefleet records stages %v, IVS has %v tagged as stagefleet's", slices.Sorted(maps.Keys(recorded)), slices.Sorted(maps.Keys(inIVS)))
	}
}

// eventually polls cond until it holds, failing the test with cond's
// description after timeout.
func eventually(t *testing.T, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		done, why := cond()
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", timeout, why)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// apiDoc is the API's OpenAPI document, internal/api/openapi.json, read
// once for every test.
var apiDoc = sync.OnceValues(loadAPIDoc)

// describedAPI finds, for a request, the responses the document allows.
type describedAPI struct {
	doc *openapi3.T
	// mux holds every operation of the document under the pattern the
	// API registers it with; routes maps a pattern to its operation.
	mux    *http.ServeMux
	routes map[string]*routers.Route
	// methods are the methods some operation takes, to tell a 405 from a
	// 404 as the API does.
	methods []string
}

func loadAPIDoc() (*describedAPI, error) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromFile("../api/openapi.json")
	if err != nil {
		return nil, fmt.Errorf("reading the OpenAPI document: %w", err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		return nil, fmt.Errorf("the OpenAPI document is not valid: %w", err)
	}
	d := &describedAPI{doc: doc, mux: http.NewServeMux(), routes: map[string]*routers.Route{}}
	for p, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			pattern := method + " " + muxPattern(p)
			d.mux.Handle(pattern, http.NotFoundHandler())
			d.routes[pattern] = &routers.Route{Spec: doc, Path: p, PathItem: item, Method: method, Operation: op}
			if !slices.Contains(d.methods, method) {
				d.methods = append(d.methods, method)
			}
		}
	}
	return d, nil
}

// muxPattern is an OpenAPI path as the API's routes write it: "/" is
// exactly "/", and a stage ARN, which holds a slash, is the rest of the
// path ({stageArn...}), which OpenAPI cannot say.
func muxPattern(p string) string {
	if p == "/" {
		return "/{$}"
	}
	return strings.ReplaceAll(p, "{stageArn}", "{stageArn...}")
}

// route is the operation the document describes req with or, when no
// operation takes req, the document's answers of any path
// (components/responses) that the API gives it.
func (d *describedAPI) route(req *http.Request) *routers.Route {
	p := req.URL.Path
	clean := path.Clean(p)
	if strings.HasSuffix(p, "/") && clean != "/" {
		clean += "/"
	}
	if clean != p {
		return d.anyPath(req, map[int]string{http.StatusBadRequest: "NotCleanPath"})
	}
	if _, pattern := d.mux.Handler(req); pattern != "" {
		return d.routes[pattern]
	}
	// The rate limit counts requests no route takes too.
	for _, m := range d.methods {
		probe := req.Clone(req.Context())
		probe.Method = m
		if _, pattern := d.mux.Handler(probe); pattern != "" {
			return d.anyPath(req, map[int]string{http.StatusMethodNotAllowed: "MethodNotAllowed", http.StatusTooManyRequests: "RateLimited"})
		}
	}
	return d.anyPath(req, map[int]string{http.StatusNotFound: "NoRoute", http.StatusTooManyRequests: "RateLimited"})
}

// anyPath is a route whose answers are the named components/responses, by
// status.
func (d *describedAPI) anyPath(req *http.Request, byStatus map[int]string) *routers.Route {
	// A browser's preflight is answered before routing when CORS_ORIGINS
	// is set, and routed like any request when it is not.
	if req.Method == http.MethodOptions && req.Header.Get("Access-Control-Request-Method") != "" {
		byStatus[http.StatusNoContent] = "CorsPreflight"
	}
	var opts []openapi3.NewResponsesOption
	for status, name := range byStatus {
		opts = append(opts, openapi3.WithStatus(status, d.doc.Components.Responses[name]))
	}
	op := &openapi3.Operation{Responses: openapi3.NewResponses(opts...)}
	return &routers.Route{Spec: d.doc, Path: "(any path)", Method: req.Method, Operation: op}
}

// checkDescribed checks an answer against the document: its status is one
// the route declares, with the declared headers and body.
func checkDescribed(ctx context.Context, req *http.Request, r response) error {
	// Go's HTTP server refuses a request whose header is over
	// HTTP_MAX_HEADER_BYTES with a plain-text 431 before any route sees
	// it: the document describes the API's answers, not that one.
	if r.Status == http.StatusRequestHeaderFieldsTooLarge && strings.HasPrefix(r.Header.Get("Content-Type"), "text/plain") {
		return nil
	}
	d, err := apiDoc()
	if err != nil {
		return err
	}
	route := d.route(req)
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, Route: route},
		Status:                 r.Status,
		Header:                 r.Header,
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	in.SetBodyBytes(r.Body)
	if err := openapi3filter.ValidateResponse(ctx, in); err != nil {
		return fmt.Errorf("%s %s (%s %s in /openapi.json) answered %d, which the document does not describe: %w: %s",
			req.Method, req.URL.RequestURI(), route.Method, route.Path, r.Status, err, bytes.TrimSpace(r.Body))
	}
	return nil
}
