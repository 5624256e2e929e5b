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
	// covers every broadcast.
	reconcileScope = ""
)

// defaultInstanceID names this process uniquely among instances.
func defaultInstanceID() string {
	host, err := os.Hostname()
	if err != nil {
		host = "stagefleet"
	}
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), newParticipantID()[:6])
}

// lock takes the broadcast, waiting for this instance's mutex and then for
// the control lease. The returned context carries the lease's fence and
// ends if the lease is lost; unlock releases both.
func (s *Service) lock(ctx context.Context, broadcastID string) (context.Context, func(), error) {
	l := s.local(broadcastID)
	l.mu.Lock()
	// A holder renews only while it works; one that keeps the broadcast
	// longer than this is stuck, and the caller is better told so.
	deadline := time.Now().Add(2 * s.cfg.LeaseTTL)
	for {
		lease, err := s.store.AcquireLease(ctx, broadcastID, controlLease, s.instance, s.cfg.LeaseTTL)
		if err == nil {
			held, unlock := s.hold(ctx, l, lease)
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

// tryLock is lock for work that any instance may do, such as a controller
// pass: it waits for this instance's mutex, but if another instance holds
// the lease it answers ok false at once.
func (s *Service) tryLock(ctx context.Context, broadcastID string) (_ context.Context, unlock func(), ok bool, err error) {
	l := s.local(broadcastID)
	l.mu.Lock()
	lease, err := s.store.AcquireLease(ctx, broadcastID, controlLease, s.instance, s.cfg.LeaseTTL)
	switch {
	case errors.Is(err, store.ErrLeaseHeld):
		l.mu.Unlock()
		return nil, nil, false, nil
	case err != nil:
		l.mu.Unlock()
		return nil, nil, false, err
	}
	held, unlock := s.hold(ctx, l, lease)
	return held, unlock, true, nil
}

// hold keeps a lease renewed until unlock.
func (s *Service) hold(ctx context.Context, l *local, lease store.Lease) (context.Context, func()) {
	held, cancel := context.WithCancel(store.WithFence(ctx, lease))
	done := make(chan struct{})
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		t := time.NewTicker(s.cfg.LeaseTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if _, err := s.store.AcquireLease(held, lease.BroadcastID, lease.Name, s.instance, s.cfg.LeaseTTL); err != nil {
					s.log.Warn("lease lost; the work in hand stops", "broadcast", lease.BroadcastID, "lease", lease.Name, "error", err)
					cancel()
					return
				}
			}
		}
	}()
	unlock := func() {
		close(done)
		<-renewed
		cancel()
		if err := s.store.ReleaseLease(context.WithoutCancel(ctx), lease); err != nil {
			s.log.Warn("releasing lease", "broadcast", lease.BroadcastID, "lease", lease.Name, "error", err)
		}
		l.mu.Unlock()
	}
	return held, unlock
}
