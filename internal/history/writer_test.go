package history_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/history"
)

// fakeStore records what the writer writes. fail, when set, answers each
// write first; block, when set, holds each write until it is closed.
type fakeStore struct {
	history.Store // the writer calls only Apply and PutSnapshots

	mu       sync.Mutex
	events   []history.Event
	snaps    []history.Snapshot
	batches  []int
	attempts int
	fail     func(attempt int) error
	block    chan struct{}
}

func (f *fakeStore) write(ctx context.Context) error {
	f.mu.Lock()
	f.attempts++
	attempt, fail, block := f.attempts, f.fail, f.block
	f.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if fail != nil {
		return fail(attempt)
	}
	return nil
}

func (f *fakeStore) Apply(ctx context.Context, events []history.Event) error {
	if err := f.write(ctx); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, events...)
	f.batches = append(f.batches, len(events))
	return nil
}

func (f *fakeStore) PutSnapshots(ctx context.Context, snaps []history.Snapshot) error {
	if err := f.write(ctx); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.snaps = append(f.snaps, snaps...)
	return nil
}

func (f *fakeStore) ids() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []string
	for _, e := range f.events {
		ids = append(ids, e.SessionID)
	}
	return ids
}

func event(i int) history.Event {
	return history.Event{Kind: history.Open, SessionID: fmt.Sprintf("s%04d", i), UserID: "u", StageArn: "arn:s",
		At: time.Unix(int64(i), 0)}
}

func ids(from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, event(i).SessionID)
	}
	return out
}

// countingHandler counts log records by level.
type countingHandler struct {
	warn, errs atomic.Int64
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	switch {
	case r.Level >= slog.LevelError:
		h.errs.Add(1)
	case r.Level >= slog.LevelWarn:
		h.warn.Add(1)
	}
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

func newWriter(t *testing.T, st history.Store, cfg history.WriterConfig) (*history.Writer, *countingHandler) {
	t.Helper()
	h := &countingHandler{}
	w := history.NewWriter(st, cfg, slog.New(h))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = w.Close(ctx) // tests that care close it themselves
	})
	return w, h
}

func closeWriter(t *testing.T, w *history.Writer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := w.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// eventually polls cond for up to 5 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWriterFlushes(t *testing.T) {
	tests := []struct {
		name        string
		cfg         history.WriterConfig
		record      int
		wantBatches []int // written before Close
		wantAfter   []int // written by Close
	}{
		{"on the interval", history.WriterConfig{FlushInterval: 20 * time.Millisecond}, 3, []int{3}, nil},
		{"full batches at once", history.WriterConfig{FlushInterval: time.Hour, BatchSize: 10}, 25, []int{10, 10}, []int{5}},
		{"the rest on close", history.WriterConfig{FlushInterval: time.Hour, BatchSize: 10}, 7, nil, []int{7}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := &fakeStore{}
			w, _ := newWriter(t, st, tt.cfg)
			for i := range tt.record {
				w.Record(event(i))
			}
			want := sum(tt.wantBatches)
			eventually(t, "the batches", func() bool { return len(st.ids()) == want })
			time.Sleep(50 * time.Millisecond) // and no more
			st.mu.Lock()
			before := slices.Clone(st.batches)
			st.mu.Unlock()
			if !slices.Equal(before, tt.wantBatches) {
				t.Errorf("batches before Close %v, want %v", before, tt.wantBatches)
			}
			if got := w.Len(); got != tt.record-want {
				t.Errorf("Len %d, want %d", got, tt.record-want)
			}
			closeWriter(t, w)
			if got := st.batches[len(before):]; !slices.Equal(got, tt.wantAfter) {
				t.Errorf("batches written by Close %v, want %v", got, tt.wantAfter)
			}
			if got := st.ids(); !slices.Equal(got, ids(0, tt.record)) {
				t.Errorf("written %v, want every event in order", got)
			}
			if w.Len() != 0 || w.Dropped() != 0 {
				t.Errorf("Len %d, Dropped %d after Close; want 0, 0", w.Len(), w.Dropped())
			}
		})
	}
}

func sum(xs []int) int {
	n := 0
	for _, x := range xs {
		n += x
	}
	return n
}

// With the store stuck, Record neither blocks nor grows the buffer past its
// size: it drops, counts and logs once a second, though the writer's
// goroutine hangs in the write.
func TestWriterFullBufferDrops(t *testing.T) {
	st := &fakeStore{block: make(chan struct{})}
	w, logs := newWriter(t, st, history.WriterConfig{Buffer: 5, BatchSize: 2, FlushInterval: time.Millisecond})
	start := time.Now()
	for i := range 1000 {
		w.Record(event(i))
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("1000 Records took %v with the store stuck", d)
	}
	if w.Len() != 5 || w.Dropped() != 995 {
		t.Errorf("Len %d, Dropped %d; want 5, 995", w.Len(), w.Dropped())
	}
	time.Sleep(100 * time.Millisecond) // many flush intervals
	if n := logs.warn.Load(); n != 1 {
		t.Errorf("%d warnings for the drops within 100 ms, want 1", n)
	}
	close(st.block)
	closeWriter(t, w)
	if got := st.ids(); !slices.Equal(got, ids(0, 5)) {
		t.Errorf("written %v, want the first 5", got)
	}
}

// WaitRoom holds a caller with many records until they fit: it waits while
// the store is stuck, gives up with its context, and returns once the
// buffer drains.
func TestWriterWaitRoom(t *testing.T) {
	st := &fakeStore{block: make(chan struct{})}
	w, _ := newWriter(t, st, history.WriterConfig{Buffer: 10, BatchSize: 5, FlushInterval: time.Millisecond})
	for i := range 8 {
		w.Record(event(i))
	}
	short, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := w.WaitRoom(short, 5); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitRoom(5) with 8 of 10 unwritten and the store stuck = %v, want the context's deadline", err)
	}
	if n, err := w.WaitRoom(t.Context(), 2); err != nil || n != 2 {
		t.Fatalf("WaitRoom(2) with room for 2 = %d, %v; want 2", n, err)
	}
	close(st.block)
	// More than the buffer holds: its whole size, once it is empty.
	if n, err := w.WaitRoom(t.Context(), 25); err != nil || n != 10 {
		t.Fatalf("WaitRoom(25) with a buffer of 10, once the store writes = %d, %v; want 10", n, err)
	}
	if w.Len() != 0 || w.Dropped() != 0 {
		t.Errorf("Len %d, Dropped %d after the wait; want 0, 0", w.Len(), w.Dropped())
	}
	closeWriter(t, w)
	if _, err := w.WaitRoom(t.Context(), 1); err == nil {
		t.Error("WaitRoom on a closed writer: no error")
	}
}

// A store that fails for a while loses nothing that fit in the buffer,
// even with records arriving meanwhile; a batch is never split or
// reordered by its retries.
func TestWriterRetries(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	st := &fakeStore{fail: func(int) error {
		if down.Load() {
			return errors.New("connection refused")
		}
		return nil
	}}
	w, logs := newWriter(t, st, history.WriterConfig{Buffer: 100, BatchSize: 10, FlushInterval: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
	for i := range 100 {
		w.Record(event(i))
	}
	for i := range 100 {
		w.RecordSnapshots(history.Snapshot{StageArn: "arn:s", At: time.Unix(int64(i), 0)})
	}
	eventually(t, "retries", func() bool {
		st.mu.Lock()
		defer st.mu.Unlock()
		return st.attempts > 10
	})
	if len(st.ids()) != 0 || w.Len() != 100 || w.Dropped() != 100 {
		t.Errorf("while down: %d written, Len %d, Dropped %d; want 0, 100, 100 (the snapshots past the buffer)", len(st.ids()), w.Len(), w.Dropped())
	}
	if logs.warn.Load() == 0 {
		t.Error("no warning while the store failed")
	}
	if err := w.Failing(); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("Failing while down = %v, want the store's error", err)
	}
	down.Store(false)
	eventually(t, "a write after the outage", func() bool { return w.Failing() == nil })
	closeWriter(t, w)
	if got := st.ids(); !slices.Equal(got, ids(0, 100)) {
		t.Errorf("written %v, want all 100 in order", got)
	}
}

// Events and snapshots share the buffer and batches; a batch whose events
// were written is not written again when its snapshots fail.
func TestWriterSnapshots(t *testing.T) {
	st := &fakeStore{}
	st.fail = func(attempt int) error {
		if attempt == 2 { // the first PutSnapshots
			return errors.New("timeout")
		}
		return nil
	}
	w, _ := newWriter(t, st, history.WriterConfig{FlushInterval: time.Hour, MaxBackoff: time.Millisecond})
	w.Record(event(0))
	w.RecordSnapshots(history.Snapshot{StageArn: "arn:a", At: time.Unix(1, 0)}, history.Snapshot{StageArn: "arn:b", At: time.Unix(1, 0)})
	closeWriter(t, w)
	if len(st.events) != 1 || len(st.snaps) != 2 || st.attempts != 3 {
		t.Errorf("%d events, %d snapshots in %d attempts; want 1, 2 in 3", len(st.events), len(st.snaps), st.attempts)
	}
}

// What the store refuses as invalid is dropped, not retried forever.
func TestWriterInvalid(t *testing.T) {
	st := &fakeStore{fail: func(attempt int) error {
		if attempt == 1 {
			return fmt.Errorf("wrapped: %w", history.ErrInvalid)
		}
		return nil
	}}
	w, logs := newWriter(t, st, history.WriterConfig{BatchSize: 3, FlushInterval: time.Hour})
	w.Record(history.Event{Kind: history.Open}) // Validate refuses it
	w.RecordSnapshots(history.Snapshot{})       // and this
	for i := range 4 {
		w.Record(event(i))
	}
	closeWriter(t, w)
	if got := st.ids(); !slices.Equal(got, ids(3, 4)) {
		t.Errorf("written %v, want the event after the refused batch", got)
	}
	if w.Dropped() != 5 || logs.errs.Load() != 1 {
		t.Errorf("Dropped %d, %d errors logged; want 5, 1", w.Dropped(), logs.errs.Load())
	}
}

// Close with the store down gives up when its context ends, cancelling the
// attempt in progress.
func TestWriterCloseGivesUp(t *testing.T) {
	st := &fakeStore{block: make(chan struct{})} // never answers
	w, _ := newWriter(t, st, history.WriterConfig{FlushInterval: time.Millisecond})
	w.Record(event(0))
	w.Record(event(1))
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := w.Close(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close: %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v", d)
	}
	if w.Len() != 2 {
		t.Errorf("Len %d after giving up, want 2", w.Len())
	}
	w.Record(event(2))
	if w.Dropped() != 1 {
		t.Errorf("Dropped %d after a Record past Close, want 1", w.Dropped())
	}
	if err := w.Close(t.Context()); err != nil {
		t.Errorf("Close again: %v", err)
	}
}

// Records from many goroutines, with batches being written meanwhile:
// each is written once (run with -race).
func TestWriterConcurrentRecords(t *testing.T) {
	st := &fakeStore{}
	w, _ := newWriter(t, st, history.WriterConfig{Buffer: 100_000, BatchSize: 64, FlushInterval: time.Millisecond})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				w.Record(event(g*500 + i))
			}
		})
	}
	wg.Wait()
	closeWriter(t, w)
	got := st.ids()
	slices.Sort(got)
	if !slices.Equal(got, ids(0, 4000)) {
		t.Errorf("%d events written, want the 4000 recorded, once each", len(got))
	}
}
