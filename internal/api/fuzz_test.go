package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/fleet"
	"github.com/stagefleet/stagefleet/internal/store"
)

// fuzzArn is a well-formed stage ARN for seeds and canned answers.
const fuzzArn = "arn:aws:ivs:us-east-1:123456789012:stage/abcDEF123456"

// fuzzErrors are what the fake fleet answers, chosen by the fuzz input,
// with the status docs/api.md gives each.
var fuzzErrors = []struct {
	err    error
	status int
}{
	{nil, 0},
	{&fleet.Error{Kind: fleet.ErrInvalid, Msg: "bad"}, http.StatusBadRequest},
	{&fleet.Error{Kind: fleet.ErrNotFound, Msg: "no such stage"}, http.StatusNotFound},
	{&fleet.Error{Kind: fleet.ErrNotLive, Msg: "host not live"}, http.StatusNotFound},
	{&fleet.Error{Kind: fleet.ErrNotPublishing, Msg: "p is not publishing"}, http.StatusConflict},
	{&fleet.Error{Kind: fleet.ErrForbidden, Msg: "origin"}, http.StatusForbidden},
	{&fleet.Error{Kind: fleet.ErrStageFull, Msg: "full", RetryAfter: 2 * time.Second}, http.StatusServiceUnavailable},
	{&fleet.Error{Kind: fleet.ErrStageLimit, Msg: "limit", RetryAfter: time.Second}, http.StatusServiceUnavailable},
	{&fleet.Error{Kind: fleet.ErrToken, Msg: "token", Err: errors.New("signer")}, http.StatusInternalServerError},
	{&fleet.Error{Kind: fleet.ErrUnavailable, Msg: "store", Err: errors.New("redis down")}, http.StatusInternalServerError},
	{errors.New("unexpected"), http.StatusInternalServerError},
	{context.Canceled, http.StatusInternalServerError},
}

// fuzzFleet answers every call with canned data, or with err; it records
// whether it was called, so that a 5xx can be traced to an error it gave.
type fuzzFleet struct {
	err error

	mu     sync.Mutex
	called bool
}

func (f *fuzzFleet) call() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.called = true
	return f.err
}

func (f *fuzzFleet) wasCalled() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.called
}

var fuzzNow = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func fuzzToken(caps ...string) fleet.IssuedToken {
	return fleet.IssuedToken{Token: "a.b.c", ParticipantID: "P1", UserID: "u", StageArn: fuzzArn, BroadcastID: "default",
		Capabilities: caps, ExpiresAt: fuzzNow.Add(time.Hour), WhipURL: "https://whip.example"}
}

func fuzzSeat() store.Seat {
	return store.Seat{BroadcastID: "default", UserID: "u", StageArn: fuzzArn, ParticipantID: "P1", TakenAt: fuzzNow.Add(-time.Minute), ExpiresAt: fuzzNow.Add(time.Minute)}
}

func fuzzReplication() store.Replication {
	return store.Replication{BroadcastID: "default", ParticipantID: "P1", SourceArn: fuzzArn, DestArn: fuzzArn + "2", State: store.ReplActive, UpdatedAt: fuzzNow}
}

func fuzzStage() fleet.StageView {
	return fleet.StageView{
		Stage:        store.Stage{Arn: fuzzArn, BroadcastID: "default", Role: store.RoleOrigin, Name: "s", Capacity: 50, Seatable: true, Seats: 3, CreatedAt: fuzzNow},
		Tags:         map[string]string{"k": "v"},
		Replications: []store.Replication{fuzzReplication()},
	}
}

func fuzzHost() store.Host {
	return store.Host{BroadcastID: "default", ParticipantID: "P1", UserID: "h", StageArn: fuzzArn, JoinedAt: fuzzNow, Publishing: true}
}

func (f *fuzzFleet) PublisherToken(context.Context, string, string) (fleet.IssuedToken, error) {
	return fuzzToken(fleet.CapPublish, fleet.CapSubscribe), f.call()
}

func (f *fuzzFleet) ViewerToken(context.Context, string, string, string) (fleet.IssuedToken, error) {
	return fuzzToken(fleet.CapSubscribe), f.call()
}

func (f *fuzzFleet) MediaServerToken(context.Context, string, string) (fleet.IssuedToken, error) {
	return fuzzToken(fleet.CapPublish, fleet.CapSubscribe), f.call()
}

func (f *fuzzFleet) Heartbeat(context.Context, string, string, fleet.SeatProof) (store.Seat, error) {
	return fuzzSeat(), f.call()
}

func (f *fuzzFleet) Leave(context.Context, string, string) (store.Seat, bool, error) {
	return fuzzSeat(), true, f.call()
}

func (f *fuzzFleet) Rejoin(context.Context, string, string, string, string) (fleet.IssuedToken, error) {
	return fuzzToken(fleet.CapSubscribe), f.call()
}

func (f *fuzzFleet) EndBroadcast(_ context.Context, b, _ string) (fleet.Ended, error) {
	return fleet.Ended{BroadcastID: b}, f.call()
}

func (f *fuzzFleet) Broadcast(_ context.Context, id string) (store.Broadcast, error) {
	return store.Broadcast{ID: id, OriginArn: fuzzArn, CreatedAt: fuzzNow}, f.call()
}

func (f *fuzzFleet) CreateStage(context.Context, string, string, map[string]string) (fleet.StageView, error) {
	return fuzzStage(), f.call()
}

func (f *fuzzFleet) Stage(context.Context, string) (fleet.StageView, error) {
	return fuzzStage(), f.call()
}

func (f *fuzzFleet) UpdateStage(context.Context, string, string) (fleet.StageView, error) {
	return fuzzStage(), f.call()
}

func (f *fuzzFleet) DeleteStage(context.Context, string) error { return f.call() }

func (f *fuzzFleet) Stages(context.Context, string) ([]fleet.StageView, error) {
	return []fleet.StageView{fuzzStage()}, f.call()
}

func (f *fuzzFleet) Origin(context.Context, string) (fleet.StageView, error) {
	return fuzzStage(), f.call()
}

func (f *fuzzFleet) StartReplication(context.Context, fleet.Replication) (store.Replication, error) {
	return fuzzReplication(), f.call()
}

func (f *fuzzFleet) StopReplication(context.Context, fleet.Replication) error { return f.call() }

func (f *fuzzFleet) ReplicationStatus(context.Context, string) ([]store.Replication, error) {
	return []store.Replication{fuzzReplication()}, f.call()
}

func (f *fuzzFleet) Hosts(context.Context, string) ([]store.Host, error) {
	return []store.Host{fuzzHost()}, f.call()
}

func (f *fuzzFleet) Publisher(context.Context, string) (store.Host, bool, error) {
	return fuzzHost(), true, f.call()
}

func (f *fuzzFleet) BroadcastSeatsPage(context.Context, string, string, int) ([]store.Seat, string, error) {
	return []store.Seat{fuzzSeat()}, "", f.call()
}
func (f *fuzzFleet) WatchTotals(context.Context, string) (int, int64, error) {
	return 1, 60, f.call()
}

func (f *fuzzFleet) Seat(context.Context, string, string) (store.Seat, bool, error) {
	return fuzzSeat(), true, f.call()
}

func (f *fuzzFleet) SeatsPage(context.Context, string, string, int) ([]store.Seat, string, store.Stage, error) {
	return []store.Seat{fuzzSeat()}, "", fuzzStage().Stage, f.call()
}

func (f *fuzzFleet) Broadcasts(context.Context) ([]store.Broadcast, error) {
	return []store.Broadcast{{ID: "default", OriginArn: fuzzArn, CreatedAt: fuzzNow}}, f.call()
}

func (f *fuzzFleet) HandleEvent(context.Context, fleet.Event) (fleet.EventResult, error) {
	return fleet.EventApplied, f.call()
}

func (f *fuzzFleet) Now() time.Time { return fuzzNow }

func (f *fuzzFleet) SeatLease() time.Duration { return time.Minute }

// panicLog records the panics the API recovered from (and logged), which
// would otherwise only show as a 500.
type panicLog struct {
	mu     sync.Mutex
	panics []string
}

func (p *panicLog) Enabled(context.Context, slog.Level) bool { return true }
func (p *panicLog) WithAttrs([]slog.Attr) slog.Handler       { return p }
func (p *panicLog) WithGroup(string) slog.Handler            { return p }
func (p *panicLog) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "panic") {
		var b strings.Builder
		b.WriteString(r.Message)
		r.Attrs(func(a slog.Attr) bool {
			b.WriteString(" " + a.String())
			return true
		})
		p.mu.Lock()
		p.panics = append(p.panics, b.String())
		p.mu.Unlock()
	}
	return nil
}

// FuzzHandlers feeds every route arbitrary bodies, path suffixes for the
// {stageArn...} routes, query strings, header choices and fleet answers:
// the API must not panic, must answer a 5xx only when the fleet failed in a
// way that is one, and must always answer the JSON envelope.
func FuzzHandlers(f *testing.F) {
	encoded := strings.NewReplacer(":", "%3A", "/", "%2F").Replace(fuzzArn)
	suffixes := []string{fuzzArn, encoded, "", "x", "%zz", "arn:aws:ivs:us-east-1:1:stage/", "a/b/c", "%252F", "../health"}
	queries := []string{"", "broadcastId=show2", "broadcastId=bad%20id!", "userId=u", "userId=nobody&broadcastId=default", "%zz"}
	bodies := []string{
		"", "{}", "null", "[]", "not json", `"s"`, "1", "{", `{"a":1} x`, "\xff",
		`{"userId":"u"}`, `{"userId":5}`, `{"userId":"u","broadcastId":"show2","stageArn":"` + fuzzArn + `"}`,
		`{"userId":"u","broadcastId":"bad id!"}`, `{"userId":"u","stageArn":"nope"}`,
		`{"serverId":"m","stageArn":"` + fuzzArn + `"}`,
		`{"name":"n"}`, `{"name":"n","tags":{"a":"b"}}`, `{"name":"n","tags":[1]}`, `{"name":"has space"}`,
		`{"sourceStageArn":"` + fuzzArn + `","destinationStageArn":"` + fuzzArn + `2","participantId":"P1"}`,
		`{"sourceStageArn":1,"destinationStageArn":[],"participantId":{}}`,
		`{"id":"e1","detail-type":"IVS Stage Update","source":"aws.ivs","time":"2025-01-02T03:04:05Z","resources":["` + fuzzArn + `"],"detail":{"event_name":"Participant Published","participant_id":"P1","session_id":"s"}}`,
		`{"id":"e1","detail-type":"IVS Stage Update","source":"aws.ivs","resources":[],"detail":{}}`,
		`{"id":"e1","detail-type":"Other","source":"aws.other"}`,
		`{"id":"e1","detail-type":"IVS Stage Update","source":"aws.ivs","resources":["` + fuzzArn + `"],"detail":{"event_name":"x","participant_id":"P1","event_time":"never"}}`,
		strings.Repeat("[", 5000),
		`{"userId":"` + strings.Repeat("x", 2000) + `"}`,
	}
	// Bodies just under, at and just over MaxBodyBytes (1024 below).
	for _, n := range []int{1000, 1024, 1025} {
		pad := `{"userId":"u","pad":"` + strings.Repeat("p", n) + `"}`
		bodies = append(bodies, pad[:n-2]+`"}`)
	}
	// Every body, suffix and query, and every fleet answer, at least once;
	// not every combination, so that plain go test stays quick.
	for i, b := range bodies {
		f.Add(uint8(i*37), suffixes[i%len(suffixes)], queries[i%len(queries)], []byte(b))
	}
	for i, s := range suffixes {
		f.Add(uint8(i), s, "", []byte(`{"userId":"u","name":"n"}`))
	}
	for i := range fuzzErrors {
		f.Add(uint8(i), fuzzArn, "userId=u", []byte(bodies[i]))
		f.Add(uint8(i|0xf0), encoded, "", []byte(`{"userId":"u"}`))
	}
	f.Fuzz(func(t *testing.T, mode uint8, suffix, query string, body []byte) {
		fe := fuzzErrors[int(mode&0x0f)%len(fuzzErrors)]
		for _, rt := range routes {
			fuzzRoute(t, rt, mode, fe.err, fe.status, suffix, query, body)
		}
	})
}

func fuzzRoute(t *testing.T, rt route, mode uint8, err error, errStatus int, suffix, query string, body []byte) {
	t.Helper()
	target := strings.Replace(rt.path, "{stageArn...}", suffix, 1)
	if query != "" {
		target += "?" + query
	}
	// A target the HTTP server cannot parse never reaches the API.
	if u, perr := url.ParseRequestURI(target); perr != nil || strings.ContainsAny(target, " \t\r\n\x00") || u.Host != "" || u.Scheme != "" {
		return
	}
	ff := &fuzzFleet{err: err}
	logs := &panicLog{}
	degraded := mode&0x80 != 0
	h := New(Options{
		APISecretKey:   "key",
		InternalSecret: "internal",
		EventsSecret:   "events",
		MaxBodyBytes:   1024,
		Health: func(context.Context) Health {
			c := Component{Status: "ok"}
			if degraded {
				return Health{IVS: c, Store: Component{Status: "error", Error: "down"}, Controller: c}
			}
			return Health{IVS: c, Store: c, Controller: c}
		},
		Logger: slog.New(logs),
	}, ff)

	req := httptest.NewRequest(rt.method, target, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if mode&0x10 == 0 {
		req.Header.Set("x-api-key", "key")
	}
	if mode&0x20 == 0 {
		req.Header.Set("x-internal-secret", "internal")
	}
	if mode&0x40 == 0 {
		req.Header.Set("x-stagefleet-events-secret", "events")
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	res := w.Result()
	name := rt.method + " " + target

	if len(logs.panics) > 0 {
		t.Fatalf("%s: panicked: %s", name, logs.panics)
	}
	status := res.StatusCode
	switch {
	case status >= 300 && status < 400:
		// ServeMux redirects a path that is not clean to the clean one
		// before any route sees it; nothing else may redirect.
		if p := req.URL.Path; path.Clean(p) == p {
			t.Fatalf("%s: redirected (%d) a clean path", name, status)
		}
		return
	case status >= 500:
		wasHealth := rt.path == "/api/health" && degraded && status == http.StatusServiceUnavailable
		if !wasHealth && (!ff.wasCalled() || err == nil || status != errStatus) {
			t.Fatalf("%s: %d with fleet error %v (called %v): %s", name, status, err, ff.wasCalled(), w.Body)
		}
	case ff.wasCalled() && err != nil && status != errStatus:
		t.Fatalf("%s: fleet error %v answered %d, want %d: %s", name, err, status, errStatus, w.Body)
	}

	if rt.path == "/openapi.json" {
		if !json.Valid(w.Body.Bytes()) {
			t.Fatalf("%s: the OpenAPI document is not JSON", name)
		}
		return
	}
	if strings.HasPrefix(rt.path, "/dashboard") && status == http.StatusOK {
		// The dashboard's page and files are what a browser loads, not
		// the envelope; its failures are the envelope.
		return
	}
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("%s: Content-Type %q: %s", name, ct, w.Body)
	}
	var env struct {
		Success   *bool           `json:"success"`
		Data      json.RawMessage `json:"data"`
		Timestamp string          `json:"timestamp"`
		Error     *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if derr := json.Unmarshal(w.Body.Bytes(), &env); derr != nil || env.Success == nil {
		t.Fatalf("%s: %d, not the envelope (%v): %s", name, status, derr, w.Body)
	}
	if _, terr := time.Parse(time.RFC3339Nano, env.Timestamp); terr != nil {
		t.Fatalf("%s: timestamp %q: %v", name, env.Timestamp, terr)
	}
	ok := status >= 200 && status < 300
	if rt.path == "/api/health" && status == http.StatusServiceUnavailable {
		// A degraded health report is still the report: 503 for load
		// balancers, the success envelope for people (openapi.json).
		ok = true
	}
	switch {
	case *env.Success != ok:
		t.Fatalf("%s: success %v with %d: %s", name, *env.Success, status, w.Body)
	case ok && len(env.Data) == 0:
		t.Fatalf("%s: success without data: %s", name, w.Body)
	case !ok && (env.Error == nil || env.Error.Code == "" || env.Error.Message == ""):
		t.Fatalf("%s: failure without code and message: %s", name, w.Body)
	case status == http.StatusServiceUnavailable && !(rt.path == "/api/health") && res.Header.Get("Retry-After") == "":
		t.Fatalf("%s: 503 without Retry-After", name)
	}
}
