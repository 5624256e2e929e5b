// Package storetest is the conformance suite every store.Store must pass:
// the memory store now, the Redis store later, with the same expectations.
//
// What it holds implementations to, beyond the comments of store.Store:
//
//   - Lists are per broadcast and ordered: ListBroadcasts by ID; ListStages
//     by CreatedAt, then ARN; ListHosts by JoinedAt, then ParticipantID
//     (fleet's Publisher relies on it); ListReplications by DestArn, then
//     ParticipantID; ListSeats by TakenAt, then UserID. Seats that
//     DeleteStage, DeleteBroadcast or ExpireSeats return may come in any
//     order.
//   - A seat's lease ends at ExpiresAt: ExpireSeats(now) frees the seats
//     whose ExpiresAt is not after now.
//   - ReserveSeat asked for a stage answers ErrNotFound for an unknown stage
//     or one of another broadcast, ErrNotEligible for one that is not
//     seatable, ErrFull for a full one; asked for none it answers ErrNotLive
//     when the broadcast has no seatable stage and ErrFull when they are all
//     full. A viewer that has a seat in the broadcast gets that seat back,
//     renewed, whatever it asks for. A join asked for no stage takes
//     store.Fuller's first stage with room; of a store that groups stages
//     (Groups), the first such stage of the viewer's home group if it has
//     one, else of any group.
//   - Times are kept to the millisecond at least; the suite uses whole
//     milliseconds and compares instants, not locations.
//   - Leases: one holder at a time per (broadcast, name); a grant's token is
//     above every earlier grant's of the broadcast; a fenced write made
//     after its lease was lost is refused with ErrFenced and changes
//     nothing.
//   - No stage ever holds more seats than its capacity, and a stage's Seats
//     always equals the number of seats ListSeats shows on it, whatever the
//     concurrency.
//   - FirstSeen keeps at most the store's limit of event ids: past it, the
//     ids closest to expiry are forgotten first, the one just recorded
//     included. Event ids of 256 bytes are told apart by their last byte.
package storetest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stagefleet/stagefleet/internal/store"
)

// Groups describes a store that splits a broadcast's stages into groups
// (the Redis store's seat groups): a join takes store.Fuller's first stage
// with room of its viewer's home group if it has room, else of any group
// that has.
type Groups struct {
	// Of answers the group of a stage of st.
	Of func(t *testing.T, st store.Store, arn string) int
	// Home answers the group a join of user looks in first.
	Home func(user string) int
}

// Run runs the suite. Every subtest gets a store of its own from newStore,
// empty, and closes it when it ends (checking Close's error): newStore must
// not close it itself. The store is to remember at most eventLimit event
// ids at once: store.EventLogLimit, or fewer for the test of that limit.
// groups, if not nil, says how the store groups stages; nil is one group.
func Run(t *testing.T, newStore func(t *testing.T, eventLimit int) store.Store, groups *Groups) {
	openLimited := func(t *testing.T, eventLimit int) store.Store {
		t.Helper()
		st := newStore(t, eventLimit)
		if st == nil {
			t.Fatal("newStore returned nil")
		}
		t.Cleanup(func() {
			if err := st.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return st
	}
	open := func(t *testing.T) store.Store {
		t.Helper()
		return openLimited(t, store.EventLogLimit)
	}
	// Each test gets a store; those given open make one per case.
	type test struct {
		name  string
		run   func(t *testing.T, st store.Store)
		cases func(t *testing.T, open func(*testing.T) store.Store)
		// eventLimit, if not 0, replaces store.EventLogLimit.
		eventLimit int
	}
	tests := []test{
		{name: "Broadcasts", run: testBroadcasts},
		{name: "PutBroadcast", run: testPutBroadcast},
		{name: "DeleteBroadcast", run: testDeleteBroadcast},
		{name: "Stages", run: testStages},
		{name: "SetSeatable", run: testSetSeatable},
		{name: "DeleteStage", run: testDeleteStage},
		{name: "Hosts", run: testHosts},
		{name: "Replications", run: testReplications},
		{name: "ReserveSeat/NotLive", cases: testReserveNotLive},
		{name: "ReserveSeat/Full", run: testReserveFull},
		{name: "ReserveSeat/FullestFirst", cases: func(t *testing.T, open func(*testing.T) store.Store) {
			testReserveFullestFirst(t, open, groups)
		}},
		{name: "ReserveSeat/FollowsFuller", run: func(t *testing.T, st store.Store) { testReserveFollowsFuller(t, st, groups) }},
		{name: "ReserveSeat/AskedForStage", cases: testReserveAskedFor},
		{name: "ReserveSeat/SameUser", run: testReserveSameUser},
		{name: "ReserveSeat/SeatFields", run: testReserveSeatFields},
		{name: "ReserveSeat/StageStoppedServing", run: testReserveMovesOffUnseatable},
		{name: "RenewSeat", run: testRenewSeat},
		{name: "RenewSeat/Owner", cases: testRenewSeatOwner},
		{name: "ReleaseSeat", run: testReleaseSeat},
		{name: "ExpireSeats", run: testExpireSeats},
		{name: "ExpireBatch", run: testExpireBatch},
		{name: "ScanSeats", run: testScanSeats},
		{name: "GetSeat", run: testGetSeat},
		{name: "SeatTotals", run: testSeatTotals},
		{name: "DropSeats", run: testDropSeats},
		{name: "ReserveReplaces", run: testReserveReplaces},
		{name: "ListSeats", run: testListSeats},
		{name: "FirstSeen", run: testFirstSeen},
		{name: "FirstSeen/Limit", run: testEventLimit, eventLimit: smallEventLimit},
		{name: "ForgetEvent", run: testForgetEvent},
		{name: "Ping", run: testPing},
		{name: "Concurrent/ReserveStorm", run: testReserveStorm},
		{name: "Concurrent/SameUser", run: testConcurrentSameUser},
		{name: "Concurrent/ReserveRelease", run: testReserveReleaseStorm},
		{name: "Concurrent/LeaseExpiry", run: testLeaseExpiryStorm},
		{name: "Leases", run: testLeases},
		{name: "Leases/Expiry", run: testLeaseExpiry},
		{name: "Leases/Fence", run: testFence},
		{name: "Concurrent/LeaseStorm", run: testLeaseStorm},
		{name: "Demand", run: testDemand},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.cases != nil {
				tc.cases(t, open)
				return
			}
			tc.run(t, openLimited(t, cmp.Or(tc.eventLimit, store.EventLogLimit)))
		})
	}
}

const (
	bcA = "bc-a"
	bcB = "bc-b"
	// ttl is the lease of seats that the test does not expire.
	ttl = time.Hour
)

// base is the suite's clock: whole milliseconds, UTC, far from now.
var base = time.Date(2030, time.January, 2, 3, 4, 5, 0, time.UTC)

func at(d time.Duration) time.Time { return base.Add(d) }

func arn(id string) string { return "arn:aws:ivs:us-east-1:123456789012:stage/" + id }

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func must(t *testing.T, err error, format string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(format, args...), err)
	}
}

func wantErr(t *testing.T, err, target error, format string, args ...any) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: error %v, want %v", fmt.Sprintf(format, args...), err, target)
	}
}

// Records compare after dropping what a store need not keep: the monotonic
// clock reading and the location.
func tm(x time.Time) time.Time { return x.Round(0).UTC() }

func normStage(s store.Stage) store.Stage { s.CreatedAt = tm(s.CreatedAt); return s }

func normBroadcast(b store.Broadcast) store.Broadcast {
	b.CreatedAt, b.IdleSince, b.OriginReplacedAt = tm(b.CreatedAt), tm(b.IdleSince), tm(b.OriginReplacedAt)
	return b
}

func normHost(h store.Host) store.Host {
	h.JoinedAt, h.EventTime = tm(h.JoinedAt), tm(h.EventTime)
	return h
}

func normRepl(r store.Replication) store.Replication {
	r.UpdatedAt, r.EventTime = tm(r.UpdatedAt), tm(r.EventTime)
	return r
}

func normSeat(s store.Seat) store.Seat {
	// StageSeats is an answer of ReserveSeat, not part of the seat: tested
	// on its own.
	s.StageSeats, s.Replaced = 0, nil
	s.TakenAt, s.ExpiresAt = tm(s.TakenAt), tm(s.ExpiresAt)
	return s
}

func normDemand(d store.Demand) store.Demand { d.At = tm(d.At); return d }

func normAll[T any](xs []T, norm func(T) T) []T {
	out := make([]T, len(xs))
	for i, x := range xs {
		out[i] = norm(x)
	}
	return out
}

func eqList[T comparable](t *testing.T, what string, got, want []T, norm func(T) T) {
	t.Helper()
	g, w := normAll(got, norm), normAll(want, norm)
	if !slices.Equal(g, w) {
		t.Fatalf("%s:\n got  %+v\n want %+v", what, g, w)
	}
}

// eqSeatSet compares seats in any order.
func eqSeatSet(t *testing.T, what string, got, want []store.Seat) {
	t.Helper()
	key := func(a, b store.Seat) int {
		return strings.Compare(a.BroadcastID+"\x00"+a.UserID, b.BroadcastID+"\x00"+b.UserID)
	}
	g, w := normAll(got, normSeat), normAll(want, normSeat)
	slices.SortFunc(g, key)
	slices.SortFunc(w, key)
	if !slices.Equal(g, w) {
		t.Fatalf("%s:\n got  %+v\n want %+v", what, g, w)
	}
}

func stageRec(id, broadcast string, capacity int, seatable bool, created time.Duration) store.Stage {
	return store.Stage{
		Arn:         arn(id),
		BroadcastID: broadcast,
		Role:        store.RoleReplica,
		Name:        "stage-" + id,
		Capacity:    capacity,
		Seatable:    seatable,
		CreatedAt:   at(created),
	}
}

func putStages(t *testing.T, st store.Store, stages ...store.Stage) {
	t.Helper()
	for _, s := range stages {
		must(t, st.PutStage(testCtx(t), s), "PutStage %s", s.Arn)
	}
}

func seatReq(broadcast, user, stageArn string) store.SeatRequest {
	return store.SeatRequest{
		BroadcastID:   broadcast,
		UserID:        user,
		StageArn:      stageArn,
		ParticipantID: "p-" + user,
		Now:           base,
		TTL:           ttl,
	}
}

// owner names the owner of the seat seatReq asks for.
func owner(user string) store.SeatOwner { return store.SeatOwner{ParticipantID: "p-" + user} }

func reserve(t *testing.T, st store.Store, broadcast, user, stageArn string) store.Seat {
	t.Helper()
	seat, err := st.ReserveSeat(testCtx(t), seatReq(broadcast, user, stageArn))
	must(t, err, "ReserveSeat %s/%s on %q", broadcast, user, stageArn)
	return seat
}

func getStage(t *testing.T, st store.Store, arn string) store.Stage {
	t.Helper()
	s, err := st.GetStage(testCtx(t), arn)
	must(t, err, "GetStage %s", arn)
	return s
}

func wantSeats(t *testing.T, st store.Store, arn string, n int) {
	t.Helper()
	if got := getStage(t, st, arn).Seats; got != n {
		t.Fatalf("stage %s has %d seats, want %d", arn, got, n)
	}
}

func listSeats(t *testing.T, st store.Store, broadcast string) []store.Seat {
	t.Helper()
	seats, err := st.ListSeats(testCtx(t), broadcast)
	must(t, err, "ListSeats %s", broadcast)
	return seats
}

func seatUsers(seats []store.Seat) []string {
	var out []string
	for _, s := range seats {
		out = append(out, s.UserID)
	}
	slices.Sort(out)
	return out
}

// checkCounts holds every stage of the broadcast to its capacity and its
// Seats to the seats ListSeats shows on it; it returns the seats per stage.
func checkCounts(t *testing.T, st store.Store, broadcast string) map[string]int {
	t.Helper()
	ctx := testCtx(t)
	stages, err := st.ListStages(ctx, broadcast)
	must(t, err, "ListStages")
	seats := listSeats(t, st, broadcast)
	perStage := map[string]int{}
	users := map[string]bool{}
	for _, s := range seats {
		perStage[s.StageArn]++
		if users[s.UserID] {
			t.Errorf("user %s holds two seats in broadcast %s", s.UserID, broadcast)
		}
		users[s.UserID] = true
	}
	known := map[string]bool{}
	for _, s := range stages {
		known[s.Arn] = true
		if s.Seats > s.Capacity {
			t.Errorf("stage %s holds %d seats, over its capacity %d", s.Arn, s.Seats, s.Capacity)
		}
		if s.Seats != perStage[s.Arn] {
			t.Errorf("stage %s says %d seats, ListSeats shows %d", s.Arn, s.Seats, perStage[s.Arn])
		}
	}
	for a, n := range perStage {
		if !known[a] {
			t.Errorf("%d seats on stage %s, which is not a stage of broadcast %s", n, a, broadcast)
		}
	}
	return perStage
}

func testBroadcasts(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	bs, err := st.ListBroadcasts(ctx)
	must(t, err, "ListBroadcasts on an empty store")
	if len(bs) != 0 {
		t.Fatalf("empty store lists broadcasts %+v", bs)
	}
	_, err = st.GetBroadcast(ctx, bcA)
	wantErr(t, err, store.ErrNotFound, "GetBroadcast of an unknown broadcast")

	first := store.Broadcast{ID: bcA, OriginArn: arn("origin-1"), CreatedAt: at(time.Second)}
	got, err := st.CreateBroadcast(ctx, first)
	must(t, err, "CreateBroadcast")
	if normBroadcast(got) != normBroadcast(first) {
		t.Fatalf("CreateBroadcast returned %+v, want %+v", got, first)
	}

	second := store.Broadcast{ID: bcA, OriginArn: arn("origin-2"), CreatedAt: at(2 * time.Second)}
	got, err = st.CreateBroadcast(ctx, second)
	wantErr(t, err, store.ErrExists, "CreateBroadcast of an existing broadcast")
	if normBroadcast(got) != normBroadcast(first) {
		t.Fatalf("CreateBroadcast of an existing broadcast returned %+v, want the existing %+v", got, first)
	}
	got, err = st.GetBroadcast(ctx, bcA)
	must(t, err, "GetBroadcast")
	if normBroadcast(got) != normBroadcast(first) {
		t.Fatalf("GetBroadcast after a losing create = %+v, want %+v", got, first)
	}

	other := store.Broadcast{ID: "a-first", OriginArn: arn("origin-3"), CreatedAt: at(3 * time.Second)}
	_, err = st.CreateBroadcast(ctx, other)
	must(t, err, "CreateBroadcast of a second broadcast")
	bs, err = st.ListBroadcasts(ctx)
	must(t, err, "ListBroadcasts")
	eqList(t, "ListBroadcasts (by ID)", bs, []store.Broadcast{other, first}, normBroadcast)
}

func testStages(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	_, err := st.GetStage(ctx, arn("nope"))
	wantErr(t, err, store.ErrNotFound, "GetStage of an unknown stage")
	stages, err := st.ListStages(ctx, bcA)
	must(t, err, "ListStages of an empty store")
	if len(stages) != 0 {
		t.Fatalf("empty store lists stages %+v", stages)
	}

	late := stageRec("late", bcA, 10, true, 2*time.Second)
	late.Role = store.RoleOrigin
	late.Seats = 7 // not the store's to take: a new stage has no seats
	b2 := stageRec("b-tied", bcA, 10, false, time.Second)
	a2 := stageRec("a-tied", bcA, 10, true, time.Second)
	a2.Role = store.RoleManual
	elsewhere := stageRec("elsewhere", bcB, 10, true, 0)
	putStages(t, st, late, b2, a2, elsewhere)

	got := getStage(t, st, late.Arn)
	wantLate := late
	wantLate.Seats = 0
	if normStage(got) != normStage(wantLate) {
		t.Fatalf("GetStage = %+v, want %+v (a new stage has 0 seats)", got, wantLate)
	}

	stages, err = st.ListStages(ctx, bcA)
	must(t, err, "ListStages")
	wantLate.Seats = 0
	eqList(t, "ListStages (by CreatedAt, then ARN)", stages, []store.Stage{a2, b2, wantLate}, normStage)
	stages, err = st.ListStages(ctx, bcB)
	must(t, err, "ListStages of the other broadcast")
	eqList(t, "ListStages of the other broadcast", stages, []store.Stage{elsewhere}, normStage)
	stages, err = st.ListStages(ctx, "no-such-broadcast")
	must(t, err, "ListStages of an unknown broadcast")
	if len(stages) != 0 {
		t.Fatalf("unknown broadcast lists stages %+v", stages)
	}

	// PutStage updates the record but keeps the seats it holds.
	reserve(t, st, bcA, "u1", late.Arn)
	reserve(t, st, bcA, "u2", late.Arn)
	updated := late
	updated.Name = "renamed"
	updated.Capacity = 20
	updated.Seats = 0
	must(t, st.PutStage(ctx, updated), "PutStage update")
	got = getStage(t, st, late.Arn)
	wantUpdated := updated
	wantUpdated.Seats = 2
	if normStage(got) != normStage(wantUpdated) {
		t.Fatalf("after PutStage with Seats 0: %+v, want %+v (seats kept)", got, wantUpdated)
	}
	updated.Seats = 100
	must(t, st.PutStage(ctx, updated), "PutStage update")
	wantSeats(t, st, late.Arn, 2)
	checkCounts(t, st, bcA)
}

func testSetSeatable(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	wantErr(t, st.SetSeatable(ctx, arn("nope"), true), store.ErrNotFound, "SetSeatable of an unknown stage")

	s := stageRec("s", bcA, 5, false, 0)
	putStages(t, st, s)
	for _, seatable := range []bool{true, true, false, false, true} {
		must(t, st.SetSeatable(ctx, s.Arn, seatable), "SetSeatable %v", seatable)
		got := getStage(t, st, s.Arn)
		want := s
		want.Seatable = seatable
		want.Seats = got.Seats
		if normStage(got) != normStage(want) {
			t.Fatalf("after SetSeatable(%v): %+v, want %+v", seatable, got, want)
		}
	}
	reserve(t, st, bcA, "u1", "")
	must(t, st.SetSeatable(ctx, s.Arn, false), "SetSeatable false")
	wantSeats(t, st, s.Arn, 1) // seated viewers stay
	_, err := st.ReserveSeat(ctx, seatReq(bcA, "u2", ""))
	wantErr(t, err, store.ErrNotLive, "ReserveSeat once the only stage is not seatable")
}

func testDeleteStage(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	_, err := st.DeleteStage(ctx, arn("nope"))
	wantErr(t, err, store.ErrNotFound, "DeleteStage of an unknown stage")

	s1 := stageRec("s1", bcA, 10, true, 0)
	s2 := stageRec("s2", bcA, 10, true, time.Second)
	s3 := stageRec("s3", bcB, 10, true, 0)
	empty := stageRec("empty", bcA, 10, false, 0)
	putStages(t, st, s1, s2, s3, empty)
	u1 := reserve(t, st, bcA, "u1", s1.Arn)
	u2 := reserve(t, st, bcA, "u2", s1.Arn)
	u3 := reserve(t, st, bcA, "u3", s2.Arn)
	u1b := reserve(t, st, bcB, "u1", s3.Arn)

	freed, err := st.DeleteStage(ctx, s1.Arn)
	must(t, err, "DeleteStage")
	eqSeatSet(t, "DeleteStage returns the stage's seats", freed, []store.Seat{u1, u2})
	_, err = st.GetStage(ctx, s1.Arn)
	wantErr(t, err, store.ErrNotFound, "GetStage of a deleted stage")
	stages, err := st.ListStages(ctx, bcA)
	must(t, err, "ListStages")
	for _, s := range stages {
		if s.Arn == s1.Arn {
			t.Fatalf("ListStages still lists the deleted stage")
		}
	}
	eqList(t, "seats of the broadcast after DeleteStage", listSeats(t, st, bcA), []store.Seat{u3}, normSeat)
	eqList(t, "seats of another broadcast after DeleteStage", listSeats(t, st, bcB), []store.Seat{u1b}, normSeat)
	wantSeats(t, st, s2.Arn, 1)
	wantSeats(t, st, s3.Arn, 1)
	_, err = st.ReleaseSeat(ctx, bcA, "u1")
	wantErr(t, err, store.ErrNotFound, "ReleaseSeat of a seat freed by DeleteStage")
	_, err = st.RenewSeat(ctx, bcA, "u2", owner("u2"), base, ttl)
	wantErr(t, err, store.ErrNotFound, "RenewSeat of a seat freed by DeleteStage")

	// The viewer can take a new seat, with a new participant id.
	req := seatReq(bcA, "u1", "")
	req.ParticipantID = "p-u1-again"
	again, err := st.ReserveSeat(ctx, req)
	must(t, err, "ReserveSeat after DeleteStage")
	if again.StageArn != s2.Arn || again.ParticipantID != "p-u1-again" {
		t.Fatalf("new seat %+v, want stage %s and participant p-u1-again", again, s2.Arn)
	}

	freed, err = st.DeleteStage(ctx, empty.Arn)
	must(t, err, "DeleteStage of a stage without seats")
	if len(freed) != 0 {
		t.Fatalf("DeleteStage of a stage without seats freed %+v", freed)
	}
	_, err = st.DeleteStage(ctx, s1.Arn)
	wantErr(t, err, store.ErrNotFound, "DeleteStage twice")
	checkCounts(t, st, bcA)
	checkCounts(t, st, bcB)
}

func testHosts(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	_, err := st.GetHost(ctx, bcA, "p1")
	wantErr(t, err, store.ErrNotFound, "GetHost of an unknown host")
	wantErr(t, st.DeleteHost(ctx, bcA, "p1"), store.ErrNotFound, "DeleteHost of an unknown host")
	hs, err := st.ListHosts(ctx, bcA)
	must(t, err, "ListHosts on an empty store")
	if len(hs) != 0 {
		t.Fatalf("empty store lists hosts %+v", hs)
	}

	h1 := store.Host{BroadcastID: bcA, ParticipantID: "p1", UserID: "alice", StageArn: arn("o"), JoinedAt: at(2 * time.Second)}
	h2 := store.Host{BroadcastID: bcA, ParticipantID: "p3", UserID: "bob", StageArn: arn("o"), JoinedAt: at(time.Second)}
	h3 := store.Host{BroadcastID: bcA, ParticipantID: "p2", UserID: "carol", StageArn: arn("o"), JoinedAt: at(time.Second)}
	hB := store.Host{BroadcastID: bcB, ParticipantID: "p1", UserID: "dave", StageArn: arn("ob"), JoinedAt: at(0)}
	for _, h := range []store.Host{h1, h2, h3, hB} {
		must(t, st.PutHost(ctx, h), "PutHost %s/%s", h.BroadcastID, h.ParticipantID)
	}
	for _, h := range []store.Host{h1, h2, h3, hB} {
		got, err := st.GetHost(ctx, h.BroadcastID, h.ParticipantID)
		must(t, err, "GetHost %s/%s", h.BroadcastID, h.ParticipantID)
		if normHost(got) != normHost(h) {
			t.Fatalf("GetHost = %+v, want %+v", got, h)
		}
	}
	hs, err = st.ListHosts(ctx, bcA)
	must(t, err, "ListHosts")
	eqList(t, "ListHosts (by JoinedAt, then ParticipantID)", hs, []store.Host{h3, h2, h1}, normHost)

	h1.Publishing = true
	h1.EventTime = at(5 * time.Second)
	must(t, st.PutHost(ctx, h1), "PutHost update")
	got, err := st.GetHost(ctx, bcA, "p1")
	must(t, err, "GetHost")
	if normHost(got) != normHost(h1) {
		t.Fatalf("GetHost after update = %+v, want %+v", got, h1)
	}
	hs, err = st.ListHosts(ctx, bcA)
	must(t, err, "ListHosts")
	eqList(t, "ListHosts after an update", hs, []store.Host{h3, h2, h1}, normHost)

	must(t, st.DeleteHost(ctx, bcA, "p1"), "DeleteHost")
	_, err = st.GetHost(ctx, bcA, "p1")
	wantErr(t, err, store.ErrNotFound, "GetHost of a deleted host")
	wantErr(t, st.DeleteHost(ctx, bcA, "p1"), store.ErrNotFound, "DeleteHost twice")
	got, err = st.GetHost(ctx, bcB, "p1")
	must(t, err, "GetHost of the same participant id in another broadcast")
	if normHost(got) != normHost(hB) {
		t.Fatalf("other broadcast's host = %+v, want %+v", got, hB)
	}
	hs, err = st.ListHosts(ctx, bcB)
	must(t, err, "ListHosts")
	eqList(t, "ListHosts of the other broadcast", hs, []store.Host{hB}, normHost)
}

func testReplications(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	_, err := st.GetReplication(ctx, bcA, "p1", arn("d1"))
	wantErr(t, err, store.ErrNotFound, "GetReplication of an unknown replication")
	wantErr(t, st.DeleteReplication(ctx, bcA, "p1", arn("d1")), store.ErrNotFound, "DeleteReplication of an unknown replication")
	rs, err := st.ListReplications(ctx, bcA)
	must(t, err, "ListReplications on an empty store")
	if len(rs) != 0 {
		t.Fatalf("empty store lists replications %+v", rs)
	}

	mk := func(b, p, dest string) store.Replication {
		return store.Replication{BroadcastID: b, ParticipantID: p, SourceArn: arn("origin-" + b), DestArn: arn(dest), State: store.ReplPending, UpdatedAt: at(time.Second)}
	}
	r1 := mk(bcA, "p1", "d2")
	r2 := mk(bcA, "p1", "d1")
	r3 := mk(bcA, "p2", "d1")
	rB := mk(bcB, "p1", "d1")
	for _, r := range []store.Replication{r1, r2, r3, rB} {
		must(t, st.PutReplication(ctx, r), "PutReplication")
	}
	for _, r := range []store.Replication{r1, r2, r3, rB} {
		got, err := st.GetReplication(ctx, r.BroadcastID, r.ParticipantID, r.DestArn)
		must(t, err, "GetReplication")
		if normRepl(got) != normRepl(r) {
			t.Fatalf("GetReplication = %+v, want %+v", got, r)
		}
	}
	rs, err = st.ListReplications(ctx, bcA)
	must(t, err, "ListReplications")
	eqList(t, "ListReplications (by DestArn, then ParticipantID)", rs, []store.Replication{r2, r3, r1}, normRepl)

	r1.State = store.ReplFailed
	r1.Reason = "p1 is not publishing"
	r1.UpdatedAt = at(3 * time.Second)
	r1.EventTime = at(2 * time.Second)
	must(t, st.PutReplication(ctx, r1), "PutReplication update")
	got, err := st.GetReplication(ctx, bcA, "p1", arn("d2"))
	must(t, err, "GetReplication")
	if normRepl(got) != normRepl(r1) {
		t.Fatalf("GetReplication after update = %+v, want %+v", got, r1)
	}

	must(t, st.DeleteReplication(ctx, bcA, "p1", arn("d1")), "DeleteReplication")
	_, err = st.GetReplication(ctx, bcA, "p1", arn("d1"))
	wantErr(t, err, store.ErrNotFound, "GetReplication of a deleted replication")
	wantErr(t, st.DeleteReplication(ctx, bcA, "p1", arn("d1")), store.ErrNotFound, "DeleteReplication twice")
	rs, err = st.ListReplications(ctx, bcA)
	must(t, err, "ListReplications")
	eqList(t, "ListReplications after a delete", rs, []store.Replication{r3, r1}, normRepl)
	rs, err = st.ListReplications(ctx, bcB)
	must(t, err, "ListReplications of the other broadcast")
	eqList(t, "ListReplications of the other broadcast", rs, []store.Replication{rB}, normRepl)
}

// wantNoSeat checks that a failed ReserveSeat left nothing behind.
func wantNoSeat(t *testing.T, st store.Store, broadcast, user string) {
	t.Helper()
	for _, s := range listSeats(t, st, broadcast) {
		if s.UserID == user {
			t.Fatalf("failed ReserveSeat left a seat %+v", s)
		}
	}
	_, err := st.ReleaseSeat(testCtx(t), broadcast, user)
	wantErr(t, err, store.ErrNotFound, "ReleaseSeat after a failed ReserveSeat")
}

func testReserveNotLive(t *testing.T, open func(*testing.T) store.Store) {
	tests := []struct {
		name  string
		setup func(t *testing.T, st store.Store)
	}{
		{"no stage at all", func(t *testing.T, st store.Store) {}},
		{"stages that are not seatable", func(t *testing.T, st store.Store) {
			putStages(t, st, stageRec("closed1", bcA, 50, false, 0), stageRec("closed2", bcA, 50, false, 0))
		}},
		{"a seatable stage of another broadcast only", func(t *testing.T, st store.Store) {
			putStages(t, st, stageRec("closed", bcA, 50, false, 0), stageRec("other", bcB, 50, true, 0))
		}},
		{"the only seatable stage turned unseatable", func(t *testing.T, st store.Store) {
			s := stageRec("s", bcA, 50, true, 0)
			putStages(t, st, s)
			reserve(t, st, bcA, "earlier", "")
			must(t, st.SetSeatable(testCtx(t), s.Arn, false), "SetSeatable")
		}},
		{"the only seatable stage deleted", func(t *testing.T, st store.Store) {
			s := stageRec("s", bcA, 50, true, 0)
			putStages(t, st, s, stageRec("closed", bcA, 50, false, 0))
			reserve(t, st, bcA, "earlier", "")
			_, err := st.DeleteStage(testCtx(t), s.Arn)
			must(t, err, "DeleteStage")
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := open(t)
			tc.setup(t, st)
			before := checkCounts(t, st, bcA)
			_, err := st.ReserveSeat(testCtx(t), seatReq(bcA, "u", ""))
			wantErr(t, err, store.ErrNotLive, "ReserveSeat")
			wantNoSeat(t, st, bcA, "u")
			if after := checkCounts(t, st, bcA); !maps.Equal(after, before) {
				t.Fatalf("seats per stage changed from %v to %v", before, after)
			}
		})
	}
}

func testReserveFull(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	a := stageRec("a", bcA, 1, true, 0)
	b := stageRec("b", bcA, 2, true, time.Second)
	zero := stageRec("zero", bcA, 0, true, 0)
	closed := stageRec("closed", bcA, 50, false, 0)
	putStages(t, st, a, b, zero, closed)
	reserve(t, st, bcA, "u1", "")
	reserve(t, st, bcA, "u2", "")
	reserve(t, st, bcA, "u3", "")
	_, err := st.ReserveSeat(ctx, seatReq(bcA, "u4", ""))
	wantErr(t, err, store.ErrFull, "ReserveSeat with every seatable stage full (and a closed one with room)")
	wantNoSeat(t, st, bcA, "u4")
	wantSeats(t, st, a.Arn, 1)
	wantSeats(t, st, b.Arn, 2)
	wantSeats(t, st, zero.Arn, 0)
	wantSeats(t, st, closed.Arn, 0)
	checkCounts(t, st, bcA)
}

// stageSpec is a stage of a seating scenario and the seats it holds.
type stageSpec struct {
	id        string
	broadcast string
	capacity  int
	seats     int
	seatable  bool
	created   time.Duration
}

// seatStages puts the stages, takes their seats (users pre-<id>-<n>) and
// only then closes those that are not seatable.
func seatStages(t *testing.T, st store.Store, specs []stageSpec) {
	t.Helper()
	for _, sp := range specs {
		b := cmp.Or(sp.broadcast, bcA)
		putStages(t, st, stageRec(sp.id, b, sp.capacity, true, sp.created))
		for n := range sp.seats {
			reserve(t, st, b, fmt.Sprintf("pre-%s-%d", sp.id, n), arn(sp.id))
		}
	}
	for _, sp := range specs {
		if !sp.seatable {
			must(t, st.SetSeatable(testCtx(t), arn(sp.id), false), "SetSeatable")
		}
	}
}

// wantOneMore checks that exactly one stage, chosen, got one seat more.
func wantOneMore(t *testing.T, before, after map[string]int, chosen string) {
	t.Helper()
	want := maps.Clone(before)
	want[chosen]++
	if !maps.Equal(after, want) {
		t.Fatalf("seats per stage went from %v to %v; want one more on %s only", before, after, chosen)
	}
}

func testReserveFullestFirst(t *testing.T, open func(*testing.T) store.Store, groups *Groups) {
	tests := []struct {
		name   string
		stages []stageSpec
		want   string
	}{
		{"the fullest", []stageSpec{
			{id: "a", capacity: 10, seats: 1, seatable: true},
			{id: "b", capacity: 10, seats: 3, seatable: true},
			{id: "c", capacity: 10, seats: 2, seatable: true},
		}, "b"},
		{"full stages are skipped", []stageSpec{
			{id: "a", capacity: 3, seats: 3, seatable: true},
			{id: "b", capacity: 10, seats: 1, seatable: true},
			{id: "c", capacity: 10, seats: 0, seatable: true},
		}, "b"},
		{"a stage that is not seatable is skipped, however full", []stageSpec{
			{id: "a", capacity: 10, seats: 4, seatable: false},
			{id: "b", capacity: 10, seats: 1, seatable: true},
		}, "b"},
		{"fuller beats older", []stageSpec{
			{id: "old", capacity: 10, seats: 1, seatable: true, created: 0},
			{id: "young", capacity: 10, seats: 2, seatable: true, created: 5 * time.Second},
		}, "young"},
		{"as full: the oldest", []stageSpec{
			{id: "a", capacity: 10, seats: 2, seatable: true, created: 2 * time.Second},
			{id: "b", capacity: 10, seats: 2, seatable: true, created: time.Second},
			{id: "c", capacity: 10, seats: 2, seatable: true, created: 3 * time.Second},
		}, "b"},
		{"as full and as old: the lowest ARN", []stageSpec{
			{id: "zz", capacity: 10, seatable: true},
			{id: "mm", capacity: 10, seatable: true},
			{id: "xx", capacity: 10, seatable: true},
		}, "mm"},
		{"another broadcast's stages are ignored", []stageSpec{
			{id: "x", broadcast: bcB, capacity: 10, seats: 5, seatable: true},
			{id: "y", capacity: 10, seats: 0, seatable: true, created: time.Second},
		}, "y"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := open(t)
			seatStages(t, st, tc.stages)
			before := checkCounts(t, st, bcA)
			want := []string{arn(tc.want)}
			if groups != nil {
				stages, err := st.ListStages(testCtx(t), bcA)
				must(t, err, "ListStages")
				want = firstPicks(t, st, groups, stages, "u")
			}
			seat, err := st.ReserveSeat(testCtx(t), seatReq(bcA, "u", ""))
			must(t, err, "ReserveSeat")
			if !slices.Contains(want, seat.StageArn) {
				t.Fatalf("seated on %s, want one of %s", seat.StageArn, want)
			}
			wantOneMore(t, before, checkCounts(t, st, bcA), seat.StageArn)
		})
	}
}

func fullerCmp(a, b store.Stage) int {
	switch {
	case store.Fuller(a, b):
		return -1
	case store.Fuller(b, a):
		return 1
	}
	return 0
}

// firstPicks are the stages a join of user may take, by store.Fuller and
// groups, of stages (what the store lists): none when none has room.
func firstPicks(t *testing.T, st store.Store, groups *Groups, stages []store.Stage, user string) []string {
	t.Helper()
	var room []store.Stage
	for _, s := range stages {
		if s.Seatable && s.Seats < s.Capacity {
			room = append(room, s)
		}
	}
	slices.SortFunc(room, fullerCmp)
	if len(room) == 0 {
		return nil
	}
	if groups == nil {
		return []string{room[0].Arn}
	}
	// The first of each group, the home group's alone if it has one.
	var picks []string
	seen := map[int]bool{}
	for _, s := range room {
		g := groups.Of(t, st, s.Arn)
		if g == groups.Home(user) {
			return []string{s.Arn}
		}
		if !seen[g] {
			seen[g] = true
			picks = append(picks, s.Arn)
		}
	}
	return picks
}

// testReserveFollowsFuller plays a long random sequence of seatings,
// releases, drops, and stages opening, closing, changing, going and coming
// back, and checks every seating against store.Fuller (and groups) applied
// to what the store lists, and the counts and totals after every step.
func testReserveFollowsFuller(t *testing.T, st store.Store, groups *Groups) {
	ctx := testCtx(t)
	rng := rand.New(rand.NewPCG(7, 11))
	var ids []string
	for i := range 3 {
		id := fmt.Sprintf("s%d", i)
		ids = append(ids, id)
		putStages(t, st, stageRec(id, bcA, rng.IntN(5), rng.IntN(3) > 0, time.Duration(rng.IntN(3))*time.Second))
	}
	putStages(t, st, stageRec("elsewhere", bcB, 100, true, 0))
	var seated []string
	counts := map[string]int{}
	for step := range 1500 {
		switch r := rng.IntN(12); {
		case r < 5:
			stages, err := st.ListStages(ctx, bcA)
			must(t, err, "ListStages")
			live := slices.ContainsFunc(stages, func(s store.Stage) bool { return s.Seatable })
			user := fmt.Sprintf("u%d", step)
			want := firstPicks(t, st, groups, stages, user)
			seat, err := st.ReserveSeat(ctx, seatReq(bcA, user, ""))
			switch {
			case !live:
				wantErr(t, err, store.ErrNotLive, "step %d: ReserveSeat with no seatable stage", step)
				counts["notLive"]++
			case len(want) == 0:
				wantErr(t, err, store.ErrFull, "step %d: ReserveSeat with every seatable stage full", step)
				counts["full"]++
			default:
				must(t, err, "step %d: ReserveSeat", step)
				if !slices.Contains(want, seat.StageArn) {
					t.Fatalf("step %d: seated on %s, but by store.Fuller the first of %+v is one of %s", step, seat.StageArn, stages, want)
				}
				seated = append(seated, user)
				counts["seated"]++
			}
		case r < 8:
			if len(seated) == 0 {
				continue
			}
			i := rng.IntN(len(seated))
			_, err := st.ReleaseSeat(ctx, bcA, seated[i])
			must(t, err, "step %d: ReleaseSeat", step)
			seated = slices.Delete(seated, i, i+1)
		case r < 9:
			id := ids[rng.IntN(len(ids))]
			s, err := st.GetStage(ctx, arn(id))
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			must(t, err, "step %d: GetStage", step)
			must(t, st.SetSeatable(ctx, s.Arn, !s.Seatable), "SetSeatable")
		case r < 10:
			// The stage made again or changed: a new capacity (not below
			// the seats it holds: they stay) and creation time.
			id := ids[rng.IntN(len(ids))]
			capacity := rng.IntN(5)
			if s, err := st.GetStage(ctx, arn(id)); err == nil {
				capacity = s.Seats + rng.IntN(3)
			}
			putStages(t, st, stageRec(id, bcA, capacity, rng.IntN(3) > 0, time.Duration(rng.IntN(3))*time.Second))
		case r < 11:
			id := ids[rng.IntN(len(ids))]
			freed, err := st.DeleteStage(ctx, arn(id))
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			must(t, err, "step %d: DeleteStage", step)
			seated = slices.DeleteFunc(seated, func(u string) bool { return slices.Contains(seatUsers(freed), u) })
		default:
			freed, err := st.DropSeats(ctx, bcA, 1+rng.IntN(3))
			must(t, err, "step %d: DropSeats", step)
			seated = slices.DeleteFunc(seated, func(u string) bool { return slices.Contains(seatUsers(freed), u) })
		}
		checkCounts(t, st, bcA)
		if tot, err := st.SeatTotals(ctx, bcA); err != nil || tot.Seats != len(seated) || tot.TakenAtSum != int64(len(seated))*base.Unix() {
			t.Fatalf("step %d: SeatTotals = %+v, %v; want the %d seats held", step, tot, err, len(seated))
		}
	}
	// The sequence must have tried every outcome, or it proves little.
	for _, k := range []string{"seated", "full", "notLive"} {
		if counts[k] < 5 {
			t.Errorf("the random sequence had the outcome %q fewer than 5 times (%v): change its seed", k, counts)
		}
	}
	if got := getStage(t, st, arn("elsewhere")).Seats; got != 0 {
		t.Fatalf("another broadcast's stage got %d seats", got)
	}
}

func testReserveAskedFor(t *testing.T, open func(*testing.T) store.Store) {
	specs := []stageSpec{
		{id: "full", capacity: 1, seats: 1, seatable: true},
		{id: "fuller", capacity: 10, seats: 3, seatable: true},
		{id: "empty", capacity: 10, seats: 0, seatable: true, created: time.Second},
		{id: "closed", capacity: 10, seats: 0, seatable: false},
		{id: "other", broadcast: bcB, capacity: 10, seats: 0, seatable: true},
	}
	tests := []struct {
		name string
		ask  string
		// closeAll makes every stage of the broadcast unseatable first.
		closeAll bool
		want     string
		err      error
	}{
		{name: "a stage with room, though another is fuller", ask: arn("empty"), want: arn("empty")},
		{name: "the fullest one", ask: arn("fuller"), want: arn("fuller")},
		{name: "an unknown stage", ask: arn("nope"), err: store.ErrNotFound},
		{name: "a stage of another broadcast", ask: arn("other"), err: store.ErrNotFound},
		{name: "a stage that is not seatable", ask: arn("closed"), err: store.ErrNotEligible},
		{name: "a full stage", ask: arn("full"), err: store.ErrFull},
		{name: "a stage that is not seatable, none is", ask: arn("closed"), closeAll: true, err: store.ErrNotEligible},
		{name: "a stage with room that was closed, none is open", ask: arn("empty"), closeAll: true, err: store.ErrNotEligible},
		{name: "an unknown stage, none is open", ask: arn("nope"), closeAll: true, err: store.ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := open(t)
			seatStages(t, st, specs)
			if tc.closeAll {
				for _, sp := range specs {
					if cmp.Or(sp.broadcast, bcA) == bcA {
						must(t, st.SetSeatable(testCtx(t), arn(sp.id), false), "SetSeatable")
					}
				}
			}
			before := checkCounts(t, st, bcA)
			seat, err := st.ReserveSeat(testCtx(t), seatReq(bcA, "u", tc.ask))
			if tc.err != nil {
				wantErr(t, err, tc.err, "ReserveSeat of %s", tc.ask)
				wantNoSeat(t, st, bcA, "u")
				if after := checkCounts(t, st, bcA); !maps.Equal(after, before) {
					t.Fatalf("a refused ReserveSeat changed seats per stage from %v to %v", before, after)
				}
				return
			}
			must(t, err, "ReserveSeat of %s", tc.ask)
			if seat.StageArn != tc.want {
				t.Fatalf("seated on %s, want %s", seat.StageArn, tc.want)
			}
			wantOneMore(t, before, checkCounts(t, st, bcA), tc.want)
		})
	}
}

func testReserveSameUser(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	small := stageRec("small", bcA, 1, true, 0)
	big := stageRec("big", bcA, 10, true, time.Second)
	elsewhere := stageRec("elsewhere", bcB, 10, true, 0)
	putStages(t, st, small, big, elsewhere)

	first := reserve(t, st, bcA, "u1", "")
	if first.StageArn != small.Arn {
		t.Fatalf("first seat on %s, want the older %s", first.StageArn, small.Arn)
	}
	// small is full now; the viewer keeps its seat there, whatever it asks.
	asks := []struct {
		name     string
		stageArn string
		now      time.Time
		ttl      time.Duration
	}{
		{"again", "", at(10 * time.Second), time.Minute},
		{"for another stage", big.Arn, at(20 * time.Second), time.Minute},
		{"for an unknown stage", arn("nope"), at(30 * time.Second), 2 * time.Minute},
		{"for its own stage", small.Arn, at(40 * time.Second), time.Minute},
	}
	for _, a := range asks {
		req := store.SeatRequest{BroadcastID: bcA, UserID: "u1", StageArn: a.stageArn, ParticipantID: "p-new", Now: a.now, TTL: a.ttl}
		got, err := st.ReserveSeat(ctx, req)
		must(t, err, "ReserveSeat %s", a.name)
		want := first
		want.ExpiresAt = a.now.Add(a.ttl)
		if normSeat(got) != normSeat(want) {
			t.Fatalf("ReserveSeat %s = %+v, want the same seat renewed %+v", a.name, got, want)
		}
		eqList(t, "ListSeats after ReserveSeat "+a.name, listSeats(t, st, bcA), []store.Seat{want}, normSeat)
		wantSeats(t, st, small.Arn, 1)
		wantSeats(t, st, big.Arn, 0)
	}
	// A renewal sets the lease to now+ttl: the last one leased the seat to
	// 40s+1m, shorter than the one before (30s+2m).
	freed, err := st.ExpireSeats(ctx, bcA, at(99*time.Second))
	must(t, err, "ExpireSeats")
	if len(freed) != 0 {
		t.Fatalf("ExpireSeats freed %+v, whose lease was renewed", freed)
	}
	freed, err = st.ExpireSeats(ctx, bcA, at(100*time.Second))
	must(t, err, "ExpireSeats")
	if len(freed) != 1 || freed[0].UserID != "u1" {
		t.Fatalf("ExpireSeats at the end of the renewed lease freed %+v, want u1's seat", freed)
	}

	// A seat is per broadcast: the same user in another broadcast gets one
	// more, and neither touches the other.
	a := reserve(t, st, bcA, "u2", "")
	b := reserve(t, st, bcB, "u2", "")
	if a.StageArn == b.StageArn || b.StageArn != elsewhere.Arn {
		t.Fatalf("seats of u2 in two broadcasts: %+v and %+v", a, b)
	}
	eqList(t, "seats of broadcast A", listSeats(t, st, bcA), []store.Seat{a}, normSeat)
	eqList(t, "seats of broadcast B", listSeats(t, st, bcB), []store.Seat{b}, normSeat)
	checkCounts(t, st, bcA)
	checkCounts(t, st, bcB)
}

func testReserveSeatFields(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	s := stageRec("s", bcA, 10, true, 0)
	putStages(t, st, s)
	req := store.SeatRequest{BroadcastID: bcA, UserID: "viewer-1", ParticipantID: "PARTICIPANT1", Now: at(1234 * time.Millisecond), TTL: 15 * time.Second}
	got, err := st.ReserveSeat(ctx, req)
	must(t, err, "ReserveSeat")
	want := store.Seat{BroadcastID: bcA, UserID: "viewer-1", StageArn: s.Arn, ParticipantID: "PARTICIPANT1", TakenAt: at(1234 * time.Millisecond), ExpiresAt: at(16234 * time.Millisecond)}
	if normSeat(got) != normSeat(want) {
		t.Fatalf("ReserveSeat = %+v, want %+v", got, want)
	}
	eqList(t, "ListSeats", listSeats(t, st, bcA), []store.Seat{want}, normSeat)
	wantSeats(t, st, s.Arn, 1)

	// StageSeats counts the stage's seats with this one, for a new seat and
	// for one kept.
	counts := []struct {
		user string
		want int
	}{{"viewer-1", 1}, {"viewer-2", 2}, {"viewer-1", 2}, {"viewer-3", 3}}
	if got.StageSeats != 1 {
		t.Errorf("first seat: StageSeats %d, want 1", got.StageSeats)
	}
	for _, c := range counts[1:] {
		r := req
		r.UserID, r.ParticipantID = c.user, "P-"+c.user
		seat, err := st.ReserveSeat(ctx, r)
		must(t, err, "ReserveSeat")
		if seat.StageSeats != c.want {
			t.Errorf("ReserveSeat(%s): StageSeats %d, want %d", c.user, seat.StageSeats, c.want)
		}
	}
}

func testRenewSeat(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	_, err := st.RenewSeat(ctx, bcA, "u1", owner("u1"), base, ttl)
	wantErr(t, err, store.ErrNotFound, "RenewSeat without a seat")
	s := stageRec("s", bcA, 10, true, 0)
	putStages(t, st, s, stageRec("b", bcB, 10, true, 0))
	seat := reserve(t, st, bcA, "u1", "")
	other := reserve(t, st, bcA, "u2", "")
	_, err = st.RenewSeat(ctx, bcB, "u1", owner("u1"), base, ttl)
	wantErr(t, err, store.ErrNotFound, "RenewSeat in a broadcast where the user has no seat")

	for _, d := range []time.Duration{time.Minute, 10 * time.Second, 2 * time.Hour} {
		now := at(30 * time.Second)
		got, err := st.RenewSeat(ctx, bcA, "u1", owner("u1"), now, d)
		must(t, err, "RenewSeat")
		want := seat
		want.ExpiresAt = now.Add(d)
		if normSeat(got) != normSeat(want) {
			t.Fatalf("RenewSeat for %v = %+v, want %+v", d, got, want)
		}
		eqList(t, "ListSeats after RenewSeat", listSeats(t, st, bcA), []store.Seat{want, other}, normSeat)
		wantSeats(t, st, s.Arn, 2)
	}
	_, err = st.ReleaseSeat(ctx, bcA, "u1")
	must(t, err, "ReleaseSeat")
	_, err = st.RenewSeat(ctx, bcA, "u1", owner("u1"), base, ttl)
	wantErr(t, err, store.ErrNotFound, "RenewSeat after ReleaseSeat")
	wantSeats(t, st, s.Arn, 1)
}

// testRenewSeatOwner renews u1's seat (participant p-u1 on stage s) in the
// name of various owners, while u2 (p-u2) is seated on stage t.
func testRenewSeatOwner(t *testing.T, open func(*testing.T) store.Store) {
	tests := []struct {
		name  string
		owner store.SeatOwner
		err   error
	}{
		{"its participant", store.SeatOwner{ParticipantID: "p-u1"}, nil},
		{"its participant on its stage", store.SeatOwner{ParticipantID: "p-u1", StageArn: arn("s")}, nil},
		{"its stage, any participant", store.SeatOwner{StageArn: arn("s")}, nil},
		{"nobody in particular", store.SeatOwner{}, nil},
		{"another participant", store.SeatOwner{ParticipantID: "p-u2"}, store.ErrNotOwner},
		{"another participant on its stage", store.SeatOwner{ParticipantID: "p-u2", StageArn: arn("s")}, store.ErrNotOwner},
		{"its participant on another stage", store.SeatOwner{ParticipantID: "p-u1", StageArn: arn("t")}, store.ErrNotOwner},
		{"another stage, any participant", store.SeatOwner{StageArn: arn("t")}, store.ErrNotOwner},
		{"another participant on another stage", store.SeatOwner{ParticipantID: "p-u2", StageArn: arn("t")}, store.ErrNotOwner},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := open(t)
			putStages(t, st, stageRec("s", bcA, 10, true, 0), stageRec("t", bcA, 10, true, time.Second))
			seat := reserve(t, st, bcA, "u1", arn("s"))
			other := reserve(t, st, bcA, "u2", arn("t"))
			// A renewal to a lease end before both seats' (base+ttl), so
			// that ExpireSeats tells where u1's lease ends.
			now, d := at(time.Minute), 30*time.Minute
			got, err := st.RenewSeat(testCtx(t), bcA, "u1", tc.owner, now, d)
			want := seat
			if tc.err != nil {
				wantErr(t, err, tc.err, "RenewSeat for %+v", tc.owner)
				if got != (store.Seat{}) {
					t.Fatalf("a refused RenewSeat told of the seat: %+v", got)
				}
			} else {
				must(t, err, "RenewSeat for %+v", tc.owner)
				want.ExpiresAt = now.Add(d)
				if normSeat(got) != normSeat(want) {
					t.Fatalf("RenewSeat = %+v, want %+v", got, want)
				}
			}
			eqList(t, "ListSeats after RenewSeat", listSeats(t, st, bcA), []store.Seat{want, other}, normSeat)
			// The lease ends where RenewSeat left it, not before.
			freed, err := st.ExpireSeats(testCtx(t), bcA, want.ExpiresAt.Add(-time.Millisecond))
			must(t, err, "ExpireSeats")
			if len(freed) != 0 {
				t.Fatalf("ExpireSeats before the seats' leases ended freed %+v", freed)
			}
			wantSeats(t, st, arn("s"), 1)
			wantSeats(t, st, arn("t"), 1)
			freed, err = st.ExpireSeats(testCtx(t), bcA, want.ExpiresAt)
			must(t, err, "ExpireSeats")
			if !slices.ContainsFunc(freed, func(s store.Seat) bool { return s.UserID == "u1" }) {
				t.Fatalf("ExpireSeats at the end of u1's lease freed %+v, not u1's seat", freed)
			}
		})
	}
}

func testReleaseSeat(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	_, err := st.ReleaseSeat(ctx, bcA, "u1")
	wantErr(t, err, store.ErrNotFound, "ReleaseSeat without a seat")
	s := stageRec("s", bcA, 2, true, 0)
	putStages(t, st, s)
	u1 := reserve(t, st, bcA, "u1", "")
	u2 := reserve(t, st, bcA, "u2", "")
	_, err = st.ReserveSeat(ctx, seatReq(bcA, "u3", ""))
	wantErr(t, err, store.ErrFull, "ReserveSeat on a full stage")

	_, err = st.ReleaseSeat(ctx, bcB, "u1")
	wantErr(t, err, store.ErrNotFound, "ReleaseSeat in another broadcast")
	got, err := st.ReleaseSeat(ctx, bcA, "u1")
	must(t, err, "ReleaseSeat")
	if normSeat(got) != normSeat(u1) {
		t.Fatalf("ReleaseSeat returned %+v, want the seat %+v", got, u1)
	}
	wantSeats(t, st, s.Arn, 1)
	eqList(t, "ListSeats after ReleaseSeat", listSeats(t, st, bcA), []store.Seat{u2}, normSeat)
	_, err = st.ReleaseSeat(ctx, bcA, "u1")
	wantErr(t, err, store.ErrNotFound, "ReleaseSeat twice")
	wantSeats(t, st, s.Arn, 1)

	// The freed seat is there for someone else.
	reserve(t, st, bcA, "u3", "")
	wantSeats(t, st, s.Arn, 2)
	for _, u := range []string{"u2", "u3"} {
		_, err := st.ReleaseSeat(ctx, bcA, u)
		must(t, err, "ReleaseSeat %s", u)
	}
	wantSeats(t, st, s.Arn, 0)
	if seats := listSeats(t, st, bcA); len(seats) != 0 {
		t.Fatalf("seats left after everyone left: %+v", seats)
	}
}

// testExpireBatch: a sweep frees at most store.ExpireBatch seats a call,
// the longest expired first where the store keeps them in order, and the
// rest on later calls, each seat once.
func testExpireBatch(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	s := stageRec("batch", bcA, 10*store.ExpireBatch, true, 0)
	putStages(t, st, s)
	n := store.ExpireBatch + store.ExpireBatch/2
	for i := range n {
		req := seatReq(bcA, fmt.Sprintf("u%05d", i), "")
		req.Now, req.TTL = at(time.Duration(i)*time.Millisecond), time.Second
		if _, err := st.ReserveSeat(ctx, req); err != nil {
			t.Fatalf("ReserveSeat %d: %v", i, err)
		}
	}
	seen := map[string]bool{}
	for _, want := range []int{store.ExpireBatch, n - store.ExpireBatch, 0} {
		freed, err := st.ExpireSeats(ctx, bcA, at(time.Hour))
		must(t, err, "ExpireSeats")
		if len(freed) != want {
			t.Fatalf("ExpireSeats freed %d, want %d", len(freed), want)
		}
		for _, seat := range freed {
			if seen[seat.UserID] {
				t.Fatalf("seat of %s freed twice", seat.UserID)
			}
			seen[seat.UserID] = true
		}
	}
	wantSeats(t, st, s.Arn, 0)
}

// testReserveReplaces: a viewer whose stage stopped taking viewers gets a
// seat elsewhere, and the answer names the seat it freed; while there is
// no other seat, it keeps the one it has. A renewal replaces nothing.
func testReserveReplaces(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	s1 := stageRec("r1", bcA, 10, true, 0)
	s2 := stageRec("r2", bcA, 1, false, time.Second)
	putStages(t, st, s1, s2)
	first := reserve(t, st, bcA, "alice", "")
	if first.Replaced != nil {
		t.Errorf("a first seat replaced %+v", *first.Replaced)
	}
	if again := reserve(t, st, bcA, "alice", ""); again.Replaced != nil {
		t.Errorf("a renewal replaced %+v", *again.Replaced)
	}
	must(t, st.SetSeatable(ctx, s1.Arn, false), "SetSeatable false")
	_, err := st.ReserveSeat(ctx, seatReq(bcA, "alice", ""))
	wantErr(t, err, store.ErrNotLive, "ReserveSeat with no stage taking viewers")
	if _, err := st.GetSeat(ctx, bcA, "alice"); err != nil {
		t.Errorf("the seat after a refused reserve: %v, want it kept", err)
	}
	must(t, st.SetSeatable(ctx, s2.Arn, true), "SetSeatable true")
	moved := reserve(t, st, bcA, "alice", "")
	if moved.StageArn != s2.Arn || moved.Replaced == nil || moved.Replaced.StageArn != s1.Arn || moved.Replaced.ParticipantID != first.ParticipantID {
		t.Fatalf("moved seat %+v (replaced %+v), want one on %s replacing the seat on %s", moved, moved.Replaced, s2.Arn, s1.Arn)
	}
	wantSeats(t, st, s1.Arn, 0)
	wantSeats(t, st, s2.Arn, 1)
}

// testGetSeat: a viewer's seat as reserved, and ErrNotFound for a viewer
// without one (or with one in another broadcast) and after release.
func testGetSeat(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	s := stageRec("get", bcA, 10, true, 0)
	putStages(t, st, s)
	want := reserve(t, st, bcA, "alice", "")
	got, err := st.GetSeat(ctx, bcA, "alice")
	must(t, err, "GetSeat")
	if got.UserID != "alice" || got.StageArn != s.Arn || got.ParticipantID != want.ParticipantID || !got.ExpiresAt.Equal(want.ExpiresAt) {
		t.Errorf("GetSeat = %+v, want %+v", got, want)
	}
	for _, c := range []struct{ b, user string }{{bcA, "bob"}, {bcB, "alice"}} {
		if _, err := st.GetSeat(ctx, c.b, c.user); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("GetSeat(%s, %s) = %v, want ErrNotFound", c.b, c.user, err)
		}
	}
	if _, err := st.ReleaseSeat(ctx, bcA, "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetSeat(ctx, bcA, "alice"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetSeat after release = %v, want ErrNotFound", err)
	}
}

// testSeatTotals: the totals follow every way a seat comes and goes
// (reserve, a move off a stage that stopped serving, release, expiry, a
// stage dropped, the broadcast ended), and always equal the sums over the
// seats themselves.
func testSeatTotals(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	check := func(when string, broadcast string) {
		t.Helper()
		got, err := st.SeatTotals(ctx, broadcast)
		must(t, err, "SeatTotals %s", when)
		want := store.SeatTotals{}
		for _, seat := range listSeats(t, st, broadcast) {
			want.Seats++
			want.TakenAtSum += seat.TakenAt.Unix()
		}
		if got != want {
			t.Fatalf("SeatTotals %s = %+v, want %+v (the sums over ListSeats)", when, got, want)
		}
	}
	check("of a broadcast never seen", bcA)
	_, err := st.CreateBroadcast(ctx, store.Broadcast{ID: bcA, OriginArn: arn("t1"), CreatedAt: at(0)})
	must(t, err, "CreateBroadcast")
	s1 := stageRec("t1", bcA, 10, true, 0)
	s2 := stageRec("t2", bcA, 10, false, time.Second)
	other := stageRec("t3", bcB, 10, true, 0)
	putStages(t, st, s1, s2, other)
	for i, user := range []string{"ann", "bob", "cat", "dan", "eve"} {
		req := seatReq(bcA, user, "")
		req.Now = base.Add(time.Duration(i) * time.Minute)
		_, err := st.ReserveSeat(ctx, req)
		must(t, err, "ReserveSeat %s", user)
	}
	reserve(t, st, bcB, "zed", "")
	check("after five seats", bcA)
	check("of the other broadcast", bcB)

	_, err = st.ReleaseSeat(ctx, bcA, "bob")
	must(t, err, "ReleaseSeat")
	check("after a release", bcA)

	short := seatReq(bcA, "fay", "")
	short.Now, short.TTL = base.Add(time.Hour), time.Second
	_, err = st.ReserveSeat(ctx, short)
	must(t, err, "ReserveSeat fay")
	_, err = st.ExpireSeats(ctx, bcA, base.Add(time.Hour+time.Minute))
	must(t, err, "ExpireSeats")
	check("after an expiry", bcA)

	must(t, st.SetSeatable(ctx, s1.Arn, false), "SetSeatable t1 false")
	must(t, st.SetSeatable(ctx, s2.Arn, true), "SetSeatable t2 true")
	moved := seatReq(bcA, "ann", "")
	moved.Now = base.Add(2 * time.Hour)
	_, err = st.ReserveSeat(ctx, moved)
	must(t, err, "ReserveSeat moving ann")
	check("after a seat moved", bcA)

	_, err = st.DeleteStage(ctx, s1.Arn)
	must(t, err, "DeleteStage t1")
	check("after a stage with seats was dropped", bcA)

	_, err = st.DeleteBroadcast(ctx, bcA)
	must(t, err, "DeleteBroadcast")
	check("after the broadcast ended", bcA)
	check("of the other broadcast at the end", bcB)
}

// testDropSeats: a broadcast's seats go a bounded step at a time, each
// freed once, its stage's count and the totals following; another
// broadcast's stay.
func testDropSeats(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	putStages(t, st, stageRec("d1", bcA, 4, true, 0), stageRec("d2", bcA, 10, true, time.Second), stageRec("d3", bcB, 10, true, 0))
	var want []string
	for i := range 7 {
		user := fmt.Sprintf("v%d", i)
		reserve(t, st, bcA, user, "")
		want = append(want, user)
	}
	reserve(t, st, bcB, "other", "")
	for _, n := range []int{0, -1} {
		if freed, err := st.DropSeats(ctx, bcA, n); err != nil || len(freed) != 0 {
			t.Fatalf("DropSeats(%d) = %d seats, %v; want none", n, len(freed), err)
		}
	}
	var got []string
	for _, n := range []int{3, 3, 1} {
		freed, err := st.DropSeats(ctx, bcA, 3)
		must(t, err, "DropSeats")
		if len(freed) != n {
			t.Fatalf("DropSeats(3) freed %d seats, want %d", len(freed), n)
		}
		got = append(got, seatUsers(freed)...)
		checkCounts(t, st, bcA)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("DropSeats freed %v, want each of %v once", got, want)
	}
	if freed, err := st.DropSeats(ctx, bcA, 3); err != nil || len(freed) != 0 {
		t.Errorf("DropSeats of a broadcast without seats = %v, %v; want none", freed, err)
	}
	wantSeats(t, st, arn("d1"), 0)
	wantSeats(t, st, arn("d2"), 0)
	if tot, err := st.SeatTotals(ctx, bcA); err != nil || tot != (store.SeatTotals{}) {
		t.Errorf("SeatTotals after every seat was dropped = %+v, %v; want zero", tot, err)
	}
	if seats := listSeats(t, st, bcB); len(seats) != 1 {
		t.Errorf("the other broadcast holds %d seats after the drops, want its 1", len(seats))
	}
}

// testScanSeats: a scan returns every seat at least once, never more
// than count a page, and ends, also when seats leave during the walk.
func testScanSeats(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	s := stageRec("scan", bcA, 5000, true, 0)
	putStages(t, st, s)
	const n = 2500
	for i := range n {
		reserve(t, st, bcA, fmt.Sprintf("u%05d", i), "")
	}
	scan := func(count int, leave func(page int)) map[string]bool {
		t.Helper()
		seen := map[string]bool{}
		cursor, pages := "", 0
		for {
			page, next, err := st.ScanSeats(ctx, bcA, cursor, count)
			must(t, err, "ScanSeats with count %d", count)
			if pages++; len(page) > count {
				t.Fatalf("a page of %d seats for count %d", len(page), count)
			}
			for _, seat := range page {
				if seat.BroadcastID != bcA || seat.StageArn != s.Arn {
					t.Fatalf("scanned seat %+v, not of the broadcast's stage", seat)
				}
				seen[seat.UserID] = true
			}
			if next == "" {
				break
			}
			if pages > 2*n {
				t.Fatalf("the scan with count %d does not end", count)
			}
			leave(pages)
			cursor = next
		}
		if count < n && pages < 2 {
			t.Errorf("scanned %d seats with count %d in %d page(s); want several", len(seen), count, pages)
		}
		return seen
	}
	for _, count := range []int{1, 7, 100, n} {
		if seen := scan(count, func(int) {}); len(seen) != n {
			t.Errorf("count %d: scanned %d of %d seats", count, len(seen), n)
		}
	}
	// Seats freed between pages may show or not; every other seat shows.
	gone := map[string]bool{}
	seen := scan(50, func(page int) {
		user := fmt.Sprintf("u%05d", page*7)
		if _, err := st.ReleaseSeat(ctx, bcA, user); err == nil {
			gone[user] = true
		}
	})
	for i := range n {
		if user := fmt.Sprintf("u%05d", i); !gone[user] && !seen[user] {
			t.Errorf("seat %s, held throughout the scan, was not returned", user)
		}
	}
	if len(gone) == 0 {
		t.Error("no seat left during the scan")
	}
	if page, next, err := st.ScanSeats(ctx, bcB, "", 100); err != nil || len(page) != 0 || next != "" {
		t.Errorf("scan of a broadcast without seats: %d seats, next %q, %v", len(page), next, err)
	}
}

func testExpireSeats(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	freed, err := st.ExpireSeats(ctx, bcA, at(time.Hour))
	must(t, err, "ExpireSeats on an empty store")
	if len(freed) != 0 {
		t.Fatalf("ExpireSeats on an empty store freed %+v", freed)
	}
	s := stageRec("s", bcA, 10, true, 0)
	sb := stageRec("sb", bcB, 10, true, 0)
	putStages(t, st, s, sb)
	take := func(b, user string, lease time.Duration) store.Seat {
		req := seatReq(b, user, "")
		req.TTL = lease
		seat, err := st.ReserveSeat(ctx, req)
		must(t, err, "ReserveSeat %s", user)
		return seat
	}
	u1 := take(bcA, "u1", 10*time.Second)
	u2 := take(bcA, "u2", 20*time.Second)
	u3 := take(bcA, "u3", 30*time.Second)
	u4 := take(bcB, "u4", 5*time.Second)

	steps := []struct {
		now   time.Duration
		freed []store.Seat
		left  []store.Seat
	}{
		{9 * time.Second, nil, []store.Seat{u1, u2, u3}},
		{15 * time.Second, []store.Seat{u1}, []store.Seat{u2, u3}},
		{15 * time.Second, nil, []store.Seat{u2, u3}},
		{20*time.Second - time.Millisecond, nil, []store.Seat{u2, u3}},
		{20 * time.Second, []store.Seat{u2}, []store.Seat{u3}}, // a lease ends at ExpiresAt
	}
	for _, step := range steps {
		freed, err := st.ExpireSeats(ctx, bcA, at(step.now))
		must(t, err, "ExpireSeats at %v", step.now)
		eqSeatSet(t, fmt.Sprintf("ExpireSeats at %v", step.now), freed, step.freed)
		eqList(t, fmt.Sprintf("ListSeats after ExpireSeats at %v", step.now), listSeats(t, st, bcA), step.left, normSeat)
		wantSeats(t, st, s.Arn, len(step.left))
	}
	eqList(t, "another broadcast's expired seat is not freed", listSeats(t, st, bcB), []store.Seat{u4}, normSeat)
	wantSeats(t, st, sb.Arn, 1)

	// A renewed lease is not expired; the renewal's end (now + ttl, not
	// the old end + ttl nor the take + ttl) is, to the millisecond.
	_, err = st.RenewSeat(ctx, bcA, "u3", owner("u3"), at(25*time.Second), time.Minute)
	must(t, err, "RenewSeat")
	freed, err = st.ExpireSeats(ctx, bcA, at(85*time.Second-time.Millisecond))
	must(t, err, "ExpireSeats")
	if len(freed) != 0 {
		t.Fatalf("ExpireSeats freed a renewed seat before its lease ended: %+v", freed)
	}
	freed, err = st.ExpireSeats(ctx, bcA, at(85*time.Second))
	must(t, err, "ExpireSeats")
	if len(freed) != 1 || freed[0].UserID != "u3" {
		t.Fatalf("ExpireSeats after the renewed lease freed %+v, want u3's seat", freed)
	}
	wantSeats(t, st, s.Arn, 0)
	_, err = st.ReleaseSeat(ctx, bcA, "u3")
	wantErr(t, err, store.ErrNotFound, "ReleaseSeat of an expired seat")

	freed, err = st.ExpireSeats(ctx, bcB, at(time.Hour))
	must(t, err, "ExpireSeats of the other broadcast")
	eqSeatSet(t, "ExpireSeats of the other broadcast", freed, []store.Seat{u4})
	wantSeats(t, st, sb.Arn, 0)
}

func testListSeats(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	if seats := listSeats(t, st, bcA); len(seats) != 0 {
		t.Fatalf("empty store lists seats %+v", seats)
	}
	putStages(t, st, stageRec("s1", bcA, 10, true, 0), stageRec("s2", bcA, 10, true, time.Second), stageRec("sb", bcB, 10, true, 0))
	take := func(b, user, stageArn string, now time.Duration) store.Seat {
		req := seatReq(b, user, stageArn)
		req.Now = at(now)
		seat, err := st.ReserveSeat(ctx, req)
		must(t, err, "ReserveSeat %s", user)
		return seat
	}
	ua := take(bcA, "u-a", arn("s1"), 2*time.Second)
	uc := take(bcA, "u-c", arn("s2"), time.Second)
	ub := take(bcA, "u-b", arn("s1"), time.Second)
	ud := take(bcB, "u-d", "", 0)
	eqList(t, "ListSeats (by TakenAt, then UserID)", listSeats(t, st, bcA), []store.Seat{ub, uc, ua}, normSeat)
	eqList(t, "ListSeats of the other broadcast", listSeats(t, st, bcB), []store.Seat{ud}, normSeat)
	if seats := listSeats(t, st, "no-such-broadcast"); len(seats) != 0 {
		t.Fatalf("unknown broadcast lists seats %+v", seats)
	}
}

func testFirstSeen(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	// short is long enough that the first steps run well within it, even
	// on a loaded machine under -race.
	const short = 200 * time.Millisecond
	seen := func(id string, d time.Duration) bool {
		t.Helper()
		first, err := st.FirstSeen(ctx, id, d)
		must(t, err, "FirstSeen %s", id)
		return first
	}
	steps := []struct {
		id   string
		ttl  time.Duration
		want bool
	}{
		{"e1", short, true},
		{"e1", short, false},
		{"e1", short, false},
		{"e2", short, true},
		{"long", time.Hour, true},
		{"long", time.Hour, false},
		// Ids of the most bytes the API takes, alike but for the last.
		{strings.Repeat("x", 255) + "a", time.Hour, true},
		{strings.Repeat("x", 255) + "b", time.Hour, true},
		{strings.Repeat("x", 255) + "a", time.Hour, false},
	}
	for i, s := range steps {
		if got := seen(s.id, s.ttl); got != s.want {
			t.Fatalf("step %d: FirstSeen(%s) = %v, want %v", i, s.id, got, s.want)
		}
	}
	time.Sleep(2 * short)
	after := []struct {
		id   string
		want bool
	}{
		{"e1", true}, // forgotten after its ttl
		{"e1", false},
		{"e2", true},
		{"long", false},
		{"e3", true},
	}
	for i, s := range after {
		if got := seen(s.id, short); got != s.want {
			t.Fatalf("after the ttl, step %d: FirstSeen(%s) = %v, want %v", i, s.id, got, s.want)
		}
	}
}

// smallEventLimit is the event limit of testEventLimit's store.
const smallEventLimit = 10

// testEventLimit records more event ids than the store keeps, in a
// shuffled order, each with a TTL longer than the id before it by far more
// than the test takes: the ids expiring last are kept, the others are
// forgotten (new again) whatever order they came in.
func testEventLimit(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	seen := func(id string, d time.Duration) bool {
		t.Helper()
		first, err := st.FirstSeen(ctx, id, d)
		must(t, err, "FirstSeen %s", id)
		return first
	}
	const n = 3 * smallEventLimit
	id := func(i int) string { return fmt.Sprintf("limited-%02d", i) }
	life := func(i int) time.Duration { return time.Hour + time.Duration(i)*time.Minute }
	for _, i := range rand.New(rand.NewPCG(3, 5)).Perm(n) {
		if !seen(id(i), life(i)) {
			t.Fatalf("FirstSeen(%s): a new id reported seen", id(i))
		}
	}
	// kept checks that id(from) to id(to-1) are remembered.
	kept := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			if seen(id(i), life(i)) {
				t.Fatalf("FirstSeen(%s) = true: one of the %d ids expiring last was forgotten", id(i), smallEventLimit)
			}
		}
	}
	kept(n-smallEventLimit, n)
	// Each forgotten id is new again and, expiring first, forgotten at once:
	// it pushes none of the kept ones out.
	for i := range n - smallEventLimit {
		if !seen(id(i), life(i)) {
			t.Fatalf("FirstSeen(%s) = false past the limit of %d ids, though it expires before %d others", id(i), smallEventLimit, smallEventLimit)
		}
	}
	kept(n-smallEventLimit, n)
	// A forgotten id leaves room, even for one expiring before all others.
	must(t, st.ForgetEvent(ctx, id(n-1)), "ForgetEvent")
	if !seen("short", time.Hour) || seen("short", time.Hour) {
		t.Fatal("an id recorded once there was room is not remembered")
	}
	kept(n-smallEventLimit, n-1)
}

func testPing(t *testing.T, st store.Store) {
	must(t, st.Ping(testCtx(t)), "Ping")
}

// start runs n goroutines that begin together; it returns when all are done.
func start(n int, f func(i int)) {
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-gate
			f(i)
		})
	}
	close(gate)
	wg.Wait()
}

// watchCapacity polls the stages until stop is closed, reporting any above
// its capacity; it returns how many polls it made.
func watchCapacity(t *testing.T, st store.Store, arns []string, stop <-chan struct{}) <-chan int {
	polls := make(chan int, 1)
	go func() {
		n := 0
		defer func() { polls <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, a := range arns {
				s, err := st.GetStage(context.Background(), a)
				if err != nil {
					t.Errorf("GetStage %s during the storm: %v", a, err)
					return
				}
				if s.Seats > s.Capacity || s.Seats < 0 {
					t.Errorf("stage %s holds %d seats, capacity %d", a, s.Seats, s.Capacity)
				}
			}
			n++
		}
	}()
	return polls
}

// stopWatch stops a capacity watcher, failing the test if it never looked:
// a storm the watcher did not see checks nothing.
func stopWatch(t *testing.T, stop chan struct{}, polls <-chan int) {
	t.Helper()
	close(stop)
	if n := <-polls; n == 0 {
		t.Errorf("the capacity watcher never polled")
	}
}

func testReserveStorm(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	const (
		perStage = 50
		viewers  = 1000
	)
	var arns []string
	for i := range 3 {
		s := stageRec(fmt.Sprintf("storm%d", i), bcA, perStage, true, time.Duration(i)*time.Second)
		putStages(t, st, s)
		arns = append(arns, s.Arn)
	}
	closed := stageRec("closed", bcA, perStage, false, 0)
	putStages(t, st, closed)

	var seated, full atomic.Int64
	seats := make([]store.Seat, viewers)
	stop := make(chan struct{})
	polls := watchCapacity(t, st, append(slices.Clone(arns), closed.Arn), stop)
	start(viewers, func(i int) {
		seat, err := st.ReserveSeat(ctx, seatReq(bcA, fmt.Sprintf("viewer-%04d", i), ""))
		switch {
		case err == nil:
			seated.Add(1)
			seats[i] = seat
		case errors.Is(err, store.ErrFull):
			full.Add(1)
		default:
			t.Errorf("viewer %d: %v", i, err)
		}
	})
	stopWatch(t, stop, polls)

	if seated.Load() != 3*perStage || full.Load() != viewers-3*perStage {
		t.Fatalf("%d seated and %d refused as full, want %d and %d", seated.Load(), full.Load(), 3*perStage, viewers-3*perStage)
	}
	perArn := checkCounts(t, st, bcA)
	for _, a := range arns {
		if perArn[a] != perStage {
			t.Errorf("stage %s holds %d seats, want %d", a, perArn[a], perStage)
		}
		wantSeats(t, st, a, perStage)
	}
	wantSeats(t, st, closed.Arn, 0)
	pids := map[string]bool{}
	for i, s := range seats {
		if s.StageArn == "" {
			continue
		}
		if s.UserID != fmt.Sprintf("viewer-%04d", i) || pids[s.ParticipantID] {
			t.Errorf("seat %+v is not viewer %d's own", s, i)
		}
		pids[s.ParticipantID] = true
	}
	if got := len(listSeats(t, st, bcA)); got != 3*perStage {
		t.Fatalf("ListSeats shows %d seats, want %d", got, 3*perStage)
	}
}

func testConcurrentSameUser(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	putStages(t, st, stageRec("a", bcA, 10, true, 0), stageRec("b", bcA, 10, true, 0))
	const n = 200
	seats := make([]store.Seat, n)
	start(n, func(i int) {
		req := seatReq(bcA, "same", "")
		req.ParticipantID = fmt.Sprintf("p-%d", i)
		seat, err := st.ReserveSeat(ctx, req)
		if err != nil {
			t.Errorf("ReserveSeat %d: %v", i, err)
		}
		seats[i] = seat
	})
	for i, s := range seats {
		if s.StageArn != seats[0].StageArn || s.ParticipantID != seats[0].ParticipantID {
			t.Fatalf("the same viewer got two seats: %+v and %+v (call %d)", seats[0], s, i)
		}
	}
	if got := len(listSeats(t, st, bcA)); got != 1 {
		t.Fatalf("ListSeats shows %d seats of one viewer", got)
	}
	perArn := checkCounts(t, st, bcA)
	if perArn[arn("a")]+perArn[arn("b")] != 1 {
		t.Fatalf("one viewer holds seats %v", perArn)
	}
}

func testReserveReleaseStorm(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	var arns []string
	for i := range 3 {
		s := stageRec(fmt.Sprintf("rr%d", i), bcA, 10, true, 0)
		putStages(t, st, s)
		arns = append(arns, s.Arn)
	}
	const (
		workers = 64
		rounds  = 150
	)
	stop := make(chan struct{})
	polls := watchCapacity(t, st, arns, stop)
	var seated, full, released atomic.Int64
	start(workers, func(w int) {
		rng := rand.New(rand.NewPCG(uint64(w), 1))
		for r := range rounds {
			// Few users per worker, so that a viewer often asks again while
			// seated.
			user := fmt.Sprintf("w%d-u%d", w, rng.IntN(4))
			req := seatReq(bcA, user, "")
			req.ParticipantID = fmt.Sprintf("p-%d-%d", w, r)
			if rng.IntN(4) == 0 {
				req.StageArn = arns[rng.IntN(len(arns))]
			}
			_, err := st.ReserveSeat(ctx, req)
			switch {
			case err == nil:
				seated.Add(1)
			case errors.Is(err, store.ErrFull):
				full.Add(1)
			default:
				t.Errorf("ReserveSeat: %v", err)
				return
			}
			if rng.IntN(2) == 0 {
				_, err := st.ReleaseSeat(ctx, bcA, user)
				switch {
				case err == nil:
					released.Add(1)
				case !errors.Is(err, store.ErrNotFound):
					t.Errorf("ReleaseSeat: %v", err)
					return
				}
			}
		}
	})
	stopWatch(t, stop, polls)
	if seated.Load() == 0 || full.Load() == 0 || released.Load() == 0 {
		t.Fatalf("the storm did not contend: %d seated, %d full, %d released", seated.Load(), full.Load(), released.Load())
	}
	perArn := checkCounts(t, st, bcA)
	total := 0
	for _, n := range perArn {
		total += n
	}
	if total != len(listSeats(t, st, bcA)) || total > 30 {
		t.Fatalf("%d seats after the storm (%v)", total, perArn)
	}
	// Everyone leaves: every stage is empty again.
	for _, s := range listSeats(t, st, bcA) {
		_, err := st.ReleaseSeat(ctx, bcA, s.UserID)
		must(t, err, "ReleaseSeat %s", s.UserID)
	}
	for _, a := range arns {
		wantSeats(t, st, a, 0)
	}
}

// testLeaseExpiryStorm seats, renews and releases viewers while ExpireSeats
// runs: every seat is freed at most once, the expired ones are exactly those
// whose lease ended, and the counts hold.
func testLeaseExpiryStorm(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	var arns []string
	for i := range 3 {
		s := stageRec(fmt.Sprintf("le%d", i), bcA, 20, true, 0)
		putStages(t, st, s)
		arns = append(arns, s.Arn)
	}
	const viewers = 300
	expiryAt := at(2 * time.Second)
	var (
		mu       sync.Mutex
		taken    = map[string]bool{}
		freed    = map[string]int{}
		renewed  = map[string]bool{}
		expired  = map[string]bool{}
		expiries atomic.Int64
	)
	free := func(user, how string) {
		mu.Lock()
		defer mu.Unlock()
		freed[user]++
		if how == "expired" {
			expired[user] = true
		}
	}
	stop := make(chan struct{})
	polls := watchCapacity(t, st, arns, stop)
	expirerDone := make(chan struct{})
	go func() {
		defer close(expirerDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			seats, err := st.ExpireSeats(ctx, bcA, expiryAt)
			if err != nil {
				t.Errorf("ExpireSeats: %v", err)
				return
			}
			expiries.Add(1)
			for _, s := range seats {
				free(s.UserID, "expired")
			}
		}
	}()
	start(viewers, func(i int) {
		user := fmt.Sprintf("v%03d", i)
		req := seatReq(bcA, user, "")
		req.TTL = time.Second // ends before expiryAt
		if i%2 == 1 {
			req.TTL = time.Hour
		}
		_, err := st.ReserveSeat(ctx, req)
		if errors.Is(err, store.ErrFull) {
			return
		}
		if err != nil {
			t.Errorf("ReserveSeat %s: %v", user, err)
			return
		}
		mu.Lock()
		taken[user] = true
		mu.Unlock()
		switch i % 6 {
		case 0, 1:
			if _, err := st.ReleaseSeat(ctx, bcA, user); err == nil {
				free(user, "released")
			} else if !errors.Is(err, store.ErrNotFound) {
				t.Errorf("ReleaseSeat %s: %v", user, err)
			}
		case 2:
			if _, err := st.RenewSeat(ctx, bcA, user, owner(user), base, time.Hour); err == nil {
				mu.Lock()
				renewed[user] = true
				mu.Unlock()
			} else if !errors.Is(err, store.ErrNotFound) {
				t.Errorf("RenewSeat %s: %v", user, err)
			}
		}
	})
	stopWatch(t, stop, polls)
	<-expirerDone
	if expiries.Load() == 0 {
		t.Fatal("ExpireSeats never ran during the storm")
	}
	last, err := st.ExpireSeats(ctx, bcA, expiryAt)
	must(t, err, "ExpireSeats")
	for _, s := range last {
		free(s.UserID, "expired")
	}

	// A viewer is refused only when all 60 seats are taken.
	if len(taken) < 60 {
		t.Errorf("only %d seats taken in all, fewer than the 60 there are", len(taken))
	}
	if len(expired) == 0 {
		t.Errorf("no seat expired")
	}
	for user, n := range freed {
		if n > 1 {
			t.Errorf("seat of %s freed %d times", user, n)
		}
		if !taken[user] {
			t.Errorf("seat of %s freed but never taken", user)
		}
	}
	for user := range expired {
		var i int
		fmt.Sscanf(user, "v%d", &i)
		if i%2 == 1 || renewed[user] {
			t.Errorf("seat of %s expired though its lease had not ended", user)
		}
	}
	left := listSeats(t, st, bcA)
	var want []string
	for user := range taken {
		if freed[user] == 0 {
			want = append(want, user)
		}
	}
	slices.Sort(want)
	if got := seatUsers(left); !slices.Equal(got, want) {
		t.Fatalf("seats left %v, want those taken and not freed %v", got, want)
	}
	for _, s := range left {
		if !s.ExpiresAt.After(expiryAt) {
			t.Errorf("seat %+v left though its lease ended", s)
		}
	}
	checkCounts(t, st, bcA)
}

// A viewer whose stage stopped serving (its host replication stopped, or it
// is draining) is seated again elsewhere instead of keeping a dead seat.
func testReserveMovesOffUnseatable(t *testing.T, st store.Store) {
	a := stageRec("moveA", "b", 10, true, 0)
	b := stageRec("moveB", "b", 10, true, time.Second)
	putStages(t, st, a, b)
	first := reserve(t, st, "b", "u", a.Arn)
	must(t, st.SetSeatable(testCtx(t), a.Arn, false), "SetSeatable")
	again := reserve(t, st, "b", "u", "")
	if again.StageArn != b.Arn {
		t.Fatalf("seat after its stage stopped serving is on %s, want %s", again.StageArn, b.Arn)
	}
	wantSeats(t, st, a.Arn, 0)
	wantSeats(t, st, b.Arn, 1)
	if first.StageArn != a.Arn {
		t.Fatalf("first seat on %s, want %s", first.StageArn, a.Arn)
	}
}

func testForgetEvent(t *testing.T, st store.Store) {
	ctx := testCtx(t)
	first, err := st.FirstSeen(ctx, "ev", time.Hour)
	must(t, err, "FirstSeen")
	if !first {
		t.Fatal("a new event id is not first")
	}
	must(t, st.ForgetEvent(ctx, "ev"), "ForgetEvent")
	first, err = st.FirstSeen(ctx, "ev", time.Hour)
	must(t, err, "FirstSeen after ForgetEvent")
	if !first {
		t.Fatal("an event id forgotten is still seen")
	}
	must(t, st.ForgetEvent(ctx, "never-seen"), "ForgetEvent of an unknown id")
}
