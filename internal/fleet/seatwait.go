package fleet

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/stagefleet/stagefleet/internal/store"
)

// Viewers who find every seat taken queue here, per broadcast, first come
// first served. They do not poll the store: a watcher reads the
// broadcast's free seats (every seatWatch, and at once when this instance
// sees seats free up or a stage open) and wakes as many waiters as there
// are free seats. A join storm of thousands of waiting viewers thus costs
// the store a few reads a second, not one script per viewer per poll.
const seatWatch = 100 * time.Millisecond

type waitQueue struct {
	mu sync.Mutex
	q  []chan struct{}
}

func (w *waitQueue) add() chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	ch := make(chan struct{})
	w.q = append(w.q, ch)
	return ch
}

// remove takes ch out of the queue if it is still there (not woken).
func (w *waitQueue) remove(ch chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if i := slices.Index(w.q, ch); i >= 0 {
		w.q = slices.Delete(w.q, i, i+1)
	}
}

func (w *waitQueue) len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.q)
}

// wake wakes the first n waiters.
func (w *waitQueue) wake(n int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n = min(n, len(w.q))
	for _, ch := range w.q[:n] {
		close(ch)
	}
	w.q = slices.Delete(w.q, 0, n)
}

// seatsChanged says seats may be free now (one freed, a stage opened): the
// watcher looks at once at every broadcast with waiters.
func (s *Service) seatsChanged() {
	select {
	case s.seatCheck <- struct{}{}:
	default:
	}
}

// watchSeats wakes waiting viewers when seats are free, until ctx ends.
func (s *Service) watchSeats(ctx context.Context) {
	t := time.NewTicker(seatWatch)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.seatCheck:
		}
		s.locals.Range(func(key, value any) bool {
			b, l := key.(string), value.(*local)
			s.reportDemand(ctx, b, l)
			if l.queue.len() == 0 {
				return true
			}
			free, err := s.freeSeats(ctx, b)
			if err != nil {
				s.log.Warn("reading free seats for waiting viewers", "broadcast", b, "error", err)
				return true
			}
			l.queue.wake(free)
			return true
		})
	}
}

// reportDemand records this instance's demand for the broadcast while it
// has any, and once more when it has gone: whichever instance scales sees
// it within seatWatch.
func (s *Service) reportDemand(ctx context.Context, broadcastID string, l *local) {
	d := store.Demand{Instance: s.instance, Waiting: int(l.waiting.Load()), JoinRate: l.joins.perSecond(s.now()), At: s.now()}
	active := d.Waiting > 0 || d.JoinRate >= 0.1
	if !active && !l.reported.Load() {
		return
	}
	if !l.exists.Load() {
		// Requests for ids that are no broadcast (mistyped, made up) come
		// through the join path too: they must leave nothing in the store.
		// The local stays: its mutex may be held for a broadcast being
		// made, and a second one would let two holders in.
		_, err := s.store.GetBroadcast(ctx, broadcastID)
		switch {
		case errors.Is(err, store.ErrNotFound):
			return
		case err != nil:
			s.log.Warn("recording demand", "broadcast", broadcastID, "error", err)
			return
		}
		l.exists.Store(true)
	}
	if err := s.store.PutDemand(ctx, broadcastID, d); err != nil {
		s.log.Warn("recording demand", "broadcast", broadcastID, "error", err)
		return
	}
	l.reported.Store(active)
}

// freeSeats counts the free seats on the broadcast's stages that take
// viewers.
func (s *Service) freeSeats(ctx context.Context, broadcastID string) (int, error) {
	stages, err := s.store.ListStages(ctx, broadcastID)
	if err != nil {
		return 0, err
	}
	free, _, _ := view{stages: stages}.seats()
	return free, nil
}
