package fleet

import (
	"context"
	"errors"
	"time"
)

// Metrics hears what the fleet does, for monitoring. It is called on the
// join path, by the controller's workers and on every event: it must not
// block or do I/O. Broadcast ids are passed as they are; bounding them is
// the implementation's business.
type Metrics interface {
	// ViewerToken: a viewer token request (or a rejoin that asked for a
	// seat) ended with outcome (one of the Join values) after took.
	ViewerToken(broadcastID, outcome string, took time.Duration)
	// Seated: a viewer was given a seat after waiting for one (0: one was
	// free).
	Seated(waited time.Duration)
	// Reconciled: one reconcile of a broadcast took took and returned err.
	Reconciled(took time.Duration, err error)
	// Repaired: a resync repaired a record of kind (one of the Repair
	// values) from what IVS showed.
	Repaired(kind string)
	// LeaseAcquired and LeaseLost: this instance was granted a lease
	// (renewals are not grants), or lost one it was working under.
	LeaseAcquired(name string)
	LeaseLost(name string)
	// EventReceived: an IVS event arrived, lag after its own time (0 for
	// an event without one); EventHandled: what became of it (an
	// EventResult, or "error").
	EventReceived(lag time.Duration)
	EventHandled(result string)
}

// Outcomes of a viewer token request.
const (
	JoinOK       = "ok"
	JoinNotLive  = "not_live"
	JoinFull     = "full"
	JoinLimit    = "limit"
	JoinNotFound = "not_found"
	// JoinCanceled: the viewer hung up (or its request timed out) first.
	JoinCanceled = "canceled"
	// JoinEnding: the broadcast is being ended (409 CONFLICT).
	JoinEnding = "ending"
	JoinError  = "error"
)

// joinOutcome names what became of a viewer token request.
func joinOutcome(err error) string {
	switch {
	case err == nil:
		return JoinOK
	case errors.Is(err, ErrNotLive):
		return JoinNotLive
	case errors.Is(err, ErrStageFull):
		return JoinFull
	case errors.Is(err, ErrStageLimit):
		return JoinLimit
	case errors.Is(err, ErrNotFound):
		return JoinNotFound
	case errors.Is(err, ErrConflict):
		return JoinEnding
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return JoinCanceled
	}
	return JoinError
}

// What a resync repairs from IVS.
const (
	RepairHost               = "host_repaired"
	RepairHostRestored       = "host_restored"
	RepairReplication        = "replication_repaired"
	RepairReplicationRestore = "replication_restored"
	RepairStageAdopted       = "stage_adopted"
	RepairOrphanDeleted      = "orphan_deleted"
)

type noMetrics struct{}

func (noMetrics) ViewerToken(string, string, time.Duration) {}
func (noMetrics) Seated(time.Duration)                      {}
func (noMetrics) Reconciled(time.Duration, error)           {}
func (noMetrics) Repaired(string)                           {}
func (noMetrics) LeaseAcquired(string)                      {}
func (noMetrics) LeaseLost(string)                          {}
func (noMetrics) EventReceived(time.Duration)               {}
func (noMetrics) EventHandled(string)                       {}

// Waiting is the number of viewers waiting for a seat on this instance, by
// broadcast (those with none left out).
func (s *Service) Waiting() map[string]int {
	out := map[string]int{}
	s.locals.Range(func(k, v any) bool {
		if n := v.(*local).waiting.Load(); n > 0 {
			out[k.(string)] = int(n)
		}
		return true
	})
	return out
}
