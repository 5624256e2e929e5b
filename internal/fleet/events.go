package fleet

import (
	"context"
	"errors"
	"time"

	"github.com/stagefleet/stagefleet/internal/store"
)

// IVS Stage Update event names fleet acts on.
const (
	EventPublished          = "Participant Published"
	EventUnpublished        = "Participant Unpublished"
	EventPublishError       = "Participant Publish Error"
	EventLeft               = "Participant Left"
	EventReplicationStarted = "Participant Replication Started"
	EventReplicationStopped = "Participant Replication Stopped"
)

// Event is an IVS Stage Update event, already parsed.
type Event struct {
	ID            string
	StageArn      string
	Name          string
	Time          time.Time
	ParticipantID string
	UserID        string
	// Replica says the participant is a replica (replication events and
	// events about replicas in a destination stage).
	Replica bool
	// SourceStageArn is set on replication events.
	SourceStageArn string
}

// EventResult says what became of an event.
type EventResult string

const (
	EventApplied   EventResult = "applied"
	EventDuplicate EventResult = "duplicate"
	EventStale     EventResult = "stale"
	EventIgnored   EventResult = "ignored"
)

// eventFailed is what Metrics hears of an event that could not be handled.
const eventFailed = "error"

// HandleEvent applies an IVS event. Delivery is at least once, late and
// unordered: duplicates are dropped by id, and an event older than the last
// one applied to the same host or replication changes nothing.
func (s *Service) HandleEvent(ctx context.Context, ev Event) (EventResult, error) {
	var lag time.Duration
	if !ev.Time.IsZero() {
		lag = s.now().Sub(ev.Time)
	}
	s.metrics.EventReceived(lag)
	res, err := s.handleEvent(ctx, ev)
	if err != nil {
		s.metrics.EventHandled(eventFailed)
	} else {
		s.metrics.EventHandled(string(res))
	}
	return res, err
}

func (s *Service) handleEvent(ctx context.Context, ev Event) (EventResult, error) {
	switch ev.Name {
	case EventPublished, EventUnpublished, EventPublishError, EventLeft:
		if ev.Replica {
			return EventIgnored, nil
		}
	case EventReplicationStarted, EventReplicationStopped:
	default:
		// Joins and leaves of viewers are most events: not worth a store
		// write each.
		return EventIgnored, nil
	}
	// Applied to the end even if the sender hangs up: half an event is
	// worse than a late one.
	ctx = context.WithoutCancel(ctx)
	// Only events about stages of ours are remembered: anything else is
	// dropped before it costs a de-duplication record.
	if _, err := s.store.GetStage(ctx, ev.StageArn); errors.Is(err, store.ErrNotFound) {
		return EventIgnored, nil
	} else if err != nil {
		return "", failWrap(ErrUnavailable, err, "reading stage %s", ev.StageArn)
	}
	ev.Time = s.eventTime(ev.Time)
	first, err := s.store.FirstSeen(ctx, ev.ID, s.cfg.EventDedupTTL)
	if err != nil {
		return "", failWrap(ErrUnavailable, err, "recording event %s", ev.ID)
	}
	if !first {
		return EventDuplicate, nil
	}
	res, err := s.applyEvent(ctx, ev)
	if err != nil {
		// Let the sender's retry through the de-duplication.
		if ferr := s.store.ForgetEvent(ctx, ev.ID); ferr != nil {
			s.log.Error("forgetting a failed event", "event", ev.ID, "error", ferr)
		}
		return "", err
	}
	return res, nil
}

// eventTime is an event's time as the fleet orders events by: one dated
// further ahead of this clock than EventMaxSkew (a sender's wrong clock, or
// a forgery) counts as received now, so that it cannot make every later
// event look stale.
func (s *Service) eventTime(t time.Time) time.Time {
	now := s.now()
	if t.IsZero() || t.After(now.Add(s.cfg.EventMaxSkew)) {
		return now
	}
	return t
}

func (s *Service) applyEvent(ctx context.Context, ev Event) (EventResult, error) {
	st, err := s.store.GetStage(ctx, ev.StageArn)
	if errors.Is(err, store.ErrNotFound) {
		return EventIgnored, nil
	}
	if err != nil {
		return "", failWrap(ErrUnavailable, err, "reading stage %s", ev.StageArn)
	}
	ctx, unlock, err := s.lock(ctx, st.BroadcastID, "ivs event")
	if err != nil {
		return "", err
	}
	// Kicked once the broadcast is released, so that the pass it asks
	// for can take it.
	defer s.enqueue(st.BroadcastID)
	defer unlock()
	// Read again under the lock: the controller may have changed it.
	if st, err = s.store.GetStage(ctx, ev.StageArn); errors.Is(err, store.ErrNotFound) {
		return EventIgnored, nil
	} else if err != nil {
		return "", failWrap(ErrUnavailable, err, "reading stage %s", ev.StageArn)
	}
	var res EventResult
	if ev.Name == EventReplicationStarted || ev.Name == EventReplicationStopped {
		res, err = s.replicationEvent(ctx, st, ev, ev.Name == EventReplicationStarted)
	} else {
		if st.Role != store.RoleOrigin {
			return EventIgnored, nil
		}
		res, err = s.hostEvent(ctx, st, ev, ev.Name == EventPublished)
	}
	if err != nil {
		return "", err
	}
	s.log.Info("ivs event", "event", ev.Name, "result", res, "broadcast", st.BroadcastID, "stage", st.Arn, "participant", ev.ParticipantID)
	return res, nil
}

func (s *Service) hostEvent(ctx context.Context, origin store.Stage, ev Event, publishing bool) (EventResult, error) {
	h, err := s.store.GetHost(ctx, origin.BroadcastID, ev.ParticipantID)
	switch {
	case errors.Is(err, store.ErrNotFound) && !publishing:
		// Viewers leave the origin too: only publishing makes a host.
		return EventIgnored, nil
	case errors.Is(err, store.ErrNotFound):
		// A host whose token stagefleet did not issue (or whose record was
		// lost) is a host all the same.
		h = store.Host{BroadcastID: origin.BroadcastID, ParticipantID: ev.ParticipantID, UserID: ev.UserID, StageArn: origin.Arn, JoinedAt: ev.Time}
	case err != nil:
		return "", failWrap(ErrUnavailable, err, "reading host")
	case ev.Time.Before(h.EventTime):
		return EventStale, nil
	}
	h.Publishing = publishing
	h.EventTime = ev.Time
	if err := s.store.PutHost(ctx, h); err != nil {
		return "", failWrap(ErrUnavailable, err, "recording host")
	}
	if err := s.applySeating(ctx, origin.BroadcastID); err != nil {
		return "", err
	}
	return EventApplied, nil
}

func (s *Service) replicationEvent(ctx context.Context, dest store.Stage, ev Event, started bool) (EventResult, error) {
	r, err := s.store.GetReplication(ctx, dest.BroadcastID, ev.ParticipantID, dest.Arn)
	switch {
	case errors.Is(err, store.ErrNotFound) && !started:
		// A replication stopped on purpose (its record dropped) stays gone.
		return EventIgnored, nil
	case errors.Is(err, store.ErrNotFound):
		r = store.Replication{BroadcastID: dest.BroadcastID, ParticipantID: ev.ParticipantID, SourceArn: ev.SourceStageArn, DestArn: dest.Arn}
	case err != nil:
		return "", failWrap(ErrUnavailable, err, "reading replication")
	case ev.Time.Before(r.EventTime):
		return EventStale, nil
	}
	r.State = store.ReplStopped
	r.Reason = "IVS reported the replication stopped"
	if started {
		r.State = store.ReplActive
		r.Reason = ""
	}
	r.EventTime = ev.Time
	r.UpdatedAt = s.now()
	if err := s.store.PutReplication(ctx, r); err != nil {
		return "", failWrap(ErrUnavailable, err, "recording replication")
	}
	if err := s.applySeating(ctx, dest.BroadcastID); err != nil {
		return "", err
	}
	return EventApplied, nil
}
