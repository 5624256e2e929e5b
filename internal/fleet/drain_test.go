package fleet_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/fleet"
	"github.com/stagefleet/stagefleet/internal/store"
	"github.com/stagefleet/stagefleet/internal/store/memory"
)

// blockingIVS is fakeIVS whose DeleteStage of the stages in held waits
// until release is closed, so that a test can hold one broadcast's drain in
// the middle of an IVS call and see what else still moves.
type blockingIVS struct {
	*fakeIVS
	held map[string]bool // read-only once the test starts
	// entered gets a held ARN when its DeleteStage starts waiting (while
	// the buffer has room: the test waits for the first).
	entered chan string
	release chan struct{}

	mu          sync.Mutex
	deleteCalls int
}

func (b *blockingIVS) DeleteStage(ctx context.Context, arn string) error {
	b.mu.Lock()
	b.deleteCalls++
	b.mu.Unlock()
	if b.held[arn] {
		select {
		case b.entered <- arn:
		default:
		}
		select {
		case <-b.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return b.fakeIVS.DeleteStage(ctx, arn)
}

// calls returns how many DeleteStage calls were made so far.
func (b *blockingIVS) calls() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.deleteCalls
}

// TestDrainDoesNotHoldUpAnotherBroadcast: broadcast A drains 40 empty
// replica stages and IVS hangs on its first DeleteStage. Broadcast B, whose
// full origin needs room, must still get its replica stage meanwhile: one
// broadcast's slow scale-down may cost that broadcast time, never another.
// Nor does the drain hold A itself: A's events are applied meanwhile.
// Once IVS answers, A's drain is paced by the DeleteStage quota, a second's
// worth of calls per pass, so that no pass holds A for long: 40 stages at
// 5 a pass is 8 passes.
func TestDrainDoesNotHoldUpAnotherBroadcast(t *testing.T) {
	const (
		broadcastA, broadcastB = "drain-a", "busy-b"
		originA                = "arn:aws:ivs:us-east-1:123456789012:stage/OriginA00001"
		originB                = "arn:aws:ivs:us-east-1:123456789012:stage/OriginB00001"
		hostA, hostB           = "HOSTA", "HOSTB"
		emptyReplicas          = 40
		perPass                = 5
		capacity               = 10
		window                 = time.Minute
	)
	ctx := t.Context()
	clk := &clock{now: time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)}
	st := memory.New()
	ivs := &blockingIVS{fakeIVS: newFakeIVS(), held: map[string]bool{}, entered: make(chan string, 1), release: make(chan struct{})}
	// Released however the test ends, so that A's blocked pass returns.
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(ivs.release) }) }
	t.Cleanup(release)

	// Both broadcasts are live: an origin taking viewers and a publishing
	// host each.
	for _, b := range []struct{ id, origin, host string }{{broadcastA, originA, hostA}, {broadcastB, originB, hostB}} {
		ivs.stages[b.origin] = fleet.IVSStage{Arn: b.origin, Tags: map[string]string{fleet.TagBroadcast: b.id, fleet.TagRole: "origin"}}
		if err := st.PutStage(ctx, store.Stage{Arn: b.origin, BroadcastID: b.id, Role: store.RoleOrigin, Capacity: capacity, Seatable: true, CreatedAt: clk.Now()}); err != nil {
			t.Fatal(err)
		}
		if _, err := st.CreateBroadcast(ctx, store.Broadcast{ID: b.id, OriginArn: b.origin, CreatedAt: clk.Now()}); err != nil {
			t.Fatal(err)
		}
		if err := st.PutHost(ctx, store.Host{BroadcastID: b.id, ParticipantID: b.host, StageArn: b.origin, Publishing: true, JoinedAt: clk.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	// A: 40 replica stages, their host replicated into each, empty since
	// well before the stabilization window: the audience has gone and every
	// one of them is to be removed.
	emptySince := clk.Now().Add(-2 * window)
	replicaA := func(i int) string { return fmt.Sprintf("arn:aws:ivs:us-east-1:123456789012:stage/ReplA%07d", i) }
	for i := range emptyReplicas {
		arn := replicaA(i)
		ivs.stages[arn] = fleet.IVSStage{Arn: arn, Tags: map[string]string{fleet.TagBroadcast: broadcastA, fleet.TagRole: "replica"}}
		ivs.active[[2]string{hostA, arn}] = true
		ivs.held[arn] = true
		if err := st.PutStage(ctx, store.Stage{Arn: arn, BroadcastID: broadcastA, Role: store.RoleReplica, Capacity: capacity, Seatable: true, CreatedAt: emptySince, EmptySince: emptySince}); err != nil {
			t.Fatal(err)
		}
		if err := st.PutReplication(ctx, store.Replication{BroadcastID: broadcastA, ParticipantID: hostA, SourceArn: originA, DestArn: arn, State: store.ReplActive, UpdatedAt: emptySince}); err != nil {
			t.Fatal(err)
		}
	}
	// B: its origin is full, so it needs a replica stage now.
	for i := range capacity {
		if _, err := st.ReserveSeat(ctx, store.SeatRequest{BroadcastID: broadcastB, UserID: fmt.Sprint("b-viewer-", i), ParticipantID: fmt.Sprint("BV", i), Now: clk.Now(), TTL: time.Hour}); err != nil {
			t.Fatal(err)
		}
	}
	if o, err := st.GetStage(ctx, originB); err != nil || o.Seats != capacity {
		t.Fatalf("B's origin: %+v, %v; want it full with %d seats", o, err, capacity)
	}

	svc := fleet.New(fleet.Config{
		StageCapacity:          capacity,
		ScaleUpThreshold:       8,
		MaxStages:              emptyReplicas + 10,
		ScaleDownStabilization: window,
		HeartbeatTimeout:       time.Hour,
		Quotas:                 map[string]float64{"DeleteStage": perPass, "StopParticipantReplication": perPass, "CreateStage": perPass, "StartParticipantReplication": perPass},
		Now:                    clk.Now,
	}, st, ivs, nopIssuer{}, slog.New(slog.DiscardHandler))

	// A's first pass, in the background, until IVS hangs on its first
	// DeleteStage.
	aDone := make(chan error, 1)
	go func() {
		_, err := svc.ReconcileBroadcast(ctx, broadcastA)
		aDone <- err
	}()
	select {
	case <-ivs.entered:
	case err := <-aDone:
		t.Fatalf("A's pass returned (%v) without deleting a stage; want it draining", err)
	case <-time.After(10 * time.Second):
		t.Fatal("A's pass made no DeleteStage call within 10s")
	}

	// A's own events do not wait behind its drain either: the replicas
	// being deleted are already closed to viewers, and the next
	// replication turning active must be heard now, not after IVS. A
	// Replication Started of a replica not being removed takes A and
	// changes nothing in the drain. The timeout only turns a hang into a
	// failure.
	evDone := make(chan error, 1)
	go func() {
		res, err := svc.HandleEvent(ctx, fleet.Event{ID: "a-replica-started", StageArn: replicaA(emptyReplicas - 1), Name: fleet.EventReplicationStarted, Time: clk.Now(), ParticipantID: hostA, Replica: true, SourceStageArn: originA})
		if err == nil && res != fleet.EventApplied {
			err = fmt.Errorf("result %q, want %q", res, fleet.EventApplied)
		}
		evDone <- err
	}()
	select {
	case err := <-evDone:
		if err != nil {
			t.Fatalf("an event of A while its drain was blocked in DeleteStage: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("an event of A was not applied within 10s while its drain was blocked in DeleteStage: the drain holds A")
	}

	// B's pass must finish while A's is stuck in IVS.
	bDone := make(chan error, 1)
	go func() {
		_, err := svc.ReconcileBroadcast(ctx, broadcastB)
		bDone <- err
	}()
	select {
	case err := <-bDone:
		if err != nil {
			t.Fatalf("B's pass: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("B's pass did not finish within 10s while A's drain was blocked in DeleteStage: A's drain holds up B")
	}
	select {
	case err := <-aDone:
		t.Fatalf("A's pass returned (%v) before its DeleteStage was released; the test did not hold it", err)
	default:
	}
	var bReplicas []store.Stage
	stagesB, err := st.ListStages(ctx, broadcastB)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stagesB {
		if s.Role == store.RoleReplica {
			bReplicas = append(bReplicas, s)
		}
	}
	if len(bReplicas) == 0 {
		t.Fatalf("B's stages after its pass: %+v; want a replica stage for its full origin", stagesB)
	}
	for _, s := range bReplicas {
		ivs.mu.Lock()
		got, ok := ivs.stages[s.Arn]
		ivs.mu.Unlock()
		if !ok || got.Tags[fleet.TagBroadcast] != broadcastB {
			t.Errorf("B's replica %s: in IVS %v with tags %v; want created in IVS for %s", s.Arn, ok, got.Tags, broadcastB)
		}
	}

	// Now IVS answers: A's first pass finishes within its allowance.
	release()
	if err := <-aDone; err != nil {
		t.Fatalf("A's first pass: %v", err)
	}
	remaining := func() int {
		t.Helper()
		all, err := st.ListStages(ctx, broadcastA)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, s := range all {
			if s.Role == store.RoleReplica {
				n++
			}
		}
		return n
	}
	calls := ivs.calls()
	if calls == 0 || calls > perPass {
		t.Fatalf("A's first pass made %d DeleteStage calls; want 1 to %d, the quota's second", calls, perPass)
	}
	passes := 1
	// Then pass after pass, as the queue would come back: each within the
	// quota, and always some progress.
	for remaining() > 0 {
		if passes == 2*emptyReplicas/perPass {
			t.Fatalf("%d replica stages of A left after %d passes", remaining(), passes)
		}
		before := ivs.calls()
		if _, err := svc.ReconcileBroadcast(ctx, broadcastA); err != nil {
			t.Fatalf("A's pass %d: %v", passes+1, err)
		}
		passes++
		switch n := ivs.calls() - before; {
		case n > perPass:
			t.Fatalf("A's pass %d made %d DeleteStage calls; want at most %d, the quota's second", passes, n, perPass)
		case n == 0:
			t.Fatalf("A's pass %d deleted nothing with %d stages left to drain", passes, remaining())
		}
	}
	if want := emptyReplicas / perPass; passes != want {
		t.Errorf("A drained in %d passes; want %d (%d stages, %d a pass)", passes, want, emptyReplicas, perPass)
	}
	_, stops, deleted := ivs.counts()
	if len(deleted) != emptyReplicas || stops != emptyReplicas {
		t.Errorf("%d stages deleted and %d replications stopped in IVS; want each of A's %d replicas stopped and deleted", len(deleted), stops, emptyReplicas)
	}
	if _, err := st.GetStage(ctx, originA); err != nil {
		t.Errorf("A's origin record: %v; the drain must keep it", err)
	}
}
