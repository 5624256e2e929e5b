package fleet

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// failsafe bounds every wait on a channel, so that a broken queue fails the
// test instead of hanging it; nothing waits for it to pass.
const failsafe = 10 * time.Second

// manualClock is a queueClock that moves only when told to.
type manualClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*manualTimer
}

type manualTimer struct {
	at time.Time
	f  func()
}

func newManualClock() *manualClock {
	return &manualClock{now: time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)}
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *manualClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &manualTimer{at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		i := slices.Index(c.timers, t)
		if i < 0 {
			return false
		}
		c.timers = slices.Delete(c.timers, i, i+1)
		return true
	}
}

// advance moves the clock by d and, before returning, runs the timers that
// came due, earliest first, so a test sees their effect at once.
func (c *manualClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []*manualTimer
	c.timers = slices.DeleteFunc(c.timers, func(t *manualTimer) bool {
		if t.at.After(c.now) {
			return false
		}
		due = append(due, t)
		return true
	})
	c.mu.Unlock()
	slices.SortStableFunc(due, func(a, b *manualTimer) int { return a.at.Compare(b.at) })
	for _, t := range due {
		t.f()
	}
}

// pending is the number of timers set and not yet run or stopped.
func (c *manualClock) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

func newTestQueue(t *testing.T) (*workQueue, *manualClock) {
	t.Helper()
	clk := newManualClock()
	return newWorkQueue(clk, nil), clk
}

// len is the number of keys ready to be handed out, not counting those
// waiting or being processed.
func (q *workQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.ready)
}

// isWaiting reports whether key waits for a time.
func (q *workQueue) isWaiting(key string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	_, ok := q.waitingBy[key]
	return ok
}

// isIdle reports whether key is nowhere in the queue: nothing can hand it
// to a worker any more unless it is added again.
func (q *workQueue) isIdle(key string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	_, dirty := q.dirty[key]
	_, processing := q.processing[key]
	_, waiting := q.waitingBy[key]
	return !dirty && !processing && !waiting
}

func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(failsafe):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// mustGet takes the next key, which the test expects to be ready.
func mustGet(t *testing.T, q *workQueue) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), failsafe)
	defer cancel()
	key, ok := q.get(ctx)
	if !ok {
		t.Fatal("get: no key")
	}
	return key
}

// startRun runs q with workers until the test ends, reporting each
// reconcile on the returned channel.
func startRun(t *testing.T, q *workQueue, workers int, reconcile func(context.Context, string) (time.Duration, error)) <-chan error {
	t.Helper()
	finished := make(chan error, 100)
	q.onReconcile = func(_ string, _ time.Duration, err error) { finished <- err }
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		q.run(ctx, workers, reconcile)
	}()
	t.Cleanup(func() {
		cancel()
		recv(t, stopped, "run to return once its context ended")
	})
	return finished
}

func TestQueueDedup(t *testing.T) {
	tests := []struct {
		name string
		add  func(q *workQueue)
		want []string
	}{
		{
			name: "one key",
			add: func(q *workQueue) {
				for range 1000 {
					q.add("a")
				}
			},
			want: []string{"a"},
		},
		{
			name: "two keys interleaved keep first-added order",
			add: func(q *workQueue) {
				for range 1000 {
					q.add("a")
					q.add("b")
				}
			},
			want: []string{"a", "b"},
		},
		{
			name: "concurrent adders",
			add: func(q *workQueue) {
				var wg sync.WaitGroup
				for range 10 {
					wg.Go(func() {
						for range 100 {
							q.add("a")
						}
					})
				}
				wg.Wait()
			},
			want: []string{"a"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, _ := newTestQueue(t)
			tt.add(q)
			if got := q.len(); got != len(tt.want) {
				t.Fatalf("len = %d, want %d", got, len(tt.want))
			}
			var got []string
			for range tt.want {
				key := mustGet(t, q)
				got = append(got, key)
				q.done(key)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
			if n := q.len(); n != 0 {
				t.Errorf("len after draining = %d, want 0", n)
			}
		})
	}
}

func TestQueueOneWorkerPerKey(t *testing.T) {
	q, _ := newTestQueue(t)
	var (
		mu        sync.Mutex
		active    int
		maxActive int
		calls     int
	)
	entered := make(chan int, 10)
	release := make(chan struct{})
	finished := startRun(t, q, 8, func(ctx context.Context, key string) (time.Duration, error) {
		mu.Lock()
		active++
		maxActive = max(maxActive, active)
		calls++
		n := calls
		mu.Unlock()
		entered <- n
		select {
		case <-release:
		case <-ctx.Done():
		}
		mu.Lock()
		active--
		mu.Unlock()
		return 0, nil
	})

	q.add("k")
	recv(t, entered, "first reconcile")
	// Seven idle workers are blocked in get while the key is re-added
	// from everywhere.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				q.add("k")
			}
		})
	}
	wg.Wait()
	if n := q.len(); n != 0 {
		t.Fatalf("len while the key is processed = %d, want 0: it must wait for done", n)
	}

	release <- struct{}{}
	if n := recv(t, entered, "reconcile of the re-add"); n != 2 {
		t.Fatalf("reconcile #%d, want #2", n)
	}
	release <- struct{}{}
	recv(t, finished, "first reconcile to finish")
	recv(t, finished, "second reconcile to finish")

	if !q.isIdle("k") {
		t.Error("key still queued after the re-add was processed: it would be processed a third time")
	}
	mu.Lock()
	defer mu.Unlock()
	if maxActive != 1 {
		t.Errorf("%d concurrent reconciles of one key, want 1", maxActive)
	}
	if calls != 2 {
		t.Errorf("%d reconciles, want 2", calls)
	}
}

// expectReadyWithin checks that key becomes ready no sooner than lo and no
// later than hi from now, moving clk to hi.
func expectReadyWithin(t *testing.T, q *workQueue, clk *manualClock, key string, lo, hi time.Duration) {
	t.Helper()
	clk.advance(lo)
	if q.len() != 0 || !q.isWaiting(key) {
		t.Fatalf("%s ready before %v", key, lo)
	}
	clk.advance(hi - lo)
	if q.len() != 1 {
		t.Fatalf("%s not ready by %v", key, hi)
	}
	if got := mustGet(t, q); got != key {
		t.Fatalf("got %s, want %s", got, key)
	}
	q.done(key)
}

// expectBackOff checks that key becomes ready after d, give or take the
// jitter.
func expectBackOff(t *testing.T, q *workQueue, clk *manualClock, key string, d time.Duration) {
	t.Helper()
	// A microsecond of slack for the rounding of the jitter.
	lo := d - time.Duration(float64(d)*retryJitter) - time.Microsecond
	hi := d + time.Duration(float64(d)*retryJitter)
	expectReadyWithin(t, q, clk, key, lo, hi)
}

func TestQueueBackOff(t *testing.T) {
	t.Run("doubles up to the cap", func(t *testing.T) {
		q, clk := newTestQueue(t)
		for n := 1; n <= 13; n++ {
			want := min(retryBase<<(n-1), retryMax)
			q.addRateLimited("k")
			if got := q.failures("k"); got != n {
				t.Fatalf("failures = %d, want %d", got, n)
			}
			expectBackOff(t, q, clk, "k", want)
		}
	})

	t.Run("forget resets", func(t *testing.T) {
		q, clk := newTestQueue(t)
		for range 5 {
			q.addRateLimited("k")
			clk.advance(retryMax * 2)
			q.done(mustGet(t, q))
		}
		q.forget("k")
		if got := q.failures("k"); got != 0 {
			t.Fatalf("failures after forget = %d, want 0", got)
		}
		q.addRateLimited("k")
		expectBackOff(t, q, clk, "k", retryBase)
	})

	t.Run("keys back off on their own", func(t *testing.T) {
		q, clk := newTestQueue(t)
		for range 10 {
			q.addRateLimited("slow")
			clk.advance(retryMax * 2)
			q.done(mustGet(t, q))
		}
		q.addRateLimited("slow")
		q.add("other")
		if got := mustGet(t, q); got != "other" {
			t.Fatalf("got %s, want other at once", got)
		}
		q.done("other")
		q.addRateLimited("fast")
		expectBackOff(t, q, clk, "fast", retryBase)
		if !q.isWaiting("slow") {
			t.Error("slow no longer waits for its own back-off")
		}
	})

	t.Run("jitter", func(t *testing.T) {
		q, _ := newTestQueue(t)
		seen := map[time.Duration]bool{}
		for range 100 {
			d := q.retryDelay(1)
			if d < retryBase*9/10-time.Microsecond || d > retryBase*11/10 {
				t.Fatalf("retryDelay(1) = %v, want %v ± 10%%", d, retryBase)
			}
			seen[d] = true
		}
		if len(seen) < 2 {
			t.Errorf("100 delays all %v: no jitter", seen)
		}
	})
}

func TestQueueAddAfter(t *testing.T) {
	const k = "k"
	tests := []struct {
		name    string
		add     func(q *workQueue)
		readyAt time.Duration
	}{
		{"after d", func(q *workQueue) { q.addAfter(k, time.Second) }, time.Second},
		{"earlier first wins", func(q *workQueue) {
			q.addAfter(k, time.Second)
			q.addAfter(k, 5*time.Second)
		}, time.Second},
		{"earlier second wins", func(q *workQueue) {
			q.addAfter(k, 5*time.Second)
			q.addAfter(k, time.Second)
		}, time.Second},
		{"add makes it immediate", func(q *workQueue) {
			q.addAfter(k, 5*time.Second)
			q.add(k)
		}, 0},
		{"ready is not postponed", func(q *workQueue) {
			q.add(k)
			q.addAfter(k, 5*time.Second)
		}, 0},
		{"zero is add", func(q *workQueue) { q.addAfter(k, 0) }, 0},
		{"negative is add", func(q *workQueue) { q.addAfter(k, -time.Second) }, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, clk := newTestQueue(t)
			tt.add(q)
			if n := clk.pending(); n > 1 {
				t.Errorf("%d timers set, want at most one", n)
			}
			if tt.readyAt > 0 {
				expectReadyWithin(t, q, clk, k, tt.readyAt-time.Nanosecond, tt.readyAt)
			} else {
				if q.len() != 1 {
					t.Fatal("not ready at once")
				}
				q.done(mustGet(t, q))
			}
			clk.advance(time.Minute)
			if n := q.len(); n != 0 {
				t.Errorf("len = %d a minute later, want 0: handed out twice", n)
			}
			if n := clk.pending(); n != 0 {
				t.Errorf("%d timers left, want 0", n)
			}
		})
	}
}

func TestQueueAddAfterDueOrder(t *testing.T) {
	q, clk := newTestQueue(t)
	q.addAfter("c", 3*time.Second)
	q.addAfter("a", time.Second)
	q.addAfter("b", 2*time.Second)
	var got []string
	for range 3 {
		clk.advance(time.Second)
		if n := q.len(); n != 1 {
			t.Fatalf("len = %d after %d s, want 1", n, len(got)+1)
		}
		got = append(got, mustGet(t, q))
	}
	if want := []string{"a", "b", "c"}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestQueueRequeueAfter(t *testing.T) {
	q, clk := newTestQueue(t)
	calls := make(chan int, 10)
	n := 0
	finished := startRun(t, q, 1, func(context.Context, string) (time.Duration, error) {
		n++ // one worker: no other goroutine touches n
		calls <- n
		if n == 1 {
			return 10 * time.Second, nil
		}
		return 0, nil
	})

	q.add("k")
	recv(t, calls, "first reconcile")
	recv(t, finished, "first reconcile to finish")
	clk.advance(10*time.Second - time.Nanosecond)
	if !q.isWaiting("k") || q.len() != 0 {
		t.Fatal("requeued before requeueAfter")
	}
	clk.advance(time.Nanosecond)
	if got := recv(t, calls, "requeued reconcile"); got != 2 {
		t.Fatalf("reconcile #%d, want #2", got)
	}
	recv(t, finished, "second reconcile to finish")
	if !q.isIdle("k") {
		t.Error("requeued although reconcile asked for nothing")
	}
}

func TestQueueReconcileErrors(t *testing.T) {
	errBoom := errors.New("boom")
	tests := []struct {
		name    string
		fail    func() error // first call; the second succeeds
		wantLog string
	}{
		{"error is retried", func() error { return errBoom }, "retrying"},
		{"panic is recovered and retried", func() error { panic("bug") }, "reconcile panicked"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newManualClock()
			var logs strings.Builder
			q := newWorkQueue(clk, slog.New(slog.NewTextHandler(&logs, nil)))
			calls := 0
			finished := startRun(t, q, 1, func(context.Context, string) (time.Duration, error) {
				calls++ // one worker: no other goroutine touches calls
				if calls == 1 {
					return 0, tt.fail()
				}
				return 0, nil
			})

			// One failure before this one: the back-off counts both.
			q.addRateLimited("k")
			q.add("k")
			if err := recv(t, finished, "first reconcile"); err == nil {
				t.Fatal("onReconcile got no error")
			}
			// The log is written before onReconcile, so reading it
			// here does not race.
			if !strings.Contains(logs.String(), tt.wantLog) {
				t.Errorf("log %q does not say %q", logs.String(), tt.wantLog)
			}
			if got := q.failures("k"); got != 2 {
				t.Errorf("failures = %d, want 2", got)
			}
			if !q.isWaiting("k") {
				t.Fatal("not waiting for a retry")
			}
			clk.advance(retryMax * 2)
			if err := recv(t, finished, "retry"); err != nil {
				t.Fatalf("retry: %v", err)
			}
			if got := q.failures("k"); got != 0 {
				t.Errorf("failures after success = %d, want 0", got)
			}
		})
	}
}

func TestQueueOnReconcile(t *testing.T) {
	q, clk := newTestQueue(t)
	errBoom := errors.New("boom")
	type report struct {
		key string
		d   time.Duration
		err error
	}
	reports := make(chan report, 1)
	q.onReconcile = func(key string, d time.Duration, err error) { reports <- report{key, d, err} }
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		q.run(ctx, 1, func(context.Context, string) (time.Duration, error) {
			clk.advance(3 * time.Second)
			return 0, errBoom
		})
	}()
	q.add("k")
	got := recv(t, reports, "report")
	if got.key != "k" || got.d != 3*time.Second || !errors.Is(got.err, errBoom) {
		t.Errorf("reported %+v, want k, 3s, %v", got, errBoom)
	}
	cancel()
	recv(t, ran, "run to return")
}

// TestQueueStops: the end of the context unblocks get and the workers.
func TestQueueStops(t *testing.T) {
	// synctest.Wait tells when get and the workers are blocked, so that
	// stopping is seen to unblock them.
	synctest.Test(t, func(t *testing.T) {
		q := newWorkQueue(nil, nil)
		ctx, cancel := context.WithCancel(t.Context())
		var got []bool
		var wg sync.WaitGroup
		wg.Go(func() {
			_, ok := q.get(ctx)
			got = append(got, ok)
		})
		wg.Go(func() {
			q.run(ctx, 4, func(context.Context, string) (time.Duration, error) { return 0, nil })
		})
		synctest.Wait()
		if got != nil {
			t.Fatal("get returned from an empty queue")
		}
		cancel()
		wg.Wait()
		if !slices.Equal(got, []bool{false}) {
			t.Errorf("get got ok %v, want [false]", got)
		}
	})
}

// A broadcast whose reconcile is slow (a drain, here 40 steps) must not
// hold up another broadcast, however often that one is added.
func TestQueueSlowKeyDoesNotHoldUpOthers(t *testing.T) {
	q, _ := newTestQueue(t)
	const steps = 40
	bigStarted := make(chan struct{})
	step := make(chan struct{})
	bigDone := make(chan struct{})
	stormDone := make(chan struct{})
	startRun(t, q, 2, func(ctx context.Context, key string) (time.Duration, error) {
		switch key {
		case "big":
			close(bigStarted)
			for range steps {
				select {
				case <-step:
				case <-ctx.Done():
					return 0, ctx.Err()
				}
			}
			close(bigDone)
		case "storm":
			stormDone <- struct{}{}
		}
		return 0, nil
	})

	q.add("big")
	recv(t, bigStarted, "big to start")
	for round := range 10 {
		q.add("storm")
		recv(t, stormDone, "storm while big runs")
		select {
		case <-bigDone:
			t.Fatalf("round %d: big finished before all its steps", round)
		default:
		}
		for range steps / 10 {
			step <- struct{}{}
		}
	}
	recv(t, bigDone, "big to finish")
}
