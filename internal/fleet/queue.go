package fleet

import (
	"container/heap"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"time"
)

// The work queue feeds broadcast ids to the controller's workers in the
// shape of controller-runtime (client-go's workqueue behind a reconcile
// loop). A key stands for "look at this broadcast again", not for an event,
// so repeated adds collapse into one pass; and a key is never handed to two
// workers at once, so a reconcile of one broadcast never races another
// reconcile of the same broadcast.

const (
	// retryBase is the first retry delay of a failing key.
	retryBase = 50 * time.Millisecond
	// retryMax caps the doubling: a broadcast that keeps failing (IVS
	// down, quota exhausted) is still looked at twice a minute.
	retryMax = 30 * time.Second
	// retryJitter spreads retries by this fraction either way, so keys
	// that failed together (one IVS outage) do not retry in lockstep.
	retryJitter = 0.1
)

// queueClock is the time the queue runs on; tests substitute a manual clock
// and move it instead of sleeping.
type queueClock interface {
	Now() time.Time
	// AfterFunc calls f once d has passed, unless stop is called first;
	// stop reports whether it prevented the call.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

// wallClock is the real time.
type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

func (wallClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}

// workQueue is a de-duplicating, rate-limited queue of keys. A key is in at
// most one of three places: waiting (due at a time), ready (in order, to be
// handed out by get) or processing (handed out, not yet done). A key added
// while processing is marked dirty and becomes ready when done is called.
type workQueue struct {
	clock queueClock
	log   *slog.Logger

	// onReconcile, when set before run, is told of every reconcile: its
	// key, how long it took and what it returned (a recovered panic as an
	// error). It runs on the worker, after the key is done.
	onReconcile func(key string, d time.Duration, err error)

	mu sync.Mutex
	// ready is FIFO so that a key added early is not starved by keys
	// that are re-added all the time.
	ready []string
	// dirty holds the keys that are ready or must be once done: the
	// dedup set.
	dirty      map[string]struct{}
	processing map[string]struct{}
	waiting    dueHeap
	waitingBy  map[string]*dueKey
	failed     map[string]int

	// changed is closed and replaced whenever a key becomes ready, waking
	// every blocked get (a sync.Cond cannot be combined with a context).
	changed chan struct{}

	// One timer, for the earliest waiting key, is enough: when it fires
	// every due key is made ready and the timer is set for the next.
	stopTimer func() bool
	timerAt   time.Time
	timerGen  uint64
}

// newWorkQueue returns an empty queue on clk (nil: real time), logging to
// log (nil: nowhere).
func newWorkQueue(clk queueClock, log *slog.Logger) *workQueue {
	if clk == nil {
		clk = wallClock{}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &workQueue{
		clock:      clk,
		log:        log,
		dirty:      map[string]struct{}{},
		processing: map[string]struct{}{},
		waitingBy:  map[string]*dueKey{},
		failed:     map[string]int{},
		changed:    make(chan struct{}),
	}
}

// add makes key ready now unless it already is. A key that is waiting
// stops waiting; a key being processed becomes ready once done.
func (q *workQueue) add(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.addLocked(key)
}

func (q *workQueue) addLocked(key string) {
	if w, ok := q.waitingBy[key]; ok {
		heap.Remove(&q.waiting, w.index)
		delete(q.waitingBy, key)
		q.armLocked()
	}
	if _, ok := q.dirty[key]; ok {
		return
	}
	q.dirty[key] = struct{}{}
	if _, ok := q.processing[key]; ok {
		return
	}
	q.ready = append(q.ready, key)
	q.wakeLocked()
}

// addAfter makes key ready once d has passed. It never postpones: a key
// that is already ready, or waiting for an earlier time, keeps its turn.
func (q *workQueue) addAfter(key string, d time.Duration) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.addAfterLocked(key, d)
}

func (q *workQueue) addAfterLocked(key string, d time.Duration) {
	if d <= 0 {
		q.addLocked(key)
		return
	}
	if _, ok := q.dirty[key]; ok {
		return
	}
	at := q.clock.Now().Add(d)
	if w, ok := q.waitingBy[key]; ok {
		if !at.Before(w.at) {
			return
		}
		w.at = at
		heap.Fix(&q.waiting, w.index)
	} else {
		w := &dueKey{key: key, at: at}
		heap.Push(&q.waiting, w)
		q.waitingBy[key] = w
	}
	q.armLocked()
}

// addRateLimited counts a failure of key and makes it ready after its
// back-off: retryBase, doubling with each failure since the last forget,
// capped at retryMax, give or take retryJitter. Each key backs off on its
// own, so one failing broadcast does not slow the others.
func (q *workQueue) addRateLimited(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.failed[key]++
	q.addAfterLocked(key, q.retryDelay(q.failed[key]))
}

// retryDelay is the back-off after the given number of failures.
func (q *workQueue) retryDelay(failures int) time.Duration {
	d := retryBase
	// Doubling step by step cannot overflow, unlike a shift by failures.
	for i := 1; i < failures && d < retryMax; i++ {
		d *= 2
	}
	d = min(d, retryMax)
	// Jitter after the cap, so that keys failing for long spread too.
	return time.Duration(float64(d) * (1 + retryJitter*(2*rand.Float64()-1)))
}

// forget resets key's failure count; it does not take it off the queue.
func (q *workQueue) forget(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.failed, key)
}

// failures is the number of addRateLimited calls for key since its last
// forget.
func (q *workQueue) failures(key string) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.failed[key]
}

// get blocks until a key is ready and hands it out; the caller must call
// done with it. ok is false once ctx ends.
func (q *workQueue) get(ctx context.Context) (key string, ok bool) {
	q.mu.Lock()
	for {
		if ctx.Err() != nil {
			q.mu.Unlock()
			return "", false
		}
		if len(q.ready) > 0 {
			break
		}
		changed := q.changed
		q.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-changed:
		}
		q.mu.Lock()
	}
	key = q.ready[0]
	q.ready[0] = "" // let the backing array drop the string
	q.ready = q.ready[1:]
	delete(q.dirty, key)
	q.processing[key] = struct{}{}
	q.mu.Unlock()
	return key, true
}

// done ends the processing of key; if it was added meanwhile, it is ready
// again.
func (q *workQueue) done(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.processing, key)
	if _, ok := q.dirty[key]; ok {
		q.ready = append(q.ready, key)
		q.wakeLocked()
	}
}

func (q *workQueue) wakeLocked() {
	close(q.changed)
	q.changed = make(chan struct{})
}

// armLocked sets the timer for the earliest waiting key, or stops it when
// nothing waits.
func (q *workQueue) armLocked() {
	if len(q.waiting) > 0 && q.stopTimer != nil && q.timerAt.Equal(q.waiting[0].at) {
		return
	}
	if q.stopTimer != nil {
		q.stopTimer()
		q.stopTimer = nil
	}
	if len(q.waiting) == 0 {
		return
	}
	q.timerGen++
	gen := q.timerGen
	q.timerAt = q.waiting[0].at
	q.stopTimer = q.clock.AfterFunc(q.timerAt.Sub(q.clock.Now()), func() { q.fire(gen) })
}

// fire makes every due key ready. gen tells the current timer from one
// that was replaced but could not be stopped in time; either way the due
// keys are taken, so a stale call is harmless.
func (q *workQueue) fire(gen uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if gen == q.timerGen {
		q.stopTimer = nil
	}
	now := q.clock.Now()
	for len(q.waiting) > 0 && !q.waiting[0].at.After(now) {
		w := heap.Pop(&q.waiting).(*dueKey)
		delete(q.waitingBy, w.key)
		q.addLocked(w.key)
	}
	q.armLocked()
}

// dueKey is a key waiting in the heap until at.
type dueKey struct {
	key   string
	at    time.Time
	index int // in the heap, for Fix and Remove
}

// dueHeap orders waiting keys earliest first.
type dueHeap []*dueKey

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h dueHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}

func (h *dueHeap) Push(x any) {
	w := x.(*dueKey)
	w.index = len(*h)
	*h = append(*h, w)
}

func (h *dueHeap) Pop() any {
	old := *h
	w := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return w
}

// run processes keys with workers goroutines (at least one) until ctx ends,
// then waits for reconciles in flight to return.
// As in controller-runtime: an error retries the key with its back-off;
// success forgets the key's failures and, when reconcile asks
// for it, looks at the key again after requeueAfter (ignored with an
// error, whose back-off wins). A panic in reconcile is an error.
func (q *workQueue) run(ctx context.Context, workers int, reconcile func(ctx context.Context, key string) (requeueAfter time.Duration, err error)) {
	var wg sync.WaitGroup
	for range max(workers, 1) {
		wg.Go(func() {
			for q.processNext(ctx, reconcile) {
			}
		})
	}
	wg.Wait()
}

// processNext handles one key; false means the worker should stop.
func (q *workQueue) processNext(ctx context.Context, reconcile func(context.Context, string) (time.Duration, error)) bool {
	key, ok := q.get(ctx)
	if !ok {
		return false
	}
	start := q.clock.Now()
	after, err := q.reconcileSafely(ctx, key, reconcile)
	took := q.clock.Now().Sub(start)
	switch {
	case err == nil:
		q.forget(key)
		if after > 0 {
			q.addAfter(key, after)
		}
	default:
		q.addRateLimited(key)
		q.log.Warn("reconcile failed; retrying", "broadcast", key, "failures", q.failures(key), "error", err)
	}
	// Done only once the outcome is recorded: until then no other worker
	// can have the key, so a newer pass's forget cannot be undone by this
	// older pass's failure.
	q.done(key)
	if q.onReconcile != nil {
		q.onReconcile(key, took, err)
	}
	return true
}

// reconcileSafely calls reconcile, turning a panic into an error so that
// one broadcast's bug costs its retries, not the process.
func (q *workQueue) reconcileSafely(ctx context.Context, key string, reconcile func(context.Context, string) (time.Duration, error)) (after time.Duration, err error) {
	defer func() {
		if r := recover(); r != nil {
			q.log.Error("reconcile panicked", "broadcast", key, "panic", r, "stack", string(debug.Stack()))
			after, err = 0, fmt.Errorf("reconcile of %q panicked: %v", key, r)
		}
	}()
	return reconcile(ctx, key)
}
