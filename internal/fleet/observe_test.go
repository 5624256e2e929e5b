package fleet_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/fleet"
	"github.com/stagefleet/stagefleet/internal/store"
)

// recorder is a SeatObserver that keeps what it heard.
type recorder struct {
	mu     sync.Mutex
	opened []store.Seat
	closed []closing
}

type closing struct {
	seat     store.Seat
	reason   string
	lastSeen time.Time
}

func (r *recorder) SeatOpened(s store.Seat, _ fleet.Client) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.opened = append(r.opened, s)
}

func (r *recorder) SeatClosed(s store.Seat, reason string, lastSeen time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = append(r.closed, closing{s, reason, lastSeen})
}

// Every seat taken is opened once, and every way a seat ends closes it once
// with the last moment its viewer was known present.
func TestSeatObserver(t *testing.T) {
	rec := &recorder{}
	svc, _, _, clk := controlled(t, fleet.Config{StageCapacity: 50, ScaleUpThreshold: 45, HeartbeatTimeout: time.Minute, Observer: rec})
	ctx := t.Context()
	for _, u := range []string{"leaver", "silent", "mover", "stayer"} {
		if _, err := svc.ViewerToken(ctx, fleet.DefaultBroadcast, u, ""); err != nil {
			t.Fatal(err)
		}
	}
	// Asking again keeps the seat: nothing new opens.
	if _, err := svc.ViewerToken(ctx, fleet.DefaultBroadcast, "stayer", ""); err != nil {
		t.Fatal(err)
	}
	if len(rec.opened) != 4 {
		t.Fatalf("%d seats opened, want 4", len(rec.opened))
	}
	clk.advance(10 * time.Second)
	left := clk.Now()
	if _, _, err := svc.Leave(ctx, fleet.DefaultBroadcast, "leaver"); err != nil {
		t.Fatal(err)
	}
	// The mover comes back as another participant: its old seat ends.
	if _, err := svc.Rejoin(ctx, fleet.DefaultBroadcast, "mover", "", "MOVER2"); err != nil {
		t.Fatal(err)
	}
	// "silent" sends no heartbeat; the others' last one is at +10 s.
	for _, u := range []string{"mover", "stayer"} {
		seats := rec.opened
		var pid string
		for _, s := range seats {
			if s.UserID == u {
				pid = s.ParticipantID
			}
		}
		if _, err := svc.Heartbeat(ctx, fleet.DefaultBroadcast, u, fleet.SeatProof{ParticipantID: pid}); err != nil {
			t.Fatalf("heartbeat of %s: %v", u, err)
		}
	}
	clk.advance(2 * time.Minute)
	svc.ExpireSeatsNow(ctx)
	if _, err := svc.EndBroadcast(ctx, fleet.DefaultBroadcast, "test"); err != nil {
		t.Fatal(err)
	}
	want := map[string]closing{
		"leaver": {reason: fleet.EndLeave, lastSeen: left},
		"mover":  {reason: fleet.EndMoved, lastSeen: left},
	}
	got := map[string][]closing{}
	for _, c := range rec.closed {
		got[c.seat.UserID] = append(got[c.seat.UserID], c)
	}
	for u, w := range want {
		if len(got[u]) == 0 || got[u][0].reason != w.reason || !got[u][0].lastSeen.Equal(w.lastSeen) {
			t.Errorf("%s closed %+v, want first %s at %v", u, got[u], w.reason, w.lastSeen)
		}
	}
	// Expired: last known present at its last renewal (the join, for
	// "silent"; the heartbeat at +10 s for the others).
	for u, lastSeen := range map[string]time.Time{"silent": left.Add(-10 * time.Second), "stayer": left} {
		if len(got[u]) != 1 || got[u][0].reason != fleet.EndExpired || !got[u][0].lastSeen.Equal(lastSeen) {
			t.Errorf("%s closed %+v, want once, expired, last seen %v", u, got[u], lastSeen)
		}
	}
	opened := map[string]int{}
	for _, s := range rec.opened {
		opened[fleet.SessionID(s)]++
	}
	for _, c := range rec.closed {
		if opened[fleet.SessionID(c.seat)] != 1 {
			t.Errorf("closed session %s of %s was opened %d times", fleet.SessionID(c.seat), c.seat.UserID, opened[fleet.SessionID(c.seat)])
		}
	}
	if len(rec.closed) != len(rec.opened) {
		t.Errorf("%d sessions closed of %d opened", len(rec.closed), len(rec.opened))
	}
}

// Hosts that are gone are forgotten by a resync: one seen once and now
// absent from the origin at once, one given a token and never seen once
// its token has run out; a host given a token just now stays.
func TestHostsPruned(t *testing.T) {
	svc, st, f, clk := controlled(t, fleet.Config{StageCapacity: 50, ScaleUpThreshold: 45, PublisherTTL: time.Hour})
	ctx := t.Context()
	// hostID was recorded publishing (seen); IVS no longer shows it.
	h, err := st.GetHost(ctx, fleet.DefaultBroadcast, hostID)
	if err != nil {
		t.Fatal(err)
	}
	h.EventTime = clk.Now()
	if err := st.PutHost(ctx, h); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"FRESH", "STALE"} {
		if err := st.PutHost(ctx, store.Host{BroadcastID: fleet.DefaultBroadcast, ParticipantID: id, StageArn: origin, JoinedAt: clk.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	f.mu.Lock()
	f.publishing = map[string]bool{}
	f.mu.Unlock()
	clk.advance(30 * time.Minute)
	if err := st.PutHost(ctx, store.Host{BroadcastID: fleet.DefaultBroadcast, ParticipantID: "FRESH", StageArn: origin, JoinedAt: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	resync := func() []string {
		t.Helper()
		if err := svc.Resync(ctx); err != nil {
			t.Fatal(err)
		}
		pass(t, svc)
		hosts, err := st.ListHosts(ctx, fleet.DefaultBroadcast)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, h := range hosts {
			ids = append(ids, h.ParticipantID)
		}
		return ids
	}
	if got := resync(); len(got) != 2 || got[0] == hostID || got[1] == hostID {
		t.Fatalf("hosts after the seen host left: %v; want FRESH and STALE (tokens still valid)", got)
	}
	clk.advance(31 * time.Minute)
	if got := resync(); len(got) != 1 || got[0] != "FRESH" {
		t.Fatalf("hosts once STALE's token ran out: %v; want only FRESH", got)
	}
}

// roomyRecorder is a recorder that, like the viewing history's writer, can
// be waited on for room.
type roomyRecorder struct {
	recorder
	waits int
}

// WaitRoom has room for 700 at a time, less than a store step.
func (r *roomyRecorder) WaitRoom(_ context.Context, n int) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.waits++
	return min(n, 700), nil
}

// Ending a broadcast of more seats than one store step takes frees them
// all, step by step, each closed once, the observer waited on before
// each step.
func TestEndBroadcastManySeats(t *testing.T) {
	rec := &roomyRecorder{}
	svc, st, _, _ := controlled(t, fleet.Config{StageCapacity: 3000, ScaleUpThreshold: 2900, HeartbeatTimeout: time.Minute, Observer: rec})
	ctx := t.Context()
	const viewers = 2500
	for i := range viewers {
		if _, err := svc.ViewerToken(ctx, fleet.DefaultBroadcast, fmt.Sprintf("v%d", i), ""); err != nil {
			t.Fatal(err)
		}
	}
	end, err := svc.EndBroadcast(ctx, fleet.DefaultBroadcast, "test")
	if err != nil {
		t.Fatal(err)
	}
	if end.SeatsFreed != viewers {
		t.Errorf("ended with %d seats freed, want %d", end.SeatsFreed, viewers)
	}
	closed := map[string]int{}
	for _, c := range rec.closed {
		if c.reason != fleet.EndBroadcastEnded {
			t.Errorf("%s closed as %s, want %s", c.seat.UserID, c.reason, fleet.EndBroadcastEnded)
		}
		closed[c.seat.UserID]++
	}
	if len(closed) != viewers || len(rec.closed) != viewers {
		t.Errorf("%d closes of %d viewers, want each of %d closed once", len(rec.closed), len(closed), viewers)
	}
	if rec.waits != 4 {
		t.Errorf("the observer was waited on %d times, want once per step of 700 of the 2,500 seats (4)", rec.waits)
	}
	if seats, err := st.ListSeats(ctx, fleet.DefaultBroadcast); err != nil || len(seats) != 0 {
		t.Errorf("seats after the end: %d, %v; want none", len(seats), err)
	}
}

// downRecorder's history has no room and says so at once.
type downRecorder struct {
	recorder
	waits int
}

func (r *downRecorder) WaitRoom(context.Context, int) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.waits++
	return 0, errors.New("the database is down")
}

// An observer without room does not hold an end: it is asked once, and
// the end frees every seat.
func TestEndBroadcastHistoryDown(t *testing.T) {
	rec := &downRecorder{}
	svc, _, _, _ := controlled(t, fleet.Config{StageCapacity: 3000, ScaleUpThreshold: 2900, HeartbeatTimeout: time.Minute, Observer: rec})
	ctx := t.Context()
	for i := range 2500 {
		if _, err := svc.ViewerToken(ctx, fleet.DefaultBroadcast, fmt.Sprintf("v%d", i), ""); err != nil {
			t.Fatal(err)
		}
	}
	end, err := svc.EndBroadcast(ctx, fleet.DefaultBroadcast, "test")
	if err != nil || end.SeatsFreed != 2500 {
		t.Fatalf("EndBroadcast = %+v, %v; want all 2,500 seats freed", end, err)
	}
	if rec.waits != 1 {
		t.Errorf("the observer was asked for room %d times, want once (then the end goes on)", rec.waits)
	}
}
