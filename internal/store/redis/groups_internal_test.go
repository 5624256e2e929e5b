package redis

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stagefleet/stagefleet/internal/redistest"
	"github.com/stagefleet/stagefleet/internal/store"
)

// testArn is the ARN of a test stage.
func testArn(id string) string { return "arn:aws:ivs:us-east-1:123456789012:stage/" + id }

// homedAt is a user id whose home group of n is g.
func homedAt(g, n int) string {
	for i := 0; ; i++ {
		if u := fmt.Sprintf("u%d", i); homeGroup(u, n) == g {
			return u
		}
	}
}

// groupedBroadcast is a store on srv, its keys under prefix, whose
// broadcasts have n seat groups, with broadcast b recorded.
func groupedBroadcast(t *testing.T, srv *redistest.Server, prefix string, n int) *Store {
	t.Helper()
	s := New(srv.Client(t), prefix, WithSeatGroups(n))
	if _, err := s.CreateBroadcast(t.Context(), store.Broadcast{ID: "b"}); err != nil {
		t.Fatal(err)
	}
	return s
}

// The interleavings of two joins of one viewer that a storm rarely hits,
// played step by step: join B has taken a seat in some group and claims it
// at home after join A has already settled the viewer elsewhere. B gives
// its seat back and starts again, and the viewer keeps one seat: A's.
func TestClaimLosesToEarlierJoin(t *testing.T) {
	srv := redistest.Start(t)
	ctx := t.Context()
	const n = 3
	user := homedAt(0, n)
	req := store.SeatRequest{BroadcastID: "b", UserID: user, ParticipantID: "p", Now: time.Now(), TTL: time.Hour}
	any := func(int) string { return "" }

	tests := []struct {
		name string
		// home0 gives the home group room (A seats there) instead of
		// filling it (A seats in group 1).
		home0 bool
	}{
		{"A claimed a seat in another group", false},
		{"A took a seat at home", true},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := groupedBroadcast(t, srv, fmt.Sprintf("claim%d", i), n)
			var arns []string
			for g := range n {
				arn := testArn(fmt.Sprintf("g%d", g))
				capacity := 5
				if g == 0 && !tc.home0 {
					capacity = 0
				}
				if err := s.PutStage(ctx, store.Stage{Arn: arn, BroadcastID: "b", Capacity: capacity, Seatable: true, CreatedAt: time.Now()}); err != nil {
					t.Fatal(err)
				}
				arns = append(arns, arn)
			}
			a, err := s.ReserveSeat(ctx, req)
			if err != nil {
				t.Fatalf("join A: %v", err)
			}
			answers := []string{"full"}
			lay, err := s.layoutOf(ctx, "b")
			if err != nil {
				t.Fatal(err)
			}
			seat, again, err := s.seatElsewhere(ctx, req, "broadcast b", lay, []int{2}, claim{}, "", any, &answers)
			if err != nil || !again || seat.UserID != "" {
				t.Fatalf("join B's seat in group 2, claimed after A's: %+v, again %v, %v; want none and to start again", seat, again, err)
			}
			if st, err := s.GetStage(ctx, arns[2]); err != nil || st.Seats != 0 {
				t.Fatalf("group 2's stage holds %d seats (%v) after B gave its seat back, want 0", st.Seats, err)
			}
			b, err := s.ReserveSeat(ctx, req)
			if err != nil || b.StageArn != a.StageArn {
				t.Fatalf("join B again: %+v, %v; want A's seat on %s", b, err, a.StageArn)
			}
			seats, err := s.ListSeats(ctx, "b")
			if err != nil || len(seats) != 1 {
				t.Fatalf("the broadcast holds %d seats (%v), want the viewer's one", len(seats), err)
			}
		})
	}
}

// A claim moving a viewer's seat from the group the home group names to
// another takes the place of that name; it refuses when the name changed
// meanwhile. An unclaim forgets one seat's claim only, not a newer one's.
func TestClaimMovesFrom(t *testing.T) {
	srv := redistest.Start(t)
	s := New(srv.Client(t), "", WithSeatGroups(3))
	ctx := t.Context()
	home := s.bc("b")
	claim := func(at, from string) seatResult {
		return s.call(ctx, home, seatCall{name: "claim", args: []any{"u", at, from}})
	}
	steps := []struct {
		at, from, status, seat string
	}{
		{"1 100", "", "ok", ""},             // first claim: a seat in group 1
		{"2 200", "1 100", "ok", ""},        // moved from that seat to group 2
		{"1 300", "", "away", "2 200"},      // a join that did not know of the move
		{"1 300", "1 100", "away", "2 200"}, // nor that the seat had moved
		{"", "1 100", "away", "2 200"},      // home, moving from a seat no longer claimed
		{"", "2 200", "ok", ""},             // home, from the claimed seat
		{"2 400", "", "ok", ""},             // away again
		{"2 500", "2 400", "ok", ""},        // a newer seat in the same group
		{"2 600", "", "ok", ""},             // the same group, from wherever: the seat is there
		{"", "", "away", "2 600"},           // home, knowing of no seat away
	}
	for _, step := range steps {
		r := claim(step.at, step.from)
		if r.err != nil || r.status != step.status || r.seat != step.seat {
			t.Fatalf("claim(%q from %q) = %+v, want %s %q", step.at, step.from, r, step.status, step.seat)
		}
	}
	for _, old := range []string{"2 500", "1 100"} {
		if r := s.call(ctx, home, unclaimCall("u", old)); r.err != nil {
			t.Fatal(r.err)
		}
		if v, err := s.rdb.HGet(ctx, home.away(), "u").Result(); err != nil || v != "2 600" {
			t.Fatalf("the unclaim of seat %q took the claim of seat 2 600: %q, %v", old, v, err)
		}
	}
	if _, err := s.GetSeat(ctx, "b", "u"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetSeat with a claim of a seat in group 2 and none there: %v, want ErrNotFound", err)
	}
	if r := s.call(ctx, home, unclaimCall("u", "2 600")); r.err != nil {
		t.Fatal(r.err)
	}
	if n, err := s.rdb.HLen(ctx, home.away()).Result(); err != nil || n != 0 {
		t.Fatalf("%d claims left after the unclaim (%v), want none", n, err)
	}
}

// A seat freed away from home (by the sweep, a stage's deletion or an end)
// is forgotten at home after its script: meanwhile the viewer may join
// again and take a new seat in the same group. The late forgetting leaves
// the new seat's claim, so the seat stays found and freeable.
func TestLateUnclaimKeepsNewerSeat(t *testing.T) {
	s := groupedBroadcast(t, redistest.Start(t), "late", 3)
	ctx := t.Context()
	user := homedAt(0, 3)
	for g, capacity := range []int{0, 5, 0} {
		arn := testArn(fmt.Sprintf("g%d", g))
		if err := s.PutStage(ctx, store.Stage{Arn: arn, BroadcastID: "b", Capacity: capacity, Seatable: true, CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	lay, err := s.layoutOf(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	first, err := s.ReserveSeat(ctx, store.SeatRequest{BroadcastID: "b", UserID: user, ParticipantID: "p", Now: now, TTL: time.Hour})
	if err != nil || first.StageArn != testArn("g1") {
		t.Fatalf("first join: %+v, %v; want a seat in group 1", first, err)
	}
	// The freeing script, before its forgetting.
	if r := s.call(ctx, lay.group(1), releaseCall(user, "seat", "")); r.err != nil || r.status != "ok" {
		t.Fatalf("freeing the seat in group 1: %+v", r)
	}
	second, err := s.ReserveSeat(ctx, store.SeatRequest{BroadcastID: "b", UserID: user, ParticipantID: "p", Now: now.Add(time.Second), TTL: time.Hour})
	if err != nil || second.TakenAt.Equal(first.TakenAt) {
		t.Fatalf("joining again: %+v, %v; want a new seat", second, err)
	}
	s.forgetAway(ctx, lay, 1, []store.Seat{first})
	got, err := s.GetSeat(ctx, "b", user)
	if err != nil || !got.TakenAt.Equal(second.TakenAt) {
		t.Fatalf("GetSeat after the first seat was forgotten late: %+v, %v; want the new seat", got, err)
	}
	if _, err := s.ReleaseSeat(ctx, "b", user); err != nil {
		t.Fatalf("ReleaseSeat of the new seat: %v", err)
	}
	if st, err := s.GetStage(ctx, testArn("g1")); err != nil || st.Seats != 0 {
		t.Fatalf("group 1's stage holds %d seats (%v) after the leave, want 0", st.Seats, err)
	}
}

// A broadcast's seat groups take one part each of the slot space cut into
// as many equal parts, by Redis's own reckoning of their slots (CLUSTER
// KEYSLOT): on three masters holding equal runs of slots, six groups are
// two on each.
func TestLayoutSpreadsSlots(t *testing.T) {
	addrs := redistest.StartCluster(t)
	rdb := goredis.NewClient(&goredis.Options{Addr: addrs[0]})
	t.Cleanup(func() { rdb.Close() })
	s := New(rdb, "")
	for _, n := range []int{1, 2, 3, 6, 12, 64} {
		for _, id := range []string{"default", "b", "launch-night_2026"} {
			lay := s.newLayout(id, n)
			seen := map[int]bool{}
			for g := range n {
				key := lay.group(g).seats()
				want, err := rdb.ClusterKeySlot(t.Context(), key).Result()
				if err != nil {
					t.Fatal(err)
				}
				tag := key[strings.Index(key, "{")+1 : strings.Index(key, "}")]
				if got := slot(tag); got != int(want) {
					t.Fatalf("slot(%q) = %d, Redis says %d", tag, got, want)
				}
				part := int(want) * n / clusterSlots
				if seen[part] {
					t.Fatalf("%d groups of %s: group %d (%s) is in part %d of the slots, as another group", n, id, g, key, part)
				}
				seen[part] = true
			}
			if g0 := lay.group(0).seats(); g0 != s.bc(id).seats() {
				t.Fatalf("group 0's keys are %s, want the broadcast's own, %s", g0, s.bc(id).seats())
			}
		}
	}
}

// A viewer's seat away from home is on a stage that stopped taking
// viewers. Join A finds no room in that group and takes a seat at home;
// meanwhile join B finds room in the same group, moves the seat there and
// claims it. A's claim, made from the old seat, loses: A gives its seat
// back, and the viewer keeps B's.
func TestMoveFromStaleSeatLosesToNewerClaim(t *testing.T) {
	s := groupedBroadcast(t, redistest.Start(t), "stale", 3)
	ctx := t.Context()
	user := homedAt(0, 3)
	arn := testArn
	// Put in this order, the stages go to groups 0, 1, 2, 0, 1.
	for i, st := range []struct {
		id       string
		capacity int
		open     bool
		group    int
	}{{"home-full", 0, true, 0}, {"x", 5, true, 1}, {"z", 0, true, 2}, {"home", 5, false, 0}, {"y", 5, false, 1}} {
		if err := s.PutStage(ctx, store.Stage{Arn: arn(st.id), BroadcastID: "b", Capacity: st.capacity, Seatable: st.open, CreatedAt: time.Now().Add(time.Duration(i) * time.Second)}); err != nil {
			t.Fatal(err)
		}
		if ref, err := s.lookupStage(ctx, arn(st.id)); err != nil || ref.group != st.group {
			t.Fatalf("stage %s went to group %d (%v), want %d", st.id, ref.group, err, st.group)
		}
	}
	req := store.SeatRequest{BroadcastID: "b", UserID: user, ParticipantID: "p", Now: time.Now(), TTL: time.Hour}
	first, err := s.ReserveSeat(ctx, req)
	if err != nil || first.StageArn != arn("x") {
		t.Fatalf("first join: %+v, %v; want a seat on x, in group 1", first, err)
	}
	if err := s.SetSeatable(ctx, arn("x"), false); err != nil {
		t.Fatal(err)
	}
	lay, err := s.layoutOf(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	home := s.call(ctx, lay.group(0), reserveCall(req, "", "home"))
	if home.status != "away" {
		t.Fatalf("home group: %+v, want the claim away", home)
	}
	from, err := parseClaim(home.seat, 3)
	if err != nil {
		t.Fatal(err)
	}
	// A: no room in group 1 (x closed, y not open yet).
	a1 := s.call(ctx, lay.group(1), reserveCall(req, "", "seat"))
	if a1.status != "notlive" || a1.replaced == "" {
		t.Fatalf("A in group 1: %+v, want no open stage and the old seat", a1)
	}
	// B: y opens; B moves the seat within group 1 and claims it.
	if err := s.SetSeatable(ctx, arn("home"), true); err != nil {
		t.Fatal(err)
	}
	if err := s.SetSeatable(ctx, arn("y"), true); err != nil {
		t.Fatal(err)
	}
	reqB := req
	reqB.Now = req.Now.Add(time.Second)
	b1 := s.call(ctx, lay.group(1), reserveCall(reqB, "", "seat"))
	bSeat, again, err := s.claimSeat(ctx, reqB, "b", lay, 1, from, "", b1)
	if err != nil || again || bSeat.StageArn != arn("y") {
		t.Fatalf("B: %+v, again %v, %v; want the seat moved to y and claimed", bSeat, again, err)
	}
	// A: a seat at home, claimed from the old seat's claim.
	a2 := s.call(ctx, lay.group(0), reserveCall(req, "", "seat"))
	if a2.status != "ok" {
		t.Fatalf("A at home: %+v", a2)
	}
	aSeat, again, err := s.claimSeat(ctx, req, "b", lay, 0, from, a1.replaced, a2)
	if err != nil || !again || aSeat.UserID != "" {
		t.Fatalf("A's claim from the old seat: %+v, again %v, %v; want to start again", aSeat, again, err)
	}
	seats, err := s.ListSeats(ctx, "b")
	if err != nil || len(seats) != 1 || seats[0].StageArn != arn("y") {
		t.Fatalf("seats after both joins: %+v, %v; want B's only, on y", seats, err)
	}
	if got, err := s.ReserveSeat(ctx, req); err != nil || got.StageArn != arn("y") {
		t.Fatalf("A again: %+v, %v; want B's seat on y", got, err)
	}
}

// A claim left behind (its seat freed and the forgetting lost) names a
// group without the viewer's seat: the next join forgets it and looks at
// home first, as any join does.
func TestStaleClaimSendsJoinHome(t *testing.T) {
	s := groupedBroadcast(t, redistest.Start(t), "sc", 2)
	ctx := t.Context()
	user := homedAt(0, 2)
	for g := range 2 {
		if err := s.PutStage(ctx, store.Stage{Arn: testArn(fmt.Sprintf("g%d", g)), BroadcastID: "b", Capacity: 5, Seatable: true, CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	home := s.bc("b")
	if err := s.rdb.HSet(ctx, home.away(), user, "1 12345").Err(); err != nil {
		t.Fatal(err)
	}
	seat, err := s.ReserveSeat(ctx, store.SeatRequest{BroadcastID: "b", UserID: user, ParticipantID: "p", Now: time.Now(), TTL: time.Hour})
	if err != nil || seat.StageArn != testArn("g0") {
		t.Fatalf("a join with a claim left behind: %+v, %v; want a seat at home, in group 0", seat, err)
	}
	if n, err := s.rdb.HLen(ctx, home.away()).Result(); err != nil || n != 0 {
		t.Fatalf("%d claims left (%v), want the stale one forgotten", n, err)
	}
}

// BenchmarkNewLayout names a broadcast's seat groups, which a store does
// once per broadcast it knows, and on every operation on an id that is no
// broadcast.
func BenchmarkNewLayout(b *testing.B) {
	s := New(nil, "")
	for _, n := range []int{6, 64} {
		b.Run(fmt.Sprintf("groups=%d", n), func(b *testing.B) {
			for b.Loop() {
				s.newLayout("launch-night_2026", n)
			}
		})
	}
}

// slot is Redis Cluster's hash slot of a hash tag, from the CRC newLayout
// uses: the test checks it against CLUSTER KEYSLOT.
func slot(tag string) int { return int(crc16(0, tag)) % clusterSlots }
