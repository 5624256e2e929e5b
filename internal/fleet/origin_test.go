package fleet_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/fleet"
	"github.com/stagefleet/stagefleet/internal/store"
	"github.com/stagefleet/stagefleet/internal/store/memory"
)

// failCreateBroadcast fails the first fails calls to CreateBroadcast.
type failCreateBroadcast struct {
	*memory.Store
	fails int
}

func (f *failCreateBroadcast) CreateBroadcast(ctx context.Context, b store.Broadcast) (store.Broadcast, error) {
	if f.fails > 0 {
		f.fails--
		return store.Broadcast{}, errors.New("redis: i/o timeout")
	}
	return f.Store.CreateBroadcast(ctx, b)
}

// TestFailedOriginDropped: an origin whose broadcast could not be recorded
// is taken back, record and IVS stage, so that after the host's retry no
// viewer is seated where no host publishes.
func TestFailedOriginDropped(t *testing.T) {
	ctx := t.Context()
	st := &failCreateBroadcast{Store: memory.New(), fails: 1}
	f := newFakeIVS()
	svc := fleet.New(fleet.Config{StageCapacity: 10, ScaleUpThreshold: 8, HeartbeatTimeout: time.Minute, SeatWait: time.Millisecond}, st, f, nopIssuer{}, slog.New(slog.DiscardHandler))
	if _, err := svc.PublisherToken(ctx, "show", "host"); !errors.Is(err, fleet.ErrUnavailable) {
		t.Fatalf("host token while the store fails: %v, want ErrUnavailable", err)
	}
	tok, err := svc.PublisherToken(ctx, "show", "host")
	if err != nil {
		t.Fatal(err)
	}
	// The host publishes in the origin it was given.
	if _, err := svc.HandleEvent(ctx, fleet.Event{ID: "p1", StageArn: tok.StageArn, Name: fleet.EventPublished, Time: time.Now(), ParticipantID: tok.ParticipantID}); err != nil {
		t.Fatal(err)
	}
	if stages, err := st.ListStages(ctx, "show"); err != nil || len(stages) != 1 {
		t.Errorf("stage records after the retry: %+v (%v); want the one origin", stages, err)
	}
	f.mu.Lock()
	inIVS := len(f.stages)
	f.mu.Unlock()
	if inIVS != 1 {
		t.Errorf("%d IVS stages after the retry; want the one origin", inIVS)
	}
	v, err := svc.ViewerToken(ctx, "show", "viewer", "")
	if err != nil {
		t.Fatal(err)
	}
	if v.StageArn != tok.StageArn {
		t.Errorf("viewer seated on %s, where no host publishes (the origin is %s)", v.StageArn, tok.StageArn)
	}
}
