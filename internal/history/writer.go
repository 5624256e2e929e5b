package history

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// WriterConfig sets a Writer's limits. A zero field takes its default.
type WriterConfig struct {
	// Buffer is the most events and snapshots held unwritten, queued or in
	// the batch being written (HISTORY_BUFFER); more are dropped. Default
	// 10,000.
	Buffer int
	// BatchSize starts a write as soon as this many are queued, and bounds
	// each batch. Default 500.
	BatchSize int
	// FlushInterval is how long a record waits at most before its batch is
	// written, while the database answers. Default 200 ms.
	FlushInterval time.Duration
	// MaxBackoff bounds the wait between two attempts at a failed batch;
	// the first wait is 100 ms (or MaxBackoff, if shorter), doubling.
	// Default 2 s.
	MaxBackoff time.Duration
	// Timeout bounds one attempt. Default 10 s.
	Timeout time.Duration
}

func (c WriterConfig) withDefaults() WriterConfig {
	if c.Buffer <= 0 {
		c.Buffer = 10_000
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 500
	}
	if c.FlushInterval <= 0 {
		c.FlushInterval = 200 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 2 * time.Second
	}
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Second
	}
	return c
}

// dropLogEvery spaces the reports of dropped records, so that a full buffer
// under a storm of joins costs a log line a second, not one a join.
const dropLogEvery = time.Second

// Writer writes events and snapshots to a Store in batches from its own
// goroutine, so that recording costs the caller a lock and an append.
//
// Guarantees:
//   - Record and RecordSnapshots never block on the database: when
//     Buffer records are already unwritten, the new one is dropped and
//     counted (Dropped), and the count is logged at most once a second,
//     also while a write hangs (that line is the only I/O they do).
//   - What is queued is written within FlushInterval, or at once when a
//     batch is full, events in the order recorded.
//   - A batch that fails is kept and tried again with back-off, for as
//     long as it takes: while the database is unreachable nothing that fit
//     in the buffer is lost, and new records queue behind it until the
//     buffer is full. Store writes are idempotent, so a batch tried again
//     after a failure that did commit records nothing twice. A batch the
//     store refuses as invalid (ErrInvalid) is dropped and counted:
//     trying it again would not make it valid.
//   - Close writes everything queued before it returns, or gives up when
//     its context ends.
type Writer struct {
	store Store
	cfg   WriterConfig
	log   *slog.Logger

	mu      sync.Mutex
	events  []Event    // queued, oldest first
	snaps   []Snapshot // queued, oldest first
	pending int        // queued and in the batch being written
	closed  bool
	failing error // the last attempt's error; nil once one succeeds

	full    atomic.Int64 // dropped: the buffer was full, or the writer closed
	invalid atomic.Int64 // dropped: refused by Validate or by the store

	kick      chan struct{} // a batch is full
	closing   chan struct{} // Close was called
	closeOnce sync.Once
	// ctx is the store calls'; Close cancels it when its own context ends,
	// to stop an attempt in progress.
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // the goroutine ended

	drops dropReport
}

// NewWriter starts a Writer on st. Close it to stop it; it does not close
// st.
func NewWriter(st Store, cfg WriterConfig, log *slog.Logger) *Writer {
	ctx, cancel := context.WithCancel(context.Background())
	w := &Writer{
		store:   st,
		cfg:     cfg.withDefaults(),
		log:     log,
		kick:    make(chan struct{}, 1),
		closing: make(chan struct{}),
		ctx:     ctx,
		cancel:  cancel,
		done:    make(chan struct{}),
	}
	go w.run()
	return w
}

// Record queues an event (see Writer for what happens to it). An invalid
// one (Event.Validate) is dropped and counted.
func (w *Writer) Record(e Event) {
	if e.Validate() != nil {
		w.invalid.Add(1)
		w.droppedNow()
		return
	}
	w.mu.Lock()
	if w.closed || w.pending >= w.cfg.Buffer {
		w.mu.Unlock()
		w.full.Add(1)
		w.droppedNow()
		return
	}
	w.events = append(w.events, e)
	w.pending++
	kick := len(w.events)+len(w.snaps) >= w.cfg.BatchSize
	w.mu.Unlock()
	if kick {
		w.wake()
	}
}

// RecordSnapshots queues snapshots, each as Record queues an event.
func (w *Writer) RecordSnapshots(snaps ...Snapshot) {
	w.mu.Lock()
	kick, dropped := false, false
	for _, s := range snaps {
		switch {
		case s.Validate() != nil:
			w.invalid.Add(1)
			dropped = true
		case w.closed || w.pending >= w.cfg.Buffer:
			w.full.Add(1)
			dropped = true
		default:
			w.snaps = append(w.snaps, s)
			w.pending++
			kick = len(w.events)+len(w.snaps) >= w.cfg.BatchSize
		}
	}
	w.mu.Unlock()
	if dropped {
		w.droppedNow()
	}
	if kick {
		w.wake()
	}
}

func (w *Writer) wake() {
	select {
	case w.kick <- struct{}{}:
	default: // a wake-up is already due
	}
}

// WaitRoom waits until min(n, Buffer) more records fit in the buffer, and
// answers that number, or ctx's error: for a caller off the join path with
// many records at once (a broadcast's end), which would rather wait than
// have them dropped. A closed writer has room for none.
func (w *Writer) WaitRoom(ctx context.Context, n int) (int, error) {
	n = min(n, w.cfg.Buffer)
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		w.mu.Lock()
		room, closed := w.pending+n <= w.cfg.Buffer, w.closed
		w.mu.Unlock()
		switch {
		case closed:
			return 0, errors.New("the viewing history is closed")
		case room:
			return n, nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("the viewing history's buffer stayed full: %w", context.Cause(ctx))
		case <-t.C:
		}
	}
}

// Len returns how many events and snapshots are unwritten: queued, or in
// the batch being written.
func (w *Writer) Len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pending
}

// Failing returns the error of the last write attempt while writes fail,
// nil once one succeeds: the history's health.
func (w *Writer) Failing() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.failing
}

// Dropped returns how many events and snapshots were dropped since the
// start: recorded with the buffer full or after Close, invalid, or refused
// by the store as invalid.
func (w *Writer) Dropped() int64 { return w.full.Load() + w.invalid.Load() }

// Close stops taking records and writes what is queued, retrying as usual,
// until it is written or ctx ends; then it cancels the attempt in progress
// and returns an error wrapping ctx's, with how much was not written.
// Calling it again waits in the same way.
func (w *Writer) Close(ctx context.Context) error {
	w.closeOnce.Do(func() {
		w.mu.Lock()
		w.closed = true
		w.mu.Unlock()
		close(w.closing)
	})
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		w.cancel()
		<-w.done
		return fmt.Errorf("history: closing the writer, %d events and snapshots not written: %w", w.Len(), ctx.Err())
	}
}

// batch is what one write takes from the queue.
type batch struct {
	events []Event
	snaps  []Snapshot
}

func (w *Writer) run() {
	defer close(w.done)
	defer w.cancel()
	tick := time.NewTicker(w.cfg.FlushInterval)
	defer tick.Stop()
	for {
		stop, kicked := false, false
		select {
		case <-tick.C:
		case <-w.kick:
			kicked = true
		case <-w.closing:
			// Every record was queued before closing was closed, so the
			// drain below takes them all.
			stop = true
		}
		w.drops.report(w, stop)
		// A kick writes full batches only; the rest waits for the tick, so
		// that a busy writer does not cut its batches short.
		all := !kicked
		for {
			b := w.take(all)
			if len(b.events)+len(b.snaps) == 0 {
				break
			}
			if !w.write(b) {
				return // Close gave up
			}
		}
		if stop {
			return
		}
	}
}

// take moves up to BatchSize records from the queue into a batch, or none
// when fewer are queued and not all are asked for. They stay counted in
// pending until written.
func (w *Writer) take(all bool) batch {
	w.mu.Lock()
	defer w.mu.Unlock()
	var b batch
	if !all && len(w.events)+len(w.snaps) < w.cfg.BatchSize {
		return b
	}
	n := min(len(w.events), w.cfg.BatchSize)
	b.events = slices.Clone(w.events[:n])
	w.events = slices.Delete(w.events, 0, n)
	m := min(len(w.snaps), w.cfg.BatchSize-n)
	b.snaps = slices.Clone(w.snaps[:m])
	w.snaps = slices.Delete(w.snaps, 0, m)
	return b
}

func (w *Writer) written(n int) {
	w.mu.Lock()
	w.pending -= n
	w.mu.Unlock()
}

// write writes b, retrying with back-off; false when Close gave up first.
func (w *Writer) write(b batch) bool {
	backoff := min(100*time.Millisecond, w.cfg.MaxBackoff)
	for {
		err := w.attempt(&b)
		w.mu.Lock()
		w.failing = err
		w.mu.Unlock()
		if err == nil {
			return true
		}
		if w.ctx.Err() != nil {
			return false
		}
		w.drops.report(w, false) // a long outage is when the buffer fills
		w.log.Warn("history: writing failed, retrying", "events", len(b.events), "snapshots", len(b.snaps),
			"retry_in", backoff, "err", err)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-w.ctx.Done():
			t.Stop()
			return false
		}
		backoff = min(2*backoff, w.cfg.MaxBackoff)
	}
}

// attempt writes what of b is unwritten, events first, and forgets each
// part once written, so that a retry does not write it again.
func (w *Writer) attempt(b *batch) error {
	if len(b.events) > 0 {
		ctx, cancel := context.WithTimeout(w.ctx, w.cfg.Timeout)
		err := w.store.Apply(ctx, b.events)
		cancel()
		if err = w.settle(err, len(b.events), "events"); err != nil {
			return err
		}
		b.events = nil
	}
	if len(b.snaps) > 0 {
		ctx, cancel := context.WithTimeout(w.ctx, w.cfg.Timeout)
		err := w.store.PutSnapshots(ctx, b.snaps)
		cancel()
		if err = w.settle(err, len(b.snaps), "snapshots"); err != nil {
			return err
		}
		b.snaps = nil
	}
	return nil
}

// settle accounts for n records after a write's err: written, or dropped
// as invalid. It returns the error to retry on, if any.
func (w *Writer) settle(err error, n int, what string) error {
	switch {
	case err == nil:
	case errors.Is(err, ErrInvalid):
		w.invalid.Add(int64(n))
		w.log.Error("history: the store refused a batch as invalid; dropped", what, n, "err", err)
	default:
		return err
	}
	w.written(n)
	return nil
}

// droppedNow reports drops from the call that made them, so that they are
// logged while the goroutine hangs in a write (up to Timeout); a time
// check is all it costs between reports.
func (w *Writer) droppedNow() {
	if time.Now().UnixNano() >= w.drops.next.Load() {
		w.drops.report(w, false)
	}
}

// dropReport logs drops at most once per dropLogEvery, from the writer's
// goroutine or from a call that drops.
type dropReport struct {
	next atomic.Int64 // unix nanoseconds from which a report may log

	mu            sync.Mutex
	full, invalid int64 // counts at the last report
}

func (d *dropReport) report(w *Writer, force bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	full, invalid := w.full.Load(), w.invalid.Load()
	if full == d.full && invalid == d.invalid {
		return
	}
	now := time.Now()
	if !force && now.UnixNano() < d.next.Load() {
		return
	}
	w.log.Warn("history: records dropped", "buffer_full", full-d.full, "invalid", invalid-d.invalid,
		"dropped_total", full+invalid, "buffer", w.cfg.Buffer)
	d.full, d.invalid = full, invalid
	d.next.Store(now.Add(dropLogEvery).UnixNano())
}
