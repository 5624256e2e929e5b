package emulator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/ivsrealtime"
	"github.com/aws/aws-sdk-go-v2/service/ivsrealtime/types"
	"github.com/google/uuid"
)

// bridgeEvent is an EventBridge event as a receiver decodes it. It is spelled
// out apart from the emulator's Event type so that a renamed field there
// shows up here as a missing one.
type bridgeEvent struct {
	Version    string         `json:"version"`
	ID         string         `json:"id"`
	DetailType string         `json:"detail-type"`
	Source     string         `json:"source"`
	Account    string         `json:"account"`
	Time       string         `json:"time"`
	Region     string         `json:"region"`
	Resources  []string       `json:"resources"`
	Detail     map[string]any `json:"detail"`
}

type receivedEvent struct {
	bridgeEvent
	secret string
	at     time.Time
}

// eventSink is an events endpoint that records what it is sent.
type eventSink struct {
	t   *testing.T
	url string

	mu sync.Mutex
	// failFirst is how many requests are answered 500 before any is taken.
	failFirst int
	requests  int
	got       []receivedEvent
}

// newEventSink serves a sink until the test ends. Start it before the
// emulator that posts to it, so that the emulator stops first.
func newEventSink(t *testing.T, failFirst int) *eventSink {
	s := &eventSink{t: t, failFirst: failFirst}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	s.url = srv.URL
	return s
}

func (s *eventSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	at := time.Now()
	var ev bridgeEvent
	err := json.NewDecoder(r.Body).Decode(&ev)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests++
	if s.requests <= s.failFirst {
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	if err != nil {
		s.t.Errorf("sink: undecodable event: %v", err)
		return
	}
	s.got = append(s.got, receivedEvent{bridgeEvent: ev, secret: r.Header.Get("x-stagefleet-events-secret"), at: at})
}

func (s *eventSink) events() []receivedEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]receivedEvent(nil), s.got...)
}

func (s *eventSink) waitFor(t *testing.T, n int) []receivedEvent {
	t.Helper()
	eventually(t, 10*time.Second, fmt.Sprintf("%d events at the sink", n), func() bool { return len(s.events()) >= n })
	return s.events()
}

// withSink returns an emulator that posts its events to a new sink.
func withSink(t *testing.T, failFirst int) (*testEnv, *eventSink) {
	sink := newEventSink(t, failFirst)
	cfg := quiet()
	cfg.EventsURLs = []string{sink.url}
	cfg.EventsSecret = "s3cret"
	return newTestEnv(t, cfg), sink
}

type eventLog struct {
	Delivery Delivery   `json:"delivery"`
	Stats    EventStats `json:"stats"`
	Events   []Event    `json:"events"`
}

// eventLog returns GET /_emulator/events: the delivery settings, the
// statistics and the events emitted, in emission order.
func (env *testEnv) eventLog(t *testing.T) eventLog {
	t.Helper()
	var l eventLog
	if status := env.control(t, http.MethodGet, "/_emulator/events", nil, &l); status != http.StatusOK {
		t.Fatalf("GET /_emulator/events: status %d", status)
	}
	return l
}

func hasEvent(events []Event, name, participantID string) bool {
	for _, ev := range events {
		if ev.Detail["event_name"] == name && ev.Detail["participant_id"] == participantID {
			return true
		}
	}
	return false
}

func (env *testEnv) setDelivery(t *testing.T, d map[string]any) {
	t.Helper()
	if status := env.control(t, http.MethodPost, "/_emulator/events", d, nil); status != http.StatusOK {
		t.Fatalf("POST /_emulator/events %v: status %d", d, status)
	}
}

// guest joins a new participant, who does not publish, to the stage.
func (env *testEnv) guest(t *testing.T, stageArn, userID string, caps ...string) joinResult {
	t.Helper()
	in := &ivsrealtime.CreateParticipantTokenInput{StageArn: aws.String(stageArn), UserId: aws.String(userID)}
	for _, c := range caps {
		in.Capabilities = append(in.Capabilities, types.ParticipantTokenCapability(c))
	}
	out, err := env.ivs.CreateParticipantToken(ctx(t), in)
	if err != nil {
		t.Fatalf("CreateParticipantToken: %v", err)
	}
	return env.joinStage(t, *out.ParticipantToken.Token)
}

func TestEventShapes(t *testing.T) {
	t.Parallel()
	env, sink := withSink(t, 0)
	src := env.newStage(t, "origin")
	dst := env.newStage(t, "replica")
	host := env.guest(t, src, "host-1")
	pid := host.ParticipantID
	env.mustAct(t, "publish", src, pid)
	env.mustStartReplication(t, src, dst, pid, 0)
	dstSession := env.activeSession(t, dst)
	if _, err := env.ivs.StopParticipantReplication(ctx(t), &ivsrealtime.StopParticipantReplicationInput{
		SourceStageArn: aws.String(src), DestinationStageArn: aws.String(dst), ParticipantId: aws.String(pid),
	}); err != nil {
		t.Fatalf("StopParticipantReplication: %v", err)
	}
	env.mustAct(t, "unpublish", src, pid)
	env.mustAct(t, "leave", src, pid)

	// Every event is emitted before the call that causes it returns.
	emitted := env.eventLog(t).Stats.Emitted
	got := sink.waitFor(t, emitted)
	if len(got) != emitted {
		t.Fatalf("sink got %d events, %d were emitted", len(got), emitted)
	}

	ids := map[string]bool{}
	// seen counts the events about the host by stage and name.
	seen := map[[2]string]int{}
	for _, ev := range got {
		if ids[ev.ID] {
			t.Errorf("event id %s sent twice", ev.ID)
		}
		ids[ev.ID] = true
		if _, err := uuid.Parse(ev.ID); err != nil {
			t.Errorf("event id %q is not a UUID: %v", ev.ID, err)
		}
		if ev.Version != "0" || ev.DetailType != "IVS Stage Update" || ev.Source != "aws.ivs" ||
			ev.Account != "123456789012" || ev.Region != "us-east-1" {
			t.Errorf("envelope %+v", ev.bridgeEvent)
		}
		if _, err := time.Parse(time.RFC3339, ev.Time); err != nil {
			t.Errorf("time %q: %v", ev.Time, err)
		}
		if ev.secret != "s3cret" {
			t.Errorf("x-stagefleet-events-secret %q, want s3cret", ev.secret)
		}
		for _, k := range []string{"session_id", "event_name", "event_time", "user_id", "participant_id"} {
			if _, ok := ev.Detail[k].(string); !ok {
				t.Errorf("%v event: detail.%s is %#v, want a string", ev.Detail["event_name"], k, ev.Detail[k])
			}
		}
		if et, _ := ev.Detail["event_time"].(string); et != "" {
			if _, err := time.Parse(time.RFC3339, et); err != nil {
				t.Errorf("event_time %q: %v", et, err)
			}
		}
		if len(ev.Resources) != 1 || (ev.Resources[0] != src && ev.Resources[0] != dst) {
			t.Errorf("resources %v, want one of the two stages", ev.Resources)
			continue
		}
		if ev.Detail["participant_id"] != pid {
			continue
		}
		name, _ := ev.Detail["event_name"].(string)
		stage := ev.Resources[0]
		seen[[2]string{stage, name}]++
		switch stage {
		case src:
			if ev.Detail["session_id"] != host.SessionID || ev.Detail["user_id"] != "host-1" {
				t.Errorf("%s: session_id %v user_id %v, want %s host-1", name, ev.Detail["session_id"], ev.Detail["user_id"], host.SessionID)
			}
		case dst:
			if name != evReplicationStarted && name != evReplicationStopped {
				continue
			}
			want := map[string]any{
				"session_id":             dstSession,
				"source_stage_arn":       src,
				"destination_stage_arn":  dst,
				"destination_session_id": dstSession,
				"replica":                true,
			}
			for k, v := range want {
				if ev.Detail[k] != v {
					t.Errorf("%s: detail.%s = %#v, want %#v", name, k, ev.Detail[k], v)
				}
			}
		}
	}
	for _, want := range [][2]string{
		{src, evJoined}, {src, evPublished}, {src, evUnpublished}, {src, evLeft},
		{dst, evReplicationStarted}, {dst, evReplicationStopped},
	} {
		if seen[want] != 1 {
			t.Errorf("%q events in %s: %d, want 1", want[1], want[0], seen[want])
		}
	}
}

func TestEventDeliveryRetries(t *testing.T) {
	t.Parallel()
	env, sink := withSink(t, 2)
	stage := env.newStage(t, "retry")
	env.guest(t, stage, "u")
	eventually(t, 10*time.Second, "the event delivered", func() bool { return env.eventLog(t).Stats.Delivered == 1 })
	if got := sink.events(); len(got) != 1 || got[0].Detail["event_name"] != evJoined {
		t.Fatalf("sink got %+v, want the one Joined event", got)
	}
	sink.mu.Lock()
	requests := sink.requests
	sink.mu.Unlock()
	if requests != 3 {
		t.Errorf("sink saw %d requests, want 2 failed and 1 accepted", requests)
	}
	if stats := env.eventLog(t).Stats; stats.Failed != 0 || stats.Delivered != 1 {
		t.Errorf("stats %+v, want 1 delivered and none failed", stats)
	}
}

func TestEventDelivery(t *testing.T) {
	t.Parallel()

	t.Run("drop", func(t *testing.T) {
		t.Parallel()
		env, sink := withSink(t, 0)
		env.setDelivery(t, map[string]any{"dropRate": 1})
		stage, pid := env.host(t, "drop")
		if stats := env.eventLog(t).Stats; stats.Emitted != 2 || stats.Dropped != 2 {
			t.Errorf("stats %+v, want the 2 events emitted and dropped", stats)
		}
		// Events that are not dropped go out in order, so once one sent
		// after delivery is back arrives, nothing dropped is still on its way.
		env.setDelivery(t, map[string]any{})
		env.mustAct(t, "unpublish", stage, pid)
		got := sink.waitFor(t, 1)
		if len(got) != 1 || got[0].Detail["event_name"] != evUnpublished {
			t.Errorf("sink got %+v, want only the Unpublished event sent after dropping ended", got)
		}
	})

	t.Run("duplicate", func(t *testing.T) {
		t.Parallel()
		env, sink := withSink(t, 0)
		env.setDelivery(t, map[string]any{"duplicateRate": 1})
		stage, pid := env.host(t, "duplicate")
		env.mustAct(t, "unpublish", stage, pid)
		got := sink.waitFor(t, 6)
		perID := map[string]int{}
		for _, ev := range got {
			perID[ev.ID]++
		}
		if len(got) != 6 || len(perID) != 3 {
			t.Fatalf("sink got %d events with %d ids, want 3 events twice each", len(got), len(perID))
		}
		for id, n := range perID {
			if n != 2 {
				t.Errorf("event %s delivered %d times, want 2", id, n)
			}
		}
		if stats := env.eventLog(t).Stats; stats.Duplicated != 3 {
			t.Errorf("stats %+v, want 3 duplicated", stats)
		}
	})

	t.Run("reorder", func(t *testing.T) {
		t.Parallel()
		env, sink := withSink(t, 0)
		env.setDelivery(t, map[string]any{"reorderWindowMs": 300})
		stage, pid := env.host(t, "reorder")
		for range 19 {
			env.mustAct(t, "unpublish", stage, pid)
			env.mustAct(t, "publish", stage, pid)
		}
		emitted := env.eventLog(t).Events
		if len(emitted) != 40 {
			t.Fatalf("%d events emitted, want 40", len(emitted))
		}
		order := map[string]int{}
		for i, ev := range emitted {
			order[ev.ID] = i
		}
		got := sink.waitFor(t, len(emitted))
		if len(got) != len(emitted) {
			t.Fatalf("sink got %d events, want %d", len(got), len(emitted))
		}
		outOfOrder := false
		prev := -1
		for _, ev := range got {
			pos, ok := order[ev.ID]
			if !ok {
				t.Fatalf("sink got event %s twice or one never emitted", ev.ID)
			}
			delete(order, ev.ID)
			outOfOrder = outOfOrder || pos < prev
			prev = pos
		}
		if !outOfOrder {
			t.Error("40 events held back up to 300 ms each arrived in emission order")
		}
	})

	t.Run("delay", func(t *testing.T) {
		t.Parallel()
		env, sink := withSink(t, 0)
		env.setDelivery(t, map[string]any{"delayMs": 200})
		stage := env.newStage(t, "delay")
		start := time.Now()
		env.guest(t, stage, "u")
		got := sink.waitFor(t, 1)
		if late := got[0].at.Sub(start); late < 200*time.Millisecond {
			t.Errorf("event arrived %v after it was emitted, want at least 200ms", late)
		}
	})

	t.Run("invalid settings", func(t *testing.T) {
		t.Parallel()
		env, _ := withSink(t, 0)
		env.setDelivery(t, map[string]any{"delayMs": 5})
		for _, bad := range []map[string]any{
			{"dropRate": 2},
			{"duplicateRate": -0.5},
			{"delayMs": -1},
			{"dropRate": 0.5, "typo": true},
		} {
			if status := env.control(t, http.MethodPost, "/_emulator/events", bad, nil); status != http.StatusBadRequest {
				t.Errorf("POST /_emulator/events %v: status %d, want 400", bad, status)
			}
		}
		if d := env.eventLog(t).Delivery; d != (Delivery{DelayMS: 5}) {
			t.Errorf("delivery %+v after rejected settings, want the earlier {DelayMS: 5}", d)
		}
	})
}

// setFault posts a fault and returns the HTTP status.
func (env *testEnv) setFault(t *testing.T, f map[string]any) int {
	t.Helper()
	return env.control(t, http.MethodPost, "/_emulator/faults", f, nil)
}

func (env *testEnv) mustSetFault(t *testing.T, f map[string]any) {
	t.Helper()
	if status := env.setFault(t, f); status != http.StatusOK {
		t.Fatalf("POST /_emulator/faults %v: status %d", f, status)
	}
}

func (env *testEnv) faults(t *testing.T) []Fault {
	t.Helper()
	var out struct {
		Faults []Fault `json:"faults"`
	}
	if status := env.control(t, http.MethodGet, "/_emulator/faults", nil, &out); status != http.StatusOK {
		t.Fatalf("GET /_emulator/faults: status %d", status)
	}
	return out.Faults
}

func (env *testEnv) getStage(t *testing.T, arn string) error {
	t.Helper()
	_, err := env.ivs.GetStage(ctx(t), &ivsrealtime.GetStageInput{Arn: aws.String(arn)})
	return err
}

func (env *testEnv) state(t *testing.T) State {
	t.Helper()
	var st State
	if status := env.control(t, http.MethodGet, "/_emulator/state", nil, &st); status != http.StatusOK {
		t.Fatalf("GET /_emulator/state: status %d", status)
	}
	return st
}

func wantCode(t *testing.T, what string, err error, want string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s succeeded, want %s", what, want)
		return
	}
	if code, msg := apiErrorOf(t, err); code != want {
		t.Errorf("%s: %s (%s), want %s", what, code, msg, want)
	}
}

func TestFaults(t *testing.T) {
	t.Parallel()

	t.Run("one operation", func(t *testing.T) {
		t.Parallel()
		env := newTestEnv(t, quiet())
		stage := env.newStage(t, "faulty")
		env.mustSetFault(t, map[string]any{"operation": "GetStage", "errorRate": 1, "errorType": "InternalServerException"})
		wantCode(t, "GetStage", env.getStage(t, stage), "InternalServerException")
		if _, err := env.ivs.ListStages(ctx(t), &ivsrealtime.ListStagesInput{}); err != nil {
			t.Errorf("ListStages, which has no fault: %v", err)
		}
	})

	t.Run("every operation", func(t *testing.T) {
		t.Parallel()
		env := newTestEnv(t, quiet())
		stage := env.newStage(t, "faulty")
		env.mustSetFault(t, map[string]any{"operation": "*", "errorRate": 1, "errorType": "ConflictException"})
		wantCode(t, "GetStage", env.getStage(t, stage), "ConflictException")
		_, err := env.ivs.ListStages(ctx(t), &ivsrealtime.ListStagesInput{})
		wantCode(t, "ListStages", err, "ConflictException")
		_, err = env.ivs.CreateStage(ctx(t), &ivsrealtime.CreateStageInput{})
		wantCode(t, "CreateStage", err, "ConflictException")
	})

	t.Run("latency", func(t *testing.T) {
		t.Parallel()
		env := newTestEnv(t, quiet())
		env.mustSetFault(t, map[string]any{"operation": "ListStages", "latencyMs": 200})
		start := time.Now()
		if _, err := env.ivs.ListStages(ctx(t), &ivsrealtime.ListStagesInput{}); err != nil {
			t.Fatalf("ListStages: %v", err)
		}
		if took := time.Since(start); took < 200*time.Millisecond {
			t.Errorf("ListStages took %v, want at least 200ms", took)
		}
	})

	t.Run("error rate", func(t *testing.T) {
		t.Parallel()
		env := newTestEnv(t, quiet())
		stage := env.newStage(t, "flaky")
		env.mustSetFault(t, map[string]any{"operation": "GetStage", "errorRate": 0.5})
		failed := 0
		for range 200 {
			if err := env.getStage(t, stage); err != nil {
				if code, _ := apiErrorOf(t, err); code != "InternalServerException" {
					t.Fatalf("GetStage failed with %s, want the default InternalServerException", code)
				}
				failed++
			}
		}
		// Binomial(200, 0.5): 60 and 140 are more than 5 standard deviations out.
		if failed < 60 || failed > 140 {
			t.Errorf("%d of 200 calls failed at errorRate 0.5", failed)
		}
		if c := env.state(t).Counters["GetStage"]; c.Calls != 200 || c.Faults != failed {
			t.Errorf("GetStage counters %+v, want 200 calls and %d faults", c, failed)
		}
	})

	t.Run("invalid faults", func(t *testing.T) {
		t.Parallel()
		env := newTestEnv(t, quiet())
		for _, bad := range []map[string]any{
			{"operation": "Nope", "errorRate": 1},
			{"operation": "GetStage", "errorRate": 2},
			{"operation": "GetStage", "errorRate": 1, "errorType": "BoomException"},
			{"operation": "GetStage", "latencyMs": -1},
			{"operation": "GetStage", "errorRate": 1, "typo": 1},
		} {
			if status := env.setFault(t, bad); status != http.StatusBadRequest {
				t.Errorf("POST /_emulator/faults %v: status %d, want 400", bad, status)
			}
		}
		if f := env.faults(t); len(f) != 0 {
			t.Errorf("rejected faults installed: %+v", f)
		}
	})

	t.Run("clear", func(t *testing.T) {
		t.Parallel()
		env := newTestEnv(t, quiet())
		stage := env.newStage(t, "healed")
		env.mustSetFault(t, map[string]any{"operation": "GetStage", "errorRate": 1})
		env.mustSetFault(t, map[string]any{"operation": "*", "latencyMs": 10})
		if f := env.faults(t); len(f) != 2 {
			t.Fatalf("faults %+v, want 2", f)
		}
		if status := env.control(t, http.MethodDelete, "/_emulator/faults", nil, nil); status != http.StatusOK {
			t.Fatalf("DELETE /_emulator/faults: status %d", status)
		}
		if f := env.faults(t); len(f) != 0 {
			t.Errorf("faults %+v after DELETE, want none", f)
		}
		if err := env.getStage(t, stage); err != nil {
			t.Errorf("GetStage after the faults were cleared: %v", err)
		}
	})

	t.Run("throttling", func(t *testing.T) {
		t.Parallel()
		env := newTestEnv(t, quiet())
		env.mustSetFault(t, map[string]any{"operation": "ListStages", "errorRate": 1, "errorType": "ThrottlingException"})
		_, err := env.ivs.ListStages(ctx(t), &ivsrealtime.ListStagesInput{})
		wantCode(t, "ListStages", err, "ThrottlingException")
		var resp *awshttp.ResponseError
		if !errors.As(err, &resp) || resp.HTTPStatusCode() != http.StatusTooManyRequests {
			t.Errorf("ListStages error %v, want HTTP 429", err)
		}
	})
}

func TestReset(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, quiet())
	src, _, _ := env.replicating(t, 0)
	env.mustSetFault(t, map[string]any{"operation": "GetStage", "errorRate": 1})
	if status := env.control(t, http.MethodPost, "/_emulator/reset", nil, nil); status != http.StatusOK {
		t.Fatalf("POST /_emulator/reset: status %d", status)
	}
	st := env.state(t)
	if len(st.Stages) != 0 || len(st.Replications) != 0 || len(st.Counters) != 0 || st.Events != (EventStats{}) {
		t.Errorf("state after reset: %d stages, %d replications, counters %v, events %+v; want all empty",
			len(st.Stages), len(st.Replications), st.Counters, st.Events)
	}
	if f := env.faults(t); len(f) != 0 {
		t.Errorf("faults %+v after reset, want none", f)
	}
	wantCode(t, "GetStage of a stage from before the reset", env.getStage(t, src), "ResourceNotFoundException")
}

func TestState(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t, quiet())
	src, pid := env.host(t, "origin")
	viewer := env.guest(t, src, "viewer-1", "SUBSCRIBE")
	gone := env.guest(t, src, "viewer-2", "SUBSCRIBE")
	env.mustAct(t, "leave", src, gone.ParticipantID)
	dst := env.newStage(t, "replica")
	env.mustStartReplication(t, src, dst, pid, 5)

	st := env.state(t)
	if len(st.Stages) != 2 {
		t.Fatalf("%d stages, want 2", len(st.Stages))
	}
	origin, replica := st.Stages[0], st.Stages[1]
	if origin.Arn != src || replica.Arn != dst {
		t.Fatalf("stages %s, %s; want %s, %s in creation order", origin.Arn, replica.Arn, src, dst)
	}
	if origin.Publishers != 1 || origin.Subscribers != 1 || origin.MaxSubscribers != 2 {
		t.Errorf("origin has %d publishers, %d subscribers, at most %d; want 1, 1, 2",
			origin.Publishers, origin.Subscribers, origin.MaxSubscribers)
	}
	if replica.Publishers != 1 || replica.Subscribers != 0 {
		t.Errorf("replica stage has %d publishers, %d subscribers; want the replica publishing only", replica.Publishers, replica.Subscribers)
	}
	if len(origin.Sessions) != 1 || origin.Sessions[0].SessionID != origin.ActiveSessionID || origin.ActiveSessionID != viewer.SessionID {
		t.Fatalf("origin sessions %+v, want the one active session %s", origin.Sessions, viewer.SessionID)
	}
	want := map[string]ParticipantState{
		pid:                  {ParticipantID: pid, UserID: "host-origin", State: "CONNECTED", Publishing: true, Published: true, CanPublish: true, CanSubscribe: true, ReplicationType: "SOURCE"},
		viewer.ParticipantID: {ParticipantID: viewer.ParticipantID, UserID: "viewer-1", State: "CONNECTED", CanSubscribe: true, ReplicationType: "NONE"},
		gone.ParticipantID:   {ParticipantID: gone.ParticipantID, UserID: "viewer-2", State: "DISCONNECTED", CanSubscribe: true, ReplicationType: "NONE"},
	}
	if ps := origin.Sessions[0].Participants; len(ps) != len(want) {
		t.Errorf("origin session participants %+v, want %d", ps, len(want))
	}
	for _, p := range origin.Sessions[0].Participants {
		if p != want[p.ParticipantID] {
			t.Errorf("participant %+v, want %+v", p, want[p.ParticipantID])
		}
	}
	if len(replica.Sessions) != 1 || len(replica.Sessions[0].Participants) != 1 {
		t.Fatalf("replica stage sessions %+v, want one with the replica", replica.Sessions)
	}
	if p := replica.Sessions[0].Participants[0]; p.ParticipantID != pid || !p.Publishing || p.ReplicationType != "REPLICA" ||
		p.ReplicationState != "ACTIVE" || p.SourceStageArn != src {
		t.Errorf("replica %+v, want %s publishing as an ACTIVE REPLICA from %s", p, pid, src)
	}

	wantRepl := ReplicationState{
		ParticipantID: pid, SourceStageArn: src, DestinationStageArn: dst,
		SourceSessionID: origin.ActiveSessionID, DestinationSessionID: replica.ActiveSessionID,
		State: "ACTIVE", ReconnectWindowSeconds: 5,
	}
	if len(st.Replications) != 1 || st.Replications[0] != wantRepl {
		t.Errorf("replications %+v, want [%+v]", st.Replications, wantRepl)
	}

	for op, calls := range map[string]int{"CreateStage": 2, "CreateParticipantToken": 3, "StartParticipantReplication": 1} {
		if c := st.Counters[op]; c != (OpCounter{Calls: calls}) {
			t.Errorf("counters of %s: %+v, want %d calls and nothing else", op, c, calls)
		}
	}

	// Without participants: the same stages, sessions and counts.
	var brief State
	if status := env.control(t, http.MethodGet, "/_emulator/state?participants=false", nil, &brief); status != http.StatusOK {
		t.Fatalf("GET /_emulator/state?participants=false: status %d", status)
	}
	if len(brief.Stages) != 2 || brief.Stages[0].Subscribers != 1 || brief.Stages[0].MaxSubscribers != 2 ||
		len(brief.Stages[0].Sessions) != 1 || len(brief.Stages[0].Sessions[0].Participants) != 0 || len(brief.Replications) != 1 {
		t.Errorf("state without participants: %+v; want both stages and their counts, no participants", brief)
	}
	if status := env.control(t, http.MethodGet, "/_emulator/state?participants=some", nil, nil); status != http.StatusBadRequest {
		t.Errorf("participants=some: status %d, want 400", status)
	}
}

// controlRoutes are the POST routes of the control API.
var controlRoutes = []string{
	"/_emulator/participants/join",
	"/_emulator/participants/publish",
	"/_emulator/participants/unpublish",
	"/_emulator/participants/leave",
	"/_emulator/faults",
	"/_emulator/events",
	"/_emulator/reset",
}

// jsonRequest is a POST of body to path, declared as JSON.
func jsonRequest(path string, body []byte) *http.Request {
	r := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	return r
}

// serveJSON calls h with a JSON body and decodes a 200 answer into out.
func serveJSON(t *testing.T, h http.Handler, path string, in, out any) {
	t.Helper()
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, jsonRequest(path, b))
	if rec.Code != http.StatusOK {
		t.Fatalf("POST %s: status %d: %s", path, rec.Code, rec.Body)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), out); err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
}

// FuzzControlAPI posts arbitrary bodies to every control route. In a body,
// $STAGE, $PARTICIPANT and $TOKEN stand for a stage, a participant connected
// to it and an unused token for it, so that inputs can get past the lookups.
func FuzzControlAPI(f *testing.F) {
	for _, seed := range []string{
		``,
		`{}`,
		`null`,
		`[]`,
		`"x"`,
		`{"token":"$TOKEN"}`,
		`{"token":"$TOKEN","token":"$TOKEN"}`,
		`{"token":1}`,
		`{"token":"a.b.c"}`,
		`{"stageArn":"$STAGE","participantId":"$PARTICIPANT"}`,
		`{"stageArn":"$STAGE","participantId":"nobody"}`,
		`{"stageArn":"arn:aws:ivs:us-east-1:123456789012:stage/none","participantId":"$PARTICIPANT"}`,
		`{"operation":"GetStage","errorRate":1,"errorType":"ThrottlingException","latencyMs":5}`,
		`{"operation":"*","errorRate":-1}`,
		`{"operation":"*","latencyMs":1e30}`,
		`{"dropRate":0.5,"duplicateRate":0.5,"delayMs":10,"reorderWindowMs":10,"maxAttempts":1}`,
		`{"reorderWindowMs":-1}`,
		`{"dropRate":NaN}`,
	} {
		f.Add([]byte(seed))
	}
	emu, err := New(quiet())
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(emu.Close)
	h := emu.Handler()
	f.Fuzz(func(t *testing.T, body []byte) {
		emu.Reset()
		var created struct {
			Stage struct {
				Arn string `json:"arn"`
			} `json:"stage"`
			ParticipantTokens []participantTokenJSON `json:"participantTokens"`
		}
		serveJSON(t, h, "/CreateStage", map[string]any{"name": "fuzz", "participantTokenConfigurations": []any{map[string]any{}, map[string]any{}}}, &created)
		var joined joinResult
		serveJSON(t, h, "/_emulator/participants/join", map[string]string{"token": created.ParticipantTokens[0].Token}, &joined)
		body = []byte(strings.NewReplacer(
			"$STAGE", created.Stage.Arn,
			"$PARTICIPANT", joined.ParticipantID,
			"$TOKEN", created.ParticipantTokens[1].Token,
		).Replace(string(body)))
		for _, route := range controlRoutes {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, jsonRequest(route, body))
			if rec.Code >= 500 {
				t.Errorf("POST %s %q: status %d: %s", route, body, rec.Code, rec.Body)
			}
		}
	})
}

// stuckSink is an events endpoint that takes requests but answers none until
// released: a receiver that hangs rather than refusing connections.
type stuckSink struct {
	url string
	// arrived gets the id of each event as its request comes in.
	arrived chan string
	release chan struct{}

	mu sync.Mutex
	// answered are the ids of the events answered 200, in order.
	answered []string
}

// newStuckSink serves a stuck sink until the test ends, when it is released
// so that its server can close. Start it before the emulator that posts to it.
func newStuckSink(t *testing.T) *stuckSink {
	s := &stuckSink{arrived: make(chan string, 100), release: make(chan struct{})}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev bridgeEvent
		if err := json.NewDecoder(r.Body).Decode(&ev); err != nil {
			t.Errorf("stuck sink: undecodable event: %v", err)
		}
		select {
		case s.arrived <- ev.ID:
		default:
		}
		select {
		case <-s.release:
		case <-r.Context().Done():
			return
		}
		s.mu.Lock()
		s.answered = append(s.answered, ev.ID)
		s.mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(s.unstick)
	s.url = srv.URL
	return s
}

func (s *stuckSink) unstick() {
	select {
	case <-s.release:
	default:
		close(s.release)
	}
}

func (s *stuckSink) answeredIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.answered...)
}

// TestEventDeliveryPerURL checks that a receiver that hangs holds up no
// other: each post to it takes the client's 5 s timeout, times 5 attempts,
// so were deliveries shared the healthy receiver would get one event in
// about 25 s.
func TestEventDeliveryPerURL(t *testing.T) {
	t.Parallel()
	stuck := newStuckSink(t)
	healthy := newEventSink(t, 0)
	cfg := quiet()
	cfg.EventsURLs = []string{stuck.url, healthy.url}
	env := newTestEnv(t, cfg)

	stage, pid := env.host(t, "per-url")
	for range 4 {
		env.mustAct(t, "unpublish", stage, pid)
		env.mustAct(t, "publish", stage, pid)
	}
	const n = 10 // joined, published, then 4 × (unpublished, published)
	eventually(t, 5*time.Second, fmt.Sprintf("%d events at the healthy receiver", n), func() bool { return len(healthy.events()) >= n })
	emitted := env.eventLog(t).Events
	got := healthy.events()
	if len(got) != n || len(emitted) != n {
		t.Fatalf("healthy receiver got %d events of %d emitted, want %d", len(got), len(emitted), n)
	}
	for i, ev := range got {
		if ev.ID != emitted[i].ID {
			t.Errorf("healthy receiver's event %d is %s, want %s: events to one URL go in order", i, ev.ID, emitted[i].ID)
		}
	}
	if stats := env.eventLog(t).Stats; stats.Delivered != n || stats.Failed != 0 {
		t.Errorf("stats %+v, want %d delivered (the healthy receiver's) and none failed yet", stats, n)
	}
	// The stuck receiver has the first event on its way and no other: one
	// URL still gets one event at a time.
	select {
	case id := <-stuck.arrived:
		if id != emitted[0].ID {
			t.Errorf("stuck receiver was sent %s first, want %s", id, emitted[0].ID)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stuck receiver was sent nothing within 5s")
	}
	// The first again is its retry once the delivery gave up waiting on a
	// slow machine; any other is a second event in flight to one URL.
	for more := true; more; {
		select {
		case id := <-stuck.arrived:
			if id != emitted[0].ID {
				t.Errorf("stuck receiver was sent %s while the first event was unanswered", id)
			}
		default:
			more = false
		}
	}
}

// TestEventQueuePerURL checks a URL's queue as its receiver hangs: it keeps
// the newest events up to its bound, and a reset empties it.
func TestEventQueuePerURL(t *testing.T) {
	t.Parallel()
	event := func(id string) Event {
		return Event{ID: id, Detail: map[string]any{"event_name": "Participant Joined"}}
	}
	newBus := func(t *testing.T, url string, limit int) *eventBus {
		b := newEventBus([]string{url}, "", Delivery{}, slog.New(slog.DiscardHandler))
		t.Cleanup(b.close)
		b.mu.Lock()
		b.queueLimit = limit
		b.mu.Unlock()
		return b
	}
	// firstInFlight publishes event 1 and waits until its post has arrived,
	// so that what follows is queued behind it.
	firstInFlight := func(t *testing.T, b *eventBus, s *stuckSink) {
		b.publish(event("1"))
		select {
		case <-s.arrived:
		case <-time.After(5 * time.Second):
			t.Fatal("event 1 not posted within 5s")
		}
	}

	t.Run("overflow drops the oldest", func(t *testing.T) {
		t.Parallel()
		stuck := newStuckSink(t)
		b := newBus(t, stuck.url, 2)
		firstInFlight(t, b, stuck)
		for _, id := range []string{"2", "3", "4", "5"} {
			b.publish(event(id))
		}
		if _, stats, _ := b.snapshot(); stats.Failed != 2 {
			t.Errorf("stats %+v with 4 events queued behind a bound of 2, want 2 failed", stats)
		}
		stuck.unstick()
		eventually(t, 5*time.Second, "3 events answered", func() bool { return len(stuck.answeredIDs()) >= 3 })
		if got := stuck.answeredIDs(); !slices.Equal(got, []string{"1", "4", "5"}) {
			t.Errorf("receiver got %v, want [1 4 5]: the one on its way and the newest two", got)
		}
		eventually(t, 5*time.Second, "3 deliveries counted", func() bool {
			_, stats, _ := b.snapshot()
			return stats.Delivered == 3
		})
		if _, stats, _ := b.snapshot(); stats != (EventStats{Emitted: 5, Delivered: 3, Failed: 2}) {
			t.Errorf("stats %+v, want 5 emitted, 3 delivered, 2 failed", stats)
		}
	})

	t.Run("reset empties the queue", func(t *testing.T) {
		t.Parallel()
		stuck := newStuckSink(t)
		b := newBus(t, stuck.url, eventQueueSize)
		firstInFlight(t, b, stuck)
		b.publish(event("2"))
		b.publish(event("3"))
		b.reset(Delivery{})
		stuck.unstick()
		b.publish(event("4"))
		eventually(t, 5*time.Second, "2 events answered", func() bool { return len(stuck.answeredIDs()) >= 2 })
		if got := stuck.answeredIDs(); !slices.Equal(got, []string{"1", "4"}) {
			t.Errorf("receiver got %v, want [1 4]: the one on its way at the reset and the one after", got)
		}
		eventually(t, 5*time.Second, "the delivery after the reset counted", func() bool {
			_, stats, _ := b.snapshot()
			return stats.Delivered == 1
		})
		// Event 1's delivery was under way at the reset: it is not counted.
		if _, stats, _ := b.snapshot(); stats != (EventStats{Emitted: 1, Delivered: 1}) {
			t.Errorf("stats %+v, want 1 emitted and 1 delivered since the reset", stats)
		}
	})
}
