package redis_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stagefleet/stagefleet/internal/redistest"
	"github.com/stagefleet/stagefleet/internal/store"
	"github.com/stagefleet/stagefleet/internal/store/redis"
)

// groupedStages records broadcast b and one seatable stage of capacity per
// group, named g0, g1, ...: a new stage goes to the group with the fewest.
func groupedStages(t *testing.T, st *redis.Store, b string, groups, capacity int) []string {
	t.Helper()
	createBroadcast(t, st, b)
	var arns []string
	for g := range groups {
		arn := redis.StageArn(fmt.Sprintf("%s-g%d", b, g))
		must(t, st.PutStage(t.Context(), store.Stage{Arn: arn, BroadcastID: b, Role: store.RoleReplica, Capacity: capacity, Seatable: true, CreatedAt: time.Now()}))
		if got, err := redis.StageGroup(t.Context(), st, arn); err != nil || got != g {
			t.Fatalf("stage %d went to group %d (%v), want the group with the fewest stages, %d", g, got, err, g)
		}
		arns = append(arns, arn)
	}
	return arns
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// awayEntries counts the entries of every away hash under prefix.
func awayEntries(t *testing.T, rdb *goredis.Client, prefix string) int64 {
	t.Helper()
	keys, err := rdb.Keys(t.Context(), prefix+":*away").Result()
	must(t, err)
	var n int64
	for _, k := range keys {
		n += rdb.HLen(t.Context(), k).Val()
	}
	return n
}

// Viewers whose home group is full are seated in the next group with
// room, and found there again by every seat operation: a join gets the same
// seat back, a renewal with or without its stage renews it, a read finds
// it, a leave frees it and the expiry sweep frees the rest; no claim is
// left behind, and the end leaves no key of any group.
func TestGroupedOverflow(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	st := redis.New(rdb, "ov", redis.WithSeatGroups(4), redis.WithSeatBatching())
	ctx := t.Context()
	createBroadcast(t, st, "b")
	// One stage, in group 0: every viewer homed elsewhere overflows.
	only := redis.StageArn("only")
	must(t, st.PutStage(ctx, store.Stage{Arn: only, BroadcastID: "b", Role: store.RoleOrigin, Capacity: 40, Seatable: true, CreatedAt: time.Now()}))
	now := time.Now().Truncate(time.Millisecond)
	counter := &redistest.CommandCounter{}
	rdb.AddHook(counter)
	var away int
	for i := range 40 {
		user := fmt.Sprintf("v%d", i)
		// Past the first join away, this instance asks the group where
		// it last found room first: a join away is the home group's
		// answer, the seat, and the claim.
		calls := int64(1)
		if redis.HomeGroup(user, 4) != 0 {
			away++
			calls = 3
		}
		counter.Reset()
		seat, err := st.ReserveSeat(ctx, store.SeatRequest{BroadcastID: "b", UserID: user, ParticipantID: "p-" + user, Now: now, TTL: time.Minute})
		if err != nil || seat.StageArn != only || seat.StageSeats != i+1 {
			t.Fatalf("join %d: %+v, %v; want seat %d on %s", i, seat, err, i+1, only)
		}
		if got := counter.Count(); away > 1 && got != calls {
			t.Errorf("join %d (home %d) took %d script calls, want %d", i, redis.HomeGroup(user, 4), got, calls)
		}
	}
	if away < 20 {
		t.Fatalf("only %d of 40 viewers are homed away from group 0: the test proves little", away)
	}
	if got := awayEntries(t, rdb, "ov"); got != int64(away) {
		t.Fatalf("%d claims recorded at home, want one per viewer seated away from home (%d)", got, away)
	}
	if _, err := st.ReserveSeat(ctx, store.SeatRequest{BroadcastID: "b", UserID: "late", ParticipantID: "p", Now: now, TTL: time.Minute}); !errors.Is(err, store.ErrFull) {
		t.Fatalf("a join with every group full: %v, want ErrFull", err)
	}
	for i := range 40 {
		user := fmt.Sprintf("v%d", i)
		again, err := st.ReserveSeat(ctx, store.SeatRequest{BroadcastID: "b", UserID: user, ParticipantID: "other", Now: now, TTL: 2 * time.Minute})
		if err != nil || again.StageArn != only || again.ParticipantID != "p-"+user || !again.ExpiresAt.Equal(now.Add(2*time.Minute)) {
			t.Fatalf("%s joining again: %+v, %v; want its own seat, renewed", user, again, err)
		}
		for _, owner := range []store.SeatOwner{{ParticipantID: "p-" + user, StageArn: only}, {ParticipantID: "p-" + user}} {
			if _, err := st.RenewSeat(ctx, "b", user, owner, now, 3*time.Minute); err != nil {
				t.Fatalf("%s renewing as %+v: %v", user, owner, err)
			}
		}
		if _, err := st.RenewSeat(ctx, "b", user, store.SeatOwner{ParticipantID: "someone-else"}, now, time.Minute); !errors.Is(err, store.ErrNotOwner) {
			t.Fatalf("%s's seat renewed by another participant: %v, want ErrNotOwner", user, err)
		}
		if got, err := st.GetSeat(ctx, "b", user); err != nil || got.UserID != user {
			t.Fatalf("GetSeat(%s) = %+v, %v", user, got, err)
		}
	}
	if got, err := st.GetStage(ctx, only); err != nil || got.Seats != 40 {
		t.Fatalf("the stage holds %d seats (%v) after every viewer joined again, want 40", got.Seats, err)
	}
	for i := range 10 {
		user := fmt.Sprintf("v%d", i)
		if _, err := st.ReleaseSeat(ctx, "b", user); err != nil {
			t.Fatalf("ReleaseSeat(%s): %v", user, err)
		}
		if _, err := st.GetSeat(ctx, "b", user); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("GetSeat(%s) after leaving: %v, want ErrNotFound", user, err)
		}
		if _, err := st.ReleaseSeat(ctx, "b", user); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("ReleaseSeat(%s) twice: %v, want ErrNotFound", user, err)
		}
	}
	freed, err := st.ExpireSeats(ctx, "b", now.Add(time.Hour))
	if err != nil || len(freed) != 30 {
		t.Fatalf("ExpireSeats freed %d (%v), want the 30 left", len(freed), err)
	}
	if got := awayEntries(t, rdb, "ov"); got != 0 {
		t.Fatalf("%d claims left after every seat was freed", got)
	}
	// A lease of no broadcast leaves no group keys behind.
	if _, err := st.AcquireLease(ctx, "#all", "reconcile", "me", time.Minute); err != nil {
		t.Fatal(err)
	}
	if keys, err := rdb.Keys(ctx, "ov:{#all#*").Result(); err != nil || len(keys) > 0 {
		t.Fatalf("a lease of no broadcast wrote %q (%v)", keys, err)
	}
	l, err := st.AcquireLease(ctx, "b", "control", "me", time.Minute)
	must(t, err)
	if _, err := st.DeleteBroadcast(store.WithFence(ctx, l), "b"); err != nil {
		t.Fatalf("DeleteBroadcast: %v", err)
	}
	keys, err := rdb.Keys(ctx, "ov:*").Result()
	must(t, err)
	slices.Sort(keys)
	want := []string{"ov:{#all}:lease-tokens", "ov:{#all}:lease:reconcile", "ov:{b}:lease-tokens", "ov:{b}:lease:control"}
	for _, k := range keys {
		// The groups' fence floors stay, as the leases do.
		if !slices.Contains(want, k) && !strings.HasSuffix(k, ":floors") {
			t.Errorf("key %s is left after DeleteBroadcast; want the leases' and the groups' floors only", k)
		}
	}
}

// A viewer whose seat is in another group, on a stage that stops taking
// viewers, moves to a stage with room in any group once there is one, and
// the old seat comes back as Replaced (for its session to close).
func TestGroupedMoveOffClosedStage(t *testing.T) {
	srv := redistest.Start(t)
	st := redis.New(srv.Client(t), "mv", redis.WithSeatGroups(3))
	ctx := t.Context()
	arns := groupedStages(t, st, "b", 3, 5)
	// A viewer homed in group 1, seated in group 2 (groups 0 and 1 full).
	user := redis.HomedAt(1, 3)
	for _, arn := range arns[:2] {
		for i := range 5 {
			if _, err := st.ReserveSeat(ctx, store.SeatRequest{BroadcastID: "b", UserID: fmt.Sprintf("fill-%s-%d", arn, i), StageArn: arn, Now: time.Now(), TTL: time.Hour}); err != nil {
				t.Fatal(err)
			}
		}
	}
	seat, err := st.ReserveSeat(ctx, store.SeatRequest{BroadcastID: "b", UserID: user, ParticipantID: "p", Now: time.Now(), TTL: time.Hour})
	if err != nil || seat.StageArn != arns[2] {
		t.Fatalf("seated on %s (%v), want %s, the only group with room", seat.StageArn, err, arns[2])
	}
	must(t, st.SetSeatable(ctx, arns[2], false))
	if again, err := st.ReserveSeat(ctx, store.SeatRequest{BroadcastID: "b", UserID: user, ParticipantID: "p", Now: time.Now(), TTL: time.Hour}); !errors.Is(err, store.ErrFull) {
		t.Fatalf("a join with no stage open with room: %+v, %v; want ErrFull, the old seat kept", again, err)
	}
	if _, err := st.GetSeat(ctx, "b", user); err != nil {
		t.Fatalf("the old seat is gone after a join that found no room: %v", err)
	}
	// Room in group 0: the viewer moves there.
	if _, err := st.ReleaseSeat(ctx, "b", "fill-"+arns[0]+"-0"); err != nil {
		t.Fatal(err)
	}
	moved, err := st.ReserveSeat(ctx, store.SeatRequest{BroadcastID: "b", UserID: user, ParticipantID: "p", Now: time.Now(), TTL: time.Hour})
	if err != nil || moved.StageArn != arns[0] || moved.Replaced == nil || moved.Replaced.StageArn != arns[2] {
		t.Fatalf("moved to %+v, %v; want a seat on %s replacing the one on %s", moved, err, arns[0], arns[2])
	}
	if got, err := st.GetStage(ctx, arns[2]); err != nil || got.Seats != 0 {
		t.Fatalf("the closed stage holds %d seats (%v) after its viewer moved, want 0", got.Seats, err)
	}
	if got, err := st.GetSeat(ctx, "b", user); err != nil || got.StageArn != arns[0] {
		t.Fatalf("GetSeat after the move: %+v, %v; want the seat on %s", got, err, arns[0])
	}
}

// Many instances, each viewer joining from all of them at once while
// others leave, with fewer seats than viewers and room appearing and going
// in every group: capacity stays exact in every group, no viewer holds two
// seats, the joins of a viewer that never left agree on its seat, and no
// seat is lost: joining everyone once more fills every stage exactly. (The
// rare interleavings in which two joins of a viewer take seats in two
// groups are played step by step in groups_internal_test.go.)
func TestGroupedSameViewerStorm(t *testing.T) {
	srv := redistest.Start(t)
	const groups, capacity, viewers, instances = 4, 25, 160, 6
	var stores []*redis.Store
	for range instances {
		stores = append(stores, redis.New(goredis.NewClient(&goredis.Options{Addr: srv.Addr()}), "storm", redis.WithSeatGroups(groups), redis.WithSeatBatching()))
	}
	t.Cleanup(func() {
		for _, st := range stores {
			st.Close()
		}
	})
	ctx := t.Context()
	arns := groupedStages(t, stores[0], "b", groups, capacity)
	var mu sync.Mutex
	got := map[string][]string{} // viewer -> stages its successful joins answered
	left := map[string]bool{}
	// Every viewer joins from every instance at once; meanwhile leavers
	// free random seats, so that room comes and goes in every group and a
	// viewer's joins can find it in different groups.
	var wg sync.WaitGroup
	done := make(chan struct{})
	var leavers sync.WaitGroup
	for i := range 2 {
		leavers.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 3))
			for {
				select {
				case <-done:
					return
				default:
				}
				leaver := fmt.Sprintf("v%d", rng.IntN(viewers))
				mu.Lock()
				left[leaver] = true
				mu.Unlock()
				if _, err := stores[i].ReleaseSeat(ctx, "b", leaver); err != nil && !errors.Is(err, store.ErrNotFound) {
					t.Errorf("ReleaseSeat(%s): %v", leaver, err)
				}
				time.Sleep(200 * time.Microsecond)
			}
		})
	}
	for v := range viewers {
		user := fmt.Sprintf("v%d", v)
		for _, st := range stores {
			wg.Go(func() {
				seat, err := st.ReserveSeat(ctx, store.SeatRequest{BroadcastID: "b", UserID: user, ParticipantID: "p-" + user, Now: time.Now(), TTL: time.Hour})
				switch {
				case err == nil:
					mu.Lock()
					got[user] = append(got[user], seat.StageArn)
					mu.Unlock()
				case !errors.Is(err, store.ErrFull):
					t.Errorf("ReserveSeat(%s): %v", user, err)
				}
			})
		}
	}
	wg.Wait()
	close(done)
	leavers.Wait()
	for user, answers := range got {
		if !left[user] && len(slices.Compact(slices.Clone(answers))) != 1 {
			t.Errorf("viewer %s never left, and its joins answered different stages: %v", user, answers)
		}
	}
	check := func(when string) int {
		t.Helper()
		seats, err := stores[0].ListSeats(ctx, "b")
		must(t, err)
		perStage := map[string]int{}
		users := map[string]bool{}
		for _, s := range seats {
			if users[s.UserID] {
				t.Errorf("%s: viewer %s holds two seats", when, s.UserID)
			}
			users[s.UserID] = true
			perStage[s.StageArn]++
		}
		stages, err := stores[0].ListStages(ctx, "b")
		must(t, err)
		for _, s := range stages {
			if s.Seats > s.Capacity || s.Seats != perStage[s.Arn] {
				t.Errorf("%s: stage %s holds %d seats of %d, and %d are listed on it", when, s.Arn, s.Seats, s.Capacity, perStage[s.Arn])
			}
		}
		return len(seats)
	}
	check("after the storm")
	for v := range viewers {
		user := fmt.Sprintf("v%d", v)
		if _, err := stores[v%instances].ReserveSeat(ctx, store.SeatRequest{BroadcastID: "b", UserID: user, ParticipantID: "p-" + user, Now: time.Now(), TTL: time.Hour}); err != nil && !errors.Is(err, store.ErrFull) {
			t.Fatalf("ReserveSeat(%s) after the storm: %v", user, err)
		}
	}
	if n := check("after everyone joined once more"); n != groups*capacity {
		t.Errorf("%d seats held once everyone joined again, want all %d: seats were lost", n, groups*capacity)
	}
	for _, a := range arns {
		if s, err := stores[0].GetStage(ctx, a); err != nil || s.Seats != capacity {
			t.Errorf("stage %s holds %d of %d (%v) once everyone joined again", a, s.Seats, capacity, err)
		}
	}
}

// cancelAfter is a go-redis hook that cancels a context once n commands
// have been answered.
type cancelAfter struct {
	n      atomic.Int64
	cancel context.CancelFunc
}

func (c *cancelAfter) DialHook(next goredis.DialHook) goredis.DialHook { return next }

func (c *cancelAfter) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		err := next(ctx, cmd)
		if c.n.Add(-1) == 0 {
			c.cancel()
		}
		return err
	}
}

func (c *cancelAfter) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return next
}

// A join whose caller gives up while another group than home seats it
// leaves no seat that a read or a leave cannot reach: what it began there
// it finishes, claim included.
func TestGroupedJoinGivenUpLeavesNoHiddenSeat(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	st := redis.New(rdb, "gu", redis.WithSeatGroups(2), redis.WithSeatBatching())
	createBroadcast(t, st, "b")
	for g, capacity := range []int{0, 5} {
		must(t, st.PutStage(t.Context(), store.Stage{Arn: redis.StageArn(fmt.Sprintf("g%d", g)), BroadcastID: "b", Capacity: capacity, Seatable: true, CreatedAt: time.Now()}))
	}
	for i := range 20 {
		user := fmt.Sprintf("u%d", i)
		if redis.HomeGroup(user, 2) != 0 {
			continue
		}
		ctx, cancel := context.WithCancel(t.Context())
		hook := &cancelAfter{cancel: cancel}
		hook.n.Store(2) // the home group's answer, then group 1's
		rdb.AddHook(hook)
		_, err := st.ReserveSeat(ctx, store.SeatRequest{BroadcastID: "b", UserID: user, ParticipantID: "p", Now: time.Now(), TTL: time.Hour})
		hook.n.Store(-1 << 40) // done: never again
		cancel()
		// A renewal queued behind anything the join left in group 1's
		// batch: once it is answered, that is done too.
		if _, err := st.RenewSeat(t.Context(), "b", "nobody", store.SeatOwner{StageArn: redis.StageArn("g1")}, time.Now(), time.Hour); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("renewing no seat in group 1: %v", err)
		}
		seats, lerr := st.ListSeats(t.Context(), "b")
		must(t, lerr)
		held := slices.ContainsFunc(seats, func(s store.Seat) bool { return s.UserID == user })
		if _, gerr := st.GetSeat(t.Context(), "b", user); held != (gerr == nil) {
			t.Fatalf("%s: the join answered %v; a seat is held: %v, but GetSeat answers %v", user, err, held, gerr)
		}
	}
}

// TestGroupedScan: a scan over seats in every group never passes its
// count, returns every seat, and carries a short page on into the next
// group (with what the last HSCAN gave beyond the count in its cursor).
func TestGroupedScan(t *testing.T) {
	t.Parallel()
	const groups, perStage = 4, 100
	st := redis.New(redistest.Start(t).Client(t), "sc", redis.WithSeatGroups(groups))
	arns := groupedStages(t, st, "show", groups, perStage)
	for i := range groups * perStage {
		_, err := st.ReserveSeat(t.Context(), store.SeatRequest{BroadcastID: "show", UserID: fmt.Sprint("v", i), ParticipantID: fmt.Sprint("p", i),
			StageArn: arns[i%groups], Now: time.Now(), TTL: time.Hour})
		must(t, err)
	}
	for _, count := range []int{1, 7, 150} {
		seen, spanned := map[string]string{}, false
		cursor := ""
		for pages := 0; ; pages++ {
			page, next, err := st.ScanSeats(t.Context(), "show", cursor, count)
			must(t, err)
			if len(page) > count || pages > groups*perStage {
				t.Fatalf("count %d: page %d holds %d seats (or the scan does not end)", count, pages, len(page))
			}
			stages := map[string]bool{}
			for _, seat := range page {
				seen[seat.UserID], stages[seat.StageArn] = seat.StageArn, true
			}
			spanned = spanned || len(stages) > 1
			if cursor = next; cursor == "" {
				break
			}
		}
		if len(seen) != groups*perStage {
			t.Errorf("count %d: scanned %d of %d seats", count, len(seen), groups*perStage)
		}
		for i := range groups * perStage {
			if got := seen[fmt.Sprint("v", i)]; got != arns[i%groups] {
				t.Errorf("count %d: seat v%d scanned on %q, want %s", count, i, got, arns[i%groups])
				break
			}
		}
		if count > perStage && !spanned {
			t.Errorf("count %d above a group's %d seats: no page went on into the next group", count, perStage)
		}
	}
}
