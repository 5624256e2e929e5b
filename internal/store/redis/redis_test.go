package redis_test

import (
	"errors"
	"fmt"
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
	"github.com/stagefleet/stagefleet/internal/store/storetest"
)

func TestConformance(t *testing.T) {
	srv := redistest.Start(t)
	var n atomic.Int64
	storetest.Run(t, func(_ *testing.T, eventLimit int) store.Store {
		// Each store gets its own prefix: the subtests share one server.
		rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
		return redis.New(rdb, fmt.Sprintf("test%d", n.Add(1)), redis.WithEventLimit(eventLimit))
	}, nil)
}

// seatGroups is how the suite sees a store made WithSeatGroups(n).
func seatGroups(n int) *storetest.Groups {
	return &storetest.Groups{
		Of: func(t *testing.T, st store.Store, arn string) int {
			t.Helper()
			g, err := redis.StageGroup(t.Context(), st, arn)
			if err != nil {
				t.Fatalf("the group of stage %s: %v", arn, err)
			}
			return g
		},
		Home: func(user string) int { return redis.HomeGroup(user, n) },
	}
}

// TestConformanceGrouped runs the suite with every broadcast's seats split
// over three groups, batched: one slot's scripts per group, the claims at
// home, and the sweeps, lists and totals over every group.
func TestConformanceGrouped(t *testing.T) {
	srv := redistest.Start(t)
	var n atomic.Int64
	storetest.Run(t, func(_ *testing.T, eventLimit int) store.Store {
		rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
		return redis.New(rdb, fmt.Sprintf("grouped%d", n.Add(1)), redis.WithEventLimit(eventLimit), redis.WithSeatBatching(), redis.WithSeatGroups(3))
	}, seatGroups(3))
}

// seatable records broadcast b, if it is not yet, and a seatable stage.
func seatable(t *testing.T, st *redis.Store, arn string) {
	t.Helper()
	createBroadcast(t, st, "b")
	err := st.PutStage(t.Context(), store.Stage{Arn: arn, BroadcastID: "b", Role: store.RoleOrigin, Capacity: 1000, Seatable: true, CreatedAt: time.Now()})
	if err != nil {
		t.Fatalf("PutStage: %v", err)
	}
}

// TestConformanceCluster runs the suite on a Redis Cluster of three masters:
// every script must keep to one slot (CROSSSLOT otherwise), and the global
// keys and pipelines must work across nodes.
func TestConformanceCluster(t *testing.T) {
	addrs := redistest.StartCluster(t)
	var n atomic.Int64
	storetest.Run(t, func(_ *testing.T, eventLimit int) store.Store {
		rdb := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: addrs})
		return redis.New(rdb, fmt.Sprintf("cluster%d", n.Add(1)), redis.WithEventLimit(eventLimit))
	}, nil)
}

// TestConformanceClusterGrouped runs the suite on the cluster with seats in
// four groups: each group's scripts must keep to its own slot.
func TestConformanceClusterGrouped(t *testing.T) {
	addrs := redistest.StartCluster(t)
	var n atomic.Int64
	storetest.Run(t, func(_ *testing.T, eventLimit int) store.Store {
		rdb := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: addrs})
		return redis.New(rdb, fmt.Sprintf("cg%d", n.Add(1)), redis.WithEventLimit(eventLimit), redis.WithSeatGroups(4))
	}, seatGroups(4))
}

// A join, new or repeated, is one round trip to Redis: one EVALSHA.
func TestReserveSeatOneRoundTrip(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	st := redis.New(rdb, "")
	seatable(t, st, "arn:aws:ivs:us-east-1:123456789012:stage/origin")
	counter := &redistest.CommandCounter{}
	rdb.AddHook(counter)
	req := store.SeatRequest{BroadcastID: "b", ParticipantID: "p", Now: time.Now(), TTL: time.Minute}
	for i := range 100 {
		req.UserID = fmt.Sprintf("viewer-%d", i%50) // half are repeats
		if _, err := st.ReserveSeat(t.Context(), req); err != nil {
			t.Fatalf("ReserveSeat: %v", err)
		}
	}
	// The first call loads the script (EVALSHA answered NOSCRIPT, then
	// EVAL); every later one is a single EVALSHA.
	if got := counter.Count(); got != 100+1 {
		t.Fatalf("100 joins sent %d commands, want 101 (100 EVALSHA and one EVAL loading the script)", got)
	}
}

// After Redis loses its script cache (a restart, SCRIPT FLUSH), scripts are
// sent again: no call fails with NOSCRIPT.
func TestSurvivesScriptFlush(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	st := redis.New(rdb, "")
	seatable(t, st, "arn:aws:ivs:us-east-1:123456789012:stage/origin")
	req := store.SeatRequest{BroadcastID: "b", UserID: "v1", ParticipantID: "p", Now: time.Now(), TTL: time.Minute}
	if _, err := st.ReserveSeat(t.Context(), req); err != nil {
		t.Fatalf("ReserveSeat: %v", err)
	}
	if err := rdb.ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatalf("SCRIPT FLUSH: %v", err)
	}
	req.UserID = "v2"
	if _, err := st.ReserveSeat(t.Context(), req); err != nil {
		t.Fatalf("ReserveSeat after SCRIPT FLUSH: %v", err)
	}
	srv.Restart()
	seatable(t, st, "arn:aws:ivs:us-east-1:123456789012:stage/origin")
	if _, err := st.ReserveSeat(t.Context(), req); err != nil {
		t.Fatalf("ReserveSeat after a restart: %v", err)
	}
}

// DeleteBroadcast leaves nothing of the broadcast in Redis but its leases,
// not even in the global keys, which the conformance suite cannot see into
// (their stale entries read as absent).
func TestDeleteBroadcastLeavesNoKeys(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	st := redis.New(rdb, "")
	ctx := t.Context()
	origin := "arn:aws:ivs:us-east-1:123456789012:stage/origin"
	if _, err := st.CreateBroadcast(ctx, store.Broadcast{ID: "b", OriginArn: origin, CreatedAt: time.Now()}); err != nil {
		t.Fatalf("CreateBroadcast: %v", err)
	}
	seatable(t, st, origin)
	if err := st.PutHost(ctx, store.Host{BroadcastID: "b", ParticipantID: "h", StageArn: origin}); err != nil {
		t.Fatalf("PutHost: %v", err)
	}
	if err := st.PutReplication(ctx, store.Replication{BroadcastID: "b", ParticipantID: "h", DestArn: origin}); err != nil {
		t.Fatalf("PutReplication: %v", err)
	}
	if err := st.PutDemand(ctx, "b", store.Demand{Instance: "i", Waiting: 1, At: time.Now()}); err != nil {
		t.Fatalf("PutDemand: %v", err)
	}
	if _, err := st.ReserveSeat(ctx, store.SeatRequest{BroadcastID: "b", UserID: "v", Now: time.Now(), TTL: time.Minute}); err != nil {
		t.Fatalf("ReserveSeat: %v", err)
	}
	l, err := st.AcquireLease(ctx, "b", "control", "me", time.Minute)
	if err != nil {
		t.Fatalf("AcquireLease: %v", err)
	}
	if _, err := st.DeleteBroadcast(store.WithFence(ctx, l), "b"); err != nil {
		t.Fatalf("DeleteBroadcast: %v", err)
	}

	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatalf("KEYS: %v", err)
	}
	slices.Sort(keys)
	want := []string{"stagefleet:{b}:lease-tokens", "stagefleet:{b}:lease:control"}
	if !slices.Equal(keys, want) {
		t.Fatalf("keys after DeleteBroadcast: %q, want the leases' only %q", keys, want)
	}
}

// Three stores (three instances) taking turns at one shared rate together
// keep to it: a burst, then one turn per interval, whoever takes it.
func TestQuotaTurnShared(t *testing.T) {
	srv := redistest.Start(t)
	var stores []*redis.Store
	for range 3 {
		stores = append(stores, redis.New(srv.Client(t), "quota"))
	}
	const tps, burst, turns = 5.0, 4, 30
	waits := make([]time.Duration, turns)
	for i := range turns {
		w, err := stores[i%3].QuotaTurn(t.Context(), "us-east-1:CreateStage", tps, burst)
		if err != nil {
			t.Fatalf("QuotaTurn: %v", err)
		}
		waits[i] = w
	}
	// Taken at once: the first burst turns go now, and each later one
	// waits one more interval (200 ms) than the one before, within the
	// few milliseconds the calls themselves take.
	for i, w := range waits {
		want := time.Duration(max(0, i-burst+1)) * 200 * time.Millisecond
		if w < want-20*time.Millisecond || w > want+5*time.Millisecond {
			t.Errorf("turn %d waits %v, want about %v", i, w, want)
		}
	}
	// Another rate is not held up by this one.
	if w, err := stores[0].QuotaTurn(t.Context(), "us-east-1:DeleteStage", tps, burst); err != nil || w != 0 {
		t.Errorf("first turn of another rate: %v, %v; want no wait", w, err)
	}
}

// The whole suite holds with seat operations coalesced into batches.
func TestConformanceBatched(t *testing.T) {
	srv := redistest.Start(t)
	var n atomic.Int64
	storetest.Run(t, func(_ *testing.T, eventLimit int) store.Store {
		rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
		return redis.New(rdb, fmt.Sprintf("batched%d", n.Add(1)), redis.WithEventLimit(eventLimit), redis.WithSeatBatching())
	}, nil)
}

// Capacity is exact under a 32-way storm on one stage of capacity 10,000,
// with batching, and the batches save round trips: far fewer script calls
// than joins.
func TestBatchedStormExactCapacity(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	st := redis.New(rdb, "storm", redis.WithSeatBatching())
	const capacity, workers, each = 10_000, 32, 350
	arn := "arn:aws:ivs:us-east-1:123456789012:stage/big"
	createBroadcast(t, st, "b")
	if err := st.PutStage(t.Context(), store.Stage{Arn: arn, BroadcastID: "b", Role: store.RoleOrigin, Capacity: capacity, Seatable: true, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	counter := &redistest.CommandCounter{}
	rdb.AddHook(counter)
	var seated, full atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				_, err := st.ReserveSeat(t.Context(), store.SeatRequest{BroadcastID: "b", UserID: fmt.Sprintf("v%d-%d", w, i), ParticipantID: "p", Now: time.Now(), TTL: time.Hour})
				switch {
				case err == nil:
					seated.Add(1)
				case errors.Is(err, store.ErrFull):
					full.Add(1)
				default:
					t.Errorf("ReserveSeat: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	if seated.Load() != capacity || full.Load() != workers*each-capacity {
		t.Errorf("%d seated and %d refused of %d; want exactly %d seated", seated.Load(), full.Load(), workers*each, capacity)
	}
	got, err := st.GetStage(t.Context(), arn)
	if err != nil || got.Seats != capacity {
		t.Errorf("stage holds %d seats (%v), want %d", got.Seats, err, capacity)
	}
	calls := counter.Count()
	if perOp := float64(calls) / float64(workers*each); perOp >= 1 {
		t.Errorf("%d Redis commands for %d operations: %.2f each; batching should make it well below one", calls, workers*each, perOp)
	} else {
		t.Logf("%d Redis commands for %d operations (%.3f each)", calls, workers*each, perOp)
	}
}

// TestRoomIndex: the index of stages with room is built on first use for
// a broadcast whose records predate it, and an entry that does not fit
// (here a full stage put first by hand) is passed over and put right:
// never a seat beyond capacity.
func TestRoomIndex(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	st := redis.New(rdb, "room")
	ctx := t.Context()
	base := time.Now()
	arns := []string{"arn:aws:ivs:us-east-1:123456789012:stage/a", "arn:aws:ivs:us-east-1:123456789012:stage/b", "arn:aws:ivs:us-east-1:123456789012:stage/c"}
	for i, arn := range arns {
		if err := st.PutStage(ctx, store.Stage{Arn: arn, BroadcastID: "b", Role: store.RoleReplica, Capacity: 3, Seatable: true, CreatedAt: base.Add(time.Duration(i) * time.Second)}); err != nil {
			t.Fatal(err)
		}
	}
	seat := func(user string) string {
		t.Helper()
		s, err := st.ReserveSeat(ctx, store.SeatRequest{BroadcastID: "b", UserID: user, ParticipantID: "p-" + user, Now: time.Now(), TTL: time.Hour})
		if err != nil {
			t.Fatalf("ReserveSeat %s: %v", user, err)
		}
		return s.StageArn
	}
	// Fullest first, then oldest: a fills, then b.
	for i, want := range []string{arns[0], arns[0], arns[0], arns[1]} {
		if got := seat(fmt.Sprint("v", i)); got != want {
			t.Fatalf("viewer %d seated on %s, want %s", i, got, want)
		}
	}
	// Records from before the index: it is built at the next join.
	if err := rdb.Del(ctx, "room:{b}:room").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.HDel(ctx, "room:{b}:totals", "room").Err(); err != nil {
		t.Fatal(err)
	}
	if got := seat("v4"); got != arns[1] {
		t.Errorf("after the index was lost, a viewer seated on %s, want the fullest with room, %s", got, arns[1])
	}
	if n, err := rdb.ZCard(ctx, "room:{b}:room").Result(); err != nil || n != 2 {
		t.Errorf("the rebuilt index holds %d stages (%v), want b and c", n, err)
	}
	// A full stage first in the index by hand: passed over, taken out.
	rank, err := rdb.HGet(ctx, "room:{b}:rank", arns[0]).Result()
	if err != nil {
		t.Fatal(err)
	}
	created := rank[strings.IndexByte(rank, ' ')+1:]
	member := strings.Repeat("0", 17-len(created)) + created + arns[0]
	if err := rdb.ZAdd(ctx, "room:{b}:room", goredis.Z{Score: -100, Member: member}).Err(); err != nil {
		t.Fatal(err)
	}
	if got := seat("v5"); got != arns[1] {
		t.Errorf("with a full stage first in the index, a viewer seated on %s, want %s", got, arns[1])
	}
	if _, err := rdb.ZScore(ctx, "room:{b}:room", member).Result(); !errors.Is(err, goredis.Nil) {
		t.Errorf("the full stage is still in the index: %v", err)
	}
	// Every stage full; then a seat freed as an instance of an earlier
	// version frees it, without the index: a join is told full, without
	// reading every stage, until the next expiry sweep puts the index
	// right; then the next join finds it.
	for i := 6; i < 9; i++ {
		if got := seat(fmt.Sprint("v", i)); got != arns[2] {
			t.Fatalf("viewer %d seated on %s, want %s", i, got, arns[2])
		}
	}
	if _, err := st.ReserveSeat(ctx, store.SeatRequest{BroadcastID: "b", UserID: "late", ParticipantID: "p", Now: time.Now(), TTL: time.Hour}); !errors.Is(err, store.ErrFull) {
		t.Fatalf("a join with every stage full: %v, want ErrFull", err)
	}
	if err := rdb.HIncrBy(ctx, "room:{b}:counts", arns[0], -1).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.HDel(ctx, "room:{b}:seats", "v0").Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.ReserveSeat(ctx, store.SeatRequest{BroadcastID: "b", UserID: "v9", ParticipantID: "p", Now: time.Now(), TTL: time.Hour}); !errors.Is(err, store.ErrFull) {
		t.Fatalf("a join before the sweep, with the freed seat outside the index: %v, want ErrFull", err)
	}
	if freed, err := st.ExpireSeats(ctx, "b", time.Now()); err != nil || len(freed) != 0 {
		t.Fatalf("the sweep: %d seats freed, %v; want none (the seats' leases run an hour)", len(freed), err)
	}
	if got := seat("v9"); got != arns[0] {
		t.Errorf("after a seat on %s was freed without the index, a viewer seated on %s", arns[0], got)
	}
	stages, err := st.ListStages(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stages {
		if s.Seats > s.Capacity {
			t.Errorf("stage %s holds %d of %d", s.Arn, s.Seats, s.Capacity)
		}
	}
}
