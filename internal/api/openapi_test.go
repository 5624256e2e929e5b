package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/fleet"
	"github.com/stagefleet/stagefleet/internal/history"
	"github.com/stagefleet/stagefleet/internal/live"
	"github.com/stagefleet/stagefleet/internal/metrics"
	"github.com/stagefleet/stagefleet/internal/store"
)

// The OpenAPI document (openapi.json) must describe exactly the routes in
// routes, and what the handlers really answer.

type oaDoc struct {
	OpenAPI    string                                `json:"openapi"`
	Info       struct{ Title, Version string }       `json:"info"`
	Paths      map[string]map[string]json.RawMessage `json:"paths"`
	Security   []map[string][]string                 `json:"security"`
	Components struct {
		Schemas         map[string]*oaSchema        `json:"schemas"`
		Responses       map[string]*oaResponse      `json:"responses"`
		SecuritySchemes map[string]oaSecurityScheme `json:"securitySchemes"`
	} `json:"components"`
}

type oaSecurityScheme struct {
	Type string `json:"type"`
	In   string `json:"in"`
	Name string `json:"name"`
}

type oaOperation struct {
	OperationID string                 `json:"operationId"`
	Security    *[]map[string][]string `json:"security"`
	Parameters  []struct {
		Name     string `json:"name"`
		In       string `json:"in"`
		Required bool   `json:"required"`
	} `json:"parameters"`
	RequestBody *struct {
		Content map[string]struct {
			Schema *oaSchema `json:"schema"`
		} `json:"content"`
	} `json:"requestBody"`
	Responses map[string]*oaResponse `json:"responses"`
}

type oaResponse struct {
	Ref         string `json:"$ref"`
	Description string `json:"description"`
	Headers     map[string]json.RawMessage
	Content     map[string]struct {
		Schema  *oaSchema       `json:"schema"`
		Example json.RawMessage `json:"example"`
	} `json:"content"`
}

type oaSchema struct {
	Ref                  string               `json:"$ref"`
	Type                 string               `json:"type"`
	Format               string               `json:"format"`
	Pattern              string               `json:"pattern"`
	Properties           map[string]*oaSchema `json:"properties"`
	AdditionalProperties *oaSchema            `json:"additionalProperties"`
	Required             []string             `json:"required"`
	Items                *oaSchema            `json:"items"`
	AllOf                []*oaSchema          `json:"allOf"`
	OneOf                []*oaSchema          `json:"oneOf"`
	Enum                 []any                `json:"enum"`
	Nullable             bool                 `json:"nullable"`
}

var oaHTTPMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

func parseOpenAPI(t *testing.T) (oaDoc, map[string]oaOperation) {
	t.Helper()
	var doc oaDoc
	if err := json.Unmarshal(openAPIDoc, &doc); err != nil {
		t.Fatalf("openapi.json is not a valid OpenAPI document: %v", err)
	}
	ops := map[string]oaOperation{}
	for path, item := range doc.Paths {
		for method, raw := range item {
			if !slices.Contains(oaHTTPMethods, method) {
				continue
			}
			var op oaOperation
			if err := json.Unmarshal(raw, &op); err != nil {
				t.Fatalf("%s %s: %v", method, path, err)
			}
			ops[strings.ToUpper(method)+" "+path] = op
		}
	}
	return doc, ops
}

// openAPIPath is a route's path as OpenAPI writes it: {stageArn...} is
// {stageArn}, and "/{$}" (exactly "/") is "/".
func openAPIPath(p string) string {
	if p == "/{$}" {
		return "/"
	}
	return strings.ReplaceAll(p, "...}", "}")
}

func TestOpenAPIIsValidJSON(t *testing.T) {
	doc, _ := parseOpenAPI(t) // stops the test on invalid JSON
	if doc.OpenAPI != "3.0.3" {
		t.Errorf("openapi = %q, want 3.0.3", doc.OpenAPI)
	}
	if doc.Info.Title == "" || doc.Info.Version == "" {
		t.Error("info.title and info.version are required")
	}
}

func TestOpenAPIMatchesRoutes(t *testing.T) {
	_, ops := parseOpenAPI(t)
	registered := map[string]bool{}
	for _, rt := range routes {
		key := rt.method + " " + openAPIPath(rt.path)
		registered[key] = true
		if _, ok := ops[key]; !ok {
			t.Errorf("route %s %s is not in openapi.json", rt.method, rt.path)
		}
	}
	for key := range ops {
		if !registered[key] {
			t.Errorf("openapi.json describes %s, which is not a registered route", key)
		}
	}
}

func TestOpenAPIOperations(t *testing.T) {
	doc, ops := parseOpenAPI(t)
	schemes := doc.Components.SecuritySchemes
	for name, header := range map[string]string{"apiKey": "x-api-key", "internalSecret": "x-internal-secret", "eventsSecret": "x-stagefleet-events-secret"} {
		s, ok := schemes[name]
		if !ok || s.Type != "apiKey" || s.In != "header" || s.Name != header {
			t.Errorf("security scheme %s = %+v, want apiKey in header %s", name, s, header)
		}
	}
	ids := map[string]string{}
	for _, rt := range routes {
		key := rt.method + " " + openAPIPath(rt.path)
		op, ok := ops[key]
		if !ok {
			continue // reported by TestOpenAPIMatchesRoutes
		}
		if op.OperationID == "" {
			t.Errorf("%s has no operationId", key)
		} else if other, dup := ids[op.OperationID]; dup {
			t.Errorf("%s and %s share operationId %s", key, other, op.OperationID)
		}
		ids[op.OperationID] = key

		has2xx := false
		for status, resp := range op.Responses {
			// An upgrade's success is 101 Switching Protocols.
			has2xx = has2xx || strings.HasPrefix(status, "2") || status == "101"
			if resp.Ref != "" {
				name := strings.TrimPrefix(resp.Ref, "#/components/responses/")
				if doc.Components.Responses[name] == nil {
					t.Errorf("%s %s: unresolved %s", key, status, resp.Ref)
				}
			}
		}
		if !has2xx {
			t.Errorf("%s declares no 2xx response", key)
		}

		security := doc.Security
		if op.Security != nil {
			security = *op.Security
		}
		for _, req := range security {
			for name := range req {
				if _, ok := schemes[name]; !ok {
					t.Errorf("%s: security scheme %s is not defined", key, name)
				}
			}
		}
		needsKey := len(security) > 0
		for _, req := range security {
			_, withKey := req["apiKey"]
			needsKey = needsKey && withKey
		}
		switch {
		case rt.open && needsKey:
			t.Errorf("%s is open but openapi.json requires x-api-key", key)
		case !rt.open && !needsKey:
			t.Errorf("%s needs x-api-key but openapi.json does not declare it: %v", key, security)
		}
		if rt.path == "/api/token/mediaserver" {
			for _, req := range security {
				if _, ok := req["internalSecret"]; !ok {
					t.Errorf("%s: x-internal-secret is not required: %v", key, security)
				}
			}
		}
		if rt.path == eventsPath && !slices.ContainsFunc(security, func(r map[string][]string) bool { _, ok := r["eventsSecret"]; return ok }) {
			t.Errorf("%s does not declare x-stagefleet-events-secret", key)
		}

		// Every path wildcard is a required path parameter.
		for _, m := range regexp.MustCompile(`\{(\w+)\}`).FindAllStringSubmatch(openAPIPath(rt.path), -1) {
			if !slices.ContainsFunc(op.Parameters, func(p struct {
				Name     string `json:"name"`
				In       string `json:"in"`
				Required bool   `json:"required"`
			}) bool {
				return p.Name == m[1] && p.In == "path" && p.Required
			}) {
				t.Errorf("%s: path parameter %s is not declared (in: path, required)", key, m[1])
			}
		}
	}
}

func TestOpenAPIServed(t *testing.T) {
	h := New(Options{SkipAuth: true, Health: oaHealth(HealthHealthy)}, nil)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/openapi.json", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /openapi.json = %d, want 200", rec.Code)
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	if !bytes.Equal(rec.Body.Bytes(), openAPIDoc) {
		t.Error("GET /openapi.json did not serve the embedded document as is")
	}
}

// ---- the document against the handlers' real answers ----

const (
	oaArn  = "arn:aws:ivs:us-east-1:123456789012:stage/AbCdEf123456"
	oaArn2 = "arn:aws:ivs:us-east-1:123456789012:stage/GhIjKl789012"
)

var oaTime = time.Date(2025, 5, 1, 12, 0, 0, 0, time.UTC)

// oaFleet answers every call with full sample data, or with err.
type oaFleet struct {
	err error
	// empty: the broadcast has no host and no seat.
	empty bool
	// originReplaced: the broadcast's origin was deleted outside
	// stagefleet and replaced.
	originReplaced bool
}

var _ Fleet = (*oaFleet)(nil)

func (f *oaFleet) token(b, user, arn string, caps ...string) fleet.IssuedToken {
	return fleet.IssuedToken{Token: "eyJ.x.y", ParticipantID: "PART1", UserID: user, StageArn: arn, BroadcastID: b,
		Capabilities: caps, ExpiresAt: oaTime.Add(time.Hour), WhipURL: "https://global.whip.live-video.net"}
}

func (f *oaFleet) seat(b, user string) store.Seat {
	return store.Seat{BroadcastID: b, UserID: user, StageArn: oaArn2, ParticipantID: "PART2", TakenAt: oaTime.Add(-time.Minute), ExpiresAt: oaTime.Add(time.Minute)}
}

func (f *oaFleet) replication() store.Replication {
	return store.Replication{BroadcastID: "default", ParticipantID: "PART1", SourceArn: oaArn, DestArn: oaArn2, State: store.ReplFailed, Reason: "throttled", UpdatedAt: oaTime}
}

func (f *oaFleet) stage(arn string) fleet.StageView {
	return fleet.StageView{
		Stage:           store.Stage{Arn: arn, BroadcastID: "default", Role: store.RoleReplica, Name: "n", Capacity: 50, Seats: 3, Seatable: true, CreatedAt: oaTime},
		ActiveSessionID: "st-1", Tags: map[string]string{"stagefleet:role": "replica"},
		Replications: []store.Replication{f.replication()},
	}
}

// detail is a single stage as IVS describes it, endpoints included.
func (f *oaFleet) detail(arn string) fleet.StageView {
	v := f.stage(arn)
	v.Endpoints = fleet.IVSEndpoints{Events: "wss://global.events.live-video.net", Whip: "https://global.whip.live-video.net",
		Rtmp: "rtmp://AbCdEf123456.global-contribute.live-video.net/app/", Rtmps: "rtmps://AbCdEf123456.global-contribute.live-video.net:443/app/"}
	return v
}

func (f *oaFleet) host() store.Host {
	return store.Host{BroadcastID: "default", ParticipantID: "PART1", UserID: "host-1", StageArn: oaArn, JoinedAt: oaTime, Publishing: true}
}

func (f *oaFleet) PublisherToken(_ context.Context, b, u string) (fleet.IssuedToken, error) {
	return f.token(b, u, oaArn, "PUBLISH", "SUBSCRIBE"), f.err
}
func (f *oaFleet) ViewerToken(_ context.Context, b, u, _ string) (fleet.IssuedToken, error) {
	t := f.token(b, u, oaArn2, "SUBSCRIBE")
	t.WhipURL, t.SeatKey, t.NewSeat, t.StageViewers = "", "seat-key", true, 3
	return t, f.err
}
func (f *oaFleet) MediaServerToken(_ context.Context, s, arn string) (fleet.IssuedToken, error) {
	return f.token("", s, arn, "PUBLISH", "SUBSCRIBE"), f.err
}
func (f *oaFleet) Heartbeat(_ context.Context, b, u string, _ fleet.SeatProof) (store.Seat, error) {
	return f.seat(b, u), f.err
}
func (f *oaFleet) Leave(_ context.Context, b, u string) (store.Seat, bool, error) {
	if f.empty {
		return store.Seat{}, false, f.err
	}
	return f.seat(b, u), true, f.err
}
func (f *oaFleet) Rejoin(ctx context.Context, b, u, arn, _ string) (fleet.IssuedToken, error) {
	return f.ViewerToken(ctx, b, u, arn)
}
func (f *oaFleet) EndBroadcast(_ context.Context, b, _ string) (fleet.Ended, error) {
	return fleet.Ended{BroadcastID: b, StagesDeleted: 2, SeatsFreed: 1}, f.err
}
func (f *oaFleet) Broadcast(_ context.Context, id string) (store.Broadcast, error) {
	b := store.Broadcast{ID: id, OriginArn: oaArn, CreatedAt: oaTime}
	if f.originReplaced {
		b.ReplacedOriginArn, b.OriginReplacedAt = oaArn2, oaTime
	}
	return b, f.err
}
func (f *oaFleet) CreateStage(_ context.Context, b, name string, tags map[string]string) (fleet.StageView, error) {
	v := f.stage(oaArn2)
	v.Role, v.Name, v.Tags, v.Replications = store.RoleManual, name, tags, nil
	return v, f.err
}
func (f *oaFleet) Stage(_ context.Context, arn string) (fleet.StageView, error) {
	return f.detail(arn), f.err
}
func (f *oaFleet) UpdateStage(_ context.Context, arn, name string) (fleet.StageView, error) {
	v := f.stage(arn)
	v.Name = name
	return v, f.err
}
func (f *oaFleet) DeleteStage(context.Context, string) error { return f.err }
func (f *oaFleet) Stages(context.Context, string) ([]fleet.StageView, error) {
	return []fleet.StageView{f.stage(oaArn), f.stage(oaArn2)}, f.err
}
func (f *oaFleet) Origin(context.Context, string) (fleet.StageView, error) {
	return f.detail(oaArn), f.err
}
func (f *oaFleet) StartReplication(context.Context, fleet.Replication) (store.Replication, error) {
	return f.replication(), f.err
}
func (f *oaFleet) StopReplication(context.Context, fleet.Replication) error { return f.err }
func (f *oaFleet) ReplicationStatus(context.Context, string) ([]store.Replication, error) {
	active := f.replication()
	active.State, active.Reason = store.ReplActive, ""
	return []store.Replication{active, f.replication()}, f.err
}
func (f *oaFleet) Hosts(context.Context, string) ([]store.Host, error) {
	return []store.Host{f.host()}, f.err
}
func (f *oaFleet) Publisher(context.Context, string) (store.Host, bool, error) {
	if f.empty {
		return store.Host{}, false, f.err
	}
	return f.host(), true, f.err
}
func (f *oaFleet) BroadcastSeatsPage(context.Context, string, string, int) ([]store.Seat, string, error) {
	if f.empty {
		return nil, "", f.err
	}
	return []store.Seat{f.seat("default", "viewer-1")}, "viewer-1", f.err
}
func (f *oaFleet) WatchTotals(context.Context, string) (int, int64, error) {
	if f.empty {
		return 0, 0, f.err
	}
	return 1, 60, f.err
}
func (f *oaFleet) Seat(_ context.Context, b, user string) (store.Seat, bool, error) {
	if f.empty || user != "viewer-1" {
		return store.Seat{}, false, f.err
	}
	return f.seat(b, user), true, f.err
}
func (f *oaFleet) SeatsPage(_ context.Context, arn, _ string, _ int) ([]store.Seat, string, store.Stage, error) {
	if f.empty {
		return nil, "", f.stage(arn).Stage, f.err
	}
	return []store.Seat{f.seat("default", "viewer-1")}, "next-page", f.stage(arn).Stage, f.err
}
func (f *oaFleet) Broadcasts(context.Context) ([]store.Broadcast, error) {
	return []store.Broadcast{{ID: "default", OriginArn: oaArn, CreatedAt: oaTime}}, f.err
}
func (f *oaFleet) HandleEvent(context.Context, fleet.Event) (fleet.EventResult, error) {
	return fleet.EventApplied, f.err
}
func (f *oaFleet) Now() time.Time           { return oaTime }
func (f *oaFleet) SeatLease() time.Duration { return time.Minute }

// fullLive is a WebSocket hub that holds all the connections it may.
type fullLive struct{}

func (fullLive) Serve(http.ResponseWriter, *http.Request) error { return live.ErrFull }

// oaHistory answers every history read with full sample data (a closed
// session and an open one, whose nulls the document must allow), or with
// err; empty: nothing was recorded.
type oaHistory struct {
	err   error
	empty bool
}

var _ History = oaHistory{}

func (h oaHistory) History(_ context.Context, user string, _ int, _ string) ([]history.Session, string, int, error) {
	if h.empty {
		return nil, "", 0, h.err
	}
	closed := history.Session{ID: 1, SessionID: "S1", BroadcastID: "default", UserID: user, StageArn: oaArn2, ParticipantID: "PART2",
		JoinedAt: oaTime.Add(-time.Hour), LeftAt: oaTime.Add(-time.Hour + 270*time.Second), WatchDuration: 270 * time.Second, EndReason: history.EndLeave}
	open := history.Session{ID: 2, SessionID: "S2", BroadcastID: "default", UserID: user, StageArn: oaArn2, ParticipantID: "PART3", JoinedAt: oaTime}
	return []history.Session{open, closed}, "next-page", 3, h.err
}

func (h oaHistory) StageStats(context.Context, string, time.Time) (history.Stats, error) {
	if h.empty {
		return history.Stats{}, h.err
	}
	return history.Stats{TotalViews: 3, UniqueViewers: 2, AvgWatchDuration: 1500 * time.Millisecond, MaxWatchDuration: 2 * time.Second, TotalWatchTime: 3 * time.Second}, h.err
}

func (h oaHistory) Series(_ context.Context, _ string, from, _ time.Time, step time.Duration) ([]history.Point, error) {
	return []history.Point{{At: from, Viewers: 0, Stages: 0}, {At: from.Add(step), Viewers: 12, Stages: 2}}, h.err
}

func (h oaHistory) BroadcastStats(context.Context, string) (history.BroadcastStats, error) {
	if h.empty {
		return history.BroadcastStats{}, h.err
	}
	return history.BroadcastStats{PeakViewers: 12, PeakAt: oaTime, UniqueViewers: 2, Sessions: 3, TotalWatchTime: 3 * time.Second, AvgWatchTime: 1500 * time.Millisecond, Stages: 2}, h.err
}

// oaRequest is a valid request to a route, and one that fails validation.
type oaRequest struct {
	target, body       string
	badTarget, badBody string
}

var (
	oaReplication = `{"sourceStageArn":"` + oaArn + `","destinationStageArn":"` + oaArn2 + `","participantId":"PART1"}`
	oaViewer      = `{"userId":"viewer-1","broadcastId":"default"}`
	oaEvent       = `{"version":"0","id":"ev-1","detail-type":"IVS Stage Update","source":"aws.ivs","time":"2025-05-01T12:00:00Z",` +
		`"resources":["` + oaArn + `"],"detail":{"session_id":"st-1","event_name":"Participant Published","event_time":"2025-05-01T12:00:00Z","user_id":"host-1","participant_id":"PART1"}}`
)

// oaMetrics is the handler app gives GET /metrics, as it answers.
var oaMetrics = metrics.New(metrics.Options{}).Handler()

var oaRequests = map[string]oaRequest{
	"GET /api/health":                                 {target: "/api/health"},
	"GET /health":                                     {target: "/health"},
	"GET /{$}":                                        {target: "/"},
	"GET /openapi.json":                               {target: "/openapi.json"},
	"POST /api/events/ivs":                            {target: eventsPath, body: oaEvent, badBody: `{"id":"ev-2","detail-type":"IVS Stage Update","source":"aws.ivs"}`},
	"POST /api/token/publisher":                       {target: "/api/token/publisher", body: `{"userId":"host-1"}`, badBody: `{"userId":7}`},
	"POST /api/token/viewer":                          {target: "/api/token/viewer", body: oaViewer, badBody: `[]`},
	"POST /api/token/mediaserver":                     {target: "/api/token/mediaserver", body: `{"serverId":"mixer-1","stageArn":"` + oaArn + `"}`, badBody: `{"serverId":"mixer-1"}`},
	"GET /api/stage/list":                             {target: "/api/stage/list?broadcastId=default", badTarget: "/api/stage/list?broadcastId=no%20spaces"},
	"GET /api/stage/master/info":                      {target: "/api/stage/master/info", badTarget: "/api/stage/master/info?broadcastId=no%20spaces"},
	"POST /api/stage":                                 {target: "/api/stage", body: `{"name":"backstage","tags":{"team":"ops"}}`, badBody: `{"name":"no spaces"}`},
	"GET /api/stage/{stageArn...}":                    {target: "/api/stage/" + oaArn, badTarget: "/api/stage/nope"},
	"PUT /api/stage/{stageArn...}":                    {target: "/api/stage/" + url.PathEscape(oaArn), body: `{"name":"renamed"}`, badBody: `{}`},
	"DELETE /api/stage/{stageArn...}":                 {target: "/api/stage/" + url.PathEscape(oaArn2), badTarget: "/api/stage/arn:aws:ivs:us-east-1:1:channel/x"},
	"POST /api/stage/replication/start":               {target: "/api/stage/replication/start", body: oaReplication, badBody: `{"sourceStageArn":"x"}`},
	"DELETE /api/stage/replication/stop":              {target: "/api/stage/replication/stop", body: oaReplication, badBody: `not json`},
	"GET /api/stage/replication/status/{stageArn...}": {target: "/api/stage/replication/status/" + url.PathEscape(oaArn2), badTarget: "/api/stage/replication/status/x"},
	"GET /api/stage/replication/publisher-info":       {target: "/api/stage/replication/publisher-info", badTarget: "/api/stage/replication/publisher-info?broadcastId=%2F"},
	"POST /api/viewer/heartbeat":                      {target: "/api/viewer/heartbeat", body: `{"userId":"viewer-1","participantId":"PART1","stageArn":"` + oaArn2 + `"}`, badBody: `{"userId":"viewer-1"}`},
	"POST /api/viewer/leave":                          {target: "/api/viewer/leave", body: oaViewer, badBody: `{"userId":"v","broadcastId":"a b"}`},
	"POST /api/viewer/rejoin":                         {target: "/api/viewer/rejoin", body: `{"userId":"viewer-1","stageArn":"` + oaArn2 + `"}`, badBody: `{"userId":"v","stageArn":"nope"}`},
	"GET /api/viewer/list/{stageArn...}":              {target: "/api/viewer/list/" + oaArn2, badTarget: "/api/viewer/list/nope"},
	"GET /api/viewer/duration":                        {target: "/api/viewer/duration?userId=viewer-1&stageArn=" + url.QueryEscape(oaArn2), badTarget: "/api/viewer/duration?userId=viewer-1&stageArn=nope"},
	"GET /api/viewer/history/{userId}":                {target: "/api/viewer/history/viewer-1?limit=2&cursor=abc", badTarget: "/api/viewer/history/viewer-1?limit=0"},
	"GET /api/viewer/stats/{stageArn...}":             {target: "/api/viewer/stats/" + url.PathEscape(oaArn2) + "?days=30", badTarget: "/api/viewer/stats/" + oaArn2 + "?days=0"},
	"GET /api/stats":                                  {target: "/api/stats"},
	"GET /api/stats/viewers":                          {target: "/api/stats/viewers"},
	"GET /api/stats/stages":                           {target: "/api/stats/stages?arn=" + url.QueryEscape(oaArn2), badTarget: "/api/stats/stages?arn=nope"},
	"GET /api/stats/stages/{stageId}":                 {target: "/api/stats/stages/GhIjKl789012", badTarget: "/api/stats/stages/no_underscores"},
	"GET /api/stats/publisher":                        {target: "/api/stats/publisher"},
	"GET /api/stats/history":                          {target: "/api/stats/history?broadcastId=default&from=2025-05-01T11:00:00Z&to=2025-05-01T12:00:00Z&step=30m", badTarget: "/api/stats/history?step=-1s"},
	"GET /api/stats/broadcasts/{broadcastId}":         {target: "/api/stats/broadcasts/show-1", badTarget: "/api/stats/broadcasts/no%20spaces"},
	"DELETE /api/broadcasts/{broadcastId}":            {target: "/api/broadcasts/show-1", badTarget: "/api/broadcasts/no%20spaces"},
	"GET /ws":                                         {target: "/ws"}, // no handshake: 426; the upgrade is tested with a real server
	"GET /metrics":                                    {target: "/metrics"},
	"GET /dashboard":                                  {target: "/dashboard"},
	"GET /dashboard/static/{file...}":                 {target: "/dashboard/static/dashboard.js"},
}

// oaFleetErrors are the fleet failures each route passes on; the document
// must declare the status and code each becomes.
var oaFleetErrors = map[string][]error{
	"GET /metrics":                                    {},
	"POST /api/events/ivs":                            {fleet.ErrUnavailable},
	"POST /api/token/publisher":                       {fleet.ErrToken, fleet.ErrStageLimit, fleet.ErrInvalid, fleet.ErrConflict, fleet.ErrUnavailable},
	"POST /api/token/viewer":                          {fleet.ErrNotLive, fleet.ErrNotFound, fleet.ErrConflict, fleet.ErrStageFull, fleet.ErrStageLimit, fleet.ErrToken, fleet.ErrUnavailable},
	"POST /api/viewer/rejoin":                         {fleet.ErrNotLive, fleet.ErrNotFound, fleet.ErrConflict, fleet.ErrStageFull, fleet.ErrStageLimit, fleet.ErrToken, fleet.ErrUnavailable},
	"POST /api/token/mediaserver":                     {fleet.ErrNotFound, fleet.ErrToken, fleet.ErrUnavailable},
	"POST /api/viewer/heartbeat":                      {fleet.ErrNotFound, fleet.ErrConflict, fleet.ErrUnavailable},
	"POST /api/viewer/leave":                          {fleet.ErrUnavailable},
	"DELETE /api/broadcasts/{broadcastId}":            {fleet.ErrNotFound, fleet.ErrUnavailable},
	"GET /api/stage/list":                             {fleet.ErrUnavailable},
	"GET /api/stage/master/info":                      {fleet.ErrNotFound, fleet.ErrUnavailable},
	"POST /api/stage":                                 {fleet.ErrInvalid, fleet.ErrConflict, fleet.ErrStageLimit, fleet.ErrUnavailable},
	"GET /api/stage/{stageArn...}":                    {fleet.ErrNotFound, fleet.ErrUnavailable},
	"PUT /api/stage/{stageArn...}":                    {fleet.ErrInvalid, fleet.ErrNotFound, fleet.ErrUnavailable},
	"DELETE /api/stage/{stageArn...}":                 {fleet.ErrInvalid, fleet.ErrForbidden, fleet.ErrNotFound, fleet.ErrUnavailable},
	"POST /api/stage/replication/start":               {fleet.ErrInvalid, fleet.ErrForbidden, fleet.ErrNotFound, fleet.ErrNotPublishing, fleet.ErrStageLimit, fleet.ErrUnavailable},
	"DELETE /api/stage/replication/stop":              {fleet.ErrInvalid, fleet.ErrNotFound, fleet.ErrUnavailable},
	"GET /api/stage/replication/status/{stageArn...}": {fleet.ErrUnavailable},
	"GET /api/stage/replication/publisher-info":       {fleet.ErrUnavailable},
	"GET /api/viewer/list/{stageArn...}":              {fleet.ErrNotFound, fleet.ErrUnavailable},
	"GET /api/viewer/duration":                        {fleet.ErrUnavailable},
	"GET /api/stats":                                  {fleet.ErrUnavailable},
	"GET /api/stats/viewers":                          {fleet.ErrUnavailable},
	"GET /api/stats/stages":                           {fleet.ErrUnavailable},
	"GET /api/stats/stages/{stageId}":                 {fleet.ErrUnavailable},
	"GET /api/stats/publisher":                        {fleet.ErrUnavailable},
	// The history routes read the history, not the fleet: their failures
	// are oaHistory's, below.
	"GET /api/viewer/history/{userId}":        {},
	"GET /api/viewer/stats/{stageArn...}":     {},
	"GET /api/stats/history":                  {},
	"GET /api/stats/broadcasts/{broadcastId}": {},
}

// oaCheck follows the answers of one handler configuration against the
// document.
type oaCheck struct {
	t   *testing.T
	doc oaDoc
	ops map[string]oaOperation
}

func (c oaCheck) serve(h http.Handler, method, target, body string, header http.Header) *httptest.ResponseRecorder {
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, target, r)
	for k, v := range header {
		req.Header[k] = v
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// expect checks that the answer's status is declared for the route and that
// its body has the declared shape.
func (c oaCheck) expect(key string, rec *httptest.ResponseRecorder, what string) {
	c.t.Helper()
	method, path, _ := strings.Cut(key, " ") // key is a route's "METHOD /path"
	op := c.ops[method+" "+openAPIPath(path)]
	status := fmt.Sprint(rec.Code)
	resp := op.Responses[status]
	if resp == nil {
		c.t.Errorf("%s (%s): answered %s, which openapi.json does not declare: %s", key, what, status, rec.Body)
		return
	}
	c.expectResponse(key, resp, rec, what)
}

// expectResponse checks an answer against one declared response: its
// headers, and its body's shape (none when it declares no content).
func (c oaCheck) expectResponse(key string, resp *oaResponse, rec *httptest.ResponseRecorder, what string) {
	c.t.Helper()
	status := fmt.Sprint(rec.Code)
	if resp.Ref != "" {
		resp = c.doc.Components.Responses[strings.TrimPrefix(resp.Ref, "#/components/responses/")]
	}
	for h := range resp.Headers {
		if rec.Header().Get(h) == "" {
			c.t.Errorf("%s (%s): %s declares header %s but it was not sent", key, what, status, h)
		}
	}
	if rec.Header().Get("Retry-After") != "" && resp.Headers["Retry-After"] == nil {
		c.t.Errorf("%s (%s): sent Retry-After, which %s does not declare", key, what, status)
	}
	if resp.Content == nil {
		if rec.Body.Len() > 0 {
			c.t.Errorf("%s (%s): %s declares no body, but one was sent: %s", key, what, status, rec.Body)
		}
		return
	}
	media, ok := resp.Content["application/json"]
	if !ok {
		// A page or a file (the dashboard): the media type sent must be
		// one declared, and the body not empty.
		ct, _, _ := mime.ParseMediaType(rec.Header().Get("Content-Type"))
		if _, declared := resp.Content[ct]; !declared || rec.Body.Len() == 0 {
			c.t.Errorf("%s (%s): %s sent %d bytes of %q; declared: %v", key, what, status, rec.Body.Len(), ct, slices.Collect(maps.Keys(resp.Content)))
		}
		return
	}
	if media.Schema == nil {
		c.t.Errorf("%s (%s): %s declares no application/json schema", key, what, status)
		return
	}
	var v any
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		c.t.Errorf("%s (%s): body is not JSON: %v", key, what, err)
		return
	}
	for _, p := range c.validate(v, []*oaSchema{media.Schema}, "body") {
		c.t.Errorf("%s (%s) %s: %s", key, what, status, p)
	}
}

// flatten resolves $ref and allOf into the schemas a value must meet, each
// once.
func (c oaCheck) flatten(ss []*oaSchema) []*oaSchema {
	var out []*oaSchema
	for _, s := range ss {
		for s != nil && s.Ref != "" {
			s = c.doc.Components.Schemas[strings.TrimPrefix(s.Ref, "#/components/schemas/")]
		}
		if s == nil || slices.Contains(out, s) {
			continue
		}
		out = append(out, s)
		for _, sub := range c.flatten(s.AllOf) {
			if !slices.Contains(out, sub) {
				out = append(out, sub)
			}
		}
	}
	return out
}

// validate checks v against every schema, strictly: an object field the
// schemas do not document is a problem, so the document lists everything
// the handlers send.
func (c oaCheck) validate(v any, ss []*oaSchema, at string) []string {
	ss = c.flatten(ss)
	// null meets a schema marked nullable (OpenAPI 3.0), whatever its type.
	if v == nil && slices.ContainsFunc(ss, func(s *oaSchema) bool { return s.Nullable }) {
		return nil
	}
	// oneOf: v must meet exactly one branch together with the other
	// schemas, whose fields the branch may rely on.
	for i, s := range ss {
		if len(s.OneOf) == 0 {
			continue
		}
		without := *s
		without.OneOf = nil
		rest := slices.Concat(ss[:i], []*oaSchema{&without}, ss[i+1:])
		var matched int
		var failed []string
		for j, branch := range s.OneOf {
			p := c.validate(v, append(slices.Clone(rest), branch), at)
			if len(p) == 0 {
				matched++
			}
			failed = append(failed, fmt.Sprintf("oneOf[%d]: %s", j, strings.Join(p, "; ")))
		}
		if matched != 1 {
			return []string{fmt.Sprintf("%s: meets %d branches of oneOf, want exactly 1 (%s)", at, matched, strings.Join(failed, " | "))}
		}
		return nil
	}
	var problems []string
	props := map[string][]*oaSchema{}
	var extra []*oaSchema
	documented := false
	for _, s := range ss {
		if s.Type != "" && !oaTypeIs(v, s.Type) {
			problems = append(problems, fmt.Sprintf("%s: %v is not of type %s", at, v, s.Type))
			continue
		}
		if len(s.Enum) > 0 && !slices.Contains(s.Enum, v) {
			problems = append(problems, fmt.Sprintf("%s: %v is not one of %v", at, v, s.Enum))
		}
		if str, ok := v.(string); ok {
			if s.Format == "date-time" {
				if _, err := time.Parse(time.RFC3339Nano, str); err != nil {
					problems = append(problems, fmt.Sprintf("%s: %q is not a date-time", at, str))
				}
			}
			if s.Pattern != "" && !regexp.MustCompile(s.Pattern).MatchString(str) {
				problems = append(problems, fmt.Sprintf("%s: %q does not match %s", at, str, s.Pattern))
			}
		}
		if obj, ok := v.(map[string]any); ok {
			for _, r := range s.Required {
				if _, ok := obj[r]; !ok {
					problems = append(problems, fmt.Sprintf("%s: required field %s is missing", at, r))
				}
			}
			for k, p := range s.Properties {
				props[k] = append(props[k], p)
			}
			if s.AdditionalProperties != nil {
				extra = append(extra, s.AdditionalProperties)
			}
			documented = documented || s.Properties != nil || s.AdditionalProperties != nil
		}
		if arr, ok := v.([]any); ok && s.Items != nil {
			for i, item := range arr {
				problems = append(problems, c.validate(item, []*oaSchema{s.Items}, fmt.Sprintf("%s[%d]", at, i))...)
			}
		}
	}
	if obj, ok := v.(map[string]any); ok && documented {
		for k, fv := range obj {
			switch {
			case len(props[k]) > 0:
				problems = append(problems, c.validate(fv, props[k], at+"."+k)...)
			case len(extra) > 0:
				problems = append(problems, c.validate(fv, extra, at+"."+k)...)
			default:
				problems = append(problems, fmt.Sprintf("%s: field %s is not documented", at, k))
			}
		}
	}
	return problems
}

func oaTypeIs(v any, typ string) bool {
	switch typ {
	case "object":
		_, ok := v.(map[string]any)
		return ok
	case "array":
		_, ok := v.([]any)
		return ok
	case "string":
		_, ok := v.(string)
		return ok
	case "boolean":
		_, ok := v.(bool)
		return ok
	case "number":
		_, ok := v.(float64)
		return ok
	case "integer":
		n, ok := v.(float64)
		return ok && n == math.Trunc(n)
	}
	return false
}

// oaHealth reports the service as healthy, degraded (the controller is
// stuck) or unhealthy (the store does not answer), as the app fills Health.
func oaHealth(status string) func(context.Context) Health {
	return func(context.Context) Health {
		h := Health{
			Status:      status,
			Uptime:      12.345,
			Environment: "production",
			Version:     "1.4.0",
			Services:    HealthServices{Redis: "connected", AWS: HealthAWS{Region: "us-east-1", StageConfigured: true, Mode: "emulator"}},
			Memory:      HealthMemory{HeapUsed: 10.5, HeapTotal: 20.25, RSS: 40},
			Checks: map[string]Check{
				"store":      {Status: "ok", Message: "the redis store answers"},
				"ivs":        {Status: "ok", Message: "IVS answered at 2025-05-01T12:00:00Z"},
				"signingKey": {Status: "ok", Message: "IVS holds the token signing key"},
				"controller": {Status: "ok", Message: "the controller's loop runs"},
				"origins":    {Status: "ok", Message: "every broadcast's origin exists in IVS"},
			},
			IVS:        Component{Status: "ok", Mode: "emulator", Endpoint: "http://127.0.0.1:4566", Embedded: true, Tokens: "self-signed"},
			Store:      Component{Status: "ok", Mode: "redis"},
			Controller: Component{Status: "ok"},
		}
		switch status {
		case HealthDegraded:
			h.Checks["controller"] = Check{Status: "degraded", Message: "the controller's loop is stuck"}
			h.Controller = Component{Status: "degraded", Error: "the controller's loop is stuck"}
		case HealthUnhealthy:
			h.Services.Redis = "disconnected"
			h.Checks["store"] = Check{Status: "failed", Message: "the redis store does not answer: down"}
			h.Store = Component{Status: "error", Mode: "redis", Error: "down"}
		}
		return h
	}
}

func TestOpenAPIDescribesAnswers(t *testing.T) {
	doc, ops := parseOpenAPI(t)
	c := oaCheck{t: t, doc: doc, ops: ops}
	secrets := http.Header{"X-Internal-Secret": {"internal"}, "X-Stagefleet-Events-Secret": {"events"}, "X-Api-Key": {"key"}}
	opts := Options{APISecretKey: "key", InternalSecret: "internal", EventsSecret: "events", Health: oaHealth(HealthHealthy), Metrics: oaMetrics, History: oaHistory{}}
	for _, rt := range routes {
		key := rt.method + " " + rt.path
		req, ok := oaRequests[key]
		if !ok {
			t.Errorf("no sample request for %s: add one to oaRequests", key)
			continue
		}
		if _, ok := oaFleetErrors[key]; !ok && (!rt.open || rt.path == eventsPath) {
			t.Errorf("no fleet errors listed for %s: add them to oaFleetErrors", key)
		}

		// Success.
		h := New(opts, &oaFleet{})
		c.expect(key, c.serve(h, rt.method, req.target, req.body, secrets), "success")

		// Validation.
		if req.badTarget != "" || req.badBody != "" {
			target, body := req.target, req.body
			if req.badTarget != "" {
				target = req.badTarget
			}
			if req.badBody != "" {
				body = req.badBody
			}
			rec := c.serve(h, rt.method, target, body, secrets)
			if rec.Code != http.StatusBadRequest {
				t.Errorf("%s with bad input: %d, want 400: %s", key, rec.Code, rec.Body)
			}
			c.expect(key, rec, "bad input")
		}

		// Too large a body.
		if req.body != "" {
			small := New(Options{SkipAuth: true, InternalSecret: "internal", MaxBodyBytes: 64, Health: oaHealth(HealthHealthy)}, &oaFleet{})
			big := `{"pad":"` + strings.Repeat("x", 100) + `"}`
			rec := c.serve(small, rt.method, req.target, big, secrets)
			if rec.Code != http.StatusRequestEntityTooLarge {
				t.Errorf("%s with a large body: %d, want 413: %s", key, rec.Code, rec.Body)
			}
			c.expect(key, rec, "large body")
		}

		// Missing secrets.
		rec := c.serve(h, rt.method, req.target, req.body, nil)
		switch {
		case !rt.open:
			if rec.Code != http.StatusUnauthorized {
				t.Errorf("%s without x-api-key: %d, want 401", key, rec.Code)
			}
			c.expect(key, rec, "no x-api-key")
		case rt.path == eventsPath:
			if rec.Code != http.StatusUnauthorized {
				t.Errorf("%s without x-stagefleet-events-secret: %d, want 401", key, rec.Code)
			}
			c.expect(key, rec, "no events secret")
		}

		// Rate limit: every route but the events webhook.
		limited := New(Options{SkipAuth: true, InternalSecret: "internal", RateLimitMax: 1, RateLimitWindow: time.Hour, Health: oaHealth(HealthHealthy)}, &oaFleet{})
		c.serve(limited, rt.method, req.target, req.body, secrets)
		rec = c.serve(limited, rt.method, req.target, req.body, secrets)
		if rt.path == eventsPath {
			if rec.Code == http.StatusTooManyRequests {
				t.Errorf("%s is rate limited", key)
			}
		} else {
			if rec.Code != http.StatusTooManyRequests {
				t.Errorf("%s twice with a limit of 1: %d, want 429", key, rec.Code)
			}
			c.expect(key, rec, "rate limited")
		}

		// Fleet failures.
		for _, kind := range oaFleetErrors[key] {
			fe := &fleet.Error{Kind: kind, Msg: "it failed"}
			if kind == fleet.ErrStageFull || (kind == fleet.ErrStageLimit && strings.Contains(key, "viewer")) {
				fe.RetryAfter = 2 * time.Second // as the fleet's seat wait sets it
			}
			f := &oaFleet{err: fe}
			rec := c.serve(New(opts, f), rt.method, req.target, req.body, secrets)
			if rec.Code < 400 {
				t.Errorf("%s with fleet error %v: %d, want a failure", key, kind, rec.Code)
			}
			c.expect(key, rec, "fleet: "+kind.Error())
		}
	}

	// What the table cannot reach. data, when set, are values the answer's
	// data must hold (JSON numbers are float64).
	auth := Options{SkipAuth: true}
	wsKeyed := Options{APISecretKey: "key", Live: fullLive{}}
	wsHandshake := http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}
	withHealth := func(status string) Options { return Options{Health: oaHealth(status)} }
	withHistory := func(h History) Options { return Options{SkipAuth: true, History: h} }
	historyBroken := withHistory(oaHistory{err: errors.New("connection refused")})
	historyInvalid := withHistory(oaHistory{err: fmt.Errorf("%w: a cursor this store did not make", history.ErrInvalid)})
	historyEmpty := withHistory(oaHistory{empty: true})
	historyRoutes := []struct{ key, target string }{
		{"GET /api/viewer/history/{userId}", "/api/viewer/history/viewer-1"},
		{"GET /api/viewer/stats/{stageArn...}", "/api/viewer/stats/" + oaArn2},
		{"GET /api/stats/history", "/api/stats/history"},
		{"GET /api/stats/broadcasts/{broadcastId}", "/api/stats/broadcasts/default"},
	}
	extra := []struct {
		key, what string
		h         http.Handler
		method    string
		target    string
		body      string
		header    http.Header
		want      int
		data      map[string]any
	}{
		{"GET /api/health", "degraded", New(withHealth(HealthDegraded), &oaFleet{}), "GET", "/api/health", "", nil, 200, map[string]any{"status": "degraded"}},
		{"GET /api/health", "unhealthy", New(withHealth(HealthUnhealthy), &oaFleet{}), "GET", "/api/health", "", nil, 503, map[string]any{"status": "unhealthy"}},
		{"GET /health", "unhealthy", New(withHealth(HealthUnhealthy), &oaFleet{}), "GET", "/health", "", nil, 503, map[string]any{"status": "unhealthy"}},
		{"POST /api/token/mediaserver", "wrong internal secret", New(Options{SkipAuth: true, InternalSecret: "internal"}, &oaFleet{}), "POST", "/api/token/mediaserver", oaRequests["POST /api/token/mediaserver"].body, http.Header{"X-Internal-Secret": {"nope"}}, 403, nil},
		{"POST /api/token/mediaserver", "no INTERNAL_SECRET", New(auth, &oaFleet{}), "POST", "/api/token/mediaserver", oaRequests["POST /api/token/mediaserver"].body, nil, 403, nil},
		{"POST /api/viewer/leave", "no seat", New(auth, &oaFleet{empty: true}), "POST", "/api/viewer/leave", oaViewer, nil, 200, map[string]any{"viewerLeft": false}},
		{"GET /api/viewer/duration", "viewer without a seat", New(auth, &oaFleet{}), "GET", "/api/viewer/duration?userId=nobody", "", nil, 200,
			map[string]any{"userId": "nobody", "watchDurationSeconds": 0.0, "watchDurationFormatted": "0:00:00", "hasSeat": false}},
		{"GET /api/viewer/duration", "viewer on another stage", New(auth, &oaFleet{}), "GET", "/api/viewer/duration?userId=viewer-1&stageArn=" + url.QueryEscape(oaArn), "", nil, 200,
			map[string]any{"stageArn": oaArn, "watchDurationSeconds": 0.0, "hasSeat": false}},
		{"GET /api/viewer/duration", "a broadcast's viewers", New(auth, &oaFleet{}), "GET", "/api/viewer/duration", "", nil, 200, map[string]any{"totalSeconds": 60.0, "averageSeconds": 60.0}},
		{"GET /api/viewer/duration", "a broadcast without viewers", New(auth, &oaFleet{empty: true}), "GET", "/api/viewer/duration", "", nil, 200, map[string]any{"totalSeconds": 0.0, "averageSeconds": 0.0}},
		{"DELETE /api/stage/{stageArn...}", "viewers seated", New(auth, &oaFleet{err: &fleet.Error{Kind: fleet.ErrInvalid, Msg: "it has 3 seated viewers", Details: map[string]any{"viewerCount": 3}}}),
			"DELETE", "/api/stage/" + oaArn2, "", nil, 400, nil},
		{"GET /api/stage/replication/status/{stageArn...}", "a host's origin", New(auth, &oaFleet{}), "GET", "/api/stage/replication/status/" + oaArn, "", nil, 200, map[string]any{"hasReplication": false}},
		{"GET /api/stage/replication/publisher-info", "no host", New(auth, &oaFleet{empty: true}), "GET", "/api/stage/replication/publisher-info", "", nil, 200, map[string]any{"hasPublisher": false}},
		{"GET /api/stage/replication/publisher-info", "origin replaced", New(auth, &oaFleet{originReplaced: true}), "GET", "/api/stage/replication/publisher-info", "", nil, 200, map[string]any{"hasPublisher": true}},
		{"GET /api/stats/stages/{stageId}", "unknown stage", New(auth, &oaFleet{}), "GET", "/api/stats/stages/Unknown1", "", nil, 200, map[string]any{"totalStages": 0.0}},
		{"POST /api/events/ivs", "not an IVS event", New(Options{}, &oaFleet{}), "POST", eventsPath, `{"id":"x","detail-type":"EC2 Instance State-change Notification","source":"aws.ec2"}`, nil, 400, nil},
		{"POST /api/events/ivs", "another IVS event", New(Options{}, &oaFleet{}), "POST", eventsPath, `{"id":"x","detail-type":"IVS Stream State Change","source":"aws.ivs"}`, nil, 200, nil},
		{"GET /metrics", "served on METRICS_ADDR", New(Options{APISecretKey: "key"}, &oaFleet{}), "GET", "/metrics", "", http.Header{"X-Api-Key": {"key"}}, 404, nil},
		{"POST /api/stage/replication/start", "same stage twice", New(auth, &oaFleet{err: &fleet.Error{Kind: fleet.ErrInvalid, Msg: "same"}}), "POST", "/api/stage/replication/start", oaReplication, nil, 400, nil},
		{"GET /ws", "no key", New(wsKeyed, &oaFleet{}), "GET", "/ws", "", nil, 401, nil},
		{"GET /ws", "wrong query key", New(wsKeyed, &oaFleet{}), "GET", "/ws?apiKey=nope", "", nil, 401, nil},
		{"GET /ws", "query key", New(wsKeyed, &oaFleet{}), "GET", "/ws?apiKey=key", "", nil, 426, nil},
		{"GET /ws", "subprotocol key", New(wsKeyed, &oaFleet{}), "GET", "/ws", "", http.Header{"Sec-Websocket-Protocol": {"stagefleet, stagefleet.key.a2V5"}}, 426, nil},
		{"GET /ws", "wrong subprotocol key", New(wsKeyed, &oaFleet{}), "GET", "/ws", "", http.Header{"Sec-Websocket-Protocol": {"stagefleet, stagefleet.key.bm9wZQ"}}, 401, nil},
		{"GET /ws", "hub full", New(Options{SkipAuth: true, Live: fullLive{}}, &oaFleet{}), "GET", "/ws", "", wsHandshake, 503, nil},
		{"GET /ws", "no hub", New(auth, &oaFleet{}), "GET", "/ws", "", wsHandshake, 404, nil},
		{"GET /api/viewer/history/{userId}", "a page", New(withHistory(oaHistory{}), &oaFleet{}), "GET", "/api/viewer/history/viewer-1", "", nil, 200,
			map[string]any{"userId": "viewer-1", "totalRecords": 3.0, "nextCursor": "next-page"}},
		{"GET /api/viewer/history/{userId}", "no sessions", New(historyEmpty, &oaFleet{}), "GET", "/api/viewer/history/viewer-1", "", nil, 200,
			map[string]any{"totalRecords": 0.0, "history": []any{}}},
		{"GET /api/viewer/history/{userId}", "limit over 1000", New(historyEmpty, &oaFleet{}), "GET", "/api/viewer/history/viewer-1?limit=1001", "", nil, 400, nil},
		{"GET /api/viewer/stats/{stageArn...}", "no viewing", New(historyEmpty, &oaFleet{}), "GET", "/api/viewer/stats/" + oaArn2, "", nil, 200,
			map[string]any{"stageArn": oaArn2, "days": 7.0, "message": "no viewing recorded on this stage in the last 7 days"}},
		{"GET /api/viewer/stats/{stageArn...}", "viewing", New(withHistory(oaHistory{}), &oaFleet{}), "GET", "/api/viewer/stats/" + oaArn2, "", nil, 200,
			map[string]any{"stats": map[string]any{"stageArn": oaArn2, "totalViews": 3.0, "uniqueViewers": 2.0, "avgWatchDuration": 1.5, "maxWatchDuration": 2.0, "totalWatchTime": 3.0}}},
		{"GET /api/stats/history", "a range and step", New(withHistory(oaHistory{}), &oaFleet{}), "GET", "/api/stats/history?from=2025-05-01T11:00:00Z&to=2025-05-01T12:00:00Z&step=30m", "", nil, 200,
			map[string]any{"broadcastId": "default", "from": "2025-05-01T11:00:00Z", "to": "2025-05-01T12:00:00Z", "step": "30m0s"}},
		{"GET /api/stats/history", "from not a time", New(withHistory(oaHistory{}), &oaFleet{}), "GET", "/api/stats/history?from=yesterday", "", nil, 400, nil},
		{"GET /api/stats/broadcasts/{broadcastId}", "nothing recorded", New(historyEmpty, &oaFleet{}), "GET", "/api/stats/broadcasts/default", "", nil, 200,
			map[string]any{"peakViewers": 0.0, "peakAt": nil, "sessions": 0.0}},
	}
	for _, x := range extra {
		rec := c.serve(x.h, x.method, x.target, x.body, x.header)
		if rec.Code != x.want {
			t.Errorf("%s (%s): %d, want %d: %s", x.key, x.what, rec.Code, x.want, rec.Body)
		}
		c.expect(x.key, rec, x.what)
		if x.data == nil {
			continue
		}
		var got struct{ Data map[string]any }
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
			t.Errorf("%s (%s): %v", x.key, x.what, err)
			continue
		}
		for k, want := range x.data {
			if !reflect.DeepEqual(got.Data[k], want) {
				t.Errorf("%s (%s): data.%s = %v, want %v", x.key, x.what, k, got.Data[k], want)
			}
		}
	}

	// Every history route with the history off, refusing an argument
	// (history.ErrInvalid), and with its database down.
	for _, r := range historyRoutes {
		for _, x := range []struct {
			what string
			h    http.Handler
			want int
		}{
			{"HISTORY=off", New(auth, &oaFleet{}), http.StatusNotFound},
			{"invalid argument", New(historyInvalid, &oaFleet{}), http.StatusBadRequest},
			{"database down", New(historyBroken, &oaFleet{}), http.StatusInternalServerError},
		} {
			rec := c.serve(x.h, "GET", r.target, "", nil)
			if rec.Code != x.want {
				t.Errorf("%s (%s): %d, want %d: %s", r.key, x.what, rec.Code, x.want, rec.Body)
			}
			c.expect(r.key, rec, x.what)
		}
	}
}

// The answers no route makes, described under components.responses: a path
// no route takes, a method a path does not take, a path not in clean form,
// and a CORS preflight.
func TestOpenAPIDescribesAnswersOfAnyPath(t *testing.T) {
	doc, ops := parseOpenAPI(t)
	c := oaCheck{t: t, doc: doc, ops: ops}
	plain := New(Options{Health: oaHealth(HealthHealthy)}, &oaFleet{})
	cors := New(Options{Health: oaHealth(HealthHealthy), CORSOrigins: []string{"https://app.example.com"}}, &oaFleet{})
	preflight := http.Header{"Origin": {"https://app.example.com"}, "Access-Control-Request-Method": {"POST"}, "Access-Control-Request-Headers": {"content-type,x-api-key"}}
	tests := []struct {
		what     string
		h        http.Handler
		method   string
		target   string
		header   http.Header
		want     int
		response string
		allow    string
	}{
		{"unknown path", plain, "GET", "/api/nothing", nil, 404, "NoRoute", ""},
		{"wrong method", plain, "PUT", "/api/health", nil, 405, "MethodNotAllowed", "GET, HEAD"},
		{"wrong method on a stage", plain, "POST", "/api/stage/" + oaArn, nil, 405, "MethodNotAllowed", "DELETE, GET, PUT, HEAD"},
		{"wrong method on a literal path under a wildcard", plain, "GET", "/api/stage/replication/stop", nil, 405, "MethodNotAllowed", "DELETE"},
		{"wrong method on a literal path", plain, "POST", "/api/stage/master/info", nil, 405, "MethodNotAllowed", "GET, HEAD"},
		{"OPTIONS without CORS_ORIGINS", plain, "OPTIONS", "/api/token/viewer", preflight, 405, "MethodNotAllowed", "POST"},
		{"double slash", plain, "GET", "/api//health", nil, 400, "NotCleanPath", ""},
		{"dot segment", plain, "GET", "/api/./stats", nil, 400, "NotCleanPath", ""},
		{"dot-dot segment", plain, "GET", "/api/stats/../health", nil, 400, "NotCleanPath", ""},
		{"CORS preflight", cors, "OPTIONS", "/api/token/viewer", preflight, 204, "CorsPreflight", ""},
	}
	for _, tt := range tests {
		resp := doc.Components.Responses[tt.response]
		if resp == nil {
			t.Fatalf("components.responses.%s is missing", tt.response)
		}
		req := httptest.NewRequest(tt.method, "/", nil)
		// httptest.NewRequest would clean the path; the server does not.
		req.URL.Path = tt.target
		for k, v := range tt.header {
			req.Header[k] = v
		}
		rec := httptest.NewRecorder()
		tt.h.ServeHTTP(rec, req)
		if rec.Code != tt.want {
			t.Errorf("%s: %s %s = %d, want %d: %s", tt.what, tt.method, tt.target, rec.Code, tt.want, rec.Body)
		}
		if got := rec.Header().Get("Allow"); got != tt.allow {
			t.Errorf("%s: Allow = %q, want %q", tt.what, got, tt.allow)
		}
		c.expectResponse(tt.method+" "+tt.target, resp, rec, tt.what)
	}
}

// The examples in the document are checked against its own schemas, so that
// they show real shapes.
func TestOpenAPIExamples(t *testing.T) {
	doc, ops := parseOpenAPI(t)
	c := oaCheck{t: t, doc: doc, ops: ops}
	n := 0
	for key, op := range ops {
		for status, resp := range op.Responses {
			if resp.Ref != "" {
				resp = doc.Components.Responses[strings.TrimPrefix(resp.Ref, "#/components/responses/")]
			}
			media, ok := resp.Content["application/json"]
			if !ok || media.Example == nil {
				continue
			}
			var v any
			if err := json.Unmarshal(media.Example, &v); err != nil {
				t.Fatal(err)
			}
			for _, p := range c.validate(v, []*oaSchema{media.Schema}, "example") {
				t.Errorf("%s %s: %s", key, status, p)
			}
			n++
		}
	}
	if n == 0 {
		t.Error("no examples")
	}
}

// The error codes in the document are the ones the API uses.
func TestOpenAPIErrorCodes(t *testing.T) {
	doc, _ := parseOpenAPI(t)
	env := doc.Components.Schemas["ErrorEnvelope"]
	if env == nil || env.Properties["error"] == nil || env.Properties["error"].Properties["code"] == nil {
		t.Fatal("components.schemas.ErrorEnvelope.properties.error.properties.code is missing")
	}
	var got []string
	for _, v := range env.Properties["error"].Properties["code"].Enum {
		got = append(got, fmt.Sprint(v))
	}
	for _, code := range []string{CodeValidation, CodeUnauthorized, CodeForbidden, CodeConflict, CodeMethodNotAllowed, CodeNotFound, CodeNotPublishing,
		CodeRateLimited, CodeStageFull, CodeStageLimitReached, CodeTokenFailed, CodeInternal, CodeUpgradeRequired, CodeTooManyConnections} {
		if !slices.Contains(got, code) {
			t.Errorf("error code %s is not in the ErrorEnvelope enum %v", code, got)
		}
	}
}

// docs/api.md documents every route.
func TestAPIReferenceDocumentsRoutes(t *testing.T) {
	b, err := os.ReadFile("../../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, rt := range routes {
		// A section heading or a table row naming the route.
		name := "`" + rt.method + " " + openAPIPath(rt.path)
		if !strings.Contains(doc, "#### "+name+"`") && !strings.Contains(doc, "#### "+name+"?") && !strings.Contains(doc, "| "+name+"` |") {
			t.Errorf("docs/api.md documents no %s`", name)
		}
	}
}
