package redis_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stagefleet/stagefleet/internal/redistest"
	"github.com/stagefleet/stagefleet/internal/store"
	"github.com/stagefleet/stagefleet/internal/store/redis"
)

// bigStages records n seatable stages of capacity each in broadcast b.
func bigStages(tb testing.TB, st *redis.Store, b string, n, capacity int) {
	tb.Helper()
	createBroadcast(tb, st, b)
	for i := range n {
		arn := fmt.Sprintf("arn:aws:ivs:us-east-1:123456789012:stage/s%05d", i)
		if err := st.PutStage(tb.Context(), store.Stage{Arn: arn, BroadcastID: b, Role: store.RoleReplica, Capacity: capacity, Seatable: true, CreatedAt: time.Now()}); err != nil {
			tb.Fatal(err)
		}
	}
}

// infoNumber reads one number of a section of Redis's INFO.
func infoNumber(tb testing.TB, rdb *goredis.Client, section, key string) float64 {
	tb.Helper()
	cmd := rdb.InfoMap(tb.Context(), section)
	if err := cmd.Err(); err != nil {
		tb.Fatal(err)
	}
	f, err := strconv.ParseFloat(cmd.Item(section, key), 64)
	if err != nil {
		tb.Fatalf("INFO %s %s: %v", section, key, err)
	}
	return f
}

func usedMemory(tb testing.TB, rdb *goredis.Client) int64 {
	return int64(infoNumber(tb, rdb, "Memory", "used_memory"))
}

// TestSeatCost seats 100,000 viewers of one broadcast on 10 stages of
// capacity 10,000 through the batched store and checks the invariants (no
// stage past its capacity, every viewer seated once); it reports what a
// seat costs in Redis's memory.
func TestSeatCost(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	st := redis.New(rdb, "cost", redis.WithSeatBatching())
	const stages, capacity, viewers = 10, 10_000, 100_000
	bigStages(t, st, "b", stages, capacity)
	before := usedMemory(t, rdb)
	var next, failed atomic.Int64
	start := time.Now()
	done := make(chan struct{})
	for range 64 {
		go func() {
			defer func() { done <- struct{}{} }()
			for {
				i := next.Add(1) - 1
				if i >= viewers {
					return
				}
				_, err := st.ReserveSeat(t.Context(), store.SeatRequest{BroadcastID: "b", UserID: fmt.Sprintf("viewer-%07d", i), ParticipantID: fmt.Sprintf("P%024d", i), Now: time.Now(), TTL: time.Minute})
				if err != nil {
					failed.Add(1)
				}
			}
		}()
	}
	for range 64 {
		<-done
	}
	took := time.Since(start)
	if failed.Load() != 0 {
		t.Fatalf("%d of %d viewers not seated", failed.Load(), viewers)
	}
	all, err := st.ListStages(t.Context(), "b")
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, s := range all {
		if s.Seats > s.Capacity {
			t.Errorf("stage %s holds %d seats, capacity %d", s.Arn, s.Seats, s.Capacity)
		}
		total += s.Seats
	}
	if total != viewers {
		t.Errorf("stages hold %d seats for %d viewers", total, viewers)
	}
	perSeat := float64(usedMemory(t, rdb)-before) / viewers
	if perSeat > 1024 {
		t.Errorf("a seat costs %.0f bytes of Redis memory; want well under 1 KiB", perSeat)
	}
	t.Logf("%d viewers seated in %v (%.0f joins/s through one Redis slot); %.0f bytes of Redis memory per seat", viewers, took.Round(time.Millisecond), viewers/took.Seconds(), perSeat)

	// Dropping a full stage frees its seats only, found through its own
	// seat set; without the set (seats from before it existed) through
	// the broadcast's seats.
	drop := func(s store.Stage) time.Duration {
		t.Helper()
		start := time.Now()
		freed, err := st.DeleteStage(t.Context(), s.Arn)
		took := time.Since(start)
		if err != nil {
			t.Fatalf("DeleteStage(%s): %v", s.Arn, err)
		}
		if len(freed) != s.Seats {
			t.Errorf("DeleteStage(%s) freed %d seats; the stage held %d", s.Arn, len(freed), s.Seats)
		}
		for _, seat := range freed {
			if seat.StageArn != s.Arn {
				t.Fatalf("DeleteStage(%s) freed a seat of %s", s.Arn, seat.StageArn)
			}
		}
		return took
	}
	indexed := drop(all[0])
	if err := rdb.Del(t.Context(), "cost:{b}:on:"+all[1].Arn).Err(); err != nil {
		t.Fatal(err)
	}
	scanned := drop(all[1])
	left, err := st.ListStages(t.Context(), "b")
	if err != nil {
		t.Fatal(err)
	}
	total = 0
	for _, s := range left {
		total += s.Seats
	}
	if want := viewers - all[0].Seats - all[1].Seats; total != want || len(left) != stages-2 {
		t.Errorf("after dropping two stages: %d stages hold %d seats; want %d holding %d", len(left), total, stages-2, want)
	}
	t.Logf("dropping a stage of %d seats in a broadcast of %d: %v through its seat set, %v reading every seat", all[0].Seats, viewers, indexed.Round(time.Microsecond), scanned.Round(time.Microsecond))
}

// redisMicros is the CPU time Redis's main thread has spent, in
// microseconds: what bounds one slot, whatever the clients' machine.
func redisMicros(tb testing.TB, rdb *goredis.Client) float64 {
	return 1e6 * (infoNumber(tb, rdb, "CPU", "used_cpu_user_main_thread") + infoNumber(tb, rdb, "CPU", "used_cpu_sys_main_thread"))
}

// BenchmarkSeatOps is the seat operations' throughput through one
// broadcast (one Redis slot), batched as serve runs them: joins, and the
// renewals every seated viewer makes. redis-µs/op is Redis's own CPU per
// operation: one slot, on a core of its own, takes 10⁶ / redis-µs/op
// operations a second.
func BenchmarkSeatOps(b *testing.B) {
	srv := redistest.Start(b)
	rdb := srv.Client(b)
	st := redis.New(rdb, "bench", redis.WithSeatBatching())
	bigStages(b, st, "b", 100, 10_000)
	var next atomic.Int64
	// Seats for the renewals, whichever cases -bench picks.
	for range 1000 {
		i := next.Add(1)
		if _, err := st.ReserveSeat(b.Context(), store.SeatRequest{BroadcastID: "b", UserID: fmt.Sprint("v", i), ParticipantID: "P", Now: time.Now(), TTL: time.Hour}); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("reserve", func(b *testing.B) {
		b.SetParallelism(16)
		before := redisMicros(b, rdb)
		defer func() { b.ReportMetric((redisMicros(b, rdb)-before)/float64(b.N), "redis-µs/op") }()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := next.Add(1)
				if _, err := st.ReserveSeat(b.Context(), store.SeatRequest{BroadcastID: "b", UserID: fmt.Sprint("v", i), ParticipantID: "P", Now: time.Now(), TTL: time.Hour}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	// One at a time: every operation its own script call, as when an
	// instance has one in flight: the most Redis CPU an operation costs.
	b.Run("reserve-alone", func(b *testing.B) {
		before := redisMicros(b, rdb)
		defer func() { b.ReportMetric((redisMicros(b, rdb)-before)/float64(b.N), "redis-µs/op") }()
		for b.Loop() {
			i := next.Add(1)
			if _, err := st.ReserveSeat(b.Context(), store.SeatRequest{BroadcastID: "b", UserID: fmt.Sprint("v", i), ParticipantID: "P", Now: time.Now(), TTL: time.Hour}); err != nil {
				b.Fatal(err)
			}
		}
	})
	seated := next.Load()
	b.Run("renew-alone", func(b *testing.B) {
		before := redisMicros(b, rdb)
		defer func() { b.ReportMetric((redisMicros(b, rdb)-before)/float64(b.N), "redis-µs/op") }()
		var n int64
		for b.Loop() {
			n++
			if _, err := st.RenewSeat(b.Context(), "b", fmt.Sprint("v", n%seated+1), store.SeatOwner{ParticipantID: "P"}, time.Now(), time.Hour); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("renew", func(b *testing.B) {
		b.SetParallelism(16)
		before := redisMicros(b, rdb)
		defer func() { b.ReportMetric((redisMicros(b, rdb)-before)/float64(b.N), "redis-µs/op") }()
		var n atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := n.Add(1)%seated + 1
				if _, err := st.RenewSeat(b.Context(), "b", fmt.Sprint("v", i), store.SeatOwner{ParticipantID: "P"}, time.Now(), time.Hour); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkPacedRenewals renews seats at a steady 3,000 a second, each
// renewal from a goroutine of its own (heartbeats come to an instance from
// independent viewers, not from a few busy clients), and reports Redis's
// CPU and the round trips per renewal: what renewWindow saves an instance
// carrying a share of a million viewers' heartbeats.
func BenchmarkPacedRenewals(b *testing.B) {
	srv := redistest.Start(b)
	rdb := srv.Client(b)
	st := redis.New(rdb, "paced", redis.WithSeatBatching())
	bigStages(b, st, "b", 100, 10_000)
	const seats, rate = 10_000, 3000
	for i := range seats {
		if _, err := st.ReserveSeat(b.Context(), store.SeatRequest{BroadcastID: "b", UserID: fmt.Sprint("v", i), ParticipantID: "P", Now: time.Now(), TTL: time.Hour}); err != nil {
			b.Fatal(err)
		}
	}
	counter := &redistest.CommandCounter{}
	rdb.AddHook(counter)
	before := redisMicros(b, rdb)
	paced(b, rate, func(i int) error {
		_, err := st.RenewSeat(b.Context(), "b", fmt.Sprint("v", i%seats), store.SeatOwner{ParticipantID: "P"}, time.Now(), time.Hour)
		return err
	})
	b.ReportMetric((redisMicros(b, rdb)-before)/float64(b.N), "redis-µs/op")
	b.ReportMetric(float64(counter.Count())/float64(b.N), "round-trips/op")
}

// paced runs op(i) for i in [0, b.N) at rate a second, each in a goroutine
// of its own (heartbeats come to an instance from independent viewers, not
// from a few busy clients), and fails b if any op failed.
func paced(b *testing.B, rate int, op func(i int) error) {
	var failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	b.ResetTimer()
	for i := range b.N {
		time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))))
		wg.Go(func() {
			if err := op(i); err != nil {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	if failed.Load() > 0 {
		b.Fatalf("%d of %d operations failed", failed.Load(), b.N)
	}
}

// mastersMicros is redisMicros of every master of a cluster, by address.
func mastersMicros(tb testing.TB, rdb *goredis.ClusterClient) map[string]float64 {
	var mu sync.Mutex
	out := map[string]float64{}
	if err := rdb.ForEachMaster(tb.Context(), func(_ context.Context, node *goredis.Client) error {
		us := redisMicros(tb, node)
		mu.Lock()
		defer mu.Unlock()
		out[node.Options().Addr] = us
		return nil
	}); err != nil {
		tb.Fatal(err)
	}
	return out
}

// reportMasters reports Redis's CPU per operation since before: in all,
// and on the busiest master, which bounds the rate: 10⁶ / busiest-µs/op
// operations a second once that master's core is full.
func reportMasters(b *testing.B, rdb *goredis.ClusterClient, counter *redistest.CommandCounter, before map[string]float64) {
	var total, busiest float64
	for addr, us := range mastersMicros(b, rdb) {
		d := us - before[addr]
		total += d
		busiest = max(busiest, d)
	}
	b.ReportMetric(total/float64(b.N), "redis-µs/op")
	b.ReportMetric(busiest/float64(b.N), "busiest-µs/op")
	b.ReportMetric(float64(counter.Count())/float64(b.N), "round-trips/op")
}

// BenchmarkSeatGroups runs the joins and renewals of one broadcast on a
// Redis Cluster of three masters, its seats in one seat group or split
// over several, batched as serve runs them, 32 at once. Renewals name
// their stage, as heartbeats do. Which master holds which group's slot is
// the cluster's: the busiest master's share depends on it.
func BenchmarkSeatGroups(b *testing.B) {
	addrs := redistest.StartCluster(b)
	for _, groups := range []int{1, 6, 12} {
		b.Run(fmt.Sprintf("groups=%d", groups), func(b *testing.B) {
			rdb := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: addrs})
			st := redis.New(rdb, fmt.Sprintf("g%d", groups), redis.WithSeatBatching(), redis.WithSeatGroups(groups))
			defer st.Close()
			bigStages(b, st, "b", 60, 10_000)
			counter := &redistest.CommandCounter{}
			rdb.AddHook(counter)
			var mu sync.Mutex
			var seats []store.Seat
			var next atomic.Int64
			b.Run("join", func(b *testing.B) {
				b.SetParallelism(32)
				before := mastersMicros(b, rdb)
				counter.Reset()
				defer reportMasters(b, rdb, counter, before)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						seat, err := st.ReserveSeat(b.Context(), store.SeatRequest{BroadcastID: "b", UserID: fmt.Sprint("v", next.Add(1)), ParticipantID: "P", Now: time.Now(), TTL: time.Hour})
						if err != nil {
							b.Error(err)
							return
						}
						mu.Lock()
						seats = append(seats, seat)
						mu.Unlock()
					}
				})
			})
			b.Run("renew", func(b *testing.B) {
				b.SetParallelism(32)
				before := mastersMicros(b, rdb)
				counter.Reset()
				defer reportMasters(b, rdb, counter, before)
				var n atomic.Int64
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						seat := seats[n.Add(1)%int64(len(seats))]
						if _, err := st.RenewSeat(b.Context(), "b", seat.UserID, store.SeatOwner{ParticipantID: "P", StageArn: seat.StageArn}, time.Now(), time.Hour); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
			// An instance's heartbeats, as in BenchmarkPacedRenewals:
			// 3,000 a second, each from a goroutine of its own. The more
			// groups, the smaller each group's batches.
			b.Run("renew-paced", func(b *testing.B) {
				before := mastersMicros(b, rdb)
				counter.Reset()
				paced(b, 3000, func(i int) error {
					seat := seats[i%len(seats)]
					_, err := st.RenewSeat(b.Context(), "b", seat.UserID, store.SeatOwner{ParticipantID: "P", StageArn: seat.StageArn}, time.Now(), time.Hour)
					return err
				})
				reportMasters(b, rdb, counter, before)
			})
		})
	}
}

// createBroadcast records broadcast id unless it is already: seat
// operations read how many seat groups it has once, then remember it.
func createBroadcast(tb testing.TB, st *redis.Store, id string) {
	tb.Helper()
	_, err := st.CreateBroadcast(tb.Context(), store.Broadcast{ID: id, CreatedAt: time.Now()})
	if err != nil && !errors.Is(err, store.ErrExists) {
		tb.Fatalf("CreateBroadcast: %v", err)
	}
}

// BenchmarkFullJoin is a join to a broadcast at capacity (100 stages, all
// full), one at a time, as waiting viewers retry in a storm: its answer,
// full, must not cost a read of every stage.
func BenchmarkFullJoin(b *testing.B) {
	srv := redistest.Start(b)
	rdb := srv.Client(b)
	st := redis.New(rdb, "full")
	bigStages(b, st, "b", 100, 1)
	for i := range 100 {
		if _, err := st.ReserveSeat(b.Context(), store.SeatRequest{BroadcastID: "b", UserID: fmt.Sprint("seated", i), ParticipantID: "P", Now: time.Now(), TTL: time.Hour}); err != nil {
			b.Fatal(err)
		}
	}
	before := redisMicros(b, rdb)
	var n int
	for b.Loop() {
		n++
		if _, err := st.ReserveSeat(b.Context(), store.SeatRequest{BroadcastID: "b", UserID: fmt.Sprint("v", n), ParticipantID: "P", Now: time.Now(), TTL: time.Hour}); !errors.Is(err, store.ErrFull) {
			b.Fatalf("a join at capacity: %v, want ErrFull", err)
		}
	}
	b.ReportMetric((redisMicros(b, rdb)-before)/float64(b.N), "redis-µs/op")
}
