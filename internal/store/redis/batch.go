package redis

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// maxBatch bounds the operations of one script call: a batch runs whole,
// and Redis runs nothing else meanwhile.
const maxBatch = 256

// renewWindow is how long a batch of renewals only waits for more before
// it goes. A heartbeat's answer can wait 2 ms; Redis's fixed cost per
// script call (about 30 µs, against 10 µs per renewal in a batch:
// BenchmarkSeatOps) cannot, at a million viewers: an instance renewing
// 3,000 seats a second sends batches of about 6 instead of 1.
const renewWindow = 2 * time.Millisecond

// seatCall is one seat operation waiting for its batch: its function's
// name in seatFuncs and its arguments.
type seatCall struct {
	name string
	args []any
}

// seatResult is what a seat function answered.
type seatResult struct {
	// replaced is reserve's fourth answer: the freed seat's JSON, or "".
	status, seat, count, replaced string
	err                           error
}

type pendingCall struct {
	call seatCall
	at   time.Time // when it was queued
	done chan seatResult
}

// batcher coalesces the seat operations of one seat group (a broadcast's,
// without groups) made at once on this instance into one script call. A
// join or a leave never waits to fill a batch: it goes at once, and those
// that come while it is in flight go together in the next call. So it
// waits at most for one call in flight before its own, and under load
// round trips fall far below one per operation. Renewals alone wait up to
// renewWindow for company.
type batcher struct {
	s *Store

	mu     sync.Mutex
	queues map[string]*batchQueue // seat group's key tag -> its waiting calls
}

type batchQueue struct {
	calls   []pendingCall
	running bool
	// urgent wakes a drain waiting on renewals: a join or leave came.
	urgent chan struct{}
}

// WithSeatBatching coalesces concurrent seat operations of a broadcast into
// one script call each time (see batcher).
func WithSeatBatching() Option {
	return func(s *Store) { s.batches = &batcher{s: s, queues: map[string]*batchQueue{}} }
}

// do runs call in a batch of the seat group k's operations and answers its
// result. Once queued, an operation runs even if ctx ends meanwhile, as a
// script already sent would: the caller is told ctx's error.
func (b *batcher) do(ctx context.Context, k keys, call seatCall) seatResult {
	done := make(chan seatResult, 1)
	b.mu.Lock()
	q := b.queues[k.tag]
	if q == nil {
		q = &batchQueue{urgent: make(chan struct{}, 1)}
		b.queues[k.tag] = q
	}
	q.calls = append(q.calls, pendingCall{call: call, at: time.Now(), done: done})
	if call.name != "renew" || len(q.calls) >= maxBatch {
		select {
		case q.urgent <- struct{}{}:
		default:
		}
	}
	if !q.running {
		q.running = true
		go b.drain(k, q)
	}
	b.mu.Unlock()
	select {
	case r := <-done:
		return r
	case <-ctx.Done():
		return seatResult{err: ctx.Err()}
	}
}

// drain runs the queue's calls, a batch at a time, until none are left.
// A batch of renewals only waits for more until its first has waited
// renewWindow, unless a join or leave comes or the batch is full.
func (b *batcher) drain(k keys, q *batchQueue) {
	for {
		b.mu.Lock()
		if len(q.calls) > 0 && len(q.calls) < maxBatch && renewalsOnly(q.calls) {
			if wait := renewWindow - time.Since(q.calls[0].at); wait > 0 {
				b.mu.Unlock()
				select {
				case <-q.urgent:
				case <-time.After(wait):
				}
				b.mu.Lock()
			}
		}
		select {
		case <-q.urgent: // this batch takes whatever came
		default:
		}
		n := min(len(q.calls), maxBatch)
		if n == 0 {
			q.running = false
			delete(b.queues, k.tag)
			b.mu.Unlock()
			return
		}
		batch := q.calls[:n:n]
		q.calls = q.calls[n:]
		b.mu.Unlock()
		b.run(k, batch)
	}
}

func renewalsOnly(calls []pendingCall) bool {
	for _, c := range calls {
		if c.call.name != "renew" {
			return false
		}
	}
	return true
}

// run makes one script call for the batch and hands out the results.
func (b *batcher) run(k keys, batch []pendingCall) {
	calls := make([]seatCall, len(batch))
	for i, p := range batch {
		calls[i] = p.call
	}
	// Not the callers' contexts: the batch is theirs together, and one
	// caller giving up must not fail the others.
	for i, r := range b.s.seatCalls(context.Background(), k, calls) {
		batch[i].done <- r
	}
}

// seatCalls runs seat operations of one seat group, in order, in one
// script call, and answers each one's result.
func (s *Store) seatCalls(ctx context.Context, k keys, calls []seatCall) []seatResult {
	var args []any
	for _, c := range calls {
		args = append(args, c.name)
		args = append(args, c.args...)
	}
	out, err := seatBatch.Run(ctx, s.rdb, k.seatKeys(), args...).Slice()
	if err == nil && len(out) != 4*len(calls) {
		err = fmt.Errorf("seat batch answered %d values for %d operations", len(out), len(calls))
	}
	res := make([]seatResult, len(calls))
	for i := range res {
		if err != nil {
			res[i] = seatResult{err: err}
			continue
		}
		res[i] = seatResult{status: fmt.Sprint(out[4*i]), seat: fmt.Sprint(out[4*i+1]), count: fmt.Sprint(out[4*i+2]), replaced: fmt.Sprint(out[4*i+3])}
	}
	return res
}
