package live

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/stagefleet/stagefleet/internal/fleet"
	"github.com/stagefleet/stagefleet/internal/store"
)

// fakeFleet is a fleet whose broadcasts the test sets; churn makes every
// read of a broadcast differ from the last.
type fakeFleet struct {
	mu         sync.Mutex
	broadcasts map[string]fakeBroadcast
	churn      bool
	reads      int
}

type fakeBroadcast struct {
	stages []fleet.StageView
	hosts  []store.Host
}

func (f *fakeFleet) set(id string, b fakeBroadcast) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.broadcasts == nil {
		f.broadcasts = map[string]fakeBroadcast{}
	}
	f.broadcasts[id] = b
}

func (f *fakeFleet) Broadcasts(context.Context) ([]store.Broadcast, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []store.Broadcast
	for id := range f.broadcasts {
		out = append(out, store.Broadcast{ID: id})
	}
	return out, nil
}

func (f *fakeFleet) Stages(_ context.Context, id string) ([]fleet.StageView, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	stages := append([]fleet.StageView(nil), f.broadcasts[id].stages...)
	if f.churn && len(stages) > 0 {
		stages[0].Seats = f.reads
	}
	return stages, nil
}

func (f *fakeFleet) Hosts(_ context.Context, id string) ([]store.Host, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.broadcasts[id].hosts, nil
}

func stageView(arn string, role store.Role, seats int, seatable bool) fleet.StageView {
	return fleet.StageView{Stage: store.Stage{Arn: arn, Name: "s", Role: role, Capacity: 10, Seats: seats, Seatable: seatable}}
}

// startHub serves a hub reading f on a loopback server until the test ends,
// and returns it with its ws:// URL.
func startHub(t *testing.T, f Fleet, opts Options) (*Hub, string) {
	t.Helper()
	h := New(f, opts)
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		h.Run(ctx)
	}()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h.Serve(w, r); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer ccancel()
		h.Close(cctx)
		srv.Close()
		cancel()
		<-ran
	})
	return h, "ws" + strings.TrimPrefix(srv.URL, "http")
}

func (h *Hub) clientCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.clients)
}

func dial(t *testing.T, url string, opts *websocket.DialOptions) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, opts)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { _ = c.CloseNow() })
	return c
}

// message is any message the hub sends.
type message struct {
	Type      string          `json:"type"`
	Channel   string          `json:"channel"`
	Message   string          `json:"message"`
	Timestamp string          `json:"timestamp"`
	Data      json.RawMessage `json:"data"`
}

func sendJSON(t *testing.T, c *websocket.Conn, v any) {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Write(t.Context(), websocket.MessageText, raw); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// next reads the next message of type typ within timeout, passing over
// others.
func next(t *testing.T, c *websocket.Conn, typ string, timeout time.Duration) message {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	var seen []string
	for {
		_, raw, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("waiting %v for %s (after %v): %v", timeout, typ, seen, err)
		}
		var m message
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatalf("not JSON: %s", raw)
		}
		if m.Type == typ {
			return m
		}
		seen = append(seen, m.Type)
	}
}

func TestWSFleetEvents(t *testing.T) {
	origin := stageState{Arn: "o", Role: store.RoleOrigin, Seatable: true}
	replica := func(seatable, draining bool, reps ...replicationState) stageState {
		return stageState{Arn: "r", Role: store.RoleReplica, Seatable: seatable, Draining: draining, Replications: reps}
	}
	active := replicationState{"P1", store.ReplActive}
	starting := replicationState{"P1", store.ReplStarting}
	host := func(publishing bool) []hostState { return []hostState{{"P1", "host-1", publishing}} }
	tests := []struct {
		name     string
		old, cur broadcastState
		want     []fleetEvent
	}{
		{"nothing changed", broadcastState{Stages: []stageState{origin}}, broadcastState{Stages: []stageState{origin}}, nil},
		{"a replica appears, its host not yet replicated", broadcastState{Stages: []stageState{origin}},
			broadcastState{Stages: []stageState{origin, replica(false, false, starting)}},
			[]fleetEvent{{Kind: eventStageCreated, StageArn: "r", Role: store.RoleReplica}}},
		{"its replication becomes active and it opens", broadcastState{Stages: []stageState{replica(false, false, starting)}},
			broadcastState{Stages: []stageState{replica(true, false, active)}},
			[]fleetEvent{{Kind: eventStageOpened, StageArn: "r", Role: store.RoleReplica}, {Kind: eventReplicationActive, StageArn: "r", ParticipantID: "P1"}}},
		{"it drains", broadcastState{Stages: []stageState{replica(true, false, active)}},
			broadcastState{Stages: []stageState{replica(false, true, active)}},
			[]fleetEvent{{Kind: eventStageDraining, StageArn: "r", Role: store.RoleReplica}, {Kind: eventStageClosed, StageArn: "r", Role: store.RoleReplica}}},
		{"it is removed while open: every transition is told", broadcastState{Stages: []stageState{origin, replica(true, false, active)}},
			broadcastState{Stages: []stageState{origin}},
			[]fleetEvent{{Kind: eventReplicationStopped, StageArn: "r", ParticipantID: "P1"}, {Kind: eventStageClosed, StageArn: "r", Role: store.RoleReplica},
				{Kind: eventStageRemoved, StageArn: "r", Role: store.RoleReplica}}},
		{"a host publishes", broadcastState{Hosts: host(false)}, broadcastState{Hosts: host(true)}, []fleetEvent{{Kind: eventHostLive, ParticipantID: "P1"}}},
		{"a host that publishes goes", broadcastState{Hosts: host(true)}, broadcastState{}, []fleetEvent{{Kind: eventHostLeft, ParticipantID: "P1"}}},
		{"a host that never published goes", broadcastState{Hosts: host(false)}, broadcastState{}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := changes(tt.old, tt.cur); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("changes = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// The broadcasts channel pushes the list on subscribe and on change, and
// nothing while nothing changes; what a client gets wrong is answered with
// an error and the connection stays open.
func TestWSBroadcastsChannelAndErrors(t *testing.T) {
	f := &fakeFleet{}
	f.set("show-1", fakeBroadcast{stages: []fleet.StageView{stageView("arn:o", store.RoleOrigin, 1, true)}, hosts: []store.Host{{ParticipantID: "P1", Publishing: true}}})
	_, url := startHub(t, f, Options{PollInterval: 20 * time.Millisecond})
	c := dial(t, url, nil)

	for _, bad := range []string{`{"type":"subscribe","channel":"nope"}`, `{"type":"subscribe","channel":"broadcast:has space"}`,
		`{"type":"subscribe"}`, `{"type":"dance"}`, `not json`} {
		if err := c.Write(t.Context(), websocket.MessageText, []byte(bad)); err != nil {
			t.Fatal(err)
		}
		if m := next(t, c, "error", time.Second); m.Message == "" {
			t.Errorf("%s: error without a message", bad)
		}
	}
	if err := c.Write(t.Context(), websocket.MessageBinary, []byte(`{"type":"ping"}`)); err != nil {
		t.Fatal(err)
	}
	next(t, c, "error", time.Second)
	sendJSON(t, c, map[string]string{"type": "ping"})
	next(t, c, "pong", time.Second)

	sendJSON(t, c, map[string]string{"type": "subscribe", "channel": "broadcasts"})
	if m := next(t, c, "subscribed", time.Second); m.Channel != "broadcasts" {
		t.Errorf("subscribed to %q, want broadcasts", m.Channel)
	}
	want := func(viewers int) {
		t.Helper()
		m := next(t, c, "broadcasts_update", time.Second)
		var d broadcastsData
		if err := json.Unmarshal(m.Data, &d); err != nil {
			t.Fatal(err)
		}
		wantData := broadcastsData{Broadcasts: []broadcastSummary{{BroadcastID: "show-1", Viewers: viewers, Stages: 1, HostsLive: 1}}}
		if m.Channel != "broadcasts" || !reflect.DeepEqual(d, wantData) {
			t.Errorf("broadcasts_update on %q = %+v, want %+v", m.Channel, d, wantData)
		}
	}
	want(1)
	// Five polls with nothing changed push nothing: the pong comes next.
	time.Sleep(100 * time.Millisecond)
	sendJSON(t, c, map[string]string{"type": "ping"})
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	if _, raw, err := c.Read(ctx); err != nil || !strings.Contains(string(raw), `"pong"`) {
		t.Fatalf("after polls of an unchanged fleet got %s (%v), want only the pong", raw, err)
	}
	f.set("show-1", fakeBroadcast{stages: []fleet.StageView{stageView("arn:o", store.RoleOrigin, 2, true)}, hosts: []store.Host{{ParticipantID: "P1", Publishing: true}}})
	want(2)

	sendJSON(t, c, map[string]string{"type": "unsubscribe", "channel": "broadcasts"})
	if m := next(t, c, "unsubscribed", time.Second); m.Channel != "broadcasts" {
		t.Errorf("unsubscribed from %q, want broadcasts", m.Channel)
	}
	f.set("show-1", fakeBroadcast{})
	time.Sleep(100 * time.Millisecond)
	sendJSON(t, c, map[string]string{"type": "ping"})
	if _, raw, err := c.Read(ctx); err != nil || !strings.Contains(string(raw), `"pong"`) {
		t.Fatalf("after unsubscribing got %s (%v), want only the pong", raw, err)
	}
}

// A client that never reads is dropped, by its full send buffer or its
// write timeout, and never holds up the others.
func TestWSSlowClientDropped(t *testing.T) {
	f := &fakeFleet{churn: true}
	var stages []fleet.StageView
	for i := range 150 {
		stages = append(stages, stageView(fmt.Sprintf("arn:aws:ivs:us-east-1:123456789012:stage/Replica%04d", i), store.RoleReplica, 0, true))
	}
	f.set("big", fakeBroadcast{stages: stages})
	h, url := startHub(t, f, Options{PollInterval: 5 * time.Millisecond, WriteTimeout: 300 * time.Millisecond})
	subscribe := map[string]string{"type": "subscribe", "channel": "broadcast:big"}

	slow := dial(t, url, nil)
	sendJSON(t, slow, subscribe)

	good := dial(t, url, nil)
	sendJSON(t, good, subscribe)
	var updates atomic.Int64
	readErr := make(chan error, 1)
	go func() {
		for {
			_, raw, err := good.Read(context.Background())
			if err != nil {
				readErr <- err
				return
			}
			if strings.Contains(string(raw), `"broadcast_update"`) {
				updates.Add(1)
			}
		}
	}()

	for h.clientCount() != 2 {
		time.Sleep(time.Millisecond) // both are registered just after their upgrade
	}
	start := time.Now()
	for h.clientCount() != 1 {
		if time.Since(start) > 15*time.Second {
			t.Fatalf("the client that never reads was not dropped within 15s (%d clients)", h.clientCount())
		}
		select {
		case err := <-readErr:
			t.Fatalf("the reading client lost its connection: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	t.Logf("the slow client was dropped after %v", time.Since(start).Round(time.Millisecond))
	before := updates.Load()
	time.Sleep(500 * time.Millisecond)
	if got := updates.Load() - before; got < 10 {
		t.Errorf("the reading client got %d updates in the 500ms after the slow one was dropped, want many (a poll every 5ms)", got)
	}
	select {
	case err := <-readErr:
		t.Fatalf("the reading client lost its connection: %v", err)
	default:
	}

	// What the slow client finds when it reads at last: what was sent
	// before, then the end of the connection.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for n := 0; ; n++ {
		if _, _, err := slow.Read(ctx); err != nil {
			if ctx.Err() != nil {
				t.Fatalf("the slow client's connection is still open after %d messages: %v", n, err)
			}
			if s := websocket.CloseStatus(err); s != -1 && s != websocket.StatusTryAgainLater {
				t.Errorf("the slow client was closed with %v, want 1013 (try again later) or a cut connection", s)
			}
			break
		}
	}
}

// Close ends every connection with 1001 (going away).
func TestWSCloseGoingAway(t *testing.T) {
	h, url := startHub(t, &fakeFleet{}, Options{})
	c := dial(t, url, nil)
	sendJSON(t, c, map[string]string{"type": "ping"})
	next(t, c, "pong", time.Second)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		h.Close(ctx)
	}()
	_, _, err := c.Read(ctx)
	if s := websocket.CloseStatus(err); s != websocket.StatusGoingAway {
		t.Errorf("read after Close: %v, want close status 1001", err)
	}
	<-closed
	if n := h.clientCount(); n != 0 {
		t.Errorf("%d clients after Close", n)
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Error("Close waited for its context's end")
	}
}
