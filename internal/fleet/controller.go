package fleet

import (
	"context"
	"errors"
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

// meter measures an event rate as two exponentially decaying averages:
// one with a quarter-second time constant, which sees a join storm from
// its first fraction of a second, and one with a one-second constant,
// which holds the rate through its gaps. The rate is the larger: scale-up
// must react to the first joins of a burst, not wait for an average to
// settle, and it forgets a storm within a second or two either way.
type meter struct {
	mu   sync.Mutex
	fast float64 // events per second as of last, quarter-second constant
	slow float64 // the same, one-second constant
	last time.Time
}

const (
	meterFast = 250 * time.Millisecond
	meterSlow = time.Second
)

func decay(rate float64, tau time.Duration, since time.Duration) float64 {
	return rate * math.Exp(-since.Seconds()/tau.Seconds())
}

// addAt counts an event that happened at t, as of now: it adds what the
// event would have added at t, decayed since.
func (m *meter) addAt(t, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	since, age := now.Sub(m.last), max(0, now.Sub(t))
	if m.last.IsZero() {
		since = 0
	}
	m.fast = decay(m.fast, meterFast, since) + decay(1/meterFast.Seconds(), meterFast, age)
	m.slow = decay(m.slow, meterSlow, since) + decay(1/meterSlow.Seconds(), meterSlow, age)
	m.last = now
}

func (m *meter) perSecond(now time.Time) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.last.IsZero() {
		return 0
	}
	since := now.Sub(m.last)
	return max(decay(m.fast, meterFast, since), decay(m.slow, meterSlow, since))
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
	// exists: the store was seen to hold the broadcast, so its demand
	// may be recorded there.
	exists atomic.Bool
	// atQuota: scale-up was last held at STAGE_QUOTA (logged once).
	atQuota bool
	// peakHeadroom is the most headroom a pass wanted within the
	// stabilization window before peakAt (under the broadcast's lock).
	peakHeadroom int
	peakAt       time.Time
	// coming caches stageComing for waiting viewers (under comingMu).
	comingMu  sync.Mutex
	comingAt  time.Time
	comingETA time.Duration
	coming    bool
	// comingLimit says which limit keeps a stage from coming, as noSeat
	// tells the viewer ("" for none).
	comingLimit string
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
	v.reps = byReplKey(reps)
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

// creating is the number of replica stages a pass is creating now.
func (v view) creating(now time.Time) int {
	if now.After(v.broadcast.CreatingUntil) {
		return 0
	}
	return v.broadcast.Creating
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
func (s *Service) scaleDown(ctx context.Context, v view, b *passBudgets, in *intent, growing bool) (time.Duration, error) {
	now := s.now()
	free, _, idle := v.seats()
	// Against the most headroom wanted within the window, not only now's:
	// the join rate of a storm's gaps must not remove a stage its next
	// burst needs (a flap).
	headroom := s.recentHeadroom(v, now)
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
				if _, err := s.remove(ctx, v, st, b, in); err != nil {
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
		if growing || without < headroom || idle-1 < s.cfg.MinIdleStages {
			continue
		}
		removed, err := s.remove(ctx, v, st, b, in)
		if err != nil {
			return 0, err
		}
		if removed {
			free, idle = without, idle-1
		}
	}
	return next, nil
}

// recentHeadroom is the most headroom wanted within the stabilization
// window.
func (s *Service) recentHeadroom(v view, now time.Time) int {
	l := s.local(v.broadcast.ID)
	h := s.headroom(v)
	if h >= l.peakHeadroom || now.Sub(l.peakAt) > s.cfg.ScaleDownStabilization {
		l.peakHeadroom, l.peakAt = h, now
	}
	return l.peakHeadroom
}

// remove drains an empty replica stage the controller no longer needs and
// queues its deletion for the pass's second phase, if the pass can still
// afford the calls: one DeleteStage and a stop per running replication.
func (s *Service) remove(ctx context.Context, v view, st store.Stage, b *passBudgets, in *intent) (bool, error) {
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
	drained, err := s.drain(ctx, st, "empty for the stabilization window")
	if err != nil || !drained {
		return false, err
	}
	in.removals = append(in.removals, removal{stage: st, reps: reps})
	return true, nil
}

// drainAndDelete removes a stage that is not the origin: it is drained
// (see drain), and if it stayed empty, deleted (stopAndDelete, then dropRecords). The
// caller holds the broadcast's lock. A failure leaves the record draining,
// and the next controller pass finishes the removal.
func (s *Service) drainAndDelete(ctx context.Context, st store.Stage, reps []store.Replication, reason string) (bool, error) {
	drained, err := s.drain(ctx, st, reason)
	if err != nil || !drained {
		return false, err
	}
	if err := s.stopAndDelete(ctx, st, reps); err != nil {
		return false, err
	}
	return true, s.dropRecords(ctx, st, reps)
}

// drain makes a stage stop taking viewers and reads it again: a viewer
// seated between the caller's check and the drain keeps the stage
// (false). The caller holds the broadcast's lock.
func (s *Service) drain(ctx context.Context, st store.Stage, reason string) (bool, error) {
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
	return true, nil
}

// stopAndDelete stops the running replications into a drained stage and
// deletes it in IVS; the broadcast need not be held (a drained stage takes
// no viewers).
func (s *Service) stopAndDelete(ctx context.Context, st store.Stage, reps []store.Replication) error {
	for _, r := range reps {
		if r.State != store.ReplActive && r.State != store.ReplStarting {
			continue
		}
		if err := s.ivs.StopReplication(ctx, r.SourceArn, r.DestArn, r.ParticipantID); err != nil && !errors.Is(err, ErrIVSNotFound) {
			s.log.Warn("stopping replication of a removed stage", "stage", st.Arn, "participant", r.ParticipantID, "error", err)
		}
	}
	if err := s.ivs.DeleteStage(ctx, st.Arn); err != nil && !errors.Is(err, ErrIVSNotFound) {
		return err
	}
	return nil
}

// dropRecords forgets a stage deleted in IVS. The caller holds the
// broadcast's lock.
func (s *Service) dropRecords(ctx context.Context, st store.Stage, reps []store.Replication) error {
	freed, err := s.store.DeleteStage(ctx, st.Arn)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	// None are expected (the stage was drained empty); any freed end here.
	s.seatsEnded(freed, EndStageRemoved)
	for _, r := range reps {
		if err := s.store.DeleteReplication(ctx, r.BroadcastID, r.ParticipantID, r.DestArn); err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
	}
	s.provisionStart.Delete(st.Arn)
	s.log.Info("stage deleted", "broadcast", st.BroadcastID, "stage", st.Arn, "role", st.Role)
	return nil
}
