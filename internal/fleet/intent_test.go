package fleet_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/fleet"
	"github.com/stagefleet/stagefleet/internal/store"
	"github.com/stagefleet/stagefleet/internal/store/memory"
)

// TestLapsedCreatingIntent: an intent to create stages whose pass never
// came back (a crash, a failed lock) counts for nothing once its deadline
// passed, and the next scale-up does not bring it back.
func TestLapsedCreatingIntent(t *testing.T) {
	ctx := t.Context()
	svc, st, f, clk := controlled(t, fleet.Config{StageCapacity: 10, ScaleUpThreshold: 8, MaxStages: 20, HeartbeatTimeout: time.Minute, ScaleDownStabilization: time.Minute})
	b, _ := st.GetBroadcast(ctx, fleet.DefaultBroadcast)
	// A pass that created 3 stages never got to record them (crash, or its
	// phase-3 lock failed) long ago.
	b.Creating, b.CreatingUntil = 3, clk.Now().Add(-time.Hour)
	if err := st.PutBroadcast(ctx, b); err != nil {
		t.Fatal(err)
	}
	// Fill the origin: free 0 < headroom 2, so one stage is wanted.
	for i := range 10 {
		if _, err := st.ReserveSeat(ctx, store.SeatRequest{BroadcastID: fleet.DefaultBroadcast, UserID: fmt.Sprint("u", i), ParticipantID: "p", Now: clk.Now(), TTL: time.Hour}); err != nil {
			t.Fatal(err)
		}
	}
	pass(t, svc)
	b, _ = st.GetBroadcast(ctx, fleet.DefaultBroadcast)
	if b.Creating != 0 || f.creates != 1 || len(replicaStages(t, st)) != 1 {
		t.Errorf("after a pass that made %d stage(s) (%d recorded): Creating %d until %v; want one stage and no intent left",
			f.creates, len(replicaStages(t, st)), b.Creating, b.CreatingUntil.Sub(clk.Now()))
	}
}

// blockCreate blocks CreateStage of replicas until release.
type blockCreate struct {
	*fakeIVS
	entered chan struct{}
	release chan struct{}
}

func (b *blockCreate) CreateStage(ctx context.Context, name string, tags map[string]string) (fleet.IVSStage, error) {
	if tags[fleet.TagRole] == string(store.RoleReplica) {
		select {
		case b.entered <- struct{}{}:
		default:
		}
		<-b.release
	}
	return b.fakeIVS.CreateStage(ctx, name, tags)
}

// TestEndDuringAct: a broadcast ended while a pass is making its stages
// leaves neither a stage record nor an IVS stage behind.
func TestEndDuringAct(t *testing.T) {
	ctx := t.Context()
	clk := &clock{now: time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)}
	st := memory.New()
	f := newFakeIVS()
	f.stages[origin] = fleet.IVSStage{Arn: origin, Tags: map[string]string{fleet.TagBroadcast: fleet.DefaultBroadcast, fleet.TagRole: "origin"}}
	_ = st.PutStage(ctx, store.Stage{Arn: origin, BroadcastID: fleet.DefaultBroadcast, Role: store.RoleOrigin, Capacity: 10, Seatable: true, CreatedAt: clk.Now()})
	_, _ = st.CreateBroadcast(ctx, store.Broadcast{ID: fleet.DefaultBroadcast, OriginArn: origin, CreatedAt: clk.Now()})
	_ = st.PutHost(ctx, store.Host{BroadcastID: fleet.DefaultBroadcast, ParticipantID: hostID, StageArn: origin, Publishing: true, JoinedAt: clk.Now()})
	bi := &blockCreate{fakeIVS: f, entered: make(chan struct{}, 1), release: make(chan struct{})}
	svc := fleet.New(fleet.Config{StageCapacity: 10, ScaleUpThreshold: 8, MinIdleStages: 1, Now: clk.Now, HeartbeatTimeout: time.Minute}, st, bi, nopIssuer{}, slog.New(slog.DiscardHandler))
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := svc.ReconcileBroadcast(ctx, fleet.DefaultBroadcast); err != nil {
			t.Errorf("reconcile: %v", err)
		}
	}()
	<-bi.entered
	if _, err := svc.EndBroadcast(ctx, fleet.DefaultBroadcast, "test"); err != nil {
		t.Fatal(err)
	}
	close(bi.release)
	<-done
	all, err := st.ListStages(ctx, fleet.DefaultBroadcast)
	if err != nil || len(all) != 0 {
		t.Errorf("stage records left: %d (%v)", len(all), err)
	}
	clk.advance(time.Minute)
	if err := svc.Resync(ctx); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	left := len(f.stages)
	f.mu.Unlock()
	if left > 0 {
		t.Errorf("%d IVS stage(s) left after the broadcast ended and a resync ran", left)
	}
}

// TestUnknownBroadcastLeavesNoDemand: viewer requests for ids that are no
// broadcast leave no demand record in the store.
func TestUnknownBroadcastLeavesNoDemand(t *testing.T) {
	ctx := t.Context()
	svc, st, _, _ := controlled(t, fleet.Config{StageCapacity: 10, ScaleUpThreshold: 8, HeartbeatTimeout: time.Minute, SeatWait: time.Millisecond})
	for i := range 100 {
		id := fmt.Sprint("nope", i)
		if _, err := svc.ViewerToken(ctx, id, "u", ""); !errors.Is(err, fleet.ErrNotLive) {
			t.Fatalf("viewer token for %s: %v, want ErrNotLive", id, err)
		}
		// What the queue's worker does with the enqueued key.
		if _, err := svc.ReconcileBroadcast(ctx, id); err != nil {
			t.Fatalf("reconcile %s: %v", id, err)
		}
	}
	n := 0
	for i := range 100 {
		d, err := st.ListDemand(ctx, fmt.Sprint("nope", i), time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		n += len(d)
	}
	if n > 0 {
		t.Errorf("%d demand records kept for broadcasts that do not exist", n)
	}
}

// TestIdleEndRechecked: a broadcast found idle is ended only if it still
// is when the end holds the lock; a host publishing again keeps it.
func TestIdleEndRechecked(t *testing.T) {
	ctx := t.Context()
	svc, st, f, clk := controlled(t, fleet.Config{StageCapacity: 10, ScaleUpThreshold: 8, HeartbeatTimeout: time.Minute, BroadcastIdleTimeout: time.Minute})
	h, err := st.GetHost(ctx, fleet.DefaultBroadcast, hostID)
	if err != nil {
		t.Fatal(err)
	}
	h.Publishing = false
	if err := st.PutHost(ctx, h); err != nil {
		t.Fatal(err)
	}
	// As a pass records it: idle from now.
	b, err := st.GetBroadcast(ctx, fleet.DefaultBroadcast)
	if err != nil {
		t.Fatal(err)
	}
	b.IdleSince = clk.Now()
	if err := st.PutBroadcast(ctx, b); err != nil {
		t.Fatal(err)
	}
	clk.advance(2 * time.Minute)
	// The host publishes again after a pass found the broadcast idle.
	h.Publishing = true
	if err := st.PutHost(ctx, h); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.EndIdle(ctx, fleet.DefaultBroadcast); err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetBroadcast(ctx, fleet.DefaultBroadcast); err != nil {
		t.Errorf("broadcast with a host publishing again: %v, want it kept", err)
	}
	// Idle still: it ends, origin and all.
	h.Publishing = false
	if err := st.PutHost(ctx, h); err != nil {
		t.Fatal(err)
	}
	if end, err := svc.EndIdle(ctx, fleet.DefaultBroadcast); err != nil || end.StagesDeleted != 1 {
		t.Errorf("EndIdle of an idle broadcast = %+v, %v; want its origin deleted", end, err)
	}
	if _, err := st.GetBroadcast(ctx, fleet.DefaultBroadcast); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("idle broadcast after EndIdle: %v, want it gone", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.stages) != 0 {
		t.Errorf("%d IVS stages left", len(f.stages))
	}
}

// TestQuotaCountsOtherIntents: a broadcast making stages holds its share
// of STAGE_QUOTA before IVS has them, so another broadcast's scale-up in
// the meantime does not pass the quota.
func TestQuotaCountsOtherIntents(t *testing.T) {
	ctx := t.Context()
	svc, st, f, clk := controlled(t, fleet.Config{StageCapacity: 10, ScaleUpThreshold: 8, HeartbeatTimeout: time.Minute, StageQuota: 4})
	const other, otherOrigin = "show-2", "arn:aws:ivs:us-east-1:123456789012:stage/Origin000002"
	f.mu.Lock()
	f.stages[otherOrigin] = fleet.IVSStage{Arn: otherOrigin, Tags: map[string]string{fleet.TagBroadcast: other, fleet.TagRole: "origin"}}
	f.mu.Unlock()
	if err := st.PutStage(ctx, store.Stage{Arn: otherOrigin, BroadcastID: other, Role: store.RoleOrigin, Capacity: 10, Seatable: true, CreatedAt: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateBroadcast(ctx, store.Broadcast{ID: other, OriginArn: otherOrigin, CreatedAt: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutHost(ctx, store.Host{BroadcastID: other, ParticipantID: "HOST2", StageArn: otherOrigin, Publishing: true, JoinedAt: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	// The default broadcast is making two stages: 2 + 2 of the quota's 4.
	b, err := st.GetBroadcast(ctx, fleet.DefaultBroadcast)
	if err != nil {
		t.Fatal(err)
	}
	b.Creating, b.CreatingUntil = 2, clk.Now().Add(30*time.Second)
	if err := st.PutBroadcast(ctx, b); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if _, err := st.ReserveSeat(ctx, store.SeatRequest{BroadcastID: other, UserID: fmt.Sprint("u", i), ParticipantID: "p", Now: clk.Now(), TTL: time.Hour}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := svc.ReconcileBroadcast(ctx, other); err != nil {
		t.Fatal(err)
	}
	if f.creates != 0 {
		t.Errorf("%d stages made for %s while the quota was taken by the other's intent", f.creates, other)
	}
	// Once that intent lapses, its share is free again.
	clk.advance(time.Minute)
	if _, err := svc.ReconcileBroadcast(ctx, other); err != nil {
		t.Fatal(err)
	}
	if f.creates == 0 {
		t.Errorf("no stage made for %s after the other's intent lapsed", other)
	}
}

// reasonObserver records the seats opened and the reasons seats closed.
type reasonObserver struct {
	mu      sync.Mutex
	opened  int
	reasons []string
}

func (o *reasonObserver) SeatOpened(store.Seat, fleet.Client) { o.mu.Lock(); o.opened++; o.mu.Unlock() }
func (o *reasonObserver) SeatClosed(_ store.Seat, reason string, _ time.Time) {
	o.mu.Lock()
	o.reasons = append(o.reasons, reason)
	o.mu.Unlock()
}

// TestReseatClosesSession: a viewer the store moves off a stage that no
// longer takes viewers has its old seat's session closed, as moved; with
// nowhere to go, it keeps its seat.
func TestReseatClosesSession(t *testing.T) {
	ctx := t.Context()
	obs := &reasonObserver{}
	svc, st, _, clk := controlled(t, fleet.Config{StageCapacity: 10, ScaleUpThreshold: 8, HeartbeatTimeout: time.Minute, SeatWait: time.Millisecond, Observer: obs})
	first, err := svc.ViewerToken(ctx, fleet.DefaultBroadcast, "alice", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SetSeatable(ctx, origin, false); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.ViewerToken(ctx, fleet.DefaultBroadcast, "alice", ""); !errors.Is(err, fleet.ErrNotLive) {
		t.Fatalf("token with no stage taking viewers: %v, want ErrNotLive", err)
	}
	if seat, err := st.GetSeat(ctx, fleet.DefaultBroadcast, "alice"); err != nil || seat.StageArn != first.StageArn {
		t.Errorf("seat after a refused token: %+v, %v; want the one on %s kept", seat, err, first.StageArn)
	}
	const replica = "arn:aws:ivs:us-east-1:123456789012:stage/Replica00001"
	if err := st.PutStage(ctx, store.Stage{Arn: replica, BroadcastID: fleet.DefaultBroadcast, Role: store.RoleReplica, Capacity: 10, Seatable: true, CreatedAt: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	moved, err := svc.ViewerToken(ctx, fleet.DefaultBroadcast, "alice", "")
	if err != nil {
		t.Fatal(err)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if moved.StageArn != replica || obs.opened != 2 || !slices.Equal(obs.reasons, []string{fleet.EndMoved}) {
		t.Errorf("moved to %s; %d opened, closed %v; want on %s, 2 opened, one closed as moved", moved.StageArn, obs.opened, obs.reasons, replica)
	}
}

// TestEndCutShortIsFinished: an end that IVS (or a crash) cut short leaves
// the broadcast marked ending: it takes no host or viewer, and the next
// pass, on whichever instance, finishes the end instead of making stages.
func TestEndCutShortIsFinished(t *testing.T) {
	ctx := t.Context()
	svc, st, f, clk := controlled(t, fleet.Config{StageCapacity: 10, ScaleUpThreshold: 8, MaxStages: 20, MinIdleStages: 1,
		HeartbeatTimeout: time.Minute, ScaleDownStabilization: time.Minute})
	pass(t, svc)
	if n := len(replicaStages(t, st)); n != 1 {
		t.Fatalf("%d replica stages after a pass with MIN_IDLE_STAGES 1, want 1", n)
	}
	if _, err := svc.ViewerToken(ctx, fleet.DefaultBroadcast, "seated", ""); err != nil {
		t.Fatal(err)
	}

	f.mu.Lock()
	f.deleteFails = 1
	f.mu.Unlock()
	if _, err := svc.EndBroadcast(ctx, fleet.DefaultBroadcast, "show over"); !errors.Is(err, errDeleteRefused) {
		t.Fatalf("EndBroadcast with IVS refusing a delete = %v, want %v", err, errDeleteRefused)
	}
	b, err := st.GetBroadcast(ctx, fleet.DefaultBroadcast)
	if err != nil || b.EndingSince.IsZero() || b.EndReason != "show over" {
		t.Fatalf("broadcast after the cut-short end: %+v, %v; want it marked ending, for its reason", b, err)
	}
	if _, err := svc.PublisherToken(ctx, fleet.DefaultBroadcast, "host-2"); !errors.Is(err, fleet.ErrConflict) {
		t.Errorf("host token for an ending broadcast: %v, want %v", err, fleet.ErrConflict)
	}
	// Nothing reopens a stage meanwhile: not the host's events, not a
	// viewer asking for a stage by name, not a manual stage.
	if _, err := svc.HandleEvent(ctx, fleet.Event{ID: "published-again", StageArn: origin, Name: fleet.EventPublished, Time: clk.Now(), ParticipantID: hostID}); err != nil {
		t.Fatal(err)
	}
	for _, stage := range []string{"", origin} {
		if _, err := svc.ViewerToken(ctx, fleet.DefaultBroadcast, "late", stage); !errors.Is(err, fleet.ErrConflict) {
			t.Errorf("viewer token (stage %q) for an ending broadcast: %v, want %v", stage, err, fleet.ErrConflict)
		}
	}
	if _, err := svc.CreateStage(ctx, fleet.DefaultBroadcast, "manual", nil); !errors.Is(err, fleet.ErrConflict) {
		t.Errorf("manual stage for an ending broadcast: %v, want %v", err, fleet.ErrConflict)
	}
	for _, s := range replicaStages(t, st) {
		if s.Seatable {
			t.Errorf("stage %s takes viewers while the broadcast is ending", s.Arn)
		}
	}
	if o, err := st.GetStage(ctx, origin); err != nil || o.Seatable {
		t.Errorf("origin %+v, %v while the broadcast is ending; want it closed", o, err)
	}

	f.mu.Lock()
	creates := f.creates
	f.mu.Unlock()
	pass(t, svc)
	if _, err := st.GetBroadcast(ctx, fleet.DefaultBroadcast); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("broadcast after a pass: %v, want it ended (not found)", err)
	}
	f.mu.Lock()
	left, made := len(f.stages), f.creates-creates
	f.mu.Unlock()
	if left != 0 || made != 0 {
		t.Errorf("after the pass IVS holds %d stages, %d made by it; want none of either", left, made)
	}
	// Ended, the broadcast starts anew with its next host.
	if tok, err := svc.PublisherToken(ctx, fleet.DefaultBroadcast, "host-2"); err != nil || tok.StageArn == "" || tok.StageArn == origin {
		t.Errorf("host token after the end: %+v, %v; want a new origin", tok, err)
	}
}

// TestStaleEndNotResumed: a pass that found an end cut short finishes
// only that end: once it was finished by someone else and the broadcast
// began anew, the new broadcast is left alone.
func TestStaleEndNotResumed(t *testing.T) {
	ctx := t.Context()
	svc, st, _, clk := controlled(t, fleet.Config{StageCapacity: 10, ScaleUpThreshold: 8, HeartbeatTimeout: time.Minute})
	b, err := st.GetBroadcast(ctx, fleet.DefaultBroadcast)
	if err != nil {
		t.Fatal(err)
	}
	seen := clk.Now().Add(-time.Minute) // the mark of an end since finished
	if end, err := svc.FinishEnd(ctx, fleet.DefaultBroadcast, seen); err != nil || end.StagesDeleted != 0 {
		t.Errorf("FinishEnd of a mark the broadcast does not carry = %+v, %v; want nothing done", end, err)
	}
	if _, err := st.GetBroadcast(ctx, fleet.DefaultBroadcast); err != nil {
		t.Errorf("the broadcast begun anew: %v, want it kept", err)
	}
	// The mark it does carry is finished.
	b.EndingSince, b.EndReason = seen, "test"
	if err := st.PutBroadcast(ctx, b); err != nil {
		t.Fatal(err)
	}
	if end, err := svc.FinishEnd(ctx, fleet.DefaultBroadcast, seen); err != nil || end.StagesDeleted != 1 {
		t.Errorf("FinishEnd of the broadcast's own mark = %+v, %v; want its origin deleted", end, err)
	}
}
