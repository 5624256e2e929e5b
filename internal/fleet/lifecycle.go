package fleet

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/stagefleet/stagefleet/internal/store"
)

// Ended is what ending a broadcast removed.
type Ended struct {
	BroadcastID   string
	StagesDeleted int
	SeatsFreed    int
}

// EndBroadcast takes a broadcast off the air for good: its stages stop
// taking viewers, every stage of it is deleted in IVS (which stops the
// replications into it), and its records, seats and hosts are dropped.
// An origin given by MASTER_STAGE_ARN is not stagefleet's to delete: it
// is only forgotten. The broadcast is marked ending first: a failure or a
// crash part-way leaves it ending, taking no host or viewer, with the
// stages not yet deleted, and the next reconcile (on any instance) or
// ending it again finishes the work.
func (s *Service) EndBroadcast(ctx context.Context, broadcastID, reason string) (Ended, error) {
	return s.endBroadcast(ctx, broadcastID, reason, endDue{})
}

// endDue is what a pass found that ends its broadcast: idleness for
// BROADCAST_IDLE_TIMEOUT, or the mark of an end begun at ending and cut
// short. The zero endDue is an end asked for.
type endDue struct {
	idle   bool
	ending time.Time
}

func (e endDue) due() bool { return e.idle || !e.ending.IsZero() }

// endFound ends a broadcast as a pass found it due to end, if it still is
// once the lock is taken again: a host may have started publishing, or a
// viewer taken a seat, since the pass found it idle; and the end it found
// cut short may have been finished since, and the broadcast started anew.
func (s *Service) endFound(ctx context.Context, broadcastID string, found endDue) (Ended, error) {
	return s.endBroadcast(ctx, broadcastID, "idle for BROADCAST_IDLE_TIMEOUT", found)
}

func (s *Service) endBroadcast(ctx context.Context, broadcastID, reason string, found endDue) (Ended, error) {
	ctx, unlock, err := s.lock(ctx, broadcastID, "end broadcast")
	if err != nil {
		return Ended{}, err
	}
	defer unlock()
	b, err := s.store.GetBroadcast(ctx, broadcastID)
	if errors.Is(err, store.ErrNotFound) {
		return Ended{}, fail(ErrNotFound, "there is no broadcast %s", broadcastID)
	} else if err != nil {
		return Ended{}, failWrap(ErrUnavailable, err, "reading broadcast %s", broadcastID)
	}
	switch {
	case found.due() && !b.EndingSince.Equal(found.ending):
		// Not the broadcast the pass found: its end was finished (and
		// it began anew), or another end began meanwhile.
		return Ended{BroadcastID: broadcastID}, nil
	case !b.EndingSince.IsZero():
		// An end that was cut short: finished now, for its own reason.
		reason = b.EndReason + " (resumed)"
	case found.idle:
		now, wait := s.now(), s.cfg.BroadcastIdleTimeout
		idle, err := s.idle(ctx, b, now)
		if err != nil {
			return Ended{}, failWrap(ErrUnavailable, err, "checking broadcast %s is still idle", broadcastID)
		}
		if wait <= 0 || b.IdleSince.IsZero() || now.Sub(b.IdleSince) < wait || !idle {
			return Ended{BroadcastID: broadcastID}, nil
		}
	}
	if b.EndingSince.IsZero() {
		b.EndingSince, b.EndReason = s.now(), reason
		if err := s.store.PutBroadcast(ctx, b); err != nil {
			return Ended{}, failWrap(ErrUnavailable, err, "marking broadcast %s as ending", broadcastID)
		}
	}
	stages, err := s.store.ListStages(ctx, broadcastID)
	if err != nil {
		return Ended{}, failWrap(ErrUnavailable, err, "listing stages")
	}
	// Nobody is seated while the stages go.
	if err := s.closeStages(ctx, stages); err != nil {
		return Ended{}, err
	}
	end := Ended{BroadcastID: broadcastID}
	// Replicas first, the origin last: a replica never outlives its
	// source by more than this call. The records go all at once with the
	// broadcast's below: dropping them stage by stage would read the
	// broadcast's seats once per stage. Until then, after a failure, the
	// closed records seat nobody, and ending again skips the stages IVS
	// no longer has.
	for i := len(stages) - 1; i >= 0; i-- {
		st := stages[i]
		if st.Arn != s.cfg.OriginArn {
			if err := s.ivs.DeleteStage(ctx, st.Arn); err != nil && !errors.Is(err, ErrIVSNotFound) {
				return end, ivsFailure(err, "deleting stage %s of broadcast %s (ending it again finishes the work)", st.Arn, broadcastID)
			}
			end.StagesDeleted++
		}
		s.provisionStart.Delete(st.Arn)
	}
	if err := s.dropSeats(ctx, broadcastID, &end); err != nil {
		return end, err
	}
	freed, err := s.store.DeleteBroadcast(ctx, broadcastID)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return end, failWrap(ErrUnavailable, err, "dropping broadcast %s", broadcastID)
	}
	s.seatsEnded(freed, EndBroadcastEnded)
	end.SeatsFreed += len(freed)
	s.locals.Delete(broadcastID)
	s.seatsChanged()
	s.log.Info("broadcast ended", "broadcast", broadcastID, "reason", reason, "stages_deleted", end.StagesDeleted, "seats_freed", end.SeatsFreed)
	return end, nil
}

// dropChunk is the most seats an ending broadcast frees in one store step.
const dropChunk = 1000

// roomWait bounds how long an end waits for its observer to have room: a
// history whose database is down must not hold an end (and its broadcast)
// for as long as the outage lasts. Past it, the end goes on without
// waiting, and the observer drops and counts what does not fit.
const roomWait = 10 * time.Second

// seatRoom is an observer that can wait until it has room for up to n
// more records: a broadcast's end waits for it between steps, so that the
// sessions of a million seats all close rather than overflow its queue.
type seatRoom interface {
	// WaitRoom answers the room it has, at most n, once it has that much
	// (its whole buffer, when n is more).
	WaitRoom(ctx context.Context, n int) (int, error)
}

// dropSeats frees an ending broadcast's seats at most dropChunk at a time,
// closing their sessions, so that no one store step (and in Redis no one
// script) reads them all.
func (s *Service) dropSeats(ctx context.Context, broadcastID string, end *Ended) error {
	room, waits := s.observer.(seatRoom)
	for {
		n := dropChunk
		if waits {
			wctx, cancel := context.WithTimeout(ctx, roomWait)
			k, err := room.WaitRoom(wctx, dropChunk)
			cancel()
			switch {
			case err == nil:
				// At least one, so that every step frees a seat: a history
				// that answers no room drops and counts what it cannot take.
				n = max(k, 1)
			case ctx.Err() != nil:
				return failWrap(ErrUnavailable, ctx.Err(), "freeing the seats of broadcast %s (ending it again finishes the work)", broadcastID)
			default:
				s.log.Warn("the viewing history has no room: the end goes on, and the sessions that do not fit are dropped and counted", "broadcast", broadcastID, "error", err)
				waits = false
			}
		}
		freed, err := s.store.DropSeats(ctx, broadcastID, n)
		// Seats answered with an error were freed all the same.
		s.seatsEnded(freed, EndBroadcastEnded)
		end.SeatsFreed += len(freed)
		if err != nil {
			return failWrap(ErrUnavailable, err, "freeing the seats of broadcast %s (ending it again finishes the work)", broadcastID)
		}
		if len(freed) < n {
			return nil
		}
	}
}

// admitBroadcast refuses a new broadcast beyond MAX_BROADCASTS, or one
// whose origin would pass the deployment's stage quota. Instances check
// this each on their own, so concurrent first host tokens on several
// instances may pass the bound by as many.
func (s *Service) admitBroadcast(ctx context.Context, broadcastID string) error {
	bs, err := s.store.ListBroadcasts(ctx)
	if err != nil {
		return failWrap(ErrUnavailable, err, "listing broadcasts")
	}
	if len(bs) >= s.cfg.MaxBroadcasts {
		return &Error{
			Kind:       ErrStageLimit,
			Msg:        fmt.Sprintf("broadcast %s cannot start: %d broadcasts are live, the limit MAX_BROADCASTS; end one (DELETE /api/broadcasts/{id}) or raise MAX_BROADCASTS", broadcastID, len(bs)),
			RetryAfter: time.Minute,
		}
	}
	return s.admitStages(ctx, 1)
}

// admitStages refuses n more stages beyond STAGE_QUOTA, counted over every
// broadcast of this deployment.
func (s *Service) admitStages(ctx context.Context, n int) error {
	inUse, err := s.stagesInUse(ctx)
	if err != nil {
		return err
	}
	if inUse+n > s.cfg.StageQuota {
		return &Error{
			Kind:       ErrStageLimit,
			Msg:        fmt.Sprintf("this deployment holds %d stages, and STAGE_QUOTA is %d; end a broadcast or raise STAGE_QUOTA (and the account's IVS quota)", inUse, s.cfg.StageQuota),
			RetryAfter: time.Minute,
		}
	}
	return nil
}

// stagesInUse counts the stages recorded for every broadcast, and those
// being made (an unexpired intent): passes of several broadcasts at once,
// on any instance, see each other's stages before IVS has them.
func (s *Service) stagesInUse(ctx context.Context) (int, error) {
	bs, err := s.store.ListBroadcasts(ctx)
	if err != nil {
		return 0, failWrap(ErrUnavailable, err, "listing broadcasts")
	}
	n := 0
	for _, b := range bs {
		stages, err := s.store.ListStages(ctx, b.ID)
		if err != nil {
			return 0, failWrap(ErrUnavailable, err, "listing stages of %s", b.ID)
		}
		n += len(stages) + view{broadcast: b}.creating(s.now())
	}
	return n, nil
}

// checkIdle ends a broadcast that has had no host publishing, no host
// token issued and no viewer seated for BroadcastIdleTimeout, and keeps its
// IdleSince up to date. The caller holds the broadcast's lock.
func (s *Service) checkIdle(ctx context.Context, b store.Broadcast) (ended bool, err error) {
	if s.cfg.BroadcastIdleTimeout <= 0 {
		return false, nil
	}
	now := s.now()
	idle, err := s.idle(ctx, b, now)
	if err != nil {
		return false, err
	}
	switch {
	case !idle && b.IdleSince.IsZero(), idle && !b.IdleSince.IsZero() && now.Sub(b.IdleSince) < s.cfg.BroadcastIdleTimeout:
		return false, nil
	case !idle:
		b.IdleSince = time.Time{}
	case b.IdleSince.IsZero():
		b.IdleSince = now
	default:
		return true, nil
	}
	if err := s.store.PutBroadcast(ctx, b); err != nil && !errors.Is(err, store.ErrNotFound) {
		return false, err
	}
	return false, nil
}

func (s *Service) idle(ctx context.Context, b store.Broadcast, now time.Time) (bool, error) {
	hosts, err := s.store.ListHosts(ctx, b.ID)
	if err != nil {
		return false, err
	}
	for _, h := range hosts {
		if h.Publishing || now.Sub(h.JoinedAt) < s.cfg.BroadcastIdleTimeout {
			return false, nil
		}
	}
	stages, err := s.store.ListStages(ctx, b.ID)
	if err != nil {
		return false, err
	}
	for _, st := range stages {
		if st.Seats > 0 {
			return false, nil
		}
	}
	return true, nil
}

// replaceOrigin gives a broadcast whose origin IVS no longer has a new one.
// The hosts' tokens name the lost stage, so their records go with it; the
// broadcast records when and what was replaced, for publisher-info and
// health to tell the hosts to ask for new tokens. The caller holds the
// broadcast's lock.
func (s *Service) replaceOrigin(ctx context.Context, b store.Broadcast) error {
	st, err := s.ivs.CreateStage(ctx, stageName(b.ID, store.RoleOrigin), s.stageTags(b.ID, store.RoleOrigin))
	if err != nil {
		return fmt.Errorf("creating a new origin: %w", err)
	}
	now := s.now()
	rec := store.Stage{Arn: st.Arn, BroadcastID: b.ID, Role: store.RoleOrigin, Name: st.Name, Capacity: s.cfg.StageCapacity, CreatedAt: now}
	if err := s.store.PutStage(ctx, rec); err != nil {
		if derr := s.ivs.DeleteStage(context.WithoutCancel(ctx), st.Arn); derr != nil {
			s.log.Error("deleting unrecorded origin stage", "stage", st.Arn, "error", derr)
		}
		return fmt.Errorf("recording the new origin: %w", err)
	}
	lost := b.OriginArn
	b.OriginArn, b.ReplacedOriginArn, b.OriginReplacedAt = st.Arn, lost, now
	if err := s.store.PutBroadcast(ctx, b); err != nil {
		return fmt.Errorf("recording the new origin of %s: %w", b.ID, err)
	}
	freed, err := s.store.DeleteStage(ctx, lost)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("dropping the lost origin's record: %w", err)
	}
	s.seatsEnded(freed, EndStageRemoved)
	hosts, err := s.store.ListHosts(ctx, b.ID)
	if err != nil {
		return err
	}
	for _, h := range hosts {
		if h.StageArn == lost {
			if err := s.store.DeleteHost(ctx, b.ID, h.ParticipantID); err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
		}
	}
	reps, err := s.store.ListReplications(ctx, b.ID)
	if err != nil {
		return err
	}
	for _, r := range reps {
		if r.SourceArn == lost {
			if err := s.store.DeleteReplication(ctx, b.ID, r.ParticipantID, r.DestArn); err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
		}
	}
	s.log.Warn("origin stage gone from IVS; a new one was created: hosts need new publisher tokens",
		"broadcast", b.ID, "lost_stage", lost, "stage", st.Arn, "seats_freed", len(freed))
	return nil
}

// pruneHosts drops the records of hosts that are gone: seen once (an event
// or reconcile recorded them) and now neither publishing nor in the
// origin, or never seen and given their token longer ago than it lasts.
// The caller holds the broadcast's lock; present is the origin's
// participants as IVS shows them.
func (s *Service) pruneHosts(ctx context.Context, b store.Broadcast, present map[string]IVSParticipant) error {
	hosts, err := s.store.ListHosts(ctx, b.ID)
	if err != nil {
		return err
	}
	now := s.now()
	pruned := map[string]bool{}
	for _, h := range hosts {
		p, here := present[h.ParticipantID]
		if h.Publishing || (here && p.Connected) {
			continue
		}
		seen := !h.EventTime.IsZero()
		if !seen && now.Sub(h.JoinedAt) < s.cfg.PublisherTTL {
			continue
		}
		if err := s.store.DeleteHost(ctx, b.ID, h.ParticipantID); err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		pruned[h.ParticipantID] = true
		s.log.Info("host record pruned", "broadcast", b.ID, "participant", h.ParticipantID, "user", h.UserID)
	}
	if len(pruned) == 0 {
		return nil
	}
	// Their replications end with them (IVS stops them once the reconnect
	// window passes); a record still active is left for reconcile to read
	// back first.
	reps, err := s.store.ListReplications(ctx, b.ID)
	if err != nil {
		return err
	}
	for _, r := range reps {
		if !pruned[r.ParticipantID] || r.State == store.ReplActive || r.State == store.ReplStarting {
			continue
		}
		if err := s.store.DeleteReplication(ctx, b.ID, r.ParticipantID, r.DestArn); err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
	}
	return nil
}

// LostOrigins describes each broadcast whose origin IVS lost and that no
// host has published on since it was replaced: its hosts hold tokens for a
// stage that is gone, and need new ones.
func (s *Service) LostOrigins(ctx context.Context) []string {
	bs, err := s.store.ListBroadcasts(ctx)
	if err != nil {
		return nil
	}
	var out []string
	for _, b := range bs {
		if b.OriginReplacedAt.IsZero() {
			continue
		}
		hosts, err := s.store.ListHosts(ctx, b.ID)
		if err != nil || anyPublishing(hosts) {
			continue
		}
		out = append(out, fmt.Sprintf("the origin %s of broadcast %s was deleted outside stagefleet and replaced by %s at %s: hosts need new publisher tokens",
			b.ReplacedOriginArn, b.ID, b.OriginArn, b.OriginReplacedAt.UTC().Format(time.RFC3339)))
	}
	return out
}

// controllerStatus is what health reports of the controller: when its loop
// last made its periodic passes, and how the last reconcile went.
type controllerStatus struct {
	mu            sync.Mutex
	lastPass      time.Time
	lastReconcile time.Time
	reconcileErr  error
}

func (c *controllerStatus) passed(at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lastPass = at
}

func (c *controllerStatus) reconciled(at time.Time, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lastReconcile, c.reconcileErr = at, err
}

// ControllerHealth is the controller's state for health checks.
type ControllerHealth struct {
	// LastPass is when the loop last passed over every broadcast (zero
	// before the first).
	LastPass time.Time
	// Stale says the loop has not passed for several of its intervals: it
	// is stuck.
	Stale bool
	// LastReconcile is when this instance last ran its reconcile turn
	// (another instance may hold it); ReconcileErr how it failed.
	LastReconcile time.Time
	ReconcileErr  string
}

// ControllerHealth reports the controller's loop and reconcile.
func (s *Service) ControllerHealth() ControllerHealth {
	s.status.mu.Lock()
	defer s.status.mu.Unlock()
	h := ControllerHealth{LastPass: s.status.lastPass, LastReconcile: s.status.lastReconcile}
	if s.status.reconcileErr != nil {
		h.ReconcileErr = s.status.reconcileErr.Error()
	}
	// The loop passes every ScaleInterval; a pass over many broadcasts may
	// take a few more.
	h.Stale = !h.LastPass.IsZero() && s.now().Sub(h.LastPass) > 5*s.cfg.ScaleInterval+5*time.Second
	return h
}
