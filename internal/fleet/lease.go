package fleet

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"time"

	"github.com/stagefleet/stagefleet/internal/store"
)

// Leases share a broadcast's work between stagefleet instances. Whoever
// changes a broadcast's records (a controller pass, an IVS event, a manual
// stage change, reconcile's repairs) first takes this instance's mutex for
// the broadcast, then the broadcast's control lease in the store; its
// writes are fenced with the lease, so an instance that lost it (paused,
// partitioned, too slow to renew) can no longer write. Reconciling with IVS
// is done by one instance at a time, under the reconcile lease.
const (
	controlLease   = "control"
	reconcileLease = "reconcile"
	// reconcileScope is the broadcast id of the reconcile lease, which
	// covers every broadcast: no broadcast id has a '#' (the API's
	// pattern), and it must not be empty, or Redis Cluster would hash the
	// lease's keys to different slots.
	reconcileScope = "#all"
)

// maxLockWait bounds how long lock waits for another instance's hold.
const maxLockWait = 4 * time.Second

// yieldTurn is how long an instance leaves a broadcast's lease alone after
// releasing it to a waiting instance: a few of the waiter's polls.
const yieldTurn = 50 * time.Millisecond

// yield waits out this instance's turn to leave the lease to others, under
// l.mu. tryLock does not wait: ok false.
func (l *local) yield(ctx context.Context, wait bool) bool {
	d := time.Until(l.yieldUntil)
	if d <= 0 {
		return true
	}
	if !wait {
		return false
	}
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// defaultInstanceID names this process: host name and process id.
func defaultInstanceID() string {
	host, err := os.Hostname()
	if err != nil {
		host = "stagefleet"
	}
	return fmt.Sprintf("%s-%d", host, os.Getpid())
}

// lock takes the broadcast, waiting for this instance's mutex and then for
// the control lease. The returned context carries the lease's fence and
// ends if the lease is lost; unlock releases both.
func (s *Service) lock(ctx context.Context, broadcastID, work string) (context.Context, func(), error) {
	l := s.local(broadcastID)
	l.mu.Lock()
	if !l.yield(ctx, true) {
		l.mu.Unlock()
		return nil, nil, failWrap(ErrUnavailable, ctx.Err(), "waiting for broadcast %s", broadcastID)
	}
	// A holder keeps the broadcast for one pass or one event; one that
	// keeps it longer than this is stuck, and the caller is better told so
	// (an event's sender retries: EventBridge gives up on a delivery after
	// about 5 s).
	deadline := time.Now().Add(min(2*s.cfg.LeaseTTL, maxLockWait))
	for {
		lease, err := s.store.AcquireLease(ctx, broadcastID, controlLease, s.instance, s.cfg.LeaseTTL)
		if err == nil {
			s.metrics.LeaseAcquired(controlLease)
			held, unlock := s.hold(ctx, l, lease, work)
			return held, unlock, nil
		}
		if !errors.Is(err, store.ErrLeaseHeld) {
			l.mu.Unlock()
			return nil, nil, failWrap(ErrUnavailable, err, "taking broadcast %s", broadcastID)
		}
		if time.Now().After(deadline) {
			l.mu.Unlock()
			return nil, nil, fail(ErrUnavailable, "broadcast %s stayed busy (instance %s holds it); try again", broadcastID, lease.Holder)
		}
		// Another instance's hold is one controller pass or one event:
		// short. Poll, with jitter so that waiters do not move in step.
		wait := 10*time.Millisecond + rand.N(20*time.Millisecond)
		select {
		case <-ctx.Done():
			l.mu.Unlock()
			return nil, nil, failWrap(ErrUnavailable, ctx.Err(), "waiting for broadcast %s, held by instance %s", broadcastID, lease.Holder)
		case <-time.After(wait):
		}
	}
}

// tryLock is lock for work that whoever holds the broadcast does anyway,
// such as a controller pass: if this instance's mutex or the lease is held,
// it answers ok false at once (the holder's own pass, or the next one,
// does the work).
func (s *Service) tryLock(ctx context.Context, broadcastID, work string) (_ context.Context, unlock func(), ok bool, err error) {
	l := s.local(broadcastID)
	if !l.mu.TryLock() {
		// This instance's own work on the broadcast (an event, a manual
		// change) is in hand: the caller asks again once it is done.
		return nil, nil, false, nil
	}
	if !l.yield(ctx, false) {
		l.mu.Unlock()
		return nil, nil, false, nil
	}
	lease, err := s.store.AcquireLease(ctx, broadcastID, controlLease, s.instance, s.cfg.LeaseTTL)
	switch {
	case errors.Is(err, store.ErrLeaseHeld):
		l.mu.Unlock()
		return nil, nil, false, nil
	case err != nil:
		l.mu.Unlock()
		return nil, nil, false, err
	}
	s.metrics.LeaseAcquired(controlLease)
	held, unlock := s.hold(ctx, l, lease, work)
	return held, unlock, true, nil
}

// hold keeps a control lease renewed until unlock; writes made with the
// returned context are fenced with it.
func (s *Service) hold(ctx context.Context, l *local, lease store.Lease, work string) (context.Context, func()) {
	start := time.Now()
	held, stop := s.keep(store.WithFence(ctx, lease), lease, s.cfg.LeaseTTL)
	unlock := func() {
		// Other instances wait while the broadcast is held.
		if took := time.Since(start); took > s.cfg.LeaseTTL/4 {
			s.log.Warn("broadcast held long", "broadcast", lease.BroadcastID, "work", work, "took", took)
		}
		stop()
		wanted, err := s.store.ReleaseLease(context.WithoutCancel(ctx), lease)
		if err != nil {
			s.log.Warn("releasing lease", "broadcast", lease.BroadcastID, "lease", lease.Name, "error", err)
		}
		if wanted {
			// Another instance waits for the broadcast: let it have a
			// turn before this one's next holder takes it back.
			l.yieldUntil = time.Now().Add(yieldTurn)
		}
		l.mu.Unlock()
	}
	return held, unlock
}

// keep renews lease every ttl/3 until stop. The returned context ends if
// the lease is lost, so that the work under it stops.
func (s *Service) keep(ctx context.Context, lease store.Lease, ttl time.Duration) (context.Context, func()) {
	held, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	renewing := make(chan struct{})
	go func() {
		defer close(renewing)
		t := time.NewTicker(ttl / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				renewed, err := s.store.AcquireLease(held, lease.BroadcastID, lease.Name, s.instance, ttl)
				if err == nil && renewed.Token != lease.Token {
					// It ran out and was granted again: the work in hand was
					// fenced with the old grant, and its writes fail.
					err = fmt.Errorf("lease ran out before it was renewed (token %d, now %d)", lease.Token, renewed.Token)
					_, _ = s.store.ReleaseLease(context.WithoutCancel(ctx), renewed)
				}
				if err != nil {
					s.log.Warn("lease lost; the work in hand stops", "broadcast", lease.BroadcastID, "lease", lease.Name, "error", err)
					s.metrics.LeaseLost(lease.Name)
					cancel()
					return
				}
			}
		}
	}()
	return held, func() {
		close(done)
		<-renewing
		cancel()
	}
}
