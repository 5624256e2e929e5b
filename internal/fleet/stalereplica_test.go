package fleet_test

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/fleet"
	"github.com/stagefleet/stagefleet/internal/store"
	"github.com/stagefleet/stagefleet/internal/store/memory"
)

// blockList blocks ListReplicas (after its answer is computed) until
// release.
type blockList struct {
	*fakeIVS
	armed   atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func (b *blockList) ListReplicas(ctx context.Context, source, participantID string) ([]fleet.IVSReplica, error) {
	out, err := b.fakeIVS.ListReplicas(ctx, source, participantID)
	if b.armed.Load() {
		b.entered <- struct{}{}
		<-b.release
	}
	return out, err
}

// TestStaleReplicaRead: an IVS reading taken before a ReplicationStopped
// event does not undo the event: the replica stays closed to viewers.
func TestStaleReplicaRead(t *testing.T) {
	ctx := t.Context()
	clk := &clock{now: time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)}
	st := memory.New()
	f := newFakeIVS()
	f.publishing = map[string]bool{hostID: true}
	f.stages[origin] = fleet.IVSStage{Arn: origin, Tags: map[string]string{fleet.TagBroadcast: fleet.DefaultBroadcast, fleet.TagRole: "origin"}}
	_ = st.PutStage(ctx, store.Stage{Arn: origin, BroadcastID: fleet.DefaultBroadcast, Role: store.RoleOrigin, Capacity: 10, Seatable: true, CreatedAt: clk.Now()})
	_, _ = st.CreateBroadcast(ctx, store.Broadcast{ID: fleet.DefaultBroadcast, OriginArn: origin, CreatedAt: clk.Now()})
	_ = st.PutHost(ctx, store.Host{BroadcastID: fleet.DefaultBroadcast, ParticipantID: hostID, StageArn: origin, Publishing: true, JoinedAt: clk.Now(), EventTime: clk.Now()})
	bl := &blockList{fakeIVS: f, entered: make(chan struct{}), release: make(chan struct{})}
	svc := fleet.New(fleet.Config{StageCapacity: 10, ScaleUpThreshold: 8, MinIdleStages: 1, Now: clk.Now, HeartbeatTimeout: time.Minute, EventDedupTTL: time.Hour, EventMaxSkew: time.Minute}, st, bl, nopIssuer{}, slog.New(slog.DiscardHandler))
	for range 3 {
		pass(t, svc)
	}
	reps := replicaStages(t, st)
	if len(reps) != 1 {
		t.Fatalf("%d replicas", len(reps))
	}
	replica := reps[0].Arn
	if _, err := svc.HandleEvent(ctx, fleet.Event{ID: "e1", StageArn: replica, Name: fleet.EventReplicationStarted, Time: clk.Now(), ParticipantID: hostID, SourceStageArn: origin}); err != nil {
		t.Fatal(err)
	}
	if s1, err := st.GetStage(ctx, replica); err != nil || !s1.Seatable {
		t.Fatalf("replica after ReplicationStarted: %+v (%v), want seatable", s1, err)
	}
	clk.advance(time.Second)
	if err := svc.Resync(ctx); err != nil { // asks for a fresh read
		t.Fatal(err)
	}
	bl.armed.Store(true)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := svc.ReconcileBroadcast(ctx, fleet.DefaultBroadcast); err != nil {
			t.Errorf("reconcile: %v", err)
		}
	}()
	<-bl.entered
	bl.armed.Store(false)
	clk.advance(time.Second)
	// IVS stops the replication; its event is applied at once.
	f.mu.Lock()
	delete(f.active, [2]string{hostID, replica})
	f.mu.Unlock()
	if _, err := svc.HandleEvent(ctx, fleet.Event{ID: "e2", StageArn: replica, Name: fleet.EventReplicationStopped, Time: clk.Now(), ParticipantID: hostID, SourceStageArn: origin}); err != nil {
		t.Fatal(err)
	}
	if s2, err := st.GetStage(ctx, replica); err != nil || s2.Seatable {
		t.Fatalf("replica after ReplicationStopped: %+v (%v), want closed", s2, err)
	}
	close(bl.release)
	<-done
	s3, err := st.GetStage(ctx, replica)
	if err != nil {
		t.Fatal(err)
	}
	r, err := st.GetReplication(ctx, fleet.DefaultBroadcast, hostID, replica)
	if err != nil {
		t.Fatal(err)
	}
	// The pass may start the replication again (the host still
	// publishes); it must not call it active on the old reading.
	if s3.Seatable || r.State == store.ReplActive {
		t.Errorf("after the pass: replica seatable %v, replication %s; want closed and not active", s3.Seatable, r.State)
	}
}
