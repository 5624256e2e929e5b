package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/store"
)

// Leases are kept on the store's own clock (real time), so these tests
// sleep past short TTLs; the TTLs are long enough that the steps before
// the sleep finish well within them, even under -race on a loaded machine.
const leaseTTL = 300 * time.Millisecond

func acquire(t *testing.T, st store.Store, broadcast, name, holder string, ttl time.Duration) store.Lease {
	t.Helper()
	l, err := st.AcquireLease(testCtx(t), broadcast, name, holder, ttl)
	must(t, err, "AcquireLease(%s, %s) by %s", broadcast, name, holder)
	if l.Holder != holder || l.BroadcastID != broadcast || l.Name != name || l.Token <= 0 {
		t.Fatalf("AcquireLease by %s returned %+v", holder, l)
	}
	return l
}

func testLeases(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	a := acquire(t, st, bcA, "control", "one", time.Hour)

	held, err := st.AcquireLease(ctx, bcA, "control", "two", time.Hour)
	wantErr(t, err, store.ErrLeaseHeld, "AcquireLease by a second holder")
	if held.Holder != "one" || held.Token != a.Token {
		t.Fatalf("a held lease is reported as %+v, want holder one, token %d", held, a.Token)
	}

	renewed := acquire(t, st, bcA, "control", "one", time.Hour)
	if renewed.Token != a.Token {
		t.Fatalf("renewal changed the token from %d to %d", a.Token, renewed.Token)
	}

	// Other names and other broadcasts are other leases.
	other := acquire(t, st, bcA, "reconcile", "two", time.Hour)
	acquire(t, st, bcB, "control", "two", time.Hour)

	// A release with a stale token or by another holder does nothing.
	release(t, st, store.Lease{BroadcastID: bcA, Name: "control", Holder: "two", Token: a.Token})
	release(t, st, store.Lease{BroadcastID: bcA, Name: "control", Holder: "one", Token: a.Token + 100})
	_, err = st.AcquireLease(ctx, bcA, "control", "two", time.Hour)
	wantErr(t, err, store.ErrLeaseHeld, "AcquireLease after releases that must do nothing")

	// Holder two asked while one held it: one is told, once.
	if !release(t, st, a) {
		t.Fatal("ReleaseLease did not report that another holder wanted the lease")
	}
	if release(t, st, a) {
		t.Fatal("a second ReleaseLease reported the lease wanted")
	}
	b := acquire(t, st, bcA, "control", "two", time.Hour)
	if b.Token <= a.Token || b.Token <= other.Token {
		t.Fatalf("new grant has token %d, want more than every earlier grant of the broadcast (%d, %d)", b.Token, a.Token, other.Token)
	}
	// Nobody asked for b (nor for the other lease) meanwhile.
	if release(t, st, b) || release(t, st, other) {
		t.Fatal("ReleaseLease reported a lease wanted that nobody asked for")
	}
}

// release releases l and returns whether it was wanted.
func release(t *testing.T, st store.Store, l store.Lease) bool {
	t.Helper()
	wanted, err := st.ReleaseLease(testCtx(t), l)
	must(t, err, "ReleaseLease %+v", l)
	return wanted
}

func testLeaseExpiry(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	a := acquire(t, st, bcA, "control", "one", leaseTTL)
	if _, err := st.AcquireLease(ctx, bcA, "control", "two", leaseTTL); !errors.Is(err, store.ErrLeaseHeld) {
		t.Fatalf("AcquireLease within the TTL: %v, want ErrLeaseHeld", err)
	}
	time.Sleep(2 * leaseTTL)
	b := acquire(t, st, bcA, "control", "two", time.Hour)
	if b.Token <= a.Token {
		t.Fatalf("grant after expiry has token %d, want more than %d", b.Token, a.Token)
	}
	// The first holder renewing too late finds the lease taken.
	if _, err := st.AcquireLease(ctx, bcA, "control", "one", leaseTTL); !errors.Is(err, store.ErrLeaseHeld) {
		t.Fatalf("late renewal: %v, want ErrLeaseHeld", err)
	}
	// The lost lease's fence refuses its writes.
	stale := store.WithFence(ctx, a)
	if err := st.PutHost(stale, store.Host{BroadcastID: bcA, ParticipantID: "p1", JoinedAt: at(0)}); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("PutHost with an expired lease's fence: %v, want ErrFenced", err)
	}
	if _, err := st.GetHost(ctx, bcA, "p1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a refused write left a host behind: %v", err)
	}
}

// testFence checks every fenced write: with the live lease it is made, with
// a lost one it is refused and changes nothing.
func testFence(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	putStages(t, st, stageRec("s1", bcA, 10, true, 0), stageRec("s2", bcA, 10, true, time.Second))
	old := acquire(t, st, bcA, "control", "one", time.Hour)
	release(t, st, old)
	cur := acquire(t, st, bcA, "control", "two", time.Hour)
	live, stale := store.WithFence(ctx, cur), store.WithFence(ctx, old)
	// A fence on another broadcast does not apply.
	otherB := store.WithFence(ctx, store.Lease{BroadcastID: bcB, Name: "control", Holder: "x", Token: 1})
	// Seats are never fenced: the join path holds no lease. The seat and
	// the demand are also there for a refused DeleteBroadcast to keep.
	if _, err := st.ReserveSeat(stale, seatReq(bcA, "v1", "")); err != nil {
		t.Fatalf("ReserveSeat with a stale fence: %v", err)
	}
	must(t, st.PutDemand(ctx, bcA, store.Demand{Instance: "i1", Waiting: 1, At: at(0)}), "PutDemand")

	host := store.Host{BroadcastID: bcA, ParticipantID: "p1", JoinedAt: at(0)}
	repl := store.Replication{BroadcastID: bcA, ParticipantID: "p1", SourceArn: arn("s1"), DestArn: arn("s2"), State: store.ReplActive}
	writes := []struct {
		name string
		do   func(c context.Context) error
	}{
		{"CreateBroadcast", func(c context.Context) error {
			_, err := st.CreateBroadcast(c, store.Broadcast{ID: bcA, OriginArn: arn("s1"), CreatedAt: at(0)})
			return err
		}},
		{"PutBroadcast", func(c context.Context) error {
			return st.PutBroadcast(c, store.Broadcast{ID: bcA, OriginArn: arn("s1"), CreatedAt: at(0), IdleSince: at(time.Second)})
		}},
		{"PutStage", func(c context.Context) error { return st.PutStage(c, stageRec("s3", bcA, 10, true, 2*time.Second)) }},
		{"SetSeatable", func(c context.Context) error { return st.SetSeatable(c, arn("s2"), false) }},
		{"PutHost", func(c context.Context) error { return st.PutHost(c, host) }},
		{"PutReplication", func(c context.Context) error { return st.PutReplication(c, repl) }},
		{"DeleteReplication", func(c context.Context) error { return st.DeleteReplication(c, bcA, "p1", arn("s2")) }},
		{"DeleteHost", func(c context.Context) error { return st.DeleteHost(c, bcA, "p1") }},
		{"DeleteStage", func(c context.Context) error { _, err := st.DeleteStage(c, arn("s3")); return err }},
		{"DropSeats", func(c context.Context) error { _, err := st.DropSeats(c, bcA, 1); return err }},
		{"DeleteBroadcast", func(c context.Context) error { _, err := st.DeleteBroadcast(c, bcA); return err }},
	}
	for _, w := range writes {
		before := snapshot(t, st, bcA)
		if err := w.do(stale); !errors.Is(err, store.ErrFenced) {
			t.Fatalf("%s with a lost lease's fence: %v, want ErrFenced", w.name, err)
		}
		if after := snapshot(t, st, bcA); after != before {
			t.Fatalf("%s refused but the broadcast changed:\nbefore %s\nafter  %s", w.name, before, after)
		}
		must(t, w.do(live), "%s with the live lease's fence", w.name)
	}
	// Unfenced writes and writes fenced for another broadcast go through.
	must(t, st.PutHost(ctx, host), "PutHost without a fence")
	must(t, st.PutHost(otherB, host), "PutHost with another broadcast's fence")
}

// snapshot renders what a broadcast holds, to compare before and after.
func snapshot(t *testing.T, st store.Store, broadcast string) string {
	t.Helper()
	ctx := testCtx(t)
	b, berr := st.GetBroadcast(ctx, broadcast)
	stages, err := st.ListStages(ctx, broadcast)
	must(t, err, "ListStages")
	hosts, err := st.ListHosts(ctx, broadcast)
	must(t, err, "ListHosts")
	reps, err := st.ListReplications(ctx, broadcast)
	must(t, err, "ListReplications")
	demand, err := st.ListDemand(ctx, broadcast, time.Time{})
	must(t, err, "ListDemand")
	return fmt.Sprintf("broadcast %v %v; stages %v; hosts %v; replications %v; seats %v; demand %v",
		normBroadcast(b), berr != nil, normAll(stages, normStage), normAll(hosts, normHost), normAll(reps, normRepl),
		normAll(listSeats(t, st, broadcast), normSeat), normAll(demand, normDemand))
}

// testLeaseStorm: many holders race for one lease, again and again; each
// round exactly one wins, and tokens only grow.
func testLeaseStorm(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	const holders, rounds = 32, 10
	var last int64
	for round := range rounds {
		var winners atomic.Int64
		var mu sync.Mutex
		var won store.Lease
		start(holders, func(i int) {
			l, err := st.AcquireLease(ctx, bcA, "control", fmt.Sprintf("holder-%d", i), time.Hour)
			switch {
			case err == nil:
				winners.Add(1)
				mu.Lock()
				won = l
				mu.Unlock()
			case !errors.Is(err, store.ErrLeaseHeld):
				t.Errorf("round %d, holder %d: %v", round, i, err)
			}
		})
		if winners.Load() != 1 {
			t.Fatalf("round %d: %d holders got the lease, want 1", round, winners.Load())
		}
		if won.Token <= last {
			t.Fatalf("round %d: token %d after %d", round, won.Token, last)
		}
		last = won.Token
		release(t, st, won)
	}
}

func testDemand(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	put := func(b string, d store.Demand) {
		t.Helper()
		must(t, st.PutDemand(ctx, b, d), "PutDemand %s %s", b, d.Instance)
	}
	put(bcA, store.Demand{Instance: "i2", Waiting: 3, JoinRate: 1.5, At: at(10 * time.Second)})
	put(bcA, store.Demand{Instance: "i1", Waiting: 7, JoinRate: 20, At: at(9 * time.Second)})
	put(bcA, store.Demand{Instance: "i3", Waiting: 100, At: at(time.Second)})
	put(bcB, store.Demand{Instance: "i1", Waiting: 1, At: at(10 * time.Second)})
	// A later report replaces the instance's earlier one.
	put(bcA, store.Demand{Instance: "i1", Waiting: 8, JoinRate: 25, At: at(10 * time.Second)})

	got, err := st.ListDemand(ctx, bcA, at(5*time.Second))
	must(t, err, "ListDemand")
	want := []store.Demand{
		{Instance: "i1", Waiting: 8, JoinRate: 25, At: at(10 * time.Second)},
		{Instance: "i2", Waiting: 3, JoinRate: 1.5, At: at(10 * time.Second)},
	}
	eqList(t, "demand since 5s", got, want, normDemand)
	got, err = st.ListDemand(ctx, bcA, at(11*time.Second))
	must(t, err, "ListDemand")
	eqList(t, "demand since 11s", got, nil, normDemand)
}
