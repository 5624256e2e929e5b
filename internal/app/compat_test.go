package app_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stagefleet/stagefleet/internal/redistest"
)

// The previous server's clients read fields by name and by JSON type: these
// tests play their flow over HTTP, on the memory store and on Redis, and
// read every field they rely on from each answer.

// jsonKind is a JSON value's type, as a client in JavaScript sees it.
type jsonKind string

const (
	kindString jsonKind = "string"
	kindNumber jsonKind = "number"
	kindBool   jsonKind = "boolean"
	kindArray  jsonKind = "array"
	kindObject jsonKind = "object"
)

func kindOf(v any) jsonKind {
	switch v.(type) {
	case string:
		return kindString
	case float64:
		return kindNumber
	case bool:
		return kindBool
	case []any:
		return kindArray
	case map[string]any:
		return kindObject
	}
	return "null"
}

// compatField is one field a client reads: its path in the answer's body
// ("data.services.aws.region", "data.viewers.0.userId"), its kind and,
// when known, its value (a func() any is read when the answer comes, for
// values the flow learns on the way).
type compatField struct {
	path string
	kind jsonKind
	want any
}

// lookup follows a dotted path through objects and arrays.
func lookup(v any, path string) (any, bool) {
	for key := range strings.SplitSeq(path, ".") {
		switch x := v.(type) {
		case map[string]any:
			var ok bool
			if v, ok = x[key]; !ok {
				return nil, false
			}
		case []any:
			i, err := strconv.Atoi(key)
			if err != nil || i < 0 || i >= len(x) {
				return nil, false
			}
			v = x[i]
		default:
			return nil, false
		}
	}
	return v, true
}

// check reports what is wrong with the field in body.
func (f compatField) check(body any) error {
	got, ok := lookup(body, f.path)
	if !ok {
		return fmt.Errorf("%s is missing", f.path)
	}
	if k := kindOf(got); k != f.kind {
		return fmt.Errorf("%s is a %s (%v), want a %s", f.path, k, got, f.kind)
	}
	want := f.want
	if fn, ok := want.(func() any); ok {
		want = fn()
	}
	if n, ok := want.(int); ok {
		want = float64(n) // JSON numbers decode as float64
	}
	if want != nil && !reflect.DeepEqual(got, want) {
		return fmt.Errorf("%s = %v, want %v", f.path, got, want)
	}
	return nil
}

// compatCall is one request of the flow. path and body are read when the
// call is made, so that they may use what earlier answers gave.
type compatCall struct {
	name   string
	method string
	path   func() string
	body   func() any
	header http.Header
	status int
	fields []compatField
	// headers the answer must carry, with their values.
	wantHeader map[string]string
	// then acts on the answer before the next call.
	then func(t *testing.T, r response)
}

func TestPreviousServerClientFlow(t *testing.T) {
	env := map[string]string{"CORS_ORIGINS": compatOrigin}
	t.Run("memory", func(t *testing.T) {
		playPreviousClient(t, startApp(t, env), "not used (memory store)")
	})
	t.Run("redis", func(t *testing.T) {
		// Fails in CI when redis-server is missing, skips elsewhere.
		srv := redistest.Start(t)
		withRedis := maps.Clone(env)
		withRedis["REDIS_URL"] = srv.URL()
		playPreviousClient(t, startApp(t, withRedis), "connected")
	})
}

// compatOrigin is the browser origin CORS_ORIGINS allows.
const compatOrigin = "https://app.example.com"

// playPreviousClient plays a host and a viewer as the previous server's
// clients did, then the routes its dashboards read, checking each answer's
// fields. redis is what health's services.redis must say.
func playPreviousClient(t *testing.T, a *testApp, redis string) {
	var host, viewer tokenData
	var manualArn string
	fixed := func(s string) func() string { return func() string { return s } }
	origin := func() any { return host.StageArn }
	viewerStage := func() any { return viewer.StageArn }
	viewerSeat := func() any {
		return map[string]any{"userId": "viewer-1", "stageArn": viewer.StageArn, "participantId": viewer.ParticipantID}
	}
	replication := func() any {
		return map[string]any{"sourceStageArn": host.StageArn, "destinationStageArn": manualArn, "participantId": host.ParticipantID}
	}
	viewerToken := []compatField{
		{"data.token", kindString, nil},
		{"data.userId", kindString, "viewer-1"},
		{"data.stageArn", kindString, nil},
		{"data.participantId", kindString, nil},
		{"data.seatKey", kindString, nil},
		{"data.currentViewers", kindNumber, 1},
	}

	calls := []compatCall{
		{name: "host token", method: "POST", path: fixed("/api/token/publisher"), body: func() any { return map[string]any{"userId": "host-1"} },
			status: http.StatusOK,
			fields: []compatField{
				{"data.token", kindString, nil},
				{"data.participantId", kindString, nil},
				{"data.stageArn", kindString, nil},
				{"data.userId", kindString, "host-1"},
				{"data.instructions", kindObject, nil},
				{"data.instructions.whipEndpoint", kindString, nil},
				{"data.instructions.obs", kindString, nil},
				{"data.instructions.webBroadcastSdk", kindString, nil},
			},
			then: func(t *testing.T, r response) { host = dataOf[tokenData](t, r) }},
		{name: "publisher-info before the host publishes", method: "GET", path: fixed("/api/stage/replication/publisher-info"),
			status: http.StatusOK,
			fields: []compatField{
				{"data.hasPublisher", kindBool, true},
				{"data.publisherInfo.userId", kindString, "host-1"},
				{"data.message", kindString, nil},
			},
			then: func(t *testing.T, _ response) {
				// The host joins and publishes, as its app would.
				j := a.join(t, host.Token)
				a.publish(t, j.StageArn, j.ParticipantID)
				a.waitLive(t, "default", host.StageArn)
			}},
		{name: "viewer token", method: "POST", path: fixed("/api/token/viewer"), body: func() any { return map[string]any{"userId": "viewer-1"} },
			status: http.StatusOK,
			fields: slices.Concat(viewerToken, []compatField{{"data.isNewViewer", kindBool, true}}),
			then:   func(t *testing.T, r response) { viewer = dataOf[tokenData](t, r) }},
		{name: "viewer token again", method: "POST", path: fixed("/api/token/viewer"), body: func() any { return map[string]any{"userId": "viewer-1"} },
			status: http.StatusOK,
			fields: slices.Concat(viewerToken, []compatField{
				{"data.isNewViewer", kindBool, false},
				{"data.participantId", kindString, func() any { return viewer.ParticipantID }},
			})},
		{name: "rejoin", method: "POST", path: fixed("/api/viewer/rejoin"), body: viewerSeat,
			status: http.StatusOK,
			fields: slices.Concat(viewerToken, []compatField{
				{"data.isNewViewer", kindBool, false},
				{"data.stageArn", kindString, viewerStage},
				{"data.participantId", kindString, func() any { return viewer.ParticipantID }},
			})},
		{name: "heartbeat", method: "POST", path: fixed("/api/viewer/heartbeat"), body: viewerSeat,
			status: http.StatusOK,
			fields: []compatField{{"data.heartbeatUpdated", kindBool, true}}},
		{name: "heartbeat for another participant's seat", method: "POST", path: fixed("/api/viewer/heartbeat"),
			body: func() any {
				return map[string]any{"userId": "viewer-1", "stageArn": viewer.StageArn, "participantId": "SOMEONE-ELSE"}
			},
			status: http.StatusConflict,
			fields: []compatField{{"error.code", kindString, "CONFLICT"}}},
		{name: "viewer list", method: "GET", path: func() string { return "/api/viewer/list/" + viewer.StageArn },
			status: http.StatusOK,
			fields: []compatField{
				{"data.totalViewers", kindNumber, 1},
				{"data.activeViewers", kindNumber, 1},
				{"data.viewers", kindArray, nil},
				{"data.viewers.0.userId", kindString, "viewer-1"},
				{"data.viewers.0.participantId", kindString, func() any { return viewer.ParticipantID }},
				{"data.viewers.0.joinedAt", kindString, nil},
				{"data.viewers.0.lastHeartbeat", kindString, nil},
			}},
		{name: "watch duration", method: "GET",
			path: func() string {
				return "/api/viewer/duration?userId=viewer-1&stageArn=" + url.QueryEscape(viewer.StageArn)
			},
			status: http.StatusOK,
			fields: []compatField{
				{"data.userId", kindString, "viewer-1"},
				{"data.stageArn", kindString, viewerStage},
				{"data.watchDurationSeconds", kindNumber, nil},
				{"data.watchDurationFormatted", kindString, nil},
			}},
		{name: "stats", method: "GET", path: fixed("/api/stats"),
			status: http.StatusOK,
			fields: []compatField{
				{"data.totalViewers", kindNumber, 1},
				{"data.activeStages", kindNumber, nil},
				{"data.isPublisherLive", kindBool, true},
				{"data.stages", kindArray, nil},
				{"data.stages.0.stageArn", kindString, nil},
				{"data.stages.0.stageName", kindString, nil},
				{"data.stages.0.viewerCount", kindNumber, nil},
				{"data.stages.0.autoScaled", kindBool, nil},
				{"data.stages.0.createdAt", kindString, nil},
			}},
		{name: "stats of viewers", method: "GET", path: fixed("/api/stats/viewers"),
			status: http.StatusOK,
			fields: []compatField{
				{"data.totalViewers", kindNumber, 1},
				{"data.calculatedFrom", kindString, nil},
			}},
		{name: "stats of stages", method: "GET", path: fixed("/api/stats/stages"),
			status: http.StatusOK,
			fields: []compatField{
				{"data.totalStages", kindNumber, nil},
				{"data.stages.0.stageName", kindString, nil},
				{"data.stages.0.viewerCount", kindNumber, nil},
				{"data.stages.0.autoScaled", kindBool, nil},
			}},
		{name: "stats of the viewer's stage by ARN", method: "GET", path: func() string { return "/api/stats/stages?arn=" + url.QueryEscape(viewer.StageArn) },
			status: http.StatusOK,
			fields: []compatField{
				{"data.totalStages", kindNumber, 1},
				{"data.stages.0.stageName", kindString, nil},
				{"data.stages.0.viewerCount", kindNumber, 1},
				{"data.stages.0.autoScaled", kindBool, nil},
			}},
		{name: "stats of the viewer's stage by id", method: "GET",
			path: func() string {
				_, id, _ := strings.Cut(viewer.StageArn, ":stage/")
				return "/api/stats/stages/" + id
			},
			status: http.StatusOK,
			fields: []compatField{
				{"data.totalStages", kindNumber, 1},
				{"data.stages.0.stageName", kindString, nil},
				{"data.stages.0.viewerCount", kindNumber, 1},
				{"data.stages.0.autoScaled", kindBool, nil},
			}},
		{name: "stats of the publisher", method: "GET", path: fixed("/api/stats/publisher"),
			status: http.StatusOK,
			fields: []compatField{{"data.isPublisherLive", kindBool, true}}},
		{name: "health", method: "GET", path: fixed("/health"),
			status: http.StatusOK,
			fields: []compatField{
				{"data.status", kindString, "healthy"},
				{"data.uptime", kindNumber, nil},
				{"data.environment", kindString, "development"},
				{"data.version", kindString, nil},
				{"data.services.redis", kindString, redis},
				{"data.services.aws.region", kindString, "us-east-1"},
				{"data.services.aws.stageConfigured", kindBool, true},
				{"data.memory.heapUsed", kindNumber, nil},
				{"data.memory.heapTotal", kindNumber, nil},
				{"data.memory.rss", kindNumber, nil},
				{"data.checks", kindObject, nil},
				{"data.checks.store.status", kindString, "ok"},
				{"data.ivs.status", kindString, "ok"},
				{"data.store.status", kindString, "ok"},
				{"data.controller.status", kindString, "ok"},
			}},
		{name: "health under /api", method: "GET", path: fixed("/api/health"),
			status: http.StatusOK,
			fields: []compatField{
				{"data.status", kindString, "healthy"},
				{"data.services.redis", kindString, redis},
			}},
		{name: "root", method: "GET", path: fixed("/"),
			status: http.StatusOK,
			fields: []compatField{
				{"data.name", kindString, "stagefleet"},
				{"data.version", kindString, nil},
				{"data.links.openapi", kindString, "/openapi.json"},
				{"data.links.docs", kindString, nil},
			}},
		{name: "stage list", method: "GET", path: fixed("/api/stage/list"),
			status: http.StatusOK,
			fields: []compatField{
				{"data.totalStages", kindNumber, nil},
				{"data.stages.0.viewerCount", kindNumber, nil},
				{"data.stages.0.autoScaled", kindBool, nil},
				{"data.stages.0.tags", kindObject, nil},
			}},
		{name: "master stage", method: "GET", path: fixed("/api/stage/master/info"),
			status: http.StatusOK,
			fields: []compatField{
				{"data.stage.stageArn", kindString, origin},
				{"data.stage.viewerCount", kindNumber, nil},
				{"data.stage.isMasterStage", kindBool, true},
				{"data.stage.tags", kindObject, nil},
				{"data.stage.endpoints.events", kindString, nil},
				{"data.stage.endpoints.whip", kindString, nil},
				{"data.stage.endpoints.rtmp", kindString, nil},
				{"data.stage.endpoints.rtmps", kindString, nil},
			}},
		{name: "the viewer's stage", method: "GET", path: func() string { return "/api/stage/" + viewer.StageArn },
			status: http.StatusOK,
			fields: []compatField{
				{"data.stage.viewerCount", kindNumber, 1},
				{"data.stage.isMasterStage", kindBool, nil},
				{"data.stage.tags", kindObject, nil},
				{"data.stage.endpoints.events", kindString, nil},
				{"data.stage.endpoints.whip", kindString, nil},
				{"data.stage.endpoints.rtmp", kindString, nil},
				{"data.stage.endpoints.rtmps", kindString, nil},
			}},
		{name: "replication status of the origin", method: "GET", path: func() string { return "/api/stage/replication/status/" + host.StageArn },
			status: http.StatusOK,
			fields: []compatField{
				// The origin is a source, not a destination.
				{"data.hasReplication", kindBool, false},
				{"data.message", kindString, nil},
				{"data.outgoingReplications", kindArray, nil},
			}},
		{name: "publisher-info", method: "GET", path: fixed("/api/stage/replication/publisher-info"),
			status: http.StatusOK,
			fields: []compatField{
				{"data.hasPublisher", kindBool, true},
				{"data.publisherInfo.participantId", kindString, func() any { return host.ParticipantID }},
				{"data.publisherInfo.stageArn", kindString, origin},
				{"data.publisherInfo.publishing", kindBool, true},
			}},
		{name: "manual stage", method: "POST", path: fixed("/api/stage"), body: func() any { return map[string]any{"name": "compat-manual"} },
			status: http.StatusCreated,
			fields: []compatField{{"data.stage.stageArn", kindString, nil}},
			then: func(t *testing.T, r response) {
				manualArn = dataOf[struct {
					Stage stageData `json:"stage"`
				}](t, r).Stage.Arn
			}},
		{name: "replication start", method: "POST", path: fixed("/api/stage/replication/start"), body: replication,
			status: http.StatusOK,
			fields: []compatField{
				{"data.startedAt", kindString, nil},
				{"data.message", kindString, "Replication started"},
			}},
		{name: "replication status of its destination", method: "GET", path: func() string { return "/api/stage/replication/status/" + manualArn },
			status: http.StatusOK,
			fields: []compatField{
				{"data.hasReplication", kindBool, true},
				{"data.replicationInfo.sourceStageArn", kindString, origin},
				{"data.replicationInfo.destStageArn", kindString, func() any { return manualArn }},
				{"data.replicationInfo.participantId", kindString, func() any { return host.ParticipantID }},
				{"data.replicationInfo.startedAt", kindString, nil},
				{"data.outgoingReplications", kindArray, nil},
			}},
		{name: "replication stop", method: "DELETE", path: fixed("/api/stage/replication/stop"), body: replication,
			status: http.StatusOK,
			fields: []compatField{
				{"data.stoppedAt", kindString, nil},
				{"data.message", kindString, "Replication stopped"},
			}},
		{name: "leave", method: "POST", path: fixed("/api/viewer/leave"), body: viewerSeat,
			status: http.StatusOK,
			fields: []compatField{{"data.viewerLeft", kindBool, true}}},
		{name: "leave again", method: "POST", path: fixed("/api/viewer/leave"), body: viewerSeat,
			status: http.StatusOK,
			fields: []compatField{{"data.viewerLeft", kindBool, false}}},
		{name: "watch duration with no seat", method: "GET", path: fixed("/api/viewer/duration?userId=viewer-1"),
			status: http.StatusOK,
			fields: []compatField{
				{"data.userId", kindString, "viewer-1"},
				{"data.watchDurationSeconds", kindNumber, 0},
				{"data.watchDurationFormatted", kindString, "0:00:00"},
			}},
		{name: "wrong method", method: "PUT", path: fixed("/health"),
			status:     http.StatusMethodNotAllowed,
			fields:     []compatField{{"error.code", kindString, "METHOD_NOT_ALLOWED"}},
			wantHeader: map[string]string{"Allow": "GET, HEAD"}},
		{name: "path not in clean form", method: "GET", path: fixed("/api//health"),
			status: http.StatusBadRequest,
			fields: []compatField{{"error.code", kindString, "VALIDATION_ERROR"}}},
		{name: "CORS preflight", method: "OPTIONS", path: fixed("/api/token/viewer"),
			header: http.Header{"Origin": {compatOrigin}, "Access-Control-Request-Method": {"POST"}, "Access-Control-Request-Headers": {"content-type,x-api-key"}},
			status: http.StatusNoContent,
			wantHeader: map[string]string{
				"Access-Control-Allow-Origin":  compatOrigin,
				"Access-Control-Allow-Methods": "POST",
			}},
	}

	for _, c := range calls {
		var body any
		if c.body != nil {
			body = c.body()
		}
		p := c.path()
		r, err := a.send(t.Context(), c.method, p, body, c.header)
		if err != nil {
			t.Fatalf("%s: %s %s: %v", c.name, c.method, p, err)
		}
		// Later calls build on this one: a wrong status stops the flow.
		if r.Status != c.status {
			t.Fatalf("%s: %s %s: got %s, want status %d", c.name, c.method, p, r, c.status)
		}
		for h, want := range c.wantHeader {
			if got := r.Header.Get(h); got != want {
				t.Errorf("%s: %s %s: header %s = %q, want %q", c.name, c.method, p, h, got, want)
			}
		}
		if c.status == http.StatusNoContent {
			if len(r.Body) > 0 {
				t.Errorf("%s: %s %s: a 204 with a body: %s", c.name, c.method, p, r.Body)
			}
			continue
		}
		if err := checkEnvelope(r); err != nil {
			t.Errorf("%s: %s %s: %v", c.name, c.method, p, err)
		}
		var decoded any
		if err := json.Unmarshal(r.Body, &decoded); err != nil {
			t.Fatalf("%s: %s %s: %v: %s", c.name, c.method, p, err, r.Body)
		}
		for _, f := range c.fields {
			if err := f.check(decoded); err != nil {
				t.Errorf("%s: %s %s: %v", c.name, c.method, p, err)
			}
		}
		if c.then != nil {
			c.then(t, r)
		}
	}
}
