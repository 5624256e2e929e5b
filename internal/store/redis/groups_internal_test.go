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

// The interleavings of two joins of one viewer that a storm rarely hits,
// played step by step: join B has taken a seat in some group and claims it
// at home after join A has already settled the viewer elsewhere. B gives
// its seat back and starts again, and the viewer keeps one seat: A's.
func TestClaimLosesToEarlierJoin(t *testing.T) {
	srv := redistest.Start(t)
	ctx := t.Context()
	const n = 3
	user := ""
	for i := 0; user == ""; i++ {
		if u := fmt.Sprintf("u%d", i); homeGroup(u, n) == 0 {
			user = u
		}
	}
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
			s := New(srv.Client(t), fmt.Sprintf("claim%d", i), WithSeatGroups(n))
			if _, err := s.CreateBroadcast(ctx, store.Broadcast{ID: "b"}); err != nil {
				t.Fatal(err)
			}
			var arns []string
			for g := range n {
				arn := fmt.Sprintf("arn:aws:ivs:us-east-1:123456789012:stage/g%d", g)
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
			seat, again, err := s.seatElsewhere(ctx, req, "broadcast b", lay, []int{2}, 0, "", any, &answers)
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
// meanwhile.
func TestClaimMovesFrom(t *testing.T) {
	srv := redistest.Start(t)
	s := New(srv.Client(t), "", WithSeatGroups(3))
	ctx := t.Context()
	home := s.bc("b")
	claim := func(g, from string) seatResult {
		return s.call(ctx, home, seatCall{name: "claim", args: []any{"u", g, from}})
	}
	steps := []struct {
		g, from, status, seat string
	}{
		{"1", "", "ok", ""},     // first claim: group 1
		{"2", "1", "ok", ""},    // moved from 1 to 2
		{"1", "", "away", "2"},  // a join that did not know of the move
		{"1", "0", "away", "2"}, // nor of where it went
		{"", "2", "ok", ""},     // back home, from 2
		{"2", "", "ok", ""},     // away again
		{"", "1", "away", "2"},  // home, from a group it was not in
		{"2", "2", "ok", ""},    // the same group again
		{"", "", "away", "2"},   // home, knowing of no seat away
	}
	for _, step := range steps {
		r := claim(step.g, step.from)
		if r.err != nil || r.status != step.status || r.seat != step.seat {
			t.Fatalf("claim(%q from %q) = %+v, want %s %q", step.g, step.from, r, step.status, step.seat)
		}
	}
	if r := s.call(ctx, home, seatCall{name: "unclaim", args: []any{"u", "1"}}); r.err != nil {
		t.Fatal(r.err)
	}
	if g, err := s.rdb.HGet(ctx, home.away(), "u").Result(); err != nil || g != "2" {
		t.Fatalf("an unclaim of group 1 took the claim of group 2: %q, %v", g, err)
	}
	if _, err := s.GetSeat(ctx, "b", "u"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetSeat with a claim of group 2 and no seat there: %v, want ErrNotFound", err)
	}
	if r := s.call(ctx, home, seatCall{name: "unclaim", args: []any{"u", "2"}}); r.err != nil {
		t.Fatal(r.err)
	}
	if n, err := s.rdb.HLen(ctx, home.away()).Result(); err != nil || n != 0 {
		t.Fatalf("%d claims left after the unclaim (%v), want none", n, err)
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
