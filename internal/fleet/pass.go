package fleet

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stagefleet/stagefleet/internal/store"
)

// A pass over a broadcast has three phases, so that the broadcast is never
// held while IVS works: an IVS call takes its latency and, in a storm, its
// turn at the quota, and the broadcast's events (a replication turning
// active is what opens a stage to viewers) must not wait for them.
//
//  1. decide, holding the broadcast: what to create, which replications
//     to start and which empty stages to remove, recorded first (intents:
//     the broadcast's Creating count, replication records set to starting,
//     stages set draining), so that any pass, on any instance, counts
//     them; seating from the facts.
//  2. act, not holding it: the CreateStage, StartParticipantReplication,
//     StopParticipantReplication and DeleteStage calls, at most a second's
//     worth of each quota.
//  3. record, holding it again: the new stages, what became of the starts,
//     the deleted stages' records dropped, seating.

// creatingFor is how long a pass's intent to create stages counts when
// the pass never records what it created (its instance died): then the
// stages are adopted by the next resync, and the intent lapses.
const creatingFor = 30 * time.Second

// intent is what phase 1 decided for phase 2.
type intent struct {
	broadcast store.Broadcast
	creates   int
	starts    []store.Replication
	// removals are drained stages to delete.
	removals []removal
}

// removal is a drained stage and the replications into it.
type removal struct {
	stage store.Stage
	reps  []store.Replication
}

func (i intent) empty() bool { return i.creates == 0 && len(i.starts) == 0 && len(i.removals) == 0 }

// stepResult is what a pass did and wants.
type stepResult struct {
	// next is when to look at the broadcast again (0: only when something
	// happens).
	next time.Duration
	// ending is the mark of an end that was cut short (zero if none).
	ending time.Time
}

// step is phase 1, under the broadcast's lock.
func (s *Service) step(ctx context.Context, broadcastID string) (intent, stepResult, error) {
	v, err := s.load(ctx, broadcastID)
	if errors.Is(err, store.ErrNotFound) {
		return intent{}, stepResult{}, nil
	}
	if err != nil {
		return intent{}, stepResult{}, err
	}
	if !v.broadcast.EndingSince.IsZero() {
		// An end was cut short: finishing it is all there is to do.
		return intent{}, stepResult{ending: v.broadcast.EndingSince}, nil
	}
	if wait := v.broadcast.RetryAt.Sub(s.now()); wait > 0 {
		// A pass failed lately (IVS trouble, a quota): no IVS call before
		// its back-off ends, on any instance. Seating still follows the
		// facts, as just read.
		return intent{}, stepResult{next: wait}, s.seatAsRecorded(ctx, broadcastID, v.stages, v.hosts, v.reps)
	}
	b := s.newBudgets()
	in := intent{broadcast: v.broadcast}
	if in.creates, err = s.scaleUp(ctx, v, b); err != nil {
		return intent{}, stepResult{}, err
	}
	if in.creates > 0 {
		// An intent past its deadline is one whose pass never came back
		// (a crash, a failed phase): it counts for nothing from now on.
		in.broadcast.Creating = v.creating(s.now()) + in.creates
		in.broadcast.CreatingUntil = s.now().Add(creatingFor)
		if err := s.store.PutBroadcast(ctx, in.broadcast); err != nil {
			return intent{}, stepResult{}, err
		}
	}
	if in.starts, err = s.planStarts(ctx, v, &b.starts); err != nil {
		return intent{}, stepResult{}, err
	}
	// A broadcast that is growing keeps its empty stages: removing one
	// while another is being made is a flap.
	growing := in.creates > 0 || v.creating(s.now()) > 0
	next, downErr := s.scaleDown(ctx, v, b, &in, growing)
	// Seating is derived at the end of every pass, whatever the pass did.
	if err := errors.Join(downErr, s.reseat(ctx, broadcastID)); err != nil {
		return intent{}, stepResult{}, err
	}
	res := stepResult{next: next}
	if b.spent() {
		// The rest next pass, after the quota's second has passed.
		res.next = time.Second
	}
	return in, res, nil
}

// created is phase 2's outcome.
type created struct {
	stages  []IVSStage
	asked   time.Time
	errs    []error
	started []error // one per intent.starts
	removed []error // one per intent.removals
}

// act is phase 2: the IVS calls, in parallel, the broadcast not held.
func (s *Service) act(ctx context.Context, in intent) created {
	out := created{asked: s.now(), started: make([]error, len(in.starts)), removed: make([]error, len(in.removals))}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range in.creates {
		wg.Go(func() {
			st, err := s.ivs.CreateStage(ctx, stageName(in.broadcast.ID, store.RoleReplica)+"-"+newParticipantID()[:8], s.stageTags(in.broadcast.ID, store.RoleReplica))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				out.errs = append(out.errs, err)
				return
			}
			out.stages = append(out.stages, st)
		})
	}
	for i, r := range in.starts {
		wg.Go(func() {
			out.started[i] = s.ivs.StartReplication(ctx, r.SourceArn, r.DestArn, r.ParticipantID, s.cfg.ReconnectWindow)
		})
	}
	for i, rm := range in.removals {
		wg.Go(func() { out.removed[i] = s.stopAndDelete(ctx, rm.stage, rm.reps) })
	}
	wg.Wait()
	return out
}

// recordActs is phase 3, under the broadcast's lock: new stages are recorded
// (or deleted again if that fails: a stage without a record would leak),
// the intent to create is taken back, starts that failed are recorded
// with their back-off, unless an event got there first.
func (s *Service) recordActs(ctx context.Context, in intent, out created) error {
	b := in.broadcast.ID
	cur, err := s.store.GetBroadcast(ctx, b)
	if err != nil || !cur.EndingSince.IsZero() {
		// The broadcast ended (or began to) while its stages were being
		// made (they would have no broadcast to serve, and no end would
		// find them), or it cannot be read: unrecorded, they go again.
		for _, st := range out.stages {
			if derr := s.ivs.DeleteStage(context.WithoutCancel(ctx), st.Arn); derr != nil {
				s.log.Error("deleting an unrecorded replica stage", "stage", st.Arn, "error", derr)
			}
		}
		if err == nil || errors.Is(err, store.ErrNotFound) {
			return nil
		}
		return fmt.Errorf("reading broadcast %s to record its new stages: %w", b, err)
	}
	var errs []error
	for _, st := range out.stages {
		// CreatedAt is when the stage is known to exist in IVS: a resync
		// listing that began later must show it.
		rec := store.Stage{Arn: st.Arn, BroadcastID: b, Role: store.RoleReplica, Name: st.Name, Capacity: s.cfg.StageCapacity, CreatedAt: s.now()}
		if err := s.store.PutStage(ctx, rec); err != nil {
			if derr := s.ivs.DeleteStage(context.WithoutCancel(ctx), st.Arn); derr != nil {
				s.log.Error("deleting unrecorded replica stage", "stage", st.Arn, "error", derr)
			}
			errs = append(errs, fmt.Errorf("recording replica stage %s: %w", st.Arn, err))
			continue
		}
		s.provisionStart.Store(st.Arn, out.asked)
		s.log.Info("replica stage created", "broadcast", b, "stage", st.Arn, "reason", "scale up")
	}
	if in.creates > 0 {
		cur.Creating = max(0, view{broadcast: cur}.creating(s.now())-in.creates)
		if cur.Creating == 0 {
			cur.CreatingUntil = time.Time{}
		}
		if err := s.store.PutBroadcast(ctx, cur); err != nil {
			return err
		}
	}
	if err := errors.Join(out.errs...); err != nil {
		errs = append(errs, fmt.Errorf("creating replica stages: %w", err), s.backOff(ctx, cur, err))
	} else if len(out.stages) > 0 && cur.Failures > 0 {
		cur.Failures, cur.RetryAt = 0, time.Time{}
		if err := s.store.PutBroadcast(ctx, cur); err != nil {
			return err
		}
	}
	for i, r := range in.starts {
		if err := s.recordStart(ctx, r, out.started[i]); err != nil {
			errs = append(errs, err)
		}
	}
	for i, rm := range in.removals {
		if err := out.removed[i]; err != nil {
			// Left draining: the next pass finishes the removal.
			errs = append(errs, fmt.Errorf("deleting stage %s: %w", rm.stage.Arn, err))
			continue
		}
		if err := s.dropRecords(ctx, rm.stage, rm.reps); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, s.reseat(ctx, b))
	return errors.Join(errs...)
}

// recordStart records what became of a StartParticipantReplication, if
// the record is still the one phase 1 wrote (an event may have made it
// active meanwhile, or a stop removed it).
func (s *Service) recordStart(ctx context.Context, asked store.Replication, err error) error {
	r, gerr := s.store.GetReplication(ctx, asked.BroadcastID, asked.ParticipantID, asked.DestArn)
	if errors.Is(gerr, store.ErrNotFound) {
		return nil
	}
	if gerr != nil {
		return gerr
	}
	if r.State != store.ReplStarting || !r.UpdatedAt.Equal(asked.UpdatedAt) {
		return nil
	}
	switch {
	case err == nil, errors.Is(err, ErrIVSConflict):
		// Started (or already running): the Started event, or a resync,
		// makes it active.
		if r.Attempts == 0 {
			return nil
		}
		r.Attempts = 0
	case errors.Is(err, ErrIVSNotPublishing):
		r.State, r.Reason = store.ReplPending, "host not publishing"
	default:
		r.Attempts++
		r.State, r.Reason, r.RetryAt = store.ReplFailed, err.Error(), s.now().Add(backoff(r.Attempts))
	}
	r.UpdatedAt = s.now()
	s.log.Info("replication", "broadcast", r.BroadcastID, "stage", r.DestArn, "participant", r.ParticipantID, "state", r.State, "reason", r.Reason, "attempts", r.Attempts)
	return s.store.PutReplication(ctx, r)
}

// backOff records a failed pass in the broadcast's record, so that every
// instance waits out the same exponential back-off before calling IVS for
// it again.
func (s *Service) backOff(ctx context.Context, b store.Broadcast, cause error) error {
	b.Failures++
	wait := backoff(b.Failures)
	b.RetryAt = s.now().Add(wait)
	s.log.Warn("broadcast backs off", "broadcast", b.ID, "failures", b.Failures, "retry_in_ms", wait.Milliseconds(), "error", cause)
	return s.store.PutBroadcast(ctx, b)
}

// passBudgets are one pass's allowances of IVS calls, one per kind it
// makes: a second's worth of each operation's quota. A pass that spends
// one asks to come back (requeue) rather than queue behind the quota.
type passBudgets struct {
	creates, starts, stops, deletes budget
}

func (s *Service) newBudgets() *passBudgets {
	b := &passBudgets{}
	b.creates.left.Store(s.perPass("CreateStage"))
	b.starts.left.Store(s.perPass("StartParticipantReplication"))
	b.stops.left.Store(s.perPass("StopParticipantReplication"))
	b.deletes.left.Store(s.perPass("DeleteStage"))
	return b
}

// perPass is a second's worth of an operation's quota (at least one call).
func (s *Service) perPass(op string) int64 {
	q, ok := s.cfg.Quotas[op]
	if !ok || q <= 0 {
		// Unlimited, or unknown: bounded all the same, so that a pass stays
		// short.
		q = 10
	}
	return max(1, int64(q))
}

// spent says whether any allowance ran out: the pass left work undone.
func (b *passBudgets) spent() bool {
	return b.creates.left.Load() <= 0 || b.starts.left.Load() <= 0 || b.stops.left.Load() <= 0 || b.deletes.left.Load() <= 0
}

// budget is a pass's allowance of IVS calls of one kind.
type budget struct{ left atomic.Int64 }

// take spends one call of the allowance, if any is left.
func (b *budget) take() bool {
	if b.left.Add(-1) < 0 {
		b.left.Add(1)
		return false
	}
	return true
}

// headroom is the number of free seats the controller keeps ahead of the
// audience: max(STAGE_CAPACITY - SCALE_UP_THRESHOLD, join rate x
// provisioning time), and none while no host is live (the warm pool still
// applies).
func (s *Service) headroom(v view) int {
	if !v.live {
		return 0
	}
	base := s.cfg.StageCapacity - s.cfg.ScaleUpThreshold
	return max(base, int(math.Ceil(v.joinRate*s.provisioning.get().Seconds())))
}

// scaleUp decides how many replica stages to create now: enough for the
// headroom and the waiting viewers beyond the free and coming seats, the
// warm pool, within MAX_STAGES, STAGE_QUOTA and the pass's allowance.
func (s *Service) scaleUp(ctx context.Context, v view, b *passBudgets) (int, error) {
	l := s.local(v.broadcast.ID)
	free, upcoming, idle := v.seats()
	creating := v.creating(s.now())
	upcoming += creating * s.cfg.StageCapacity
	idle += creating
	headroom := s.headroom(v)
	n := 0
	if short := headroom + v.waiting - free - upcoming; v.live && short > 0 {
		n = (short + s.cfg.StageCapacity - 1) / s.cfg.StageCapacity
	}
	n = max(n, s.cfg.MinIdleStages-idle)
	n = min(n, s.cfg.MaxStages-managed(v.stages)-creating, int(b.creates.left.Load()))
	if n <= 0 {
		return 0, nil
	}
	// Every broadcast of the deployment together stays within its stage
	// quota: one broadcast's storm must not leave another no stage.
	inUse, err := s.stagesInUse(ctx)
	if err != nil {
		return 0, err
	}
	n = min(n, s.cfg.StageQuota-inUse) // inUse counts this broadcast's creating too
	if held := n <= 0; held != l.atQuota {
		l.atQuota = held
		if held {
			s.log.Warn("scale-up held at STAGE_QUOTA", "broadcast", v.broadcast.ID, "stages", inUse, "quota", s.cfg.StageQuota)
		}
	}
	if n <= 0 {
		return 0, nil
	}
	b.creates.left.Add(-int64(n))
	s.log.Info("scaling up", "broadcast", v.broadcast.ID, "stages", n, "free_seats", free, "upcoming_seats", upcoming, "headroom", headroom, "waiting", v.waiting)
	return n, nil
}

// planStarts moves every (host, replica stage) replication toward its
// desired state (active while the host publishes, pending while it does
// not) and returns the starts to make, recorded as starting first, within
// the pass's allowance.
func (s *Service) planStarts(ctx context.Context, v view, starts *budget) ([]store.Replication, error) {
	now := s.now()
	var out []store.Replication
	for _, st := range v.stages {
		if st.Role != store.RoleReplica || st.Draining {
			continue
		}
		for _, h := range v.hosts {
			r := v.reps[replKey{h.ParticipantID, st.Arn}]
			if r.ParticipantID == "" {
				r = store.Replication{BroadcastID: v.broadcast.ID, ParticipantID: h.ParticipantID, SourceArn: v.broadcast.OriginArn, DestArn: st.Arn}
			}
			switch {
			case r.State == store.ReplActive:
				continue
			case r.State == store.ReplStarting && now.Sub(r.UpdatedAt) < startTimeout:
				continue
			case !h.Publishing:
				if r.State == store.ReplPending {
					continue
				}
				r.State, r.Reason = store.ReplPending, "host not publishing"
			case now.Before(r.RetryAt):
				continue
			case !starts.take():
				continue
			default:
				// Attempts are kept until a start succeeds: they grow
				// the back-off of one that keeps failing.
				r.State, r.Reason, r.RetryAt = store.ReplStarting, "", time.Time{}
			}
			r.UpdatedAt = now
			if err := s.store.PutReplication(ctx, r); err != nil {
				return nil, err
			}
			if r.State == store.ReplStarting {
				out = append(out, r)
			}
		}
	}
	return out, nil
}
