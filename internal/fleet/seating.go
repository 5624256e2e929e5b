package fleet

import (
	"context"
	"errors"
	"time"

	"github.com/stagefleet/stagefleet/internal/store"
)

// seatable is invariant 2, defined once: whether a stage takes viewers,
// from the facts. The origin does while any host publishes. A replica does
// while it is not draining, some host publishes, and every publishing
// host's replication into it is active: viewers there must see the whole
// show. Manual stages never do.
func seatable(st store.Stage, hosts []store.Host, reps map[replKey]store.Replication) bool {
	switch st.Role {
	case store.RoleOrigin:
		return anyPublishing(hosts)
	case store.RoleReplica:
		if st.Draining {
			return false
		}
		live := false
		for _, h := range hosts {
			if !h.Publishing {
				continue
			}
			live = true
			if reps[replKey{h.ParticipantID, st.Arn}].State != store.ReplActive {
				return false
			}
		}
		return live
	}
	return false
}

// applySeating sets whether each stage of the broadcast takes viewers to
// what seatable says of the records as they are now; an ending broadcast's
// stages all stay closed, whatever an event says. The caller holds the
// broadcast, so nobody else changes its seating meanwhile.
func (s *Service) applySeating(ctx context.Context, broadcastID string) error {
	ending, err := s.ending(ctx, broadcastID)
	switch {
	case err != nil:
		return err
	case !ending:
		return s.reseat(ctx, broadcastID)
	}
	stages, err := s.store.ListStages(ctx, broadcastID)
	if err != nil {
		return failWrap(ErrUnavailable, err, "listing stages")
	}
	return s.closeStages(ctx, stages)
}

// closeStages makes the stages take no viewers.
func (s *Service) closeStages(ctx context.Context, stages []store.Stage) error {
	for _, st := range stages {
		if err := s.store.SetSeatable(ctx, st.Arn, false); err != nil && !errors.Is(err, store.ErrNotFound) {
			return failWrap(ErrUnavailable, err, "closing stage %s", st.Arn)
		}
	}
	return nil
}

// reseat is applySeating for a caller holding the lock of a broadcast it
// has read as not ending (the mark is only written under the lock).
func (s *Service) reseat(ctx context.Context, broadcastID string) error {
	stages, err := s.store.ListStages(ctx, broadcastID)
	if err != nil {
		return failWrap(ErrUnavailable, err, "listing stages")
	}
	hosts, err := s.store.ListHosts(ctx, broadcastID)
	if err != nil {
		return failWrap(ErrUnavailable, err, "listing hosts")
	}
	list, err := s.store.ListReplications(ctx, broadcastID)
	if err != nil {
		return failWrap(ErrUnavailable, err, "listing replications")
	}
	return s.seatAsRecorded(ctx, broadcastID, stages, hosts, byReplKey(list))
}

// byReplKey indexes replications by host and destination.
func byReplKey(list []store.Replication) map[replKey]store.Replication {
	reps := make(map[replKey]store.Replication, len(list))
	for _, r := range list {
		reps[replKey{r.ParticipantID, r.DestArn}] = r
	}
	return reps
}

// seatAsRecorded is applySeating on records the caller has just read under
// the broadcast's lock.
func (s *Service) seatAsRecorded(ctx context.Context, broadcastID string, stages []store.Stage, hosts []store.Host, reps map[replKey]store.Replication) error {
	opened := false
	for _, st := range stages {
		want := seatable(st, hosts, reps)
		if want == st.Seatable {
			continue
		}
		if err := s.store.SetSeatable(ctx, st.Arn, want); err != nil {
			return failWrap(ErrUnavailable, err, "updating stage %s", st.Arn)
		}
		s.log.Info("stage seating changed", "broadcast", broadcastID, "stage", st.Arn, "role", st.Role, "seatable", want)
		if !want {
			continue
		}
		opened = true
		if started, ok := s.provisionStart.LoadAndDelete(st.Arn); ok {
			d := s.now().Sub(started.(time.Time))
			s.provisioning.observe(d)
			s.log.Info("replica stage ready", "broadcast", broadcastID, "stage", st.Arn, "provisioning_ms", d.Milliseconds())
		}
	}
	if opened {
		s.seatsChanged()
	}
	return nil
}
