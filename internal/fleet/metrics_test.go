package fleet_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/fleet"
	"github.com/stagefleet/stagefleet/internal/store"
)

// metricsRecorder is a fleet.Metrics that keeps what it hears, as "kind
// detail".
type metricsRecorder struct {
	mu     sync.Mutex
	counts map[string]int
	waits  []time.Duration
	lags   []time.Duration
}

func (r *metricsRecorder) add(key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.counts == nil {
		r.counts = map[string]int{}
	}
	r.counts[key]++
}

func (r *metricsRecorder) get(key string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.counts[key]
}

func (r *metricsRecorder) ViewerToken(b, outcome string, _ time.Duration) {
	r.add("token " + b + " " + outcome)
}
func (r *metricsRecorder) Seated(waited time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.waits = append(r.waits, waited)
}
func (r *metricsRecorder) Reconciled(_ time.Duration, err error) {
	r.add(fmt.Sprint("reconciled ", err == nil))
}
func (r *metricsRecorder) Repaired(kind string)       { r.add("repaired " + kind) }
func (r *metricsRecorder) LeaseAcquired(name string)  { r.add("acquired " + name) }
func (r *metricsRecorder) LeaseLost(name string)      { r.add("lost " + name) }
func (r *metricsRecorder) EventHandled(result string) { r.add("event " + result) }
func (r *metricsRecorder) EventReceived(lag time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lags = append(r.lags, lag)
}

func wantCounts(t *testing.T, r *metricsRecorder, want map[string]int) {
	t.Helper()
	for key, n := range want {
		if got := r.get(key); got != n {
			t.Errorf("%s: %d, want %d (all: %v)", key, got, n, r.counts)
		}
	}
}

// Every viewer token request is reported once with its outcome, and every
// seat given with its wait.
func TestMetricsViewerTokens(t *testing.T) {
	m := &metricsRecorder{}
	svc, _, _, _ := controlled(t, fleet.Config{StageCapacity: 2, ScaleUpThreshold: 1, MaxStages: 1, Metrics: m})
	ctx := t.Context()
	for i := range 2 {
		if _, err := svc.ViewerToken(ctx, fleet.DefaultBroadcast, fmt.Sprint("viewer-", i), ""); err != nil {
			t.Fatalf("viewer %d: %v", i, err)
		}
	}
	if _, err := svc.ViewerToken(ctx, fleet.DefaultBroadcast, "viewer-2", ""); err == nil {
		t.Fatal("a third viewer was seated on one stage of 2 at MAX_STAGES 1")
	}
	if _, err := svc.ViewerToken(ctx, "not-live", "viewer-3", ""); err == nil {
		t.Fatal("a viewer was seated in a broadcast without a host")
	}
	wantCounts(t, m, map[string]int{
		"token default ok": 2, "token default limit": 1, "token not-live not_live": 1,
	})
	// The clock stands still: the two seated waited nothing.
	if !slices.Equal(m.waits, []time.Duration{0, 0}) {
		t.Errorf("seat waits %v, want two of 0", m.waits)
	}
}

// Every event is reported on arrival with its lag, and once handled with
// what became of it.
func TestMetricsEvents(t *testing.T) {
	m := &metricsRecorder{}
	svc, _, _, clk := controlled(t, fleet.Config{StageCapacity: 50, ScaleUpThreshold: 45, EventMaxSkew: time.Minute, EventDedupTTL: time.Hour, Metrics: m})
	ctx := t.Context()
	at := clk.Now().Add(-3 * time.Second)
	events := []fleet.Event{
		{ID: "e1", StageArn: origin, Name: fleet.EventPublished, Time: at, ParticipantID: hostID},
		{ID: "e1", StageArn: origin, Name: fleet.EventPublished, Time: at, ParticipantID: hostID},
		{ID: "e2", StageArn: origin, Name: fleet.EventUnpublished, Time: at.Add(-time.Second), ParticipantID: hostID},
		{ID: "e3", StageArn: "arn:aws:ivs:us-east-1:123456789012:stage/NotOurs00001", Name: fleet.EventPublished, Time: at, ParticipantID: "P"},
	}
	for _, ev := range events {
		if _, err := svc.HandleEvent(ctx, ev); err != nil {
			t.Fatalf("event %s: %v", ev.ID, err)
		}
	}
	wantCounts(t, m, map[string]int{
		"event " + string(fleet.EventApplied): 1, "event " + string(fleet.EventDuplicate): 1,
		"event " + string(fleet.EventStale): 1, "event " + string(fleet.EventIgnored): 1,
	})
	if len(m.lags) != len(events) || m.lags[0] != 3*time.Second || m.lags[2] != 4*time.Second {
		t.Errorf("lags %v, want one per event, 3s for the first and 4s for the third", m.lags)
	}
}

// A resync's repairs are reported by kind, reconciles by outcome, and the
// control lease once per hold.
func TestMetricsRepairsAndReconciles(t *testing.T) {
	m := &metricsRecorder{}
	svc, st, f, _ := controlled(t, fleet.Config{StageCapacity: 50, ScaleUpThreshold: 45, Metrics: m})
	ctx := t.Context()
	// The host is recorded as publishing, but IVS shows nobody in the
	// origin; and IVS has a stage tagged for a broadcast nobody knows.
	orphan := "arn:aws:ivs:us-east-1:123456789012:stage/Orphan000001"
	f.mu.Lock()
	f.stages[orphan] = fleet.IVSStage{Arn: orphan, Tags: map[string]string{fleet.TagBroadcast: "gone", fleet.TagRole: string(store.RoleReplica)}}
	f.mu.Unlock()
	if err := svc.Resync(ctx); err != nil {
		t.Fatal(err)
	}
	pass(t, svc)
	wantCounts(t, m, map[string]int{
		"repaired " + fleet.RepairOrphanDeleted: 1,
		"repaired " + fleet.RepairHost:          1,
	})
	if h, _ := st.GetHost(ctx, fleet.DefaultBroadcast, hostID); h.Publishing {
		t.Error("the host is still marked publishing")
	}
	// The control lease was taken to look at the broadcast's records and
	// for the pass.
	if m.get("acquired control") < 2 {
		t.Errorf("control lease acquisitions %d, want at least 2 (%v)", m.get("acquired control"), m.counts)
	}
}

// The queue's workers report every reconcile they run.
func TestMetricsReconciles(t *testing.T) {
	m := &metricsRecorder{}
	svc, _, _, _ := controlled(t, fleet.Config{StageCapacity: 50, ScaleUpThreshold: 45, Metrics: m})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		svc.Run(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()
	// A join asks for a reconcile of its broadcast.
	if _, err := svc.ViewerToken(t.Context(), fleet.DefaultBroadcast, "viewer-1", ""); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for m.get("reconciled true") == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no reconcile reported within 5 s: %v", m.counts)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
