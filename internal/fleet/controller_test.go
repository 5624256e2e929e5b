package fleet_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/fleet"
	"github.com/stagefleet/stagefleet/internal/store"
	"github.com/stagefleet/stagefleet/internal/store/memory"
	"github.com/stagefleet/stagefleet/internal/token"
)

// These tests drive the controller's time-dependent policy (back-off,
// stabilization window) on a manual clock, with an IVS fake that records
// calls. The scenarios against the real SDK and emulator are in
// internal/app.

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// fakeIVS keeps stages and replications in maps; startErr, when set, fails
// every StartReplication.
type fakeIVS struct {
	mu       sync.Mutex
	n        int
	stages   map[string]fleet.IVSStage
	active   map[[2]string]bool // (participant, destination)
	starts   int
	deletes  []string
	stops    int
	startErr error
	// deleteFails fails that many DeleteStage calls first.
	deleteFails int
	createErr   error
	creates     int
	// publishing holds the participants the origin's session shows as
	// connected and published.
	publishing map[string]bool
}

func newFakeIVS() *fakeIVS {
	return &fakeIVS{stages: map[string]fleet.IVSStage{}, active: map[[2]string]bool{}}
}

func (f *fakeIVS) CreateStage(_ context.Context, name string, tags map[string]string) (fleet.IVSStage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.creates++
	if f.createErr != nil {
		return fleet.IVSStage{}, f.createErr
	}
	f.n++
	st := fleet.IVSStage{Arn: fmt.Sprintf("arn:aws:ivs:us-east-1:123456789012:stage/Fake%07d", f.n), Name: name, Tags: tags}
	f.stages[st.Arn] = st
	return st, nil
}

func (f *fakeIVS) GetStage(_ context.Context, arn string) (fleet.IVSStage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.stages[arn]
	if !ok {
		return fleet.IVSStage{}, fmt.Errorf("GetStage: no such stage: %w", fleet.ErrIVSNotFound)
	}
	if arn == origin && len(f.publishing) > 0 {
		st.ActiveSessionID = "st-FakeSession01"
	}
	return st, nil
}

func (f *fakeIVS) UpdateStage(ctx context.Context, arn, name string) (fleet.IVSStage, error) {
	return f.GetStage(ctx, arn)
}

func (f *fakeIVS) DeleteStage(_ context.Context, arn string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.deleteFails > 0 {
		f.deleteFails--
		return errDeleteRefused
	}
	delete(f.stages, arn)
	f.deletes = append(f.deletes, arn)
	return nil
}

func (f *fakeIVS) StartReplication(_ context.Context, _, dest, participantID string, _ time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.starts++
	if f.startErr != nil {
		return f.startErr
	}
	f.active[[2]string{participantID, dest}] = true
	return nil
}

func (f *fakeIVS) StopReplication(_ context.Context, _, dest, participantID string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stops++
	delete(f.active, [2]string{participantID, dest})
	return nil
}

func (f *fakeIVS) ListStages(_ context.Context, keep func(fleet.IVSStage) bool) ([]fleet.IVSStage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []fleet.IVSStage
	for _, st := range f.stages {
		if keep(st) {
			out = append(out, st)
		}
	}
	return out, nil
}

func (f *fakeIVS) ListReplicas(_ context.Context, source, participantID string) ([]fleet.IVSReplica, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []fleet.IVSReplica
	for k := range f.active {
		if k[0] == participantID {
			out = append(out, fleet.IVSReplica{ParticipantID: participantID, SourceArn: source, DestArn: k[1], Active: true})
		}
	}
	return out, nil
}

func (f *fakeIVS) ListPublishers(context.Context, string, string) ([]fleet.IVSParticipant, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []fleet.IVSParticipant
	for id := range f.publishing {
		out = append(out, fleet.IVSParticipant{ID: id, Connected: true, Published: true})
	}
	return out, nil
}

func (f *fakeIVS) counts() (starts, stops int, deletes []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.starts, f.stops, append([]string(nil), f.deletes...)
}

type nopIssuer struct{}

func (nopIssuer) Issue(_ context.Context, r token.Request) (token.Token, error) {
	return token.Token{Token: "t", ParticipantID: r.ParticipantID}, nil
}

const (
	origin = "arn:aws:ivs:us-east-1:123456789012:stage/Origin000001"
	hostID = "HOST1"
)

// controlled returns a fleet with one broadcast whose host publishes, on a
// manual clock.
func controlled(t *testing.T, cfg fleet.Config) (*fleet.Service, store.Store, *fakeIVS, *clock) {
	t.Helper()
	ctx := t.Context()
	clk := &clock{now: time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)}
	cfg.Now = clk.Now
	st := memory.New()
	f := newFakeIVS()
	f.stages[origin] = fleet.IVSStage{Arn: origin, Tags: map[string]string{fleet.TagBroadcast: fleet.DefaultBroadcast, fleet.TagRole: "origin"}}
	if err := st.PutStage(ctx, store.Stage{Arn: origin, BroadcastID: fleet.DefaultBroadcast, Role: store.RoleOrigin, Capacity: cfg.StageCapacity, Seatable: true, CreatedAt: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateBroadcast(ctx, store.Broadcast{ID: fleet.DefaultBroadcast, OriginArn: origin, CreatedAt: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutHost(ctx, store.Host{BroadcastID: fleet.DefaultBroadcast, ParticipantID: hostID, StageArn: origin, Publishing: true, JoinedAt: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	return fleet.New(cfg, st, f, nopIssuer{}, slog.New(slog.DiscardHandler)), st, f, clk
}

// pass reconciles the default broadcast once, as a worker of the queue
// would.
func pass(t *testing.T, svc *fleet.Service) {
	t.Helper()
	if _, err := svc.ReconcileBroadcast(t.Context(), fleet.DefaultBroadcast); err != nil {
		t.Errorf("reconcile: %v", err)
	}
}

// errDeleteRefused is the fake's DeleteStage refusal (deleteFails).
var errDeleteRefused = errors.New("DeleteStage: throttled")

// failingPass is a pass that IVS's refusal must fail with want.
func failingPass(t *testing.T, svc *fleet.Service, want error) {
	t.Helper()
	if _, err := svc.ReconcileBroadcast(t.Context(), fleet.DefaultBroadcast); !errors.Is(err, want) {
		t.Errorf("reconcile: %v, want %v", err, want)
	}
}

func replicaStages(t *testing.T, st store.Store) []store.Stage {
	t.Helper()
	all, err := st.ListStages(t.Context(), fleet.DefaultBroadcast)
	if err != nil {
		t.Fatal(err)
	}
	var out []store.Stage
	for _, s := range all {
		if s.Role == store.RoleReplica {
			out = append(out, s)
		}
	}
	return out
}

// A failing start is retried with back-off on the fleet's clock: not before
// RetryAt, and again after it.
func TestReplicationBackoff(t *testing.T) {
	svc, st, f, clk := controlled(t, fleet.Config{StageCapacity: 50, ScaleUpThreshold: 45, MinIdleStages: 1, ScaleDownStabilization: time.Minute})
	f.startErr = errors.New("StartParticipantReplication: boom")
	// One pass creates the warm pool's stage, the one it asks for next
	// starts its replication.
	pass(t, svc)
	pass(t, svc)
	reps := replicaStages(t, st)
	if len(reps) != 1 {
		t.Fatalf("%d replica stages; want the warm pool of 1", len(reps))
	}
	r, err := st.GetReplication(t.Context(), fleet.DefaultBroadcast, hostID, reps[0].Arn)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != store.ReplFailed || r.Attempts != 1 || !r.RetryAt.After(clk.Now()) {
		t.Fatalf("after a failed start: %+v; want failed, 1 attempt, a retry time ahead", r)
	}
	starts, _, _ := f.counts()
	pass(t, svc)
	if again, _, _ := f.counts(); again != starts {
		t.Fatalf("started again before RetryAt (%d starts, then %d)", starts, again)
	}
	f.mu.Lock()
	f.startErr = nil
	f.mu.Unlock()
	clk.advance(r.RetryAt.Sub(clk.Now()) + time.Millisecond)
	pass(t, svc)
	r, err = st.GetReplication(t.Context(), fleet.DefaultBroadcast, hostID, reps[0].Arn)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != store.ReplStarting || r.Attempts != 0 {
		t.Fatalf("after RetryAt: %+v; want starting with attempts reset", r)
	}
}

// An empty replica stage is removed only after the stabilization window,
// and a stage with a seat never is.
func TestScaleDownWindow(t *testing.T) {
	svc, st, f, clk := controlled(t, fleet.Config{StageCapacity: 50, ScaleUpThreshold: 45, ScaleDownStabilization: time.Minute})
	ctx := t.Context()
	// Fill the origin past the threshold: one replica is made.
	for i := range 46 {
		if _, err := st.ReserveSeat(ctx, store.SeatRequest{BroadcastID: fleet.DefaultBroadcast, UserID: fmt.Sprint("v", i), ParticipantID: fmt.Sprint("P", i), Now: clk.Now(), TTL: time.Hour}); err != nil {
			t.Fatal(err)
		}
	}
	pass(t, svc)
	reps := replicaStages(t, st)
	if len(reps) != 1 {
		t.Fatalf("%d replica stages with 4 free seats and a headroom of 5; want 1", len(reps))
	}
	replica := reps[0].Arn
	// Its host's replication becomes active: the replica takes viewers.
	if err := st.PutReplication(ctx, store.Replication{BroadcastID: fleet.DefaultBroadcast, ParticipantID: hostID, SourceArn: origin, DestArn: replica, State: store.ReplActive, UpdatedAt: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	// The audience drops back: the replica is empty and not needed.
	for i := range 10 {
		if _, err := st.ReleaseSeat(ctx, fleet.DefaultBroadcast, fmt.Sprint("v", i)); err != nil {
			t.Fatal(err)
		}
	}
	pass(t, svc)
	clk.advance(59 * time.Second)
	pass(t, svc)
	if _, _, deletes := f.counts(); len(deletes) != 0 {
		t.Fatalf("deleted %v before the 60 s window ended", deletes)
	}
	// A viewer sits on the replica: the window starts over when it leaves.
	if _, err := st.ReserveSeat(ctx, store.SeatRequest{BroadcastID: fleet.DefaultBroadcast, UserID: "late", StageArn: replica, ParticipantID: "LATE", Now: clk.Now(), TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	clk.advance(2 * time.Second)
	pass(t, svc)
	if _, _, deletes := f.counts(); len(deletes) != 0 {
		t.Fatalf("deleted %v while it had a seat", deletes)
	}
	if _, err := st.ReleaseSeat(ctx, fleet.DefaultBroadcast, "late"); err != nil {
		t.Fatal(err)
	}
	pass(t, svc)
	clk.advance(30 * time.Second)
	pass(t, svc)
	if _, _, deletes := f.counts(); len(deletes) != 0 {
		t.Fatalf("deleted %v 30 s after it emptied again", deletes)
	}
	clk.advance(31 * time.Second)
	pass(t, svc)
	_, stops, deletes := f.counts()
	if len(deletes) != 1 || deletes[0] != replica || stops != 1 {
		t.Fatalf("after the window: deletes %v, %d replication stops; want %s deleted after stopping its one replication", deletes, stops, replica)
	}
	if n := len(replicaStages(t, st)); n != 0 {
		t.Fatalf("%d replica records remain", n)
	}
}

// A removal that fails half-way (IVS refuses the delete) is finished by a
// later pass: the stage does not stay draining for ever.
func TestRemovalFinishedAfterFailure(t *testing.T) {
	svc, st, f, clk := controlled(t, fleet.Config{StageCapacity: 50, ScaleUpThreshold: 45, MinIdleStages: 1, ScaleDownStabilization: time.Minute})
	pass(t, svc)
	reps := replicaStages(t, st)
	if len(reps) != 1 {
		t.Fatalf("%d replica stages; want the warm pool of 1", len(reps))
	}
	// The origin has all the room needed: without the warm pool the
	// replica is not needed.
	svc2 := fleet.New(fleet.Config{StageCapacity: 50, ScaleUpThreshold: 45, ScaleDownStabilization: time.Minute, Now: clk.Now}, st, f, nopIssuer{}, slog.New(slog.DiscardHandler))
	pass(t, svc2)
	clk.advance(2 * time.Minute)
	f.mu.Lock()
	f.deleteFails = 1
	f.mu.Unlock()
	failingPass(t, svc2, errDeleteRefused)
	if _, _, deletes := f.counts(); len(deletes) != 0 {
		t.Fatalf("deleted %v although IVS refused", deletes)
	}
	if rec := replicaStages(t, st); len(rec) != 1 || !rec[0].Draining {
		t.Fatalf("after a refused delete: %+v; want the stage kept, draining", rec)
	}
	pass(t, svc2)
	if _, _, deletes := f.counts(); len(deletes) != 1 || deletes[0] != reps[0].Arn {
		t.Fatalf("deletes %v; want %s deleted on the next pass", deletes, reps[0].Arn)
	}
	if n := len(replicaStages(t, st)); n != 0 {
		t.Fatalf("%d replica records remain", n)
	}
}

// Viewers leave the origin too; their Left events make no host.
func TestViewerLeftIsNoHost(t *testing.T) {
	svc, st, _, clk := controlled(t, fleet.Config{StageCapacity: 50, ScaleUpThreshold: 45})
	for i, name := range []string{fleet.EventLeft, fleet.EventUnpublished, fleet.EventPublishError} {
		res, err := svc.HandleEvent(t.Context(), fleet.Event{ID: fmt.Sprint("ev", i), StageArn: origin, Name: name, Time: clk.Now(), ParticipantID: "VIEWER1"})
		if err != nil || res != fleet.EventIgnored {
			t.Fatalf("%s of a viewer: %v %v; want ignored", name, res, err)
		}
	}
	hosts, err := st.ListHosts(t.Context(), fleet.DefaultBroadcast)
	if err != nil {
		t.Fatal(err)
	}
	if len(hosts) != 1 || hosts[0].ParticipantID != hostID {
		t.Fatalf("hosts %+v; want only %s", hosts, hostID)
	}
	res, err := svc.HandleEvent(t.Context(), fleet.Event{ID: "pub", StageArn: origin, Name: fleet.EventPublished, Time: clk.Now(), ParticipantID: "HOST2", UserID: "h2"})
	if err != nil || res != fleet.EventApplied {
		t.Fatalf("Published by a new host: %v %v; want applied", res, err)
	}
	if hosts, _ = st.ListHosts(t.Context(), fleet.DefaultBroadcast); len(hosts) != 2 {
		t.Fatalf("hosts %+v; want the new publisher recorded", hosts)
	}
}

// When CreateStage fails (account quota, IVS trouble) the controller backs
// off instead of calling it on every pass and every join.
func TestCreateStageBackoff(t *testing.T) {
	svc, st, f, clk := controlled(t, fleet.Config{StageCapacity: 50, ScaleUpThreshold: 45, MinIdleStages: 1})
	f.createErr = fmt.Errorf("CreateStage: Stages per account quota of 100 exceeded: %w", fleet.ErrIVSQuota)
	failingPass(t, svc, fleet.ErrIVSQuota)
	pass(t, svc)
	pass(t, svc)
	f.mu.Lock()
	creates := f.creates
	f.createErr = nil
	f.mu.Unlock()
	if creates != 1 {
		t.Fatalf("%d CreateStage calls in three passes after a failure; want 1", creates)
	}
	clk.advance(time.Minute)
	pass(t, svc)
	if n := len(replicaStages(t, st)); n != 1 {
		t.Fatalf("%d replica stages after the back-off; want the warm pool of 1", n)
	}
}

// Replication into a replica stage follows the hosts: a manual stop, which
// the next pass would undo, is refused and IVS is not called.
func TestManualStopRefusedOnReplica(t *testing.T) {
	svc, st, f, _ := controlled(t, fleet.Config{StageCapacity: 50, ScaleUpThreshold: 45, MinIdleStages: 1})
	pass(t, svc)
	pass(t, svc)
	reps := replicaStages(t, st)
	if len(reps) != 1 {
		t.Fatalf("%d replica stages; want the warm pool of 1", len(reps))
	}
	err := svc.StopReplication(t.Context(), fleet.Replication{SourceArn: origin, DestArn: reps[0].Arn, ParticipantID: hostID})
	if !errors.Is(err, fleet.ErrForbidden) {
		t.Fatalf("manual stop into a replica stage: %v; want ErrForbidden", err)
	}
	if _, stops, _ := f.counts(); stops != 0 {
		t.Fatalf("%d StopParticipantReplication calls; want none", stops)
	}
	if _, err := st.GetReplication(t.Context(), fleet.DefaultBroadcast, hostID, reps[0].Arn); err != nil {
		t.Fatalf("the replication record is gone: %v", err)
	}
}

// With every event lost, one reconcile repairs it all: the host found
// publishing in IVS, its replication started and read back active, the
// origin and the replica taking viewers.
func TestOneReconcileConverges(t *testing.T) {
	svc, st, f, _ := controlled(t, fleet.Config{StageCapacity: 50, ScaleUpThreshold: 45, MinIdleStages: 1})
	ctx := t.Context()
	// The host is recorded as not publishing (its Published event lost),
	// the origin not taking viewers.
	h, err := st.GetHost(ctx, fleet.DefaultBroadcast, hostID)
	if err != nil {
		t.Fatal(err)
	}
	h.Publishing = false
	if err := st.PutHost(ctx, h); err != nil {
		t.Fatal(err)
	}
	if err := st.SetSeatable(ctx, origin, false); err != nil {
		t.Fatal(err)
	}
	pass(t, svc)
	reps := replicaStages(t, st)
	if len(reps) != 1 {
		t.Fatalf("%d replica stages; want the warm pool of 1", len(reps))
	}
	if starts, _, _ := f.counts(); starts != 0 {
		t.Fatalf("%d replication starts for a host not known to publish", starts)
	}
	f.mu.Lock()
	f.publishing = map[string]bool{hostID: true}
	f.mu.Unlock()

	// A resync asks for a reconcile with a fresh IVS reading, which the
	// queue's worker would run: run it here.
	if err := svc.Resync(ctx); err != nil {
		t.Fatal(err)
	}
	pass(t, svc)
	// The replication it started is read back by the reconcile it asked
	// for.
	pass(t, svc)
	if h, _ := st.GetHost(ctx, fleet.DefaultBroadcast, hostID); !h.Publishing {
		t.Error("the host publishing in IVS is not marked publishing")
	}
	r, err := st.GetReplication(ctx, fleet.DefaultBroadcast, hostID, reps[0].Arn)
	if err != nil || r.State != store.ReplActive {
		t.Errorf("replication after one reconcile: %+v, %v; want active", r, err)
	}
	for _, arn := range []string{origin, reps[0].Arn} {
		if s, _ := st.GetStage(ctx, arn); !s.Seatable {
			t.Errorf("stage %s does not take viewers after one reconcile", arn)
		}
	}
}
