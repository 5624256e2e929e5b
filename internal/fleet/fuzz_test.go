package fleet_test

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/fleet"
	"github.com/stagefleet/stagefleet/internal/store"
)

// The fleet takes events and heartbeats from the network: what a hostile
// client sends must neither pin a host's state with a forged time nor mint
// a seat from a participant id alone. These tests drive the real service
// on a memory store, a fake IVS and a manual clock.

const (
	replica = "arn:aws:ivs:us-east-1:123456789012:stage/Replica00001"
	// stranger is a well-formed stage ARN that is not stagefleet's.
	stranger = "arn:aws:ivs:us-east-1:123456789012:stage/Stranger0001"
	maxSkew  = 30 * time.Second
)

// hostState returns the host record of hostID.
func hostState(t *testing.T, st store.Store) store.Host {
	t.Helper()
	h, err := st.GetHost(t.Context(), fleet.DefaultBroadcast, hostID)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// An event dated far ahead (a sender's wrong clock, or a forgery) counts
// as received now: the events after it are not stale. Within
// EventMaxSkew, event times order events as they are.
func TestFutureEventClamped(t *testing.T) {
	svc, st, _, clk := controlled(t, fleet.Config{StageCapacity: 50, ScaleUpThreshold: 45, EventMaxSkew: maxSkew})
	now := clk.Now()
	steps := []struct {
		name       string
		event      string
		at         time.Time
		want       fleet.EventResult
		publishing bool
		// eventTime is the host's EventTime after the event.
		eventTime time.Time
	}{
		{"an hour ahead is clamped to now", fleet.EventUnpublished, now.Add(time.Hour), fleet.EventApplied, false, now},
		{"one second later still applies", fleet.EventPublished, now.Add(time.Second), fleet.EventApplied, true, now.Add(time.Second)},
		{"ahead within the skew keeps its time", fleet.EventUnpublished, now.Add(20 * time.Second), fleet.EventApplied, false, now.Add(20 * time.Second)},
		{"earlier than the last applied is stale", fleet.EventPublished, now.Add(10 * time.Second), fleet.EventStale, false, now.Add(20 * time.Second)},
		{"later than the last applied applies", fleet.EventPublished, now.Add(25 * time.Second), fleet.EventApplied, true, now.Add(25 * time.Second)},
	}
	for i, step := range steps {
		ev := fleet.Event{ID: step.name, StageArn: origin, Name: step.event, Time: step.at, ParticipantID: hostID}
		res, err := svc.HandleEvent(t.Context(), ev)
		if err != nil || res != step.want {
			t.Fatalf("step %d (%s): %s dated %v: %q, %v; want %q", i, step.name, step.event, step.at.Sub(now), res, err, step.want)
		}
		h := hostState(t, st)
		if h.Publishing != step.publishing || !h.EventTime.Equal(step.eventTime) {
			t.Fatalf("step %d (%s): host publishing %v at %v; want %v at %v", i, step.name, h.Publishing, h.EventTime.Sub(now), step.publishing, step.eventTime.Sub(now))
		}
	}
	if s, err := st.GetStage(t.Context(), origin); err != nil || !s.Seatable {
		t.Errorf("origin %+v, %v: a stale Published was taken for the state; want it seatable after the last Published", s, err)
	}
}

// fuzzEventNames are the names the fleet acts on and some it does not.
var fuzzEventNames = []string{
	fleet.EventPublished, fleet.EventUnpublished, fleet.EventPublishError, fleet.EventLeft,
	fleet.EventReplicationStarted, fleet.EventReplicationStopped, "Participant Joined", "Session Created",
}

// fuzzKinds are the failures the fleet may answer an event or a heartbeat
// with. ErrUnavailable is not one: the memory store never fails.
var fuzzKinds = []error{fleet.ErrInvalid, fleet.ErrNotFound, fleet.ErrConflict}

// pick returns choices[i mod len], or junk when i points past them, so
// that an input picks a known value or brings its own.
func pick(i uint8, junk string, choices ...string) string {
	if int(i) >= len(choices) {
		return junk
	}
	return choices[i]
}

// offsetTime is now plus secs seconds, saturated so that huge offsets give
// far-off times instead of overflowing; math.MinInt64 is the zero time (an
// event with no time).
func offsetTime(now time.Time, secs int64) time.Time {
	const bound = 1 << 40 // some 35,000 years
	if secs == math.MinInt64 {
		return time.Time{}
	}
	return time.Unix(now.Unix()+max(-bound, min(bound, secs)), 0)
}

// FuzzEventsAndHeartbeat sends the fleet one IVS event and one heartbeat,
// each made of known values and junk, after a viewer has been seated (and,
// if asked, has left). Whatever they are: no panic, only fleet errors of
// the kinds a client may cause, an event about a stage that is not
// stagefleet's is ignored and not remembered, a re-sent event is never
// applied twice, no host's event time runs ahead of the clock by more than
// EventMaxSkew, and a heartbeat without the right seat key never adds a
// seat.
func FuzzEventsAndHeartbeat(f *testing.F) {
	// Inputs: event name, event stage, event participant (0 the host, 1
	// the viewer, else junk), offset of its time in seconds, id, replica
	// flag; whether the viewer left first; heartbeat user (0 the viewer),
	// participant (0 the viewer's), stage (0 the seat's, 1 origin, 2
	// replica, 3 none), seat key (0 the real one, 1 none, else junk).
	f.Add(uint8(0), uint8(0), uint8(0), "", int64(0), "ev-1", false, false, uint8(0), uint8(0), uint8(0), uint8(0), "", "")
	f.Add(uint8(1), uint8(0), uint8(0), "", int64(100*365*24*3600), "ev-future", false, false, uint8(0), uint8(0), uint8(0), uint8(0), "", "")
	f.Add(uint8(4), uint8(1), uint8(0), "", int64(-5), "ev-repl", false, true, uint8(0), uint8(0), uint8(0), uint8(0), "", "")
	f.Add(uint8(0), uint8(2), uint8(2), "MADEUP", int64(1), "ev-stranger", false, true, uint8(0), uint8(9), uint8(0), uint8(1), "", "FORGED")
	f.Add(uint8(9), uint8(0), uint8(1), "", int64(math.MinInt64), "ev-junk", false, true, uint8(0), uint8(0), uint8(0), uint8(0), "Something Else", "")
	f.Add(uint8(3), uint8(0), uint8(0), "", int64(-math.MaxInt64), "ev-past", true, false, uint8(1), uint8(0), uint8(1), uint8(2), "", "x")
	f.Fuzz(func(t *testing.T,
		nameIdx, stageIdx, partIdx uint8, junkPart string, offset int64, id string, replicaFlag bool,
		leave bool, hbUserIdx, hbPartIdx, hbStageIdx, hbKeyIdx uint8, junkName, junk string,
	) {
		svc, st, fake, clk := controlled(t, fleet.Config{
			StageCapacity: 2, ScaleUpThreshold: 1, HeartbeatTimeout: time.Minute, EventMaxSkew: maxSkew, EventDedupTTL: time.Hour,
		})
		ctx := t.Context()
		// A replica stage with the host's replication active, so that
		// both roles take events and seats.
		fake.stages[replica] = fleet.IVSStage{Arn: replica, Tags: map[string]string{fleet.TagBroadcast: fleet.DefaultBroadcast, fleet.TagRole: "replica"}}
		if err := st.PutStage(ctx, store.Stage{Arn: replica, BroadcastID: fleet.DefaultBroadcast, Role: store.RoleReplica, Capacity: 2, Seatable: true, CreatedAt: clk.Now()}); err != nil {
			t.Fatal(err)
		}
		if err := st.PutReplication(ctx, store.Replication{BroadcastID: fleet.DefaultBroadcast, ParticipantID: hostID, SourceArn: origin, DestArn: replica, State: store.ReplActive, UpdatedAt: clk.Now()}); err != nil {
			t.Fatal(err)
		}
		const user = "viewer-1"
		tok, err := svc.ViewerToken(ctx, fleet.DefaultBroadcast, user, "")
		if err != nil {
			t.Fatal(err)
		}
		if leave {
			if _, _, err := svc.Leave(ctx, fleet.DefaultBroadcast, user); err != nil {
				t.Fatal(err)
			}
		}

		ev := fleet.Event{
			ID:             id,
			StageArn:       pick(stageIdx, junk, origin, replica, stranger),
			Name:           pick(nameIdx, junkName, fuzzEventNames...),
			Time:           offsetTime(clk.Now(), offset),
			ParticipantID:  pick(partIdx, junkPart, hostID, tok.ParticipantID),
			Replica:        replicaFlag,
			SourceStageArn: origin,
		}
		_, recorded := st.GetStage(ctx, ev.StageArn)
		res, err := svc.HandleEvent(ctx, ev)
		checkKind(t, "event", err)
		if errors.Is(recorded, store.ErrNotFound) && (err != nil || res != fleet.EventIgnored) {
			t.Errorf("event about %s, not stagefleet's stage: %q, %v; want ignored", ev.StageArn, res, err)
		}
		again, err := svc.HandleEvent(ctx, ev)
		checkKind(t, "event sent again", err)
		if again == fleet.EventApplied {
			t.Errorf("event %q (%s) applied twice: first %q", ev.ID, ev.Name, res)
		}
		if errors.Is(recorded, store.ErrNotFound) && again != fleet.EventIgnored {
			t.Errorf("event about %s sent again: %q; want ignored (never remembered)", ev.StageArn, again)
		}
		hosts, err := st.ListHosts(ctx, fleet.DefaultBroadcast)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range hosts {
			if h.EventTime.After(clk.Now().Add(maxSkew)) {
				t.Errorf("host %s's event time %v is %v ahead of the clock; at most %v allowed", h.ParticipantID, h.EventTime, h.EventTime.Sub(clk.Now()), maxSkew)
			}
		}

		proof := fleet.SeatProof{
			StageArn:      pick(hbStageIdx, junk, tok.StageArn, origin, replica, ""),
			ParticipantID: pick(hbPartIdx, junk, tok.ParticipantID),
			SeatKey:       pick(hbKeyIdx, junk, tok.SeatKey, ""),
		}
		hbUser := pick(hbUserIdx, junk, user)
		valid := proof.SeatKey != "" && proof.SeatKey == svc.SeatKey(fleet.DefaultBroadcast, hbUser, proof.StageArn, proof.ParticipantID)
		before := seatCount(t, st)
		_, err = svc.Heartbeat(ctx, fleet.DefaultBroadcast, hbUser, proof)
		checkKind(t, "heartbeat", err)
		if after := seatCount(t, st); after > before && !valid {
			t.Errorf("heartbeat of %q as %+v without its seat key: %d seats, were %d", hbUser, proof, after, before)
		}
	})
}

// checkKind fails the test unless err is nil or a fleet error of a kind a
// client may cause.
func checkKind(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var fe *fleet.Error
	if !errors.As(err, &fe) {
		t.Fatalf("%s: %v (%T), not a fleet.Error", what, err, err)
	}
	for _, k := range fuzzKinds {
		if errors.Is(err, k) {
			return
		}
	}
	t.Fatalf("%s: %v, of a kind no client input should cause", what, err)
}

func seatCount(t *testing.T, st store.Store) int {
	t.Helper()
	seats, err := st.ListSeats(t.Context(), fleet.DefaultBroadcast)
	if err != nil {
		t.Fatal(err)
	}
	return len(seats)
}
