package fleet

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stagefleet/stagefleet/internal/store"
)

// The controller keeps each broadcast's fleet where the policy wants it:
// enough free seats ahead of the audience, every host replicated into every
// replica stage, and no replica stage left once it is not needed. It is
// level-triggered: every pass compares what is with what should be, so a
// lost or repeated signal costs a pass, never correctness.


// startTimeout is how long a replication may stay starting before it is
// started again (IVS answers a duplicate start with a conflict, harmlessly).
const startTimeout = 15 * time.Second

// meter measures an event rate as an exponentially decaying average with
// a one-second time constant: it follows a join storm within a second or
// two and forgets it as fast.
type meter struct {
	mu   sync.Mutex
	rate float64 // events per second as of last
	last time.Time
}

const meterTau = time.Second

func (m *meter) decayed(now time.Time) float64 {
	if m.last.IsZero() {
		return 0
	}
	return m.rate * math.Exp(-now.Sub(m.last).Seconds()/meterTau.Seconds())
}

// addAt counts an event that happened at t, as of now: it adds what the
// event would have added at t, decayed since.
func (m *meter) addAt(t, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	weight := math.Exp(-max(0, now.Sub(t).Seconds()) / meterTau.Seconds())
	m.rate = m.decayed(now) + weight/meterTau.Seconds()
	m.last = now
}

func (m *meter) perSecond(now time.Time) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.decayed(now)
}

// ewma is an exponentially weighted moving average of durations.
type ewma struct {
	mu    sync.Mutex
	value time.Duration
}

func newEWMA(initial time.Duration) *ewma { return &ewma{value: initial} }

func (e *ewma) observe(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.value = time.Duration(0.7*float64(e.value) + 0.3*float64(d))
}

func (e *ewma) get() time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.value
}

// local is what this instance keeps in memory about one broadcast.
type local struct {
	// mu serialises the controller's passes, event handling and manual
	// stage changes of the broadcast within this instance.
	mu    sync.Mutex
	joins meter
	// waiting counts viewers waiting for a seat now: demand the controller
	// meets on top of the headroom.
	waiting atomic.Int64
	queue   waitQueue
	// reported: the last demand recorded in the store was not nil.
	reported atomic.Bool
	// atQuota: scale-up was last held at STAGE_QUOTA (logged once).
	atQuota bool
	// yieldUntil: this instance leaves the lease to others until then
	// (under mu).
	yieldUntil time.Time
}

func (s *Service) local(broadcastID string) *local {
	// Load first: the join path calls this, and LoadOrStore would
	// allocate a local every time.
	if l, ok := s.locals.Load(broadcastID); ok {
		return l.(*local)
	}
	l, _ := s.locals.LoadOrStore(broadcastID, &local{})
	return l.(*local)
}

// Run does the fleet's background work until ctx ends: seat expiry, the
// seat watcher, the resync with IVS every ReconcileInterval (one instance
// at a time), a periodic look at every broadcast, and the workers that
// reconcile the broadcasts the queue hands them.
func (s *Service) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		every(ctx, max(s.cfg.HeartbeatTimeout/10, 100*time.Millisecond), s.expireSeats)
	})
	wg.Go(func() { s.watchSeats(ctx) })
	wg.Go(func() {
		every(ctx, s.cfg.ReconcileInterval, func(ctx context.Context) {
			err := s.reconcileTurn(ctx)
			if ctx.Err() != nil {
				return
			}
			s.status.reconciled(s.now(), err)
			if err != nil {
				s.log.Warn("resync with IVS failed", "error", err)
			}
		})
	})
	// Level-triggered: a lost signal costs at most this long.
	wg.Go(func() {
		every(ctx, s.cfg.ScaleInterval, func(ctx context.Context) {
			s.enqueueAll(ctx)
			s.status.passed(s.now())
		})
	})
	s.queue.run(ctx, s.cfg.Workers, s.ReconcileBroadcast)
}

// enqueue asks for a reconcile of the broadcast soon; it never blocks (the
// join path and event handling call it).
func (s *Service) enqueue(broadcastID string) { s.queue.add(broadcastID) }

func (s *Service) enqueueAll(ctx context.Context) {
	bs, err := s.store.ListBroadcasts(ctx)
	if err != nil {
		s.log.Warn("listing broadcasts", "error", err)
		return
	}
	for _, b := range bs {
		s.enqueue(b.ID)
	}
}

// every runs f every interval until ctx ends.
func every(ctx context.Context, interval time.Duration, f func(context.Context)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f(ctx)
		}
	}
}

// replKey names one replication of a broadcast.
type replKey struct{ participant, dest string }

// view is one broadcast's state as a pass sees it.
type view struct {
	broadcast store.Broadcast
	stages    []store.Stage
	hosts     []store.Host
	reps      map[replKey]store.Replication
	live      bool
	// waiting and joinRate are the audience's demand, summed over the
	// instances that reported within demandWindow.
	waiting  int
	joinRate float64
}

// demandWindow is how recent an instance's demand must be to count. An
// instance with demand reports it every seatWatch, and once more when it
// has none; a stopped instance's is forgotten after this.
// Instances' clocks must agree to well within it (NTP).
const demandWindow = 2 * time.Second

func (s *Service) load(ctx context.Context, broadcastID string) (view, error) {
	var v view
	var err error
	if v.broadcast, err = s.store.GetBroadcast(ctx, broadcastID); err != nil {
		return v, err
	}
	if v.stages, err = s.store.ListStages(ctx, broadcastID); err != nil {
		return v, err
	}
	if v.hosts, err = s.store.ListHosts(ctx, broadcastID); err != nil {
		return v, err
	}
	reps, err := s.store.ListReplications(ctx, broadcastID)
	if err != nil {
		return v, err
	}
	v.reps = make(map[replKey]store.Replication, len(reps))
	for _, r := range reps {
		v.reps[replKey{r.ParticipantID, r.DestArn}] = r
	}
	v.live = anyPublishing(v.hosts)
	demand, err := s.store.ListDemand(ctx, broadcastID, s.now().Add(-demandWindow))
	if err != nil {
		return v, err
	}
	for _, d := range demand {
		v.waiting += d.Waiting
		v.joinRate += d.JoinRate
	}
	return v, nil
}

// seats counts free seats on stages taking viewers, seats coming on
// replica stages still being provisioned, and idle replica stages.
func (v view) seats() (free, upcoming, idle int) {
	for _, st := range v.stages {
		if st.Role == store.RoleManual || st.Draining {
			continue
		}
		switch {
		case st.Seatable:
			free += max(0, st.Capacity-st.Seats)
		case st.Role == store.RoleReplica:
			upcoming += st.Capacity
		}
		if st.Role == store.RoleReplica && st.Seats == 0 {
			idle++
		}
	}
	return free, upcoming, idle
}

// managed counts the stages that count against MAX_STAGES: the origin and
// the replicas, not manual stages.
func managed(stages []store.Stage) int {
	n := 0
	for _, st := range stages {
		if st.Role != store.RoleManual {
			n++
		}
	}
	return n
}

// passBudgets are one pass's allowances of IVS calls, one per kind it
// makes: a second's worth of each operation's quota. A pass that spends
// one asks to come back (requeue) rather than wait for the quota while it
// holds the broadcast.
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

// stepResult is what a pass did and wants.
type stepResult struct {
	// next is when to look at the broadcast again (0: only when something
	// happens).
	next time.Duration
	// started counts the replications the pass asked IVS to start.
	started int
}

// step is one pass over a broadcast: scale up, replicate, scale down, then
// seating from the facts.
func (s *Service) step(ctx context.Context, broadcastID string) (stepResult, error) {
	v, err := s.load(ctx, broadcastID)
	if errors.Is(err, store.ErrNotFound) {
		return stepResult{}, nil
	}
	if err != nil {
		return stepResult{}, err
	}
	if wait := v.broadcast.RetryAt.Sub(s.now()); wait > 0 {
		// A pass failed lately (IVS trouble, a quota): no IVS call before
		// its back-off ends, on any instance. Seating still follows the
		// facts.
		return stepResult{next: wait}, s.applySeating(ctx, broadcastID)
	}
	b := s.newBudgets()
	if err := s.scaleUp(ctx, v, b); err != nil {
		return stepResult{}, errors.Join(err, s.backOff(ctx, v.broadcast, err), s.applySeating(ctx, broadcastID))
	}
	if v.broadcast.Failures > 0 {
		v.broadcast.Failures, v.broadcast.RetryAt = 0, time.Time{}
		if err := s.store.PutBroadcast(ctx, v.broadcast); err != nil {
			return stepResult{}, err
		}
	}
	if v, err = s.load(ctx, broadcastID); err != nil {
		return stepResult{}, err
	}
	for _, st := range v.stages {
		if st.Role != store.RoleReplica || st.Draining {
			continue
		}
		for _, h := range v.hosts {
			s.replicateWithin(ctx, &b.starts, v.broadcast, st, h, v.reps[replKey{h.ParticipantID, st.Arn}])
		}
	}
	next, downErr := s.scaleDown(ctx, v, b)
	// Seating is derived at the end of every pass, whatever the pass did.
	if err := errors.Join(downErr, s.applySeating(ctx, broadcastID)); err != nil {
		return stepResult{}, err
	}
	res := stepResult{next: next, started: int(s.perPass("StartParticipantReplication") - b.starts.left.Load())}
	if b.spent() {
		// The rest next pass, after the quota's second has passed.
		res.next = time.Second
	}
	return res, nil
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

// budget is a pass's allowance of IVS calls of one kind, shared by the
// goroutines of the pass.
type budget struct{ left atomic.Int64 }

// take spends one call of the allowance, if any is left.
func (b *budget) take() bool {
	if b.left.Add(-1) < 0 {
		b.left.Add(1)
		return false
	}
	return true
}

// replicateWithin is ensureReplication when the pass can still afford a
// StartParticipantReplication call; a transition that made no call gives
// the allowance back.
func (s *Service) replicateWithin(ctx context.Context, b *budget, bc store.Broadcast, dest store.Stage, h store.Host, r store.Replication) {
	if !b.take() {
		return
	}
	if !s.ensureReplication(ctx, bc, dest, h, r) {
		b.left.Add(1)
	}
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

func (s *Service) scaleUp(ctx context.Context, v view, b *passBudgets) error {
	l := s.local(v.broadcast.ID)
	free, upcoming, idle := v.seats()
	headroom := s.headroom(v)
	waiting := v.waiting
	n := 0
	if short := headroom + waiting - free - upcoming; v.live && short > 0 {
		n = (short + s.cfg.StageCapacity - 1) / s.cfg.StageCapacity
	}
	n = max(n, s.cfg.MinIdleStages-idle)
	n = min(n, s.cfg.MaxStages-managed(v.stages))
	// IVS creates stages no faster than its quota: more in one pass would
	// only wait behind the client's limiter while the broadcast is held,
	// and its events with it. The next pass makes the rest.
	n = min(n, int(b.creates.left.Load()))
	if n <= 0 {
		return nil
	}
	// Every broadcast of the deployment together stays within its stage
	// quota: one broadcast's storm must not leave another no stage.
	inUse, err := s.stagesInUse(ctx)
	if err != nil {
		return err
	}
	n = min(n, s.cfg.StageQuota-inUse)
	if held := n <= 0; held != l.atQuota {
		l.atQuota = held
		if held {
			s.log.Warn("scale-up held at STAGE_QUOTA", "broadcast", v.broadcast.ID, "stages", inUse, "quota", s.cfg.StageQuota)
		}
	}
	if n <= 0 {
		return nil
	}
	s.log.Info("scaling up", "broadcast", v.broadcast.ID, "stages", n, "free_seats", free, "upcoming_seats", upcoming, "headroom", headroom, "waiting", waiting)
	errs := make([]error, n)
	var wg sync.WaitGroup
	b.creates.left.Add(-int64(n))
	for i := range n {
		wg.Go(func() { errs[i] = s.provision(ctx, v, &b.starts) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("creating replica stages: %w", err)
	}
	return nil
}

// provision creates one replica stage and records it at once, so that it
// cannot leak, and starts replicating the hosts into it.
func (s *Service) provision(ctx context.Context, v view, starts *budget) error {
	b := v.broadcast.ID
	started := s.now()
	st, err := s.ivs.CreateStage(ctx, stageName(b, store.RoleReplica)+"-"+newParticipantID()[:8], s.stageTags(b, store.RoleReplica))
	if err != nil {
		return err
	}
	// CreatedAt is when the stage is known to exist in IVS: reconcile
	// trusts an IVS listing that began later to show it.
	rec := store.Stage{Arn: st.Arn, BroadcastID: b, Role: store.RoleReplica, Name: st.Name, Capacity: s.cfg.StageCapacity, CreatedAt: s.now()}
	if err := s.store.PutStage(ctx, rec); err != nil {
		if derr := s.ivs.DeleteStage(context.WithoutCancel(ctx), st.Arn); derr != nil {
			s.log.Error("deleting unrecorded replica stage", "stage", st.Arn, "error", derr)
		}
		return fmt.Errorf("recording replica stage %s: %w", st.Arn, err)
	}
	s.provisionStart.Store(st.Arn, started)
	s.log.Info("replica stage created", "broadcast", b, "stage", st.Arn, "reason", "scale up")
	// Replicated at once, within the pass's allowance: a stage takes
	// viewers only once its replication is active.
	for _, h := range v.hosts {
		s.replicateWithin(ctx, starts, v.broadcast, rec, h, store.Replication{})
	}
	return nil
}

// ensureReplication moves one (host, replica stage) replication toward its
// desired state: active while the host publishes, pending while it does
// not. It reports whether it called IVS.
func (s *Service) ensureReplication(ctx context.Context, b store.Broadcast, dest store.Stage, h store.Host, r store.Replication) (called bool) {
	now := s.now()
	if r.ParticipantID == "" {
		r = store.Replication{BroadcastID: b.ID, ParticipantID: h.ParticipantID, SourceArn: b.OriginArn, DestArn: dest.Arn}
	}
	switch {
	case r.State == store.ReplActive:
		return false
	case r.State == store.ReplStarting && now.Sub(r.UpdatedAt) < startTimeout:
		return false
	case !h.Publishing:
		if r.State == store.ReplPending {
			return false
		}
		r.State, r.Reason = store.ReplPending, "host not publishing"
	case now.Before(r.RetryAt):
		return false
	default:
		called = true
		err := s.ivs.StartReplication(ctx, b.OriginArn, dest.Arn, h.ParticipantID, s.cfg.ReconnectWindow)
		switch {
		case err == nil, errors.Is(err, ErrIVSConflict):
			r.State, r.Reason, r.Attempts, r.RetryAt = store.ReplStarting, "", 0, time.Time{}
		case errors.Is(err, ErrIVSNotPublishing):
			r.State, r.Reason = store.ReplPending, "host not publishing"
		default:
			r.Attempts++
			r.State, r.Reason, r.RetryAt = store.ReplFailed, err.Error(), now.Add(backoff(r.Attempts))
		}
	}
	r.UpdatedAt = now
	if err := s.store.PutReplication(ctx, r); err != nil {
		s.log.Warn("recording replication", "broadcast", b.ID, "stage", dest.Arn, "participant", h.ParticipantID, "error", err)
		return called
	}
	s.log.Info("replication", "broadcast", b.ID, "stage", dest.Arn, "participant", h.ParticipantID, "state", r.State, "reason", r.Reason, "attempts", r.Attempts)
	return called
}

// backoff is exponential with full jitter: up to 500ms x 2^(attempts-1),
// capped at 30 s.
func backoff(attempts int) time.Duration {
	ceiling := min(30*time.Second, 500*time.Millisecond<<min(attempts-1, 10))
	return time.Duration(rand.Int64N(int64(ceiling))) + 100*time.Millisecond
}

// scaleDown removes replica stages that have been empty for the
// stabilization window, as long as the rest still gives the headroom,
// within the pass's allowance of deletes and stops: a drain of many stages
// is many short passes, not one long hold. It answers when the next empty
// stage's window ends (0: none).
func (s *Service) scaleDown(ctx context.Context, v view, b *passBudgets) (time.Duration, error) {
	now := s.now()
	free, _, idle := v.seats()
	headroom := s.headroom(v)
	var next time.Duration
	wake := func(d time.Duration) {
		if next == 0 || d < next {
			next = d
		}
	}
	for _, st := range v.stages {
		if st.Role != store.RoleReplica {
			continue
		}
		if st.Draining {
			// A removal that failed half-way (IVS error, crash) is
			// finished here.
			if st.Seats == 0 {
				if _, err := s.remove(ctx, v, st, b); err != nil {
					s.log.Warn("finishing removal of a draining stage", "broadcast", v.broadcast.ID, "stage", st.Arn, "error", err)
				}
			}
			continue
		}
		switch {
		case st.Seats > 0 && !st.EmptySince.IsZero():
			st.EmptySince = time.Time{}
			if err := s.store.PutStage(ctx, st); err != nil {
				return 0, err
			}
			continue
		case st.Seats > 0:
			continue
		case st.EmptySince.IsZero():
			st.EmptySince = now
			if err := s.store.PutStage(ctx, st); err != nil {
				return 0, err
			}
			wake(s.cfg.ScaleDownStabilization)
			continue
		case now.Sub(st.EmptySince) < s.cfg.ScaleDownStabilization:
			wake(s.cfg.ScaleDownStabilization - now.Sub(st.EmptySince))
			continue
		}
		without := free
		if st.Seatable {
			without -= st.Capacity
		}
		if without < headroom || idle-1 < s.cfg.MinIdleStages {
			continue
		}
		removed, err := s.remove(ctx, v, st, b)
		if err != nil {
			return 0, err
		}
		if removed {
			free, idle = without, idle-1
		}
	}
	return next, nil
}

// remove deletes an empty replica stage the controller no longer needs, if
// the pass can still afford its calls: one DeleteStage and a stop per
// running replication.
func (s *Service) remove(ctx context.Context, v view, st store.Stage, b *passBudgets) (bool, error) {
	var reps []store.Replication
	stops := int64(0)
	for key, r := range v.reps {
		if key.dest == st.Arn {
			reps = append(reps, r)
			if r.State == store.ReplActive || r.State == store.ReplStarting {
				stops++
			}
		}
	}
	if b.deletes.left.Load() < 1 || b.stops.left.Load() < stops {
		b.deletes.left.Store(0)
		return false, nil
	}
	b.deletes.left.Add(-1)
	b.stops.left.Add(-stops)
	return s.drainAndDelete(ctx, st, reps, "empty for the stabilization window")
}

// drainAndDelete removes a stage that is not the origin: it stops taking
// viewers, is read again, and, if it is still empty, its replications are
// stopped, the stage deleted in IVS and its records dropped. A viewer
// seated between the caller's check and the drain keeps the stage (false).
// The caller holds the broadcast's lock. A failure leaves the record
// draining, and the next controller pass finishes the removal.
func (s *Service) drainAndDelete(ctx context.Context, st store.Stage, reps []store.Replication, reason string) (bool, error) {
	st.Draining, st.Seatable = true, false
	if err := s.store.PutStage(ctx, st); err != nil {
		return false, err
	}
	cur, err := s.store.GetStage(ctx, st.Arn)
	if err != nil {
		return false, err
	}
	if cur.Seats > 0 {
		cur.Draining, cur.EmptySince = false, time.Time{}
		if err := s.store.PutStage(ctx, cur); err != nil {
			return false, err
		}
		return false, s.applySeating(ctx, cur.BroadcastID)
	}
	s.log.Info("removing stage", "broadcast", st.BroadcastID, "stage", st.Arn, "role", st.Role, "reason", reason)
	for _, r := range reps {
		if r.State != store.ReplActive && r.State != store.ReplStarting {
			continue
		}
		if err := s.ivs.StopReplication(ctx, r.SourceArn, r.DestArn, r.ParticipantID); err != nil && !errors.Is(err, ErrIVSNotFound) {
			s.log.Warn("stopping replication of a removed stage", "stage", st.Arn, "participant", r.ParticipantID, "error", err)
		}
	}
	if err := s.ivs.DeleteStage(ctx, st.Arn); err != nil && !errors.Is(err, ErrIVSNotFound) {
		return false, err
	}
	if _, err := s.store.DeleteStage(ctx, st.Arn); err != nil && !errors.Is(err, store.ErrNotFound) {
		return false, err
	}
	for _, r := range reps {
		if err := s.store.DeleteReplication(ctx, r.BroadcastID, r.ParticipantID, r.DestArn); err != nil && !errors.Is(err, store.ErrNotFound) {
			return false, err
		}
	}
	s.provisionStart.Delete(st.Arn)
	s.log.Info("stage deleted", "broadcast", st.BroadcastID, "stage", st.Arn, "role", st.Role)
	return true, nil
}
